//! The `vless://` share link (docs/panel.md, "The vless:// link"), rendered from a client UUID
//! and the inbound's settings. It reproduces the panel's own "copy link" parameter for
//! parameter, so a user gets the same link from keyledger as from the panel; it lives in the
//! domain because it is a pure function of key state and inbound settings.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// What a `vless://` link needs to know about the inbound that serves it, as the panel
/// stores it: `settings` and `streamSettings` are the inbound's JSON strings.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundLinkSettings {
    /// The host put into links (config `public_host`), not the panel's address.
    pub public_host: String,
    pub port: u16,
    /// The inbound's remark; the link's fragment is `<remark>-<email>`, as the panel's own.
    pub remark: String,
    /// The inbound's `settings` JSON (for `encryption`).
    pub settings: Value,
    /// The inbound's `streamSettings` JSON.
    pub stream_settings: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("inbound stream settings lack {0}")]
    Missing(&'static str),
    #[error("inbound {field} is not valid JSON: {message}")]
    InvalidJson {
        field: &'static str,
        message: String,
    },
    #[error("public host {0:?} is not a host name or address")]
    InvalidHost(String),
}

impl InboundLinkSettings {
    /// Builds the link settings from the panel's JSON strings.
    pub fn from_panel_strings(
        public_host: &str,
        port: u16,
        remark: &str,
        settings: &str,
        stream_settings: &str,
    ) -> Result<Self, LinkError> {
        let parse = |field: &'static str, raw: &str| {
            serde_json::from_str::<Value>(raw).map_err(|e| LinkError::InvalidJson {
                field,
                message: e.to_string(),
            })
        };
        Ok(Self {
            public_host: public_host.to_owned(),
            port,
            remark: remark.to_owned(),
            settings: parse("settings", settings)?,
            stream_settings: parse("streamSettings", stream_settings)?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamSettings {
    #[serde(default)]
    network: String,
    #[serde(default)]
    security: String,
    #[serde(default)]
    tcp_settings: Option<TcpSettings>,
    #[serde(default)]
    ws_settings: Option<WsSettings>,
    #[serde(default)]
    grpc_settings: Option<GrpcSettings>,
    #[serde(default)]
    tls_settings: Option<TlsSettings>,
    #[serde(default)]
    reality_settings: Option<RealitySettings>,
}

#[derive(Debug, Default, Deserialize)]
struct TcpSettings {
    #[serde(default)]
    header: Option<TcpHeader>,
}

#[derive(Debug, Default, Deserialize)]
struct TcpHeader {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    request: Option<HttpRequestHeader>,
}

#[derive(Debug, Default, Deserialize)]
struct HttpRequestHeader {
    #[serde(default)]
    path: Vec<String>,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct WsSettings {
    #[serde(default)]
    path: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GrpcSettings {
    #[serde(default)]
    service_name: String,
    #[serde(default)]
    authority: String,
    #[serde(default)]
    multi_mode: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TlsSettings {
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default)]
    settings: Option<Fingerprinted>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fingerprinted {
    #[serde(default)]
    fingerprint: String,
    #[serde(default)]
    public_key: String,
    #[serde(default)]
    spider_x: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RealitySettings {
    #[serde(default)]
    server_names: Vec<String>,
    #[serde(default)]
    short_ids: Vec<String>,
    #[serde(default)]
    settings: Option<Fingerprinted>,
}

/// Renders the share link the panel's own "copy link" gives for a VLESS client.
///
/// Parameters appear in the panel's order (type, encryption, transport, security, flow), so
/// a link compares equal to the panel's; the same inputs always give the same link.
pub fn render_vless_link(
    inbound: &InboundLinkSettings,
    client_uuid: Uuid,
    flow: &str,
    email: &str,
) -> Result<String, LinkError> {
    let stream: StreamSettings =
        serde_json::from_value(inbound.stream_settings.clone()).map_err(|e| {
            LinkError::InvalidJson {
                field: "streamSettings",
                message: e.to_string(),
            }
        })?;
    if stream.network.is_empty() {
        return Err(LinkError::Missing("network"));
    }
    let host = link_host(&inbound.public_host)?;

    let mut params: Vec<(&str, String)> = vec![("type", stream.network.clone())];
    if let Some(encryption) = inbound.settings.get("encryption").and_then(Value::as_str) {
        params.push(("encryption", encryption.to_owned()));
    }
    push_transport_params(&stream, &mut params);
    push_security_params(&stream, flow, &mut params)?;

    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let fragment = encode_uri_component(&format!("{}-{}", inbound.remark, email));
    Ok(format!(
        "vless://{client_uuid}@{host}:{port}?{query}#{fragment}",
        port = inbound.port
    ))
}

/// The host as a link carries it: a name or IPv4 address as given, an IPv6 address in
/// brackets. Anything else is refused rather than rendered into a link that a VPN app
/// would read with another host, or not at all (a lone bracket, a space inside, a tab).
fn link_host(public_host: &str) -> Result<String, LinkError> {
    let invalid = || LinkError::InvalidHost(public_host.to_owned());
    let host = public_host.trim();
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if bracketed.is_some() || host.contains([':', '[', ']']) {
        let address = bracketed.unwrap_or(host);
        return match address.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(format!("[{address}]")),
            Err(_) => Err(invalid()),
        };
    }
    if host.is_empty() || url::Host::parse(host).is_err() {
        return Err(invalid());
    }
    Ok(host.to_owned())
}

fn header_host(headers: &serde_json::Map<String, Value>) -> Option<String> {
    let value = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v)?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn push_transport_params(stream: &StreamSettings, params: &mut Vec<(&str, String)>) {
    match stream.network.as_str() {
        "tcp" => {
            let header = stream.tcp_settings.as_ref().and_then(|t| t.header.as_ref());
            if let Some(header) = header.filter(|h| h.kind == "http") {
                let request = header.request.as_ref();
                let path = request.map(|r| r.path.join(",")).unwrap_or_default();
                params.push(("path", path));
                let host = request.and_then(|r| header_host(&r.headers));
                params.push(("host", host.unwrap_or_default()));
                params.push(("headerType", "http".to_owned()));
            }
        }
        "ws" => {
            let ws = stream.ws_settings.as_ref();
            params.push(("path", ws.map(|w| w.path.clone()).unwrap_or_default()));
            let host = ws.and_then(|w| {
                (!w.host.is_empty())
                    .then(|| w.host.clone())
                    .or_else(|| header_host(&w.headers))
            });
            params.push(("host", host.unwrap_or_default()));
        }
        "grpc" => {
            let grpc = stream.grpc_settings.as_ref();
            params.push((
                "serviceName",
                grpc.map(|g| g.service_name.clone()).unwrap_or_default(),
            ));
            params.push((
                "authority",
                grpc.map(|g| g.authority.clone()).unwrap_or_default(),
            ));
            if grpc.is_some_and(|g| g.multi_mode) {
                params.push(("mode", "multi".to_owned()));
            }
        }
        _ => {}
    }
}

fn push_security_params(
    stream: &StreamSettings,
    flow: &str,
    params: &mut Vec<(&str, String)>,
) -> Result<(), LinkError> {
    let flow_allowed = stream.network == "tcp" && !flow.is_empty();
    match stream.security.as_str() {
        "tls" => {
            let tls = stream
                .tls_settings
                .as_ref()
                .ok_or(LinkError::Missing("tlsSettings"))?;
            params.push(("security", "tls".to_owned()));
            let fingerprint = tls.settings.as_ref().map(|s| s.fingerprint.clone());
            params.push(("fp", fingerprint.unwrap_or_default()));
            params.push(("alpn", tls.alpn.join(",")));
            if !tls.server_name.is_empty() {
                params.push(("sni", tls.server_name.clone()));
            }
        }
        "reality" => {
            let reality = stream
                .reality_settings
                .as_ref()
                .ok_or(LinkError::Missing("realitySettings"))?;
            let keys = reality
                .settings
                .as_ref()
                .ok_or(LinkError::Missing("realitySettings.settings"))?;
            if keys.public_key.is_empty() {
                return Err(LinkError::Missing("realitySettings.settings.publicKey"));
            }
            params.push(("security", "reality".to_owned()));
            params.push(("pbk", keys.public_key.clone()));
            params.push(("fp", keys.fingerprint.clone()));
            // The panel writes `sni=` even when no server name is configured.
            let sni = reality.server_names.first().cloned().unwrap_or_default();
            params.push(("sni", sni));
            if let Some(sid) = reality.short_ids.first() {
                params.push(("sid", sid.clone()));
            }
            if !keys.spider_x.is_empty() {
                params.push(("spx", keys.spider_x.clone()));
            }
        }
        _ => {
            params.push(("security", "none".to_owned()));
            return Ok(());
        }
    }
    if flow_allowed {
        params.push(("flow", flow.to_owned()));
    }
    Ok(())
}

/// JavaScript's `encodeURIComponent`, which the panel applies to the link's fragment, and
/// which every VPN app decodes (remarks, deep-link parameters).
pub fn encode_uri_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric()
            || matches!(
                byte,
                b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            );
        if unreserved {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLIENT: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);

    fn inbound(stream: Value) -> InboundLinkSettings {
        InboundLinkSettings {
            public_host: "ams.example.com".into(),
            port: 443,
            remark: "Amsterdam".into(),
            settings: json!({"clients": [], "decryption": "none", "encryption": "none"}),
            stream_settings: stream,
        }
    }

    #[test]
    fn tcp_reality_link_matches_the_panels_copy_link() {
        let stream = json!({
            "network": "tcp", "security": "reality",
            "realitySettings": {
                "serverNames": ["www.google.com", "google.com"], "shortIds": ["6ba85179e30d4fc2", "ab"],
                "settings": {"publicKey": "Z84J2IelR9ch3k8VtlVhhs5ycBUlXA7wHBWcBrjqnAw", "fingerprint": "chrome", "spiderX": "/"}
            },
            "tcpSettings": {"header": {"type": "none"}}
        });
        let link = render_vless_link(&inbound(stream), CLIENT, "xtls-rprx-vision", "tg42-ams")
            .expect("renders");
        assert_eq!(
            link,
            "vless://11112222-3333-4444-5555-666677778888@ams.example.com:443?type=tcp&encryption=none\
             &security=reality&pbk=Z84J2IelR9ch3k8VtlVhhs5ycBUlXA7wHBWcBrjqnAw&fp=chrome\
             &sni=www.google.com&sid=6ba85179e30d4fc2&spx=%2F&flow=xtls-rprx-vision#Amsterdam-tg42-ams"
        );
    }

    #[test]
    fn tcp_tls_link_carries_sni_alpn_and_flow() {
        let stream = json!({
            "network": "tcp", "security": "tls",
            "tlsSettings": {"serverName": "vpn.example.org", "alpn": ["h2", "http/1.1"], "settings": {"fingerprint": "firefox"}}
        });
        let link = render_vless_link(&inbound(stream), CLIENT, "xtls-rprx-vision", "tg42-ams")
            .expect("renders");
        assert_eq!(
            link,
            "vless://11112222-3333-4444-5555-666677778888@ams.example.com:443?type=tcp&encryption=none\
             &security=tls&fp=firefox&alpn=h2%2Chttp%2F1.1&sni=vpn.example.org&flow=xtls-rprx-vision#Amsterdam-tg42-ams"
        );
    }

    #[test]
    fn ws_tls_link_has_path_and_host_and_no_flow() {
        let stream = json!({
            "network": "ws", "security": "tls",
            "wsSettings": {"path": "/ray path", "headers": {"Host": "cdn.example.org"}},
            "tlsSettings": {"serverName": "cdn.example.org", "alpn": [], "settings": {"fingerprint": "chrome"}}
        });
        let mut inbound = inbound(stream);
        inbound.remark = "Nederland 🇳🇱".into();
        let link =
            render_vless_link(&inbound, CLIENT, "xtls-rprx-vision", "tg42-ams").expect("renders");
        assert_eq!(
            link,
            "vless://11112222-3333-4444-5555-666677778888@ams.example.com:443?type=ws&encryption=none\
             &path=%2Fray+path&host=cdn.example.org&security=tls&fp=chrome&alpn=&sni=cdn.example.org\
             #Nederland%20%F0%9F%87%B3%F0%9F%87%B1-tg42-ams"
        );
    }

    #[test]
    fn same_inputs_give_the_same_link() {
        let stream = json!({"network": "tcp", "security": "none"});
        let a = render_vless_link(&inbound(stream.clone()), CLIENT, "", "e").expect("renders");
        let b = render_vless_link(&inbound(stream), CLIENT, "", "e").expect("renders");
        assert_eq!(a, b);
        assert!(a.contains("security=none"));
    }

    #[test]
    fn incomplete_settings_are_refused() {
        let reality_without_key =
            json!({"network": "tcp", "security": "reality", "realitySettings": {"settings": {}}});
        assert!(matches!(
            render_vless_link(&inbound(reality_without_key), CLIENT, "", "e"),
            Err(LinkError::Missing(_))
        ));
        assert!(matches!(
            render_vless_link(&inbound(json!({"security": "none"})), CLIENT, "", "e"),
            Err(LinkError::Missing("network"))
        ));
        let mut bad_host = inbound(json!({"network": "tcp"}));
        bad_host.public_host = "evil.com/#".into();
        assert!(matches!(
            render_vless_link(&bad_host, CLIENT, "", "e"),
            Err(LinkError::InvalidHost(_))
        ));
        assert!(InboundLinkSettings::from_panel_strings("h", 1, "r", "{", "{}").is_err());
    }

    /// Found by the `vless_link` fuzz target (`["::]` rendered as a link no URL parser
    /// reads); the others are its kin: a lone bracket, a name in brackets, a tab or space.
    #[test]
    fn hosts_a_link_cannot_carry_are_refused() {
        let render = |host: &str| {
            let mut inbound = inbound(json!({"network": "tcp"}));
            inbound.public_host = host.into();
            render_vless_link(&inbound, CLIENT, "", "e")
        };
        for host in [
            "[::1",
            "::1]",
            "[\"::]",
            "[[::1]]",
            "[ams.example.com]",
            "ams\texample.com",
            "a b",
            "",
        ] {
            assert!(
                matches!(render(host), Err(LinkError::InvalidHost(_))),
                "{host:?} gave {:?}",
                render(host)
            );
        }
        for (host, in_link) in [
            ("2001:db8::1", "@[2001:db8::1]:443?"),
            (" [2001:db8::1] ", "@[2001:db8::1]:443?"),
            ("203.0.113.7", "@203.0.113.7:443?"),
            ("ams.example.com", "@ams.example.com:443?"),
        ] {
            let link = render(host).expect("renders");
            assert!(link.contains(in_link), "{host:?} gave {link}");
        }
    }
}
