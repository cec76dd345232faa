//! The panel's data as keyledger handles it: [`ClientSpec`], the fields of a client keyledger
//! owns, and [`PanelClient`] and [`Inbound`], what the panel holds, in its own field names.
//! Fields we do not own are carried through untouched because the panel's updates replace a
//! client whole: dropping one would wipe it on the panel. Both wire shapes of an inbound are
//! accepted (JSON strings on v2.x–v3.0, objects from v3.1 on).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The flow value the panel accepts for tcp + tls/reality inbounds.
pub const FLOW_VISION: &str = "xtls-rprx-vision";

/// What we want one panel client to be: the fields keyledger owns. Everything else on the
/// panel's client (traffic counters, timestamps, fields of newer panels) is kept as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    pub id: Uuid,
    pub email: String,
    pub enable: bool,
    /// `""` or [`FLOW_VISION`].
    pub flow: String,
    pub limit_ip: i64,
    /// Quota in bytes (the panel calls it `totalGB`); 0 = unlimited.
    pub total_bytes: i64,
    /// Unix milliseconds; 0 = never.
    pub expiry_time_ms: i64,
    pub tg_id: i64,
    /// `None` leaves whatever the panel has (it fills one in on v3.1+).
    pub sub_id: Option<String>,
    pub comment: String,
}

impl ClientSpec {
    /// An enabled client with no limits.
    pub fn new(id: Uuid, email: impl Into<String>) -> Self {
        Self {
            id,
            email: email.into(),
            enable: true,
            flow: String::new(),
            limit_ip: 0,
            total_bytes: 0,
            expiry_time_ms: 0,
            tg_id: 0,
            sub_id: None,
            comment: String::new(),
        }
    }

    /// The fields where `observed` differs from this spec, for logs and drift events.
    pub fn differences(&self, observed: &PanelClient) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |same: bool, name| {
            if !same {
                out.push(name);
            }
        };
        check(observed.id.eq_ignore_ascii_case(&self.id.to_string()), "id");
        check(observed.email.eq_ignore_ascii_case(&self.email), "email");
        check(observed.enable == self.enable, "enable");
        check(observed.flow == self.flow, "flow");
        check(observed.limit_ip == self.limit_ip, "limitIp");
        check(observed.total_bytes == self.total_bytes, "totalGB");
        check(observed.expiry_time_ms == self.expiry_time_ms, "expiryTime");
        check(observed.tg_id == self.tg_id, "tgId");
        check(
            self.sub_id.as_ref().is_none_or(|s| *s == observed.sub_id),
            "subId",
        );
        check(observed.comment == self.comment, "comment");
        out
    }

    pub fn matches(&self, observed: &PanelClient) -> bool {
        self.differences(observed).is_empty()
    }

    /// The whole client to send: `base`'s fields (kept on a full replace) overlaid with ours.
    pub fn apply_to(&self, base: Option<&PanelClient>) -> PanelClient {
        let mut client = base.cloned().unwrap_or_default();
        client.id = self.id.to_string();
        client.email.clone_from(&self.email);
        client.enable = self.enable;
        client.flow.clone_from(&self.flow);
        client.limit_ip = self.limit_ip;
        client.total_bytes = self.total_bytes;
        client.expiry_time_ms = self.expiry_time_ms;
        client.tg_id = self.tg_id;
        if let Some(sub_id) = &self.sub_id {
            client.sub_id.clone_from(sub_id);
        }
        client.comment.clone_from(&self.comment);
        client
    }
}

/// One client as the panel holds it, in the panel's own field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PanelClient {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub email: String,
    #[serde(default = "yes")]
    pub enable: bool,
    #[serde(default)]
    pub flow: String,
    #[serde(default, rename = "limitIp")]
    pub limit_ip: i64,
    #[serde(default, rename = "totalGB")]
    pub total_bytes: i64,
    #[serde(default, rename = "expiryTime")]
    pub expiry_time_ms: i64,
    #[serde(default, rename = "tgId", deserialize_with = "lenient_i64")]
    pub tg_id: i64,
    #[serde(default, rename = "subId")]
    pub sub_id: String,
    #[serde(default)]
    pub comment: String,
    /// Fields we do not own (`reset`, `created_at`, newer panels' additions). Kept so a
    /// full-replace update sends them back instead of wiping them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// `tgId` is an integer since v2.3, but old data may hold `""` or a numeric string.
