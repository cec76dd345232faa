//! What a panel should hold for a key ([`DesiredClient`]), computed from the key's state alone.
//! The worker and the reconciler both work towards this target rather than replaying the
//! events that led to it, so applying it again, after a redelivery or a restart, changes
//! nothing, and both judge a panel by the same standard.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::state::{KeyState, Phase};

/// What a panel should hold for a key: the worker's target, computed from the log alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredClient {
    pub client_uuid: Uuid,
    pub email: String,
    /// An expired key keeps its client, disabled, so that a renewal can bring it back; so
    /// does a depleted one, whose client the panel itself disabled.
    pub enable: bool,
    /// Unix milliseconds, 0 = never (the panel's `expiryTime`).
    pub expiry_time_ms: i64,
    /// The panel's `totalGB`, which is in bytes despite its name; 0 = unlimited.
    pub total_bytes: u64,
    pub telegram_id: i64,
}

impl KeyState {
    /// The client the panel should hold for this key, or `None` when it should hold none.
    pub fn desired_client(&self) -> Option<DesiredClient> {
        let details = self.details.as_ref()?;
        let enable = match self.phase {
            Phase::Provisioning | Phase::Active | Phase::Rotating => true,
            Phase::Expired | Phase::Depleted => false,
            Phase::Absent | Phase::Revoking | Phase::Revoked => return None,
        };
        let expiry_time_ms = details
            .expires_at
            .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or(0);
        Some(DesiredClient {
            client_uuid: details.client_uuid,
            email: details.email.clone(),
            enable,
            expiry_time_ms,
            total_bytes: details.traffic_limit_bytes,
            telegram_id: details.user_id.get(),
        })
    }
}
