//! A `vless://` share link taken apart, so the sing-box and Clash formats say exactly what
//! the link says: every format is derived from the one link the panel confirmed, never from
//! a second reading of the panel's settings.

use std::collections::BTreeMap;

use uuid::Uuid;

/// The parts of a `vless://` link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlessLink {
    pub uuid: Uuid,
    pub host: String,
    pub port: u16,
    /// Query parameters, decoded.
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VlessError {
    #[error("not a vless:// URL: {0}")]
    Url(String),
    #[error("the user part is not a UUID")]
    Uuid,
    #[error("the link has no host or port")]
    Address,
}

impl VlessLink {
    pub fn parse(link: &str) -> Result<Self, VlessError> {
        let url = url::Url::parse(link).map_err(|e| VlessError::Url(e.to_string()))?;
        if url.scheme() != "vless" {
            return Err(VlessError::Url(format!("scheme {:?}", url.scheme())));
        }
        let uuid = Uuid::parse_str(url.username()).map_err(|_| VlessError::Uuid)?;
        let host = url.host_str().ok_or(VlessError::Address)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().ok_or(VlessError::Address)?;
        let params = url.query_pairs().into_owned().collect();
        Ok(Self {
            uuid,
            host,
            port,
            params,
        })
    }

    /// A parameter, or `None` when absent or empty.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn network(&self) -> &str {
        self.param("type").unwrap_or("tcp")
    }

    pub fn security(&self) -> &str {
        self.param("security").unwrap_or("none")
    }
}

/// `link` with its fragment (the name apps show) replaced by `remark`.
pub fn with_remark(link: &str, remark: &str) -> String {
    let base = link.split_once('#').map_or(link, |(base, _)| base);
    format!("{base}#{}", domain::encode_uri_component(remark))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reality_link_comes_apart_and_its_remark_is_replaced() {
        let link = "vless://11112222-3333-4444-5555-666677778888@ams.example.com:443?type=tcp&encryption=none\
             &security=reality&pbk=Z84J&fp=chrome&sni=www.google.com&sid=6ba8&spx=%2F&flow=xtls-rprx-vision#Amsterdam-tg42-ams";
        let parsed = VlessLink::parse(link).expect("parses");
        assert_eq!(parsed.port, 443);
        assert_eq!(parsed.host, "ams.example.com");
        assert_eq!(parsed.param("spx"), Some("/"));
        assert_eq!(parsed.security(), "reality");
        let renamed = with_remark(link, "Amsterdam 🇳🇱");
        assert!(
            renamed.ends_with("#Amsterdam%20%F0%9F%87%B3%F0%9F%87%B1"),
            "{renamed}"
        );
        assert!(VlessLink::parse("vmess://x@h:1").is_err());
    }
}