fn lenient_i64<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    Ok(match Value::deserialize(de)? {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

/// The parts of an inbound a link and a reconcile need.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub id: i64,
    pub remark: String,
    pub protocol: String,
    pub port: u16,
    pub enable: bool,
    /// The inbound's `settings` without its `clients` (e.g. `decryption`, `encryption`).
    pub settings: Map<String, Value>,
    /// `streamSettings` parsed: network, security, reality/tls settings for links.
    pub stream_settings: Value,
}

/// An inbound and its clients, read in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundClients {
    pub inbound: Inbound,
    pub clients: Vec<PanelClient>,
}

impl InboundClients {
    /// An inbound from a panel's whole `get/{id}` answer (the `{success, msg, obj}`
    /// envelope), by the same steps a list call takes. Public so that benchmarks can
    /// measure the parsing alone, as the baseline of a reconcile pass.
    pub fn from_answer(body: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Answer {
            success: bool,
            #[serde(default)]
            obj: Value,
        }
        let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !answer.success {
            return Err("the panel answered success:false".into());
        }
        let wire: WireInbound = serde_json::from_value(answer.obj).map_err(|e| e.to_string())?;
        wire.into_parts()
    }

    pub fn by_email(&self, email: &str) -> Option<&PanelClient> {
        self.clients
            .iter()
            .find(|c| c.email.eq_ignore_ascii_case(email))
    }
}

/// How the panel's inbound object looks on the wire. `settings` and `streamSettings` are
/// JSON strings on v2.x–v3.0 and plain objects from v3.1 on; both are accepted.
#[derive(Debug, Deserialize)]
pub(crate) struct WireInbound {
    id: i64,
    #[serde(default)]
    remark: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    port: u16,
    #[serde(default = "yes")]
    enable: bool,
    #[serde(default)]
    settings: Value,
    #[serde(default, rename = "streamSettings")]
    stream_settings: Value,
}

impl WireInbound {
    pub(crate) fn into_parts(self) -> Result<InboundClients, String> {
        let mut settings = match embedded_json(self.settings)? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => return Err(format!("inbound settings is not an object: {other}")),
        };
        let clients = match settings.remove("clients") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => serde_json::from_value(list)
                .map_err(|e| format!("inbound settings.clients: {e}"))?,
        };
        Ok(InboundClients {
            inbound: Inbound {
                id: self.id,
                remark: self.remark,
                protocol: self.protocol,
                port: self.port,
                enable: self.enable,
                settings,
                stream_settings: embedded_json(self.stream_settings)?,
            },
            clients,
        })
    }
}

fn embedded_json(value: Value) -> Result<Value, String> {
    match value {
        Value::String(text) if text.trim().is_empty() => Ok(Value::Null),
        Value::String(text) => {
            serde_json::from_str(&text).map_err(|e| format!("embedded JSON does not parse: {e}"))
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip_and_tg_id_accepts_old_strings() {
        let raw = serde_json::json!({
            "id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "a", "enable": false,
            "tgId": "", "reset": 3, "created_at": 17
        });
        let client: PanelClient = serde_json::from_value(raw).expect("parses");
        assert_eq!(client.tg_id, 0);
        assert!(!client.enable);
        let back = serde_json::to_value(&client).expect("serialises");
        assert_eq!(back["reset"], 3);
        assert_eq!(back["created_at"], 17);
    }

    #[test]
    fn spec_overlay_keeps_foreign_fields_and_compares_owned_ones() {
        let id = Uuid::new_v4();
        let mut observed = ClientSpec::new(id, "Tg1-ams").apply_to(None);
        observed.extra.insert("reset".into(), 5.into());
        let mut spec = ClientSpec::new(id, "tg1-ams");
        assert!(spec.matches(&observed), "email compares case-insensitively");
        spec.enable = false;
        assert_eq!(spec.differences(&observed), vec!["enable"]);
        let next = spec.apply_to(Some(&observed));
        assert_eq!(next.extra["reset"], 5);
        assert!(spec.matches(&next));
    }
}
