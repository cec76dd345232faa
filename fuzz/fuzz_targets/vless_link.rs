//! The `vless://` link is built from what the panel and the configuration say (the
//! inbound's JSON strings, its remark, the public host, the client's email), and a user's
//! VPN app parses it. With any such inputs, built either as raw strings or as stream
//! settings of every transport and security the renderer knows, nothing may panic, and a
//! link that renders must be one URL an app reads back as given: scheme `vless`, the
//! client's UUID as the user, the port, no path, the `type` first, no raw whitespace or
//! control characters, and a fragment that decodes to `<remark>-<email>`.

#![no_main]

use arbitrary::Arbitrary;
use domain::{InboundLinkSettings, render_vless_link};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use uuid::Uuid;

#[derive(Debug, Arbitrary)]
struct Input {
    public_host: String,
    port: u16,
    remark: String,
    email: String,
    flow: Flow,
    client: u128,
    inbound: InboundJson,
}

#[derive(Debug, Arbitrary)]
enum Flow {
    None,
    Vision,
    Other(String),
}

/// The inbound's `settings` and `streamSettings` as the panel hands them over.
#[derive(Debug, Arbitrary)]
enum InboundJson {
    Raw {
        settings: String,
        stream_settings: String,
    },
    Built {
        encryption: Option<String>,
        stream: Box<Stream>,
    },
}

#[derive(Debug, Arbitrary)]
struct Stream {
    network: Network,
    security: Security,
    tcp_http: Option<TcpHttp>,
    ws: Option<Ws>,
    grpc: Option<Grpc>,
    tls: Option<Tls>,
    reality: Option<Reality>,
}

#[derive(Debug, Arbitrary)]
enum Network {
    Tcp,
    Ws,
    Grpc,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum Security {
    None,
    Tls,
    Reality,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct TcpHttp {
    paths: Vec<String>,
    host: HostHeader,
}

/// A `Host` header as the panel stores it: one string or a list of them, under any case.
#[derive(Debug, Arbitrary)]
enum HostHeader {
    Absent,
    One { name: String, value: String },
    Many { name: String, values: Vec<String> },
}

#[derive(Debug, Arbitrary)]
struct Ws {
    path: String,
    host: String,
    header: HostHeader,
}

#[derive(Debug, Arbitrary)]
struct Grpc {
    service_name: String,
    authority: String,
    multi_mode: bool,
}

#[derive(Debug, Arbitrary)]
struct Tls {
    server_name: String,
    alpn: Vec<String>,
    fingerprint: Option<String>,
}

#[derive(Debug, Arbitrary)]
struct Reality {
    server_names: Vec<String>,
    short_ids: Vec<String>,
    keys: Option<RealityKeys>,
}

#[derive(Debug, Arbitrary)]
struct RealityKeys {
    public_key: String,
    fingerprint: String,
    spider_x: String,
}

fuzz_target!(|input: Input| {
    let (settings, stream_settings) = match &input.inbound {
        InboundJson::Raw {
            settings,
            stream_settings,
        } => (settings.clone(), stream_settings.clone()),
        InboundJson::Built { encryption, stream } => {
            let mut settings = json!({"clients": [], "decryption": "none"});
            if let Some(encryption) = encryption {
                settings["encryption"] = json!(encryption);
            }
            (settings.to_string(), stream.to_json().to_string())
        }
    };
    let Ok(inbound) = InboundLinkSettings::from_panel_strings(
        &input.public_host,
        input.port,
        &input.remark,
        &settings,
        &stream_settings,
    ) else {
        return;
    };
    let flow = match &input.flow {
        Flow::None => "",
        Flow::Vision => "xtls-rprx-vision",
        Flow::Other(flow) => flow.as_str(),
    };
    let client = Uuid::from_u128(input.client);
    let Ok(link) = render_vless_link(&inbound, client, flow, &input.email) else {
        return;
    };
    check_link(&link, &inbound, client, &input.email);
});

fn check_link(link: &str, inbound: &InboundLinkSettings, client: Uuid, email: &str) {
    assert!(
        !link.chars().any(|c| c.is_whitespace() || c.is_control()),
        "raw whitespace or control character in {link:?}"
    );
    let url = url::Url::parse(link).unwrap_or_else(|e| panic!("{link:?} does not parse: {e}"));
    assert_eq!(url.scheme(), "vless", "{link:?}");
    assert_eq!(url.username(), client.to_string(), "{link:?}");
    assert!(url.password().is_none(), "{link:?}");
    assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{link:?}");
    assert_eq!(url.port(), Some(inbound.port), "{link:?}");
    assert_eq!(url.path(), "", "{link:?}");
    let first = url.query_pairs().next().map(|(k, _)| k.into_owned());
    assert_eq!(first.as_deref(), Some("type"), "{link:?}");
    let fragment = url.fragment().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(fragment)
        .decode_utf8()
        .unwrap_or_else(|e| panic!("fragment of {link:?} is not UTF-8: {e}"));
    assert_eq!(decoded, format!("{}-{email}", inbound.remark), "{link:?}");
}

impl Stream {
    fn to_json(&self) -> Value {
        let mut stream = Map::new();
        let network = match &self.network {
            Network::Tcp => "tcp",
            Network::Ws => "ws",
            Network::Grpc => "grpc",
            Network::Other(other) => other.as_str(),
        };
        stream.insert("network".into(), json!(network));
        let security = match &self.security {
            Security::None => "none",
            Security::Tls => "tls",
            Security::Reality => "reality",
            Security::Other(other) => other.as_str(),
        };
        stream.insert("security".into(), json!(security));
        if let Some(http) = &self.tcp_http {
            let request = json!({"path": http.paths, "headers": http.host.to_json()});
            stream.insert(
                "tcpSettings".into(),
                json!({"header": {"type": "http", "request": request}}),
            );
        }
        if let Some(ws) = &self.ws {
            stream.insert(
                "wsSettings".into(),
                json!({"path": ws.path, "host": ws.host, "headers": ws.header.to_json()}),
            );
        }
        if let Some(grpc) = &self.grpc {
            stream.insert(
                "grpcSettings".into(),
                json!({"serviceName": grpc.service_name, "authority": grpc.authority,
                       "multiMode": grpc.multi_mode}),
            );
        }
        if let Some(tls) = &self.tls {
            let mut value = json!({"serverName": tls.server_name, "alpn": tls.alpn});
            if let Some(fingerprint) = &tls.fingerprint {
                value["settings"] = json!({"fingerprint": fingerprint});
            }
            stream.insert("tlsSettings".into(), value);
        }
        if let Some(reality) = &self.reality {
            let mut value =
                json!({"serverNames": reality.server_names, "shortIds": reality.short_ids});
            if let Some(keys) = &reality.keys {
                value["settings"] = json!({"publicKey": keys.public_key,
                    "fingerprint": keys.fingerprint, "spiderX": keys.spider_x});
            }
            stream.insert("realitySettings".into(), value);
        }
        Value::Object(stream)
    }
}

impl HostHeader {
    fn to_json(&self) -> Value {
        match self {
            Self::Absent => json!({}),
            Self::One { name, value } => json!({ name: value }),
            Self::Many { name, values } => json!({ name: values }),
        }
    }
}
