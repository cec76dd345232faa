//! A user's subscription: one per Telegram user, over every location they hold a key at. Its
//! stream records only when it was issued and when its link was replaced (a new
//! `generation`); the URL's token is derived from the subscription id and the generation
//! with a secret the log never sees, so the log can be published to auditors without handing
//! out working URLs, and the same subscription shows the same URL until its user asks for a
//! new one.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::decide::MAX_REASON_CHARS;
use crate::error::DomainError;
use crate::event::{EventDecodeError, EventType, data_of, from_type_and_data};
use crate::identity::UserId;

/// Namespace of the name-based (v5) subscription ids; fixed for the life of the system, like
/// the key ids' own.
const SUBSCRIPTION_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0002);

/// Bytes of the HMAC kept in a token: 144 bits, 24 base64url characters.
const TOKEN_BYTES: usize = 18;

/// The id of a user's subscription stream, derived from the user id so that there is one
/// per user without a lookup, and two concurrent first requests name the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubscriptionId(Uuid);

impl SubscriptionId {
    pub fn for_user(user_id: UserId) -> Self {
        Self(Uuid::new_v5(
            &SUBSCRIPTION_ID_NAMESPACE,
            format!("subscription:{}", user_id.get()).as_bytes(),
        ))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl std::fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Everything that can happen to a subscription, as docs/events.md names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SubscriptionEvent {
    #[serde(rename = "subscription.issued")]
    Issued(SubscriptionIssued),
    #[serde(rename = "subscription.link_rotated")]
    LinkRotated(SubscriptionLinkRotated),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionIssued {
    pub user_id: UserId,
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionLinkRotated {
    pub generation: u32,
    pub reason: String,
}

impl SubscriptionEvent {
    pub fn kind(&self) -> EventType {
        match self {
            Self::Issued(_) => EventType::SubscriptionIssued,
            Self::LinkRotated(_) => EventType::SubscriptionLinkRotated,
        }
    }

    pub fn event_type(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The event's `data` object.
    pub fn data(&self) -> serde_json::Value {
        data_of(self)
    }

    /// Rebuilds an event from its stored `type` and `data`.
    pub fn from_parts(
        event_type: &str,
        data: &serde_json::Value,
    ) -> Result<Self, EventDecodeError> {
        from_type_and_data(event_type, data)
    }
}

/// A request to change a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionCommand {
    /// Create the user's subscription; answered with nothing when it exists.
    Issue { user_id: UserId },
    /// Replace the link: the old URL stops working (the caller rotates every key too).
    RotateLink { reason: String },
}

/// A subscription's state, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    pub version: u32,
    pub user_id: Option<UserId>,
    /// 0 before the subscription is issued, then 1, 2, …
    pub generation: u32,
}

/// What a command means for a subscription: the events to record, or why nothing may happen.
pub fn decide_subscription(
    state: &SubscriptionState,
    command: &SubscriptionCommand,
) -> Result<Vec<SubscriptionEvent>, DomainError> {
    match command {
        SubscriptionCommand::Issue { user_id } => match state.user_id {
            Some(holder) if holder != *user_id => Err(DomainError::IdentityMismatch),
            Some(_) => Ok(vec![]),
            None => Ok(vec![SubscriptionEvent::Issued(SubscriptionIssued {
                user_id: *user_id,
                generation: 1,
            })]),
        },
        SubscriptionCommand::RotateLink { reason } => {
            if state.user_id.is_none() {
                return Err(DomainError::SubscriptionNotFound);
            }
            let reason = reason.trim();
            if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
                return Err(DomainError::InvalidReason {
                    max: MAX_REASON_CHARS,
                });
            }
            Ok(vec![SubscriptionEvent::LinkRotated(
                SubscriptionLinkRotated {
                    generation: state.generation + 1,
                    reason: reason.to_owned(),
                },
            )])
        }
    }
}

/// Folds one recorded event into the subscription's state.
pub fn evolve_subscription(
    mut state: SubscriptionState,
    event: &SubscriptionEvent,
) -> SubscriptionState {
    state.version += 1;
    match event {
        SubscriptionEvent::Issued(e) => {
            state.user_id = Some(e.user_id);
            state.generation = e.generation;
        }
        SubscriptionEvent::LinkRotated(e) => state.generation = e.generation,
    }
    state
}

/// The secret part of a subscription URL: base64url (no padding) of the first 144 bits of
/// HMAC-SHA256(secret, "keyledger-subscription-v1" ‖ subscription id ‖ generation). Anyone
/// with the log but not the secret cannot make one; the service recomputes it at will.
pub fn subscription_token(secret: &[u8], id: SubscriptionId, generation: u32) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"keyledger-subscription-v1");
    mac.update(id.as_uuid().as_bytes());
    mac.update(&generation.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..TOKEN_BYTES])
}

/// Shortest `KEYLEDGER_SUB_SECRET` accepted, in bytes.
pub const MIN_SUBSCRIPTION_SECRET_BYTES: usize = 32;

/// Why subscription URLs cannot be made with the given settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionUrlError {
    #[error("the secret needs at least {MIN_SUBSCRIPTION_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error(
        "the public URL must be http or https with a host, without credentials, query or fragment"
    )]
    InvalidBase,
}

/// Makes users' subscription URLs: `<public base>/s/<token>`. Every role that shows a URL
/// (the bot, the API) and the one that answers it (sub) hold the same base and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SubscriptionUrls {
    base: url::Url,
    secret: crate::Secret,
}

impl std::fmt::Debug for SubscriptionUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionUrls")
            .field("base", &self.base.as_str())
            .field("secret", &self.secret)
            .finish()
    }
}

