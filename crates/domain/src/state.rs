//! [`KeyState`], what `evolve` folds a key's events into, and the [`KeyStatus`] users see.
//! The state holds what decisions need (phase, details, every client UUID ever used, the last
//! failure); the status is derived from it on demand rather than stored beside it, so the two
//! cannot disagree.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::{LocationId, UserId};

/// Where a key stands in its life. `Provisioning`, `Rotating` and `Revoking` wait for the
/// worker's acknowledgement that the panel matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Absent,
    Provisioning,
    Active,
    Rotating,
    Revoking,
    Revoked,
    Expired,
    /// The panel disabled the client because its traffic limit was used up; a new limit or
    /// a reset of the usage brings it back.
    Depleted,
}

impl Phase {
    /// A live key is one the user holds: the one-live-key-per-location rule counts these.
    /// A depleted key is still held, so that asking for a new key does not bypass its limit.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Provisioning | Self::Active | Self::Rotating | Self::Depleted
        )
    }

    /// Phases that end once the worker acknowledges the panel's change.
    pub fn awaits_panel(self) -> bool {
        matches!(self, Self::Provisioning | Self::Rotating | Self::Revoking)
    }
}

/// The status shown to users and in key views (docs/http-api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Provisioning,
    Active,
    Rotating,
    Revoking,
    Revoked,
    Expired,
    Depleted,
    Failed,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Rotating => "rotating",
            Self::Revoking => "revoking",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Depleted => "depleted",
            Self::Failed => "failed",
        }
    }
}

/// What the key is, once it has been requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDetails {
    pub user_id: UserId,
    pub location: LocationId,
    pub email: String,
    pub client_uuid: Uuid,
    pub expires_at: Option<OffsetDateTime>,
    pub traffic_limit_bytes: u64,
    /// The inbound the panel confirmed holding the client in.
    pub inbound_id: Option<i64>,
    /// The `vless://` link of `client_uuid`, once the panel confirmed holding it. Only
    /// ever the link of the current client: a rotation or revocation request clears it,
    /// so nobody is shown a link the panel is about to stop accepting.
    #[serde(default)]
    pub link: Option<String>,
}

/// The last failure the worker recorded since the panel last confirmed a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureNote {
    pub attempt: u32,
    pub error: String,
    pub retry_at: OffsetDateTime,
}

/// A key's state, folded from its events by [`crate::evolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// How many events the stream holds.
    pub version: u32,
    pub phase: Phase,
    pub details: Option<KeyDetails>,
    /// Every client UUID this key ever had, so that no rotation can hand one back.
    pub used_client_uuids: BTreeSet<Uuid>,
    pub failure: Option<FailureNote>,
}

impl Default for KeyState {
    fn default() -> Self {
        Self {
            version: 0,
            phase: Phase::Absent,
            details: None,
            used_client_uuids: BTreeSet::new(),
            failure: None,
        }
    }
}

impl KeyState {
    /// The status of the key, or `None` for a stream with no request yet.
    pub fn status(&self) -> Option<KeyStatus> {
        if self.failure.is_some() && self.phase.awaits_panel() {
            return Some(KeyStatus::Failed);
        }
        let status = match self.phase {
            Phase::Absent => return None,
            Phase::Provisioning => KeyStatus::Provisioning,
            Phase::Active => KeyStatus::Active,
            Phase::Rotating => KeyStatus::Rotating,
            Phase::Revoking => KeyStatus::Revoking,
            Phase::Revoked => KeyStatus::Revoked,
            Phase::Expired => KeyStatus::Expired,
            Phase::Depleted => KeyStatus::Depleted,
        };
        Some(status)
    }
}
