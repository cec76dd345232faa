use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::{LocationId, UserId};

/// Everything that can happen to a key, exactly as CONTRACT.md §4 names it. The serialised
/// form is `{"type": "...", "data": {...}}`, and the event store keeps `type` and `data` in
/// columns of the same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum KeyEvent {
    #[serde(rename = "key.requested")]
    Requested(KeyRequested),
    #[serde(rename = "key.provisioned")]
    Provisioned(KeyProvisioned),
    #[serde(rename = "key.rotation_requested")]
    RotationRequested(KeyRotationRequested),
    #[serde(rename = "key.rotated")]
    Rotated(KeyRotated),
    #[serde(rename = "key.revocation_requested")]
    RevocationRequested(KeyRevocationRequested),
    #[serde(rename = "key.revoked")]
    Revoked(KeyRevoked),
    #[serde(rename = "key.expired")]
    Expired(KeyExpired),
    #[serde(rename = "key.renewed")]
    Renewed(KeyRenewed),
    #[serde(rename = "key.provisioning_failed")]
    ProvisioningFailed(KeyProvisioningFailed),
    #[serde(rename = "key.drift_detected")]
    DriftDetected(KeyDriftDetected),
    #[serde(rename = "key.drift_repaired")]
    DriftRepaired(KeyDriftRepaired),
}

/// Every event type, in the order of CONTRACT.md §4.
pub const EVENT_TYPES: [&str; 11] = [
    "key.requested",
    "key.provisioned",
    "key.rotation_requested",
    "key.rotated",
    "key.revocation_requested",
    "key.revoked",
    "key.expired",
    "key.renewed",
    "key.provisioning_failed",
    "key.drift_detected",
    "key.drift_repaired",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequested {
    pub user_id: UserId,
    pub location: LocationId,
    pub client_uuid: Uuid,
    pub email: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// 0 means no limit.
    pub traffic_limit_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProvisioned {
    pub client_uuid: Uuid,
    pub inbound_id: i64,
    /// The `vless://` link for `client_uuid`, rendered by the worker from the inbound's
    /// settings when it confirmed. Absent in events recorded before links were kept, and
    /// when the inbound's settings could not give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotationRequested {
    pub old_client_uuid: Uuid,
    pub new_client_uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    pub client_uuid: Uuid,
    /// The link for the new `client_uuid`; see [`KeyProvisioned::link`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevocationRequested {
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRevoked {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExpired {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRenewed {
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProvisioningFailed {
    pub attempt: u32,
    pub error: String,
    #[serde(with = "time::serde::rfc3339")]
    pub retry_at: OffsetDateTime,
}

/// How a panel differed from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    MissingOnPanel,
    SettingsDiffer,
    UnknownOnPanel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDriftDetected {
    pub kind: DriftKind,
    pub expected: Value,
    pub observed: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDriftRepaired {
    pub kind: DriftKind,
}

/// A stored `type`/`data` pair that is not a valid key event.
#[derive(Debug, thiserror::Error)]
#[error("event of type {event_type:?} cannot be decoded: {source}")]
pub struct EventDecodeError {
    pub event_type: String,
    #[source]
    pub source: serde_json::Error,
}

impl KeyEvent {
    /// The event's `type` as stored and published.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Requested(_) => EVENT_TYPES[0],
            Self::Provisioned(_) => EVENT_TYPES[1],
            Self::RotationRequested(_) => EVENT_TYPES[2],
            Self::Rotated(_) => EVENT_TYPES[3],
            Self::RevocationRequested(_) => EVENT_TYPES[4],
            Self::Revoked(_) => EVENT_TYPES[5],
            Self::Expired(_) => EVENT_TYPES[6],
            Self::Renewed(_) => EVENT_TYPES[7],
            Self::ProvisioningFailed(_) => EVENT_TYPES[8],
            Self::DriftDetected(_) => EVENT_TYPES[9],
            Self::DriftRepaired(_) => EVENT_TYPES[10],
        }
    }

    /// The event's `data` object.
    pub fn data(&self) -> Value {
        let mut tagged = serde_json::to_value(self).unwrap_or(Value::Null);
        tagged
            .get_mut("data")
            .map(Value::take)
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// Rebuilds an event from its stored `type` and `data`.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, EventDecodeError> {
        let tagged = serde_json::json!({ "type": event_type, "data": data });
        serde_json::from_value(tagged).map_err(|source| EventDecodeError {
            event_type: event_type.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn event_round_trips_through_type_and_data() {
        let event = KeyEvent::Requested(KeyRequested {
            user_id: UserId::new(7).expect("valid"),
            location: LocationId::new("ams").expect("valid"),
            client_uuid: Uuid::from_u128(1),
            email: "tg7-ams".into(),
            expires_at: Some(datetime!(2030-01-01 00:00 UTC)),
            traffic_limit_bytes: 0,
        });
        assert_eq!(event.event_type(), "key.requested");
        let data = event.data();
        assert_eq!(data["expires_at"], "2030-01-01T00:00:00Z");
        assert_eq!(data["email"], "tg7-ams");
        assert_eq!(
            KeyEvent::from_parts("key.requested", &data).expect("decodes"),
            event
        );
    }

    #[test]
    fn unit_events_have_an_empty_object_as_data() {
        let data = KeyEvent::Revoked(KeyRevoked {}).data();
        assert_eq!(data, serde_json::json!({}));
        assert!(KeyEvent::from_parts("key.revoked", &data).is_ok());
    }

    #[test]
    fn every_type_name_matches_its_variant() {
        let samples = [
            KeyEvent::Provisioned(KeyProvisioned {
                client_uuid: Uuid::nil(),
                inbound_id: 1,
                link: None,
            }),
            KeyEvent::Revoked(KeyRevoked {}),
            KeyEvent::DriftRepaired(KeyDriftRepaired {
                kind: DriftKind::UnknownOnPanel,
            }),
        ];
        for event in samples {
            let tagged = serde_json::to_value(&event).expect("serialises");
            assert_eq!(tagged["type"], event.event_type());
            assert!(EVENT_TYPES.contains(&event.event_type()));
        }
    }

    #[test]
    fn acknowledgements_without_a_link_decode_and_a_link_is_written_only_when_known() {
        let old = json!({"client_uuid": Uuid::from_u128(9), "inbound_id": 1});
        let decoded = KeyEvent::from_parts("key.provisioned", &old).expect("old shape decodes");
        assert_eq!(
            decoded.data(),
            old,
            "no link key written when there is none"
        );
        let rotated = KeyEvent::Rotated(KeyRotated {
            client_uuid: Uuid::from_u128(9),
            link: Some("vless://x".into()),
        });
        assert_eq!(rotated.data()["link"], "vless://x");
        assert_eq!(
            KeyEvent::from_parts("key.rotated", &rotated.data()).expect("decodes"),
            rotated
        );
    }

    #[test]
    fn malformed_data_is_refused() {
        let err = KeyEvent::from_parts("key.rotated", &serde_json::json!({"client_uuid": 5}))
            .expect_err("bad uuid");
        assert_eq!(err.event_type, "key.rotated");
        assert!(KeyEvent::from_parts("key.nonsense", &serde_json::json!({})).is_err());
    }
}
