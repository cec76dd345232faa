//! A subscription's entries in each format, with the headers apps read
//! (docs/subscriptions.md, "Headers"). Every format is built from the same entries, so the
//! base64 list, the sing-box configuration and the Clash profile always name the same
//! servers in the same order.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use base64::Engine;
use serde_json::{Value, json};

use crate::entries::{Contents, Entry};
use crate::format::Format;
use crate::vless::VlessLink;

/// An answer ready to send (and to reuse for a second).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: axum::body::Bytes,
}

/// What the headers say besides the entries.
#[derive(Debug, Clone)]
pub struct Profile<'a> {
    pub title: &'a str,
    pub update_interval_hours: u32,
    pub web_page_url: Option<&'a url::Url>,
    pub support_url: Option<&'a url::Url>,
}

/// The link list joined by `\n`.
pub fn plain(entries: &[Entry]) -> String {
    entries
        .iter()
        .map(|e| e.link.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Base64 of the link list, standard alphabet with padding: the form every app decodes.
pub fn b64(entries: &[Entry]) -> String {
    base64::engine::general_purpose::STANDARD.encode(plain(entries))
}

/// A sing-box outbound for one entry. A placeholder stays one (server 0.0.0.0, port 1), so
/// the app shows its text where the server would be.
fn singbox_outbound(entry: &Entry) -> Option<Value> {
    let link = VlessLink::parse(&entry.link).ok()?;
    let mut outbound = json!({
        "type": "vless",
        "tag": entry.remark,
        "server": link.host,
        "server_port": link.port,
        "uuid": link.uuid,
    });
    if let Some(flow) = link.param("flow") {
        outbound["flow"] = json!(flow);
    }
    let tls = match link.security() {
        "tls" | "reality" => {
            let mut tls = json!({"enabled": true});
            if let Some(sni) = link.param("sni") {
                tls["server_name"] = json!(sni);
            }
            if let Some(alpn) = link.param("alpn") {
                tls["alpn"] = json!(alpn.split(',').collect::<Vec<_>>());
            }
            let reality = link.security() == "reality";
            // REALITY needs a uTLS fingerprint; the panel's default is chrome.
            let fingerprint = link.param("fp").or(reality.then_some("chrome"));
            if let Some(fp) = fingerprint {
                tls["utls"] = json!({"enabled": true, "fingerprint": fp});
            }
            if reality {
                tls["reality"] = json!({
                    "enabled": true,
                    "public_key": link.param("pbk").unwrap_or_default(),
                    "short_id": link.param("sid").unwrap_or_default(),
                });
            }
            Some(tls)
        }
        _ => None,
    };
    if let Some(tls) = tls {
        outbound["tls"] = tls;
    }
    match link.network() {
        "ws" => {
            let mut transport = json!({"type": "ws", "path": link.param("path").unwrap_or("/")});
            if let Some(host) = link.param("host") {
                transport["headers"] = json!({"Host": host});
            }
            outbound["transport"] = transport;
        }
        "grpc" => {
            outbound["transport"] = json!({
                "type": "grpc",
                "service_name": link.param("serviceName").unwrap_or_default(),
            });
        }
        "httpupgrade" => {
            let mut transport =
                json!({"type": "httpupgrade", "path": link.param("path").unwrap_or("/")});
            if let Some(host) = link.param("host") {
                transport["host"] = json!(host);
            }
            outbound["transport"] = transport;
        }
        _ => {}
    }
    Some(outbound)
}

/// A complete sing-box client configuration: a TUN inbound (what the phone apps run) and a
/// local mixed proxy, one outbound per entry, a selector over them that routes everything,
/// and DNS through the tunnel's route.
pub fn singbox(entries: &[Entry]) -> String {
    let outbounds: Vec<Value> = entries.iter().filter_map(singbox_outbound).collect();
    let tags: Vec<&str> = entries.iter().map(|e| e.remark.as_str()).collect();
    let default = entries
        .iter()
        .find(|e| e.working)
        .or(entries.first())
        .map(|e| e.remark.as_str());
    let mut selector = json!({"type": "selector", "tag": "proxy", "outbounds": tags});
    if let Some(default) = default {
        selector["default"] = json!(default);
    }
    let mut all = vec![selector];
    all.extend(outbounds);
    all.push(json!({"type": "direct", "tag": "direct"}));
    let config = json!({
        "log": {"level": "warn"},
        "dns": {
            "servers": [{"type": "local", "tag": "local"}],
        },
        "inbounds": [
            {
                "type": "tun",
                "tag": "tun-in",
                "address": ["172.19.0.1/30"],
                "auto_route": true,
                "strict_route": true
            },
            {"type": "mixed", "tag": "mixed-in", "listen": "127.0.0.1", "listen_port": 2080}
        ],
        "outbounds": all,
        "route": {
            "rules": [
                {"action": "sniff"},
                {"protocol": "dns", "action": "hijack-dns"},
                {"ip_is_private": true, "outbound": "direct"}
            ],
            "final": "proxy",
            "auto_detect_interface": true,
            "default_domain_resolver": "local"
        }
    });
    serde_json::to_string_pretty(&config).unwrap_or_default()
}

/// A mihomo proxy for one entry.
fn clash_proxy(entry: &Entry) -> Option<Value> {
    let link = VlessLink::parse(&entry.link).ok()?;
    let mut proxy = json!({
        "name": entry.remark,
        "type": "vless",
        "server": link.host,
        "port": link.port,
        "uuid": link.uuid,
        "network": link.network(),
        "udp": true,
    });
    if let Some(flow) = link.param("flow") {
        proxy["flow"] = json!(flow);
    }
    if matches!(link.security(), "tls" | "reality") {
        proxy["tls"] = json!(true);
        if let Some(sni) = link.param("sni") {
            proxy["servername"] = json!(sni);
        }
        if let Some(fp) = link.param("fp") {
            proxy["client-fingerprint"] = json!(fp);
        }
        if let Some(alpn) = link.param("alpn") {
            proxy["alpn"] = json!(alpn.split(',').collect::<Vec<_>>());
        }
    }
    if link.security() == "reality" {
        proxy["reality-opts"] = json!({
            "public-key": link.param("pbk").unwrap_or_default(),
            "short-id": link.param("sid").unwrap_or_default(),
        });
        if link.param("fp").is_none() {
            proxy["client-fingerprint"] = json!("chrome");
        }
    }
    match link.network() {
        "ws" => {
            let mut opts = json!({"path": link.param("path").unwrap_or("/")});
            if let Some(host) = link.param("host") {
                opts["headers"] = json!({"Host": host});
            }
            proxy["ws-opts"] = opts;
        }
        "grpc" => {
            proxy["grpc-opts"] =
                json!({"grpc-service-name": link.param("serviceName").unwrap_or_default()});
        }
        _ => {}
    }
    Some(proxy)
}

/// A mihomo (Clash Meta) profile. Each proxy is written as a JSON object, which is a YAML
/// flow mapping, so every string is quoted and escaped correctly whatever a name holds.
pub fn clash(entries: &[Entry]) -> String {
    let mut out = String::from(
        "mixed-port: 7890\nallow-lan: false\nmode: rule\nlog-level: warning\nproxies:\n",
    );
    let proxies: Vec<Value> = entries.iter().filter_map(clash_proxy).collect();
    for proxy in &proxies {
        out.push_str(&format!("  - {proxy}\n"));
    }
    let names: Vec<&str> = entries.iter().map(|e| e.remark.as_str()).collect();
    let group = json!({"name": "PROXY", "type": "select", "proxies": names});
    out.push_str(&format!(
        "proxy-groups:\n  - {group}\nrules:\n  - MATCH,PROXY\n"
    ));
    out
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// The headers every subscription answer carries.
fn profile_headers(contents: &Contents, profile: &Profile<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let encoded_title = base64::engine::general_purpose::STANDARD.encode(profile.title);
    let ascii_title: String = profile
        .title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " -_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{ascii_title}\"; filename*=UTF-8''{}",
        domain::encode_uri_component(profile.title)
    );
    let mut headers = vec![
        (
            HeaderName::from_static("subscription-userinfo"),
            value(&contents.userinfo.header()),
        ),
        (
            HeaderName::from_static("profile-update-interval"),
            value(&profile.update_interval_hours.to_string()),
        ),
        (
            HeaderName::from_static("profile-title"),
            value(&format!("base64:{encoded_title}")),
        ),
        (header::CONTENT_DISPOSITION, value(&disposition)),
    ];
    if let Some(url) = profile.web_page_url {
        headers.push((
            HeaderName::from_static("profile-web-page-url"),
            value(url.as_str()),
        ));
    }
    if let Some(url) = profile.support_url {
        headers.push((HeaderName::from_static("support-url"), value(url.as_str())));
    }
    headers
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
}

/// The answer to a fetch in `format` (all but the page, which [`crate::page`] renders).
pub fn render(contents: &Contents, format: Format, profile: &Profile<'_>) -> Rendered {
    let (content_type, body) = match format {
        Format::B64 | Format::Html => ("text/plain; charset=utf-8", b64(&contents.entries)),
        Format::Plain => ("text/plain; charset=utf-8", plain(&contents.entries)),
        Format::Singbox => (
            "application/json; charset=utf-8",
            singbox(&contents.entries),
        ),
        Format::Clash => ("text/yaml; charset=utf-8", clash(&contents.entries)),
    };
    let mut headers = vec![
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    headers.extend(profile_headers(contents, profile));
    Rendered {
        status: StatusCode::OK,
        headers,
        body: body.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entries::{Userinfo, placeholder};

    fn entry(remark: &str, link: &str, working: bool) -> Entry {
        Entry {
            remark: remark.into(),
            link: link.into(),
            working,
        }
    }

    #[test]
    fn headers_carry_every_userinfo_key_and_both_filenames() {
        let contents = Contents {
            entries: vec![entry("x", &placeholder("x"), false)],
            userinfo: Userinfo {
                upload: 1,
                download: 2,
                total: 0,
                expire: 0,
            },
        };
        let profile = Profile {
            title: "VPN ключ",
            update_interval_hours: 12,
            web_page_url: None,
            support_url: None,
        };
        let rendered = render(&contents, Format::B64, &profile);
        let get = |name: &str| {
            rendered
                .headers
                .iter()
                .find(|(n, _)| n.as_str() == name)
                .and_then(|(_, v)| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            get("subscription-userinfo").as_deref(),
            Some("upload=1; download=2; total=0; expire=0")
        );
        assert_eq!(get("profile-update-interval").as_deref(), Some("12"));
        let disposition = get("content-disposition").expect("disposition");
        assert!(
            disposition.contains("filename=\"VPN ____\""),
            "{disposition}"
        );
        assert!(
            disposition.contains("filename*=UTF-8''VPN%20%D0%BA%D0%BB%D1%8E%D1%87"),
            "{disposition}"
        );
        assert_eq!(get("cache-control").as_deref(), Some("no-store"));
    }

    #[test]
    fn clash_names_every_entry_in_its_group() {
        let link = "vless://11112222-3333-4444-5555-666677778888@h.example:443?type=ws&security=tls&sni=h.example&path=%2Fws&host=h.example#x";
        let entries = [entry("A \"quoted\" name", link, true)];
        let profile = clash(&entries);
        assert!(
            profile.contains(r#""name":"A \"quoted\" name""#),
            "{profile}"
        );
        assert!(profile.contains(r#""ws-opts":{"headers":{"Host":"h.example"},"path":"/ws"}"#));
        assert!(profile.ends_with("rules:\n  - MATCH,PROXY\n"));
    }
}
