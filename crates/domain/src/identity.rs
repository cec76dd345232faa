//! Identifiers: Telegram user ids, location ids, key ids and the panel client's email. They are
//! validated when made, so the rest of the code can trust them. A key id is derived from the
//! user and the location (UUID v5), not drawn at random, so a repeated request names the same
//! stream and "one key per user and location" follows from the data layout (docs/event-log.md,
//! "Key identity").

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace of keyledger's name-based (v5) key ids. Changing it would give every existing
/// user a second key, so it is fixed for the life of the system.
const KEY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0001);

/// A Telegram user id. Telegram ids are positive and fit in 52 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct UserId(i64);

/// Why a value cannot be an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("user id must be a positive Telegram user id, got {0}")]
    InvalidUserId(i64),
    #[error(
        "location id {0:?} must be 1 to 32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
    )]
    InvalidLocationId(String),
}

impl UserId {
    pub fn new(raw: i64) -> Result<Self, IdentityError> {
        if raw <= 0 || raw > (1_i64 << 52) {
            return Err(IdentityError::InvalidUserId(raw));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for UserId {
    type Error = IdentityError;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        Self::new(raw)
    }
}

impl From<UserId> for i64 {
    fn from(id: UserId) -> i64 {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A location as users see it: its id and the name shown to them (e.g. "Amsterdam 🇳🇱").
/// The API and the bot both list locations by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub id: LocationId,
    pub name: String,
}

/// A location's short, stable id (one 3x-ui panel). It is part of every key's identity and
/// of the panel client's email, so it is restricted to characters that are safe in both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocationId(String);

impl LocationId {
    pub fn new(raw: impl Into<String>) -> Result<Self, IdentityError> {
        let raw = raw.into();
        let well_formed = !raw.is_empty()
            && raw.len() <= 32
            && raw.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && raw
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed {
            return Err(IdentityError::InvalidLocationId(raw));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LocationId {
    type Error = IdentityError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::new(raw)
    }
}

impl From<LocationId> for String {
    fn from(id: LocationId) -> String {
        id.0
    }
}

impl fmt::Display for LocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a key, which is also the id of its event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

impl KeyId {
    /// The key id of a user's key at a location.
    ///
    /// It is derived (UUID v5), not random, so that the same request arriving twice — a
    /// double-tapped button, a retried HTTP call, a redelivered update — names the same
    /// stream, and the event store's optimistic concurrency turns the second one into a
    /// no-op instead of a second key. It also makes "at most one live key per user and
    /// location" a property of the data layout rather than a query: the user's key at a
    /// location is one stream for life, and a revoked key is requested again in that same
    /// stream, with a fresh client UUID.
    pub fn for_user_at(user: UserId, location: &LocationId) -> Self {
        let name = format!("telegram:{}/{}", user.get(), location.as_str());
        Self(Uuid::new_v5(&KEY_ID_NAMESPACE, name.as_bytes()))
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The panel client's email: unique on the panel, stable for the key's life, and readable
/// by an operator looking at the panel (`tg123456789-ams`).
pub fn client_email(user: UserId, location: &LocationId) -> String {
    format!("tg{}-{}", user.get(), location.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_stable_per_user_and_location() {
        let ams = LocationId::new("ams").expect("valid");
        let fra = LocationId::new("fra").expect("valid");
        let user = UserId::new(42).expect("valid");
        let other = UserId::new(43).expect("valid");
        assert_eq!(
            KeyId::for_user_at(user, &ams),
            KeyId::for_user_at(user, &ams)
        );
        assert_ne!(
            KeyId::for_user_at(user, &ams),
            KeyId::for_user_at(user, &fra)
        );
        assert_ne!(
            KeyId::for_user_at(user, &ams),
            KeyId::for_user_at(other, &ams)
        );
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(UserId::new(0).is_err());
        assert!(UserId::new(-5).is_err());
        assert!(LocationId::new("").is_err());
        assert!(LocationId::new("AMS").is_err());
        assert!(LocationId::new("-ams").is_err());
        assert!(LocationId::new("a".repeat(33)).is_err());
        assert!(LocationId::new("ams/../x").is_err());
        assert!(LocationId::new("de-fra_2").is_ok());
        assert!(serde_json::from_str::<LocationId>("\"Bad Id\"").is_err());
        assert!(serde_json::from_str::<UserId>("-1").is_err());
    }

    #[test]
    fn email_names_user_and_location() {
        let email = client_email(
            UserId::new(123456789).expect("valid"),
            &LocationId::new("ams").expect("valid"),
        );
        assert_eq!(email, "tg123456789-ams");
    }
}