impl SubscriptionUrls {
    pub fn new(base: url::Url, secret: crate::Secret) -> Result<Self, SubscriptionUrlError> {
        if secret.expose().len() < MIN_SUBSCRIPTION_SECRET_BYTES {
            return Err(SubscriptionUrlError::ShortSecret);
        }
        let plain = matches!(base.scheme(), "http" | "https")
            && base.host_str().is_some()
            && base.username().is_empty()
            && base.password().is_none()
            && base.query().is_none()
            && base.fragment().is_none();
        if !plain {
            return Err(SubscriptionUrlError::InvalidBase);
        }
        Ok(Self { base, secret })
    }

    /// The public base URL, as configured.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    pub fn token(&self, id: SubscriptionId, generation: u32) -> String {
        subscription_token(self.secret.expose().as_bytes(), id, generation)
    }

    /// The URL the user's app follows for this generation of the subscription.
    pub fn url(&self, id: SubscriptionId, generation: u32) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        format!("{base}/s/{}", self.token(id, generation))
    }
}

/// Whether `text` has the shape of a token (24 base64url characters), checked before any
/// lookup so odd input never reaches the database.
pub fn is_token_shaped(text: &str) -> bool {
    text.len() == 24
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(raw: i64) -> UserId {
        UserId::new(raw).expect("valid user id")
    }

    #[test]
    fn one_subscription_per_user_and_issue_is_idempotent() {
        assert_eq!(
            SubscriptionId::for_user(user(7)),
            SubscriptionId::for_user(user(7))
        );
        assert_ne!(
            SubscriptionId::for_user(user(7)),
            SubscriptionId::for_user(user(8))
        );
        let issue = SubscriptionCommand::Issue { user_id: user(7) };
        let events = decide_subscription(&SubscriptionState::default(), &issue).expect("issues");
        let state = events
            .iter()
            .fold(SubscriptionState::default(), evolve_subscription);
        assert_eq!(state.generation, 1);
        assert_eq!(decide_subscription(&state, &issue), Ok(vec![]));
        assert_eq!(
            decide_subscription(&state, &SubscriptionCommand::Issue { user_id: user(8) }),
            Err(DomainError::IdentityMismatch)
        );
    }

    #[test]
    fn rotating_the_link_moves_to_the_next_generation_and_needs_a_reason() {
        let rotate = SubscriptionCommand::RotateLink {
            reason: "user asked".into(),
        };
        assert_eq!(
            decide_subscription(&SubscriptionState::default(), &rotate),
            Err(DomainError::SubscriptionNotFound)
        );
        let issued = evolve_subscription(
            SubscriptionState::default(),
            &SubscriptionEvent::Issued(SubscriptionIssued {
                user_id: user(7),
                generation: 1,
            }),
        );
        let events = decide_subscription(&issued, &rotate).expect("rotates");
        let rotated = events.iter().fold(issued.clone(), evolve_subscription);
        assert_eq!(rotated.generation, 2);
        assert_eq!(rotated.version, 2);
        let blank = SubscriptionCommand::RotateLink { reason: " ".into() };
        assert!(matches!(
            decide_subscription(&issued, &blank),
            Err(DomainError::InvalidReason { .. })
        ));
    }

    #[test]
    fn tokens_are_stable_per_generation_and_secret_and_url_safe() {
        let id = SubscriptionId::for_user(user(7));
        let secret = [7u8; 32];
        let token = subscription_token(&secret, id, 1);
        assert_eq!(token, subscription_token(&secret, id, 1));
        assert!(is_token_shaped(&token), "{token}");
        assert_ne!(token, subscription_token(&secret, id, 2));
        assert_ne!(token, subscription_token(&[8u8; 32], id, 1));
        assert_ne!(
            token,
            subscription_token(&secret, SubscriptionId::for_user(user(8)), 1)
        );
        assert!(!is_token_shaped("short"));
        assert!(!is_token_shaped("aaaaaaaaaaaaaaaaaaaaaa/="));
    }

    #[test]
    fn urls_join_the_base_and_the_token_and_refuse_weak_settings() {
        let id = SubscriptionId::for_user(user(7));
        let secret = crate::Secret::new("s".repeat(32));
        let base = url::Url::parse("https://sub.example.com/").expect("url");
        let urls = SubscriptionUrls::new(base.clone(), secret.clone()).expect("valid");
        let url = urls.url(id, 3);
        assert_eq!(
            url,
            format!("https://sub.example.com/s/{}", urls.token(id, 3))
        );
        assert!(!format!("{urls:?}").contains(&"s".repeat(32)));
        assert_eq!(
            SubscriptionUrls::new(base, crate::Secret::new("short")),
            Err(SubscriptionUrlError::ShortSecret)
        );
        let with_password = url::Url::parse("https://a:b@sub.example.com").expect("url");
        assert_eq!(
            SubscriptionUrls::new(with_password, secret),
            Err(SubscriptionUrlError::InvalidBase)
        );
    }

    #[test]
    fn events_round_trip_through_type_and_data() {
        for event in [
            SubscriptionEvent::Issued(SubscriptionIssued {
                user_id: user(7),
                generation: 1,
            }),
            SubscriptionEvent::LinkRotated(SubscriptionLinkRotated {
                generation: 2,
                reason: "leaked".into(),
            }),
        ] {
            let tagged = serde_json::to_value(&event).expect("serialises");
            assert_eq!(tagged["type"], event.kind().as_str());
            assert_eq!(
                SubscriptionEvent::from_parts(event.event_type(), &event.data()).expect("decodes"),
                event
            );
        }
    }
}
