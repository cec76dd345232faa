//! [`KeyCommand`]: every request to change a key, from users, admins, the scheduler, the worker
//! and the reconciler. Commands carry the current time and any fresh client UUID as data,
//! chosen by the caller, so that `decide` stays pure and a decision can be reproduced exactly.

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::DriftKind;
use crate::identity::{LocationId, UserId};

/// A request to change a key. Commands carry the current time and any freshly generated
/// UUID, so that [`crate::decide`] stays a pure function of its inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyCommand {
    Request(RequestKey),
    Rotate(RotateKey),
    Revoke(RevokeKey),
    Renew(RenewKey),
    Expire(ExpireKey),
    ConfirmProvisioned(ConfirmProvisioned),
    ConfirmRotated(ConfirmRotated),
    ConfirmRevoked(ConfirmRevoked),
    RecordProvisioningFailure(RecordProvisioningFailure),
    RecordDrift(RecordDrift),
    RecordDriftRepaired(RecordDriftRepaired),
    RecordDepletion(RecordDepletion),
    ChangeQuota(ChangeQuota),
}

/// A user (or an admin on their behalf) asks for a key at a location.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestKey {
    pub user_id: UserId,
    pub location: LocationId,
    /// A freshly generated UUID, used only if a new client must be minted.
    pub fresh_client_uuid: Uuid,
    pub expires_at: Option<OffsetDateTime>,
    pub traffic_limit_bytes: u64,
    pub now: OffsetDateTime,
}

/// Replace the key's client UUID with a new one (the "refresh key" button).
#[derive(Debug, Clone, PartialEq)]
pub struct RotateKey {
    pub fresh_client_uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RevokeKey {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RenewKey {
    pub expires_at: OffsetDateTime,
    pub now: OffsetDateTime,
}

/// The scheduler's claim that the key's time has run out.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpireKey {
    pub now: OffsetDateTime,
}

/// The worker's acknowledgement: the panel holds this client as requested.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmProvisioned {
    pub client_uuid: Uuid,
    pub inbound_id: i64,
    /// The client's `vless://` link, when the worker could render it.
    pub link: Option<String>,
}

/// The worker's acknowledgement: the panel holds this UUID and no longer the old one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmRotated {
    pub client_uuid: Uuid,
    /// The new client's `vless://` link, when the worker could render it.
    pub link: Option<String>,
}

/// The worker's acknowledgement: the panel no longer holds the client with this UUID.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmRevoked {
    pub client_uuid: Uuid,
}

/// The worker could not make the panel match the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordProvisioningFailure {
    pub attempt: u32,
    pub error: String,
    pub retry_at: OffsetDateTime,
}

/// A reconcile pass found the panel differing from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordDrift {
    pub kind: DriftKind,
    pub expected: Value,
    pub observed: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordDriftRepaired {
    pub kind: DriftKind,
}

/// The worker or the reconciler saw that the panel disabled the client for a used-up
/// traffic limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordDepletion {
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

/// An admin or the service sets a new traffic limit, optionally resetting the usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeQuota {
    /// 0 means no limit.
    pub traffic_limit_bytes: u64,
    pub reset_usage: bool,
    /// The usage the panel last reported (0 when unknown), so that a depleted key is not
    /// "brought back" under a limit it has already used up.
    pub used_bytes: u64,
}
