//! [`KeyEvent`]: everything that can happen to a key, with the names and payloads of
//! docs/events.md. The names are shared with the log (column `type`) and the broker (routing
//! keys), and stored events are never rewritten, so they are spelled in the serde renames and
//! once more in [`EventType::as_str`], with tests tying the two together, and a field added
//! later must still decode from events recorded without it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::{LocationId, UserId};

/// Everything that can happen to a key, exactly as docs/events.md names it. The serialised
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
    #[serde(rename = "key.depleted")]
    Depleted(KeyDepleted),
    #[serde(rename = "key.quota_changed")]
    QuotaChanged(KeyQuotaChanged),
}

/// The `type` of an event, as stored in the event store and used as the routing key on the
/// broker. [`EventType::as_str`] is the one place outside the serde renames of [`KeyEvent`],
/// [`crate::SubscriptionEvent`] and [`crate::UserAccessEvent`] where the names are spelled; unit tests tie them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Requested,
    Provisioned,
    RotationRequested,
    Rotated,
    RevocationRequested,
    Revoked,
    Expired,
    Renewed,
    ProvisioningFailed,
    DriftDetected,
    DriftRepaired,
    Depleted,
    QuotaChanged,
    SubscriptionIssued,
    SubscriptionLinkRotated,
    UserBlocked,
    UserUnblocked,
}

/// What kind of stream an event belongs to: a key's, a subscription's or a user's access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Key,
    Subscription,
    UserAccess,
}

impl EventType {
    /// Every event type, in the order of docs/events.md.
    pub const ALL: [EventType; 17] = [
        Self::Requested,
        Self::Provisioned,
        Self::RotationRequested,
        Self::Rotated,
        Self::RevocationRequested,
        Self::Revoked,
        Self::Expired,
        Self::Renewed,
        Self::ProvisioningFailed,
        Self::DriftDetected,
        Self::DriftRepaired,
        Self::Depleted,
        Self::QuotaChanged,
        Self::SubscriptionIssued,
        Self::SubscriptionLinkRotated,
        Self::UserBlocked,
        Self::UserUnblocked,
    ];

    /// The event types of key streams.
    pub fn key_types() -> impl Iterator<Item = EventType> {
        Self::ALL
            .into_iter()
            .filter(|kind| kind.stream_kind() == StreamKind::Key)
    }

    /// Which kind of stream events of this type are recorded in.
    pub const fn stream_kind(self) -> StreamKind {
        match self {
            Self::SubscriptionIssued | Self::SubscriptionLinkRotated => StreamKind::Subscription,
            Self::UserBlocked | Self::UserUnblocked => StreamKind::UserAccess,
            _ => StreamKind::Key,
        }
    }

    /// The name as stored and published, e.g. `key.rotated`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "key.requested",
            Self::Provisioned => "key.provisioned",
            Self::RotationRequested => "key.rotation_requested",
            Self::Rotated => "key.rotated",
            Self::RevocationRequested => "key.revocation_requested",
            Self::Revoked => "key.revoked",
            Self::Expired => "key.expired",
            Self::Renewed => "key.renewed",
            Self::ProvisioningFailed => "key.provisioning_failed",
            Self::DriftDetected => "key.drift_detected",
            Self::DriftRepaired => "key.drift_repaired",
            Self::Depleted => "key.depleted",
            Self::QuotaChanged => "key.quota_changed",
            Self::SubscriptionIssued => "subscription.issued",
            Self::SubscriptionLinkRotated => "subscription.link_rotated",
            Self::UserBlocked => "user.blocked",
            Self::UserUnblocked => "user.unblocked",
        }
    }

    /// The event type of that name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// A name that is not one of [`EventType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name).ok_or_else(|| UnknownEventType(name.to_owned()))
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// The panel disabled the client because its traffic limit was used up: the panel's
/// decision, learnt by the worker or the reconciler from the panel's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDepleted {
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

/// An admin or the service set a new traffic limit, and may have reset the usage counted so
/// far: the way a depleted key comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyQuotaChanged {
    /// The new limit; 0 means no limit.
    pub traffic_limit_bytes: u64,
    /// The panel's counters of the client are to be set back to zero.
    pub reset_usage: bool,
}

/// A stored `type`/`data` pair that is not a valid event of its stream's kind.
#[derive(Debug, thiserror::Error)]
#[error("event of type {event_type:?} cannot be decoded: {source}")]
pub struct EventDecodeError {
    pub event_type: String,
    #[source]
    pub source: serde_json::Error,
}

impl KeyEvent {
    /// The event's type.
    pub fn kind(&self) -> EventType {
        match self {
            Self::Requested(_) => EventType::Requested,
            Self::Provisioned(_) => EventType::Provisioned,
            Self::RotationRequested(_) => EventType::RotationRequested,
            Self::Rotated(_) => EventType::Rotated,
            Self::RevocationRequested(_) => EventType::RevocationRequested,
            Self::Revoked(_) => EventType::Revoked,
            Self::Expired(_) => EventType::Expired,
            Self::Renewed(_) => EventType::Renewed,
            Self::ProvisioningFailed(_) => EventType::ProvisioningFailed,
            Self::DriftDetected(_) => EventType::DriftDetected,
            Self::DriftRepaired(_) => EventType::DriftRepaired,
            Self::Depleted(_) => EventType::Depleted,
            Self::QuotaChanged(_) => EventType::QuotaChanged,
        }
    }

    /// The event's `type` as stored and published.
    pub fn event_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The event's `data` object.
    pub fn data(&self) -> Value {
        data_of(self)
    }

    /// Rebuilds an event from its stored `type` and `data`.
    pub fn from_parts(event_type: &str, data: &Value) -> Result<Self, EventDecodeError> {
        from_type_and_data(event_type, data)
    }
}

