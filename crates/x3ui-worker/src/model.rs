//! The panel's data as keyledger handles it: [`ClientSpec`], the fields of a client keyledger
//! owns, and [`PanelClient`] and [`Inbound`], what the panel holds, in its own field names.
//! Fields we do not own are carried through untouched because the panel's updates replace a
//! client whole: dropping one would wipe it on the panel. Both wire shapes of an inbound are
//! accepted (JSON strings on v2.x–v3.0, objects from v3.1 on).

use std::collections::HashMap;

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

impl Inbound {
    /// The flow a client of this inbound gets when the location's configuration names
    /// none: [`FLOW_VISION`] on tcp with tls or reality, the only transports Vision runs
    /// on (and the only ones whose links carry a flow, as the panel's own); `""` otherwise.
    pub fn default_flow(&self) -> &'static str {
        let text = |key: &str| {
            self.stream_settings
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let tcp = text("network") == "tcp";
        let secured = matches!(text("security"), "tls" | "reality");
        if tcp && secured { FLOW_VISION } else { "" }
    }
}

/// Length of a `subId`, as the panel's own UI makes them.
pub const SUB_ID_LEN: usize = 16;

/// A fresh random `subId`: 16 characters of `[a-z0-9]`, like the panel's own, but drawn
/// from the operating system's generator (through UUID v4), so that nobody can guess the
/// id under which the panel's subscription server would hand out the client's credentials.
pub fn random_sub_id() -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(SUB_ID_LEN);
    while out.len() < SUB_ID_LEN {
        let bytes = Uuid::new_v4().into_bytes();
        // Bytes 6 and 8 carry the UUID's version and variant bits; the others are random.
        for (i, byte) in bytes.into_iter().enumerate() {
            // 252 = 7 × 36: rejecting the top four values keeps every character equally likely.
            if i == 6 || i == 8 || byte >= 252 || out.len() == SUB_ID_LEN {
                continue;
            }
            out.push(char::from(ALPHABET[usize::from(byte % 36)]));
        }
    }
    out
}

/// An inbound and its clients, read in one go.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundClients {
    pub inbound: Inbound,
    pub clients: Vec<PanelClient>,
    /// The inbound's traffic rows (`clientStats`) by lower-case email, when the read gave
    /// them: the panel's `list` does, `get/{id}` does not (`None` then). A map, since a
    /// pass looks up every client's row (10,000 on a big panel).
    pub traffic: Option<HashMap<String, ClientTraffic>>,
}

/// One client's traffic row (`clientStats` in the panel's `list`): the counters and the
/// panel's own `enable`, which its traffic job switches off when the quota is used up or
/// the expiry passed. Before v2.9.4 only this row shows that; the settings entry keeps
/// `"enable": true` (docs/panel.md "Traffic, limits and the panel's own decisions").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClientTraffic {
    #[serde(default)]
    pub email: String,
    #[serde(default = "yes")]
    pub enable: bool,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub up: i64,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub down: i64,
    /// The quota in bytes the job enforces; 0 = unlimited.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub total: i64,
    /// Unix milliseconds; 0 = never, negative = a duration from first use.
    #[serde(default, rename = "expiryTime", deserialize_with = "lenient_i64")]
    pub expiry_time_ms: i64,
    /// Unix milliseconds of the last traffic; 0 = never (or a panel before v2.6).
    #[serde(default, rename = "lastOnline", deserialize_with = "lenient_i64")]
    pub last_online_ms: i64,
}

impl ClientTraffic {
    /// Bytes moved both ways, as the job adds them up.
    pub fn used_bytes(&self) -> u64 {
        u64::try_from(self.up.max(0))
            .unwrap_or(0)
            .saturating_add(u64::try_from(self.down.max(0)).unwrap_or(0))
    }

    /// The panel's job disabled this client because its quota is used up: the row is off,
    /// there is a quota, and it is reached.
    pub fn quota_used_up(&self) -> bool {
        !self.enable && self.total > 0 && self.used_bytes() >= self.total as u64
    }

    /// The panel's job disabled this client because its expiry time passed (as of `now_ms`).
    pub fn expired_by_panel(&self, now_ms: i64) -> bool {
        !self.enable && self.expiry_time_ms > 0 && self.expiry_time_ms <= now_ms
    }
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

    /// The traffic row of `email`, when this read carried traffic rows.
    pub fn traffic_of(&self, email: &str) -> Option<&ClientTraffic> {
        self.traffic.as_ref()?.get(&email.to_ascii_lowercase())
    }

    /// Whether the client is really on: its settings entry *and* its traffic row (a panel
    /// before v2.9.4 disables a used-up client in the row only).
    pub fn effectively_enabled(&self, client: &PanelClient) -> bool {
        client.enable && self.traffic_of(&client.email).is_none_or(|row| row.enable)
    }

    /// Our inbound out of a panel's `list` answer (`obj`: every inbound, each with its
    /// `clientStats`), traffic rows included.
    pub fn from_list(all: Value, inbound_id: i64) -> Result<Self, String> {
        let inbounds: Vec<WireInbound> =
            serde_json::from_value(all).map_err(|e| format!("inbound list: {e}"))?;
        inbounds
            .into_iter()
            .find(|inbound| inbound.id == inbound_id)
            .ok_or_else(|| format!("inbound {inbound_id} is not in the panel's list"))?
            .into_parts()
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
    /// Filled by `list`, null on `get/{id}`.
    #[serde(default, rename = "clientStats")]
    client_stats: Option<Vec<ClientTraffic>>,
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
            traffic: self.client_stats.map(|rows| {
                rows.into_iter()
                    .map(|row| (row.email.to_ascii_lowercase(), row))
                    .collect()
            }),
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

    /// A `list` answer's `obj` as a v2.9 panel sends it: two inbounds, JSON-string
    /// settings, traffic rows in `clientStats` (the second client disabled by the job in its
    /// row only, as before v2.9.4).
    fn list_fixture() -> Value {
        let settings = serde_json::json!({"clients": [
            {"id": "b831381d-6324-4d53-ad4f-8cda48b30811", "email": "tg1-ams", "enable": true, "subId": "k3j5x0q8m1n2b4v6"},
            {"id": "0d7f0f6e-3a38-4f3c-9d0f-6c9d2e5a1b77", "email": "tg2-ams", "enable": true, "totalGB": 1000}
        ], "decryption": "none"});
        serde_json::json!([
            {"id": 3, "remark": "other", "port": 1234, "protocol": "vless", "settings": "{\"clients\":[]}",
             "streamSettings": "{}", "clientStats": []},
            {"id": 1, "remark": "Amsterdam", "port": 443, "protocol": "vless", "enable": true,
             "settings": settings.to_string(),
             "streamSettings": "{\"network\":\"tcp\",\"security\":\"reality\"}",
             "clientStats": [
                {"id": 1, "inboundId": 1, "enable": true, "email": "tg1-ams", "uuid": "b831381d-6324-4d53-ad4f-8cda48b30811",
                 "subId": "k3j5x0q8m1n2b4v6", "up": 10, "down": 20, "allTime": 30, "expiryTime": 0, "total": 0,
                 "reset": 0, "lastOnline": 1760000000123_i64},
                {"id": 2, "inboundId": 1, "enable": false, "email": "TG2-ams", "uuid": "0d7f0f6e-3a38-4f3c-9d0f-6c9d2e5a1b77",
                 "subId": "", "up": 600, "down": 500, "allTime": 1100, "expiryTime": 0, "total": 1000,
                 "reset": 0, "lastOnline": 0}
             ]}
        ])
    }

    #[test]
    fn client_stats_of_our_inbound_parse_from_a_list_answer() {
        let listed = InboundClients::from_list(list_fixture(), 1).expect("parses");
        assert_eq!(listed.clients.len(), 2);
        let rows = listed.traffic.as_ref().expect("list carries traffic rows");
        assert_eq!(rows.len(), 2);
        let first = listed.traffic_of("tg1-ams").expect("row by email");
        assert_eq!((first.up, first.down, first.total), (10, 20, 0));
        assert_eq!(first.last_online_ms, 1_760_000_000_123);
        assert!(!first.quota_used_up());
        // Matched case-insensitively, as the panel matches emails.
        let second = listed.traffic_of("tg2-ams").expect("row by email");
        assert_eq!(second.used_bytes(), 1100);
        assert!(second.quota_used_up());
        assert!(!second.expired_by_panel(i64::MAX), "no expiry time set");
        // The settings entry still says enabled; the row decides.
        let client = listed.by_email("tg2-ams").expect("client");
        assert!(client.enable);
        assert!(!listed.effectively_enabled(client));
        assert!(listed.effectively_enabled(listed.by_email("tg1-ams").expect("client")));
        assert_eq!(listed.inbound.default_flow(), FLOW_VISION);
        assert!(InboundClients::from_list(list_fixture(), 9).is_err());
    }

    #[test]
    fn a_get_answer_has_no_traffic_rows_and_odd_counters_read_as_zero() {
        let answer = serde_json::json!({"success": true, "msg": "", "obj": {
            "id": 1,
            "settings": serde_json::json!({"clients": [{"id": "x", "email": "a"}]}).to_string(),
            "streamSettings": serde_json::json!({"network": "ws", "security": "tls"}).to_string(),
            "clientStats": null
        }});
        let listed = InboundClients::from_answer(answer.to_string().as_bytes()).expect("parses");
        assert!(listed.traffic.is_none());
        assert!(listed.effectively_enabled(&listed.clients[0]));
        assert_eq!(listed.inbound.default_flow(), "", "no Vision over ws");
        let row: ClientTraffic = serde_json::from_value(serde_json::json!({
            "email": "a", "enable": false, "up": "12", "down": 1.5, "total": 10, "expiryTime": 1000
        }))
        .expect("parses");
        assert_eq!((row.up, row.down), (12, 0));
        assert!(row.expired_by_panel(1000));
        assert!(!row.expired_by_panel(999));
        assert!(
            row.quota_used_up(),
            "12 of 10 bytes used; a float counts as 0"
        );
    }

    #[test]
    fn sub_ids_are_sixteen_lowercase_alphanumerics_and_differ() {
        let ids: std::collections::HashSet<String> = (0..200).map(|_| random_sub_id()).collect();
        assert_eq!(ids.len(), 200);
        for id in &ids {
            assert_eq!(id.len(), SUB_ID_LEN);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "{id}"
            );
        }
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