/// The `data` object of an event serialised as `{"type": …, "data": …}`: what the log's
/// `data` column holds for every kind of stream.
pub(crate) fn data_of(event: &impl Serialize) -> Value {
    let mut tagged = serde_json::to_value(event).unwrap_or(Value::Null);
    tagged
        .get_mut("data")
        .map(Value::take)
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// An event of any kind of stream rebuilt from its stored `type` and `data`.
pub(crate) fn from_type_and_data<E: serde::de::DeserializeOwned>(
    event_type: &str,
    data: &Value,
) -> Result<E, EventDecodeError> {
    let tagged = serde_json::json!({ "type": event_type, "data": data });
    serde_json::from_value(tagged).map_err(|source| EventDecodeError {
        event_type: event_type.to_owned(),
        source,
    })
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
        assert_eq!(event.event_type(), EventType::Requested.as_str());
        let data = event.data();
        assert_eq!(data["expires_at"], "2030-01-01T00:00:00Z");
        assert_eq!(data["email"], "tg7-ams");
        assert_eq!(
            KeyEvent::from_parts(EventType::Requested.as_str(), &data).expect("decodes"),
            event
        );
    }

    #[test]
    fn unit_events_have_an_empty_object_as_data() {
        let data = KeyEvent::Revoked(KeyRevoked {}).data();
        assert_eq!(data, serde_json::json!({}));
        assert!(KeyEvent::from_parts(EventType::Revoked.as_str(), &data).is_ok());
    }

    /// One event of every variant, in the order of [`EventType::ALL`].
    fn one_of_each() -> Vec<KeyEvent> {
        let at = datetime!(2030-01-01 00:00 UTC);
        vec![
            KeyEvent::Requested(KeyRequested {
                user_id: UserId::new(7).expect("valid"),
                location: LocationId::new("ams").expect("valid"),
                client_uuid: Uuid::nil(),
                email: "tg7-ams".into(),
                expires_at: None,
                traffic_limit_bytes: 0,
            }),
            KeyEvent::Provisioned(KeyProvisioned {
                client_uuid: Uuid::nil(),
                inbound_id: 1,
                link: None,
            }),
            KeyEvent::RotationRequested(KeyRotationRequested {
                old_client_uuid: Uuid::nil(),
                new_client_uuid: Uuid::from_u128(1),
            }),
            KeyEvent::Rotated(KeyRotated {
                client_uuid: Uuid::from_u128(1),
                link: None,
            }),
            KeyEvent::RevocationRequested(KeyRevocationRequested {
                reason: "lost".into(),
            }),
            KeyEvent::Revoked(KeyRevoked {}),
            KeyEvent::Expired(KeyExpired {}),
            KeyEvent::Renewed(KeyRenewed { expires_at: at }),
            KeyEvent::ProvisioningFailed(KeyProvisioningFailed {
                attempt: 1,
                error: "down".into(),
                retry_at: at,
            }),
            KeyEvent::DriftDetected(KeyDriftDetected {
                kind: DriftKind::MissingOnPanel,
                expected: json!({}),
                observed: Value::Null,
            }),
            KeyEvent::DriftRepaired(KeyDriftRepaired {
                kind: DriftKind::UnknownOnPanel,
            }),
            KeyEvent::Depleted(KeyDepleted {
                used_bytes: 1_100,
                limit_bytes: 1_000,
            }),
            KeyEvent::QuotaChanged(KeyQuotaChanged {
                traffic_limit_bytes: 5_000,
                reset_usage: true,
            }),
        ]
    }

    #[test]
    fn every_type_name_matches_its_variant() {
        let samples = one_of_each();
        assert_eq!(samples.len(), EventType::key_types().count());
        for (event, kind) in samples.into_iter().zip(EventType::key_types()) {
            assert_eq!(event.kind(), kind);
            let tagged = serde_json::to_value(&event).expect("serialises");
            assert_eq!(tagged["type"], kind.as_str(), "serde rename of {kind:?}");
            assert_eq!(event.event_type(), kind.as_str());
            assert_eq!(
                KeyEvent::from_parts(kind.as_str(), &event.data()).expect("decodes"),
                event
            );
        }
    }

    #[test]
    fn event_types_are_seventeen_distinct_names_that_parse_back() {
        let names: std::collections::HashSet<&str> =
            EventType::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(names.len(), 17);
        for kind in EventType::ALL {
            let prefix = match kind.stream_kind() {
                StreamKind::Key => "key.",
                StreamKind::Subscription => "subscription.",
                StreamKind::UserAccess => "user.",
            };
            assert!(kind.as_str().starts_with(prefix), "{kind}");
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.as_str().parse::<EventType>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(EventType::parse("key.nonsense"), None);
        assert!("key.#".parse::<EventType>().is_err());
    }

    #[test]
    fn acknowledgements_without_a_link_decode_and_a_link_is_written_only_when_known() {
        let old = json!({"client_uuid": Uuid::from_u128(9), "inbound_id": 1});
        let decoded =
            KeyEvent::from_parts(EventType::Provisioned.as_str(), &old).expect("old shape decodes");
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
            KeyEvent::from_parts(EventType::Rotated.as_str(), &rotated.data()).expect("decodes"),
            rotated
        );
    }

    #[test]
    fn malformed_data_is_refused() {
        let err = KeyEvent::from_parts(
            EventType::Rotated.as_str(),
            &serde_json::json!({"client_uuid": 5}),
        )
        .expect_err("bad uuid");
        assert_eq!(err.event_type, EventType::Rotated.as_str());
        assert!(KeyEvent::from_parts("key.nonsense", &serde_json::json!({})).is_err());
    }
}
