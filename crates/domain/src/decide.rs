//! [`decide`] and [`evolve`], the two halves of the key lifecycle. `decide` judges a command
//! against the key's current state and either refuses it or returns the events to record;
//! `evolve` applies recorded events without judging them, because everything in the log was
//! accepted when it was written, and a replay must never refuse history.

use crate::command::*;
use crate::error::DomainError;
use crate::event::*;
use crate::foreign_text::{MAX_FOREIGN_TEXT_CHARS, bounded_json, bounded_text};
use crate::identity::client_email;
use crate::state::{FailureNote, KeyDetails, KeyState, Phase};

/// Longest revocation reason kept in the log.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest panel error text kept in the log; panels can answer with whole HTML pages.
pub const MAX_ERROR_CHARS: usize = 1000;

/// Decides what a command means for a key: the events to record, or why nothing may happen.
///
/// An empty list is a legitimate answer: the command was already satisfied (a repeated
/// request, a duplicate or stale acknowledgement) and recording it again would add noise.
pub fn decide(state: &KeyState, command: &KeyCommand) -> Result<Vec<KeyEvent>, DomainError> {
    match command {
        KeyCommand::Request(cmd) => request(state, cmd),
        KeyCommand::Rotate(cmd) => rotate(state, cmd),
        KeyCommand::Revoke(cmd) => revoke(state, cmd),
        KeyCommand::Renew(cmd) => renew(state, cmd),
        KeyCommand::Expire(cmd) => expire(state, cmd),
        KeyCommand::ConfirmProvisioned(cmd) => confirm_provisioned(state, cmd),
        KeyCommand::ConfirmRotated(cmd) => confirm_rotated(state, cmd),
        KeyCommand::ConfirmRevoked(cmd) => confirm_revoked(state, cmd),
        KeyCommand::RecordProvisioningFailure(cmd) => record_failure(state, cmd),
        KeyCommand::RecordDrift(cmd) => record_drift(state, cmd),
        KeyCommand::RecordDriftRepaired(cmd) => record_drift_repaired(state, cmd),
        KeyCommand::RecordDepletion(cmd) => record_depletion(state, cmd),
        KeyCommand::ChangeQuota(cmd) => change_quota(state, cmd),
    }
}

/// Folds one recorded event into the state. Events come from the log, where `decide` has
/// already validated them, so `evolve` applies them without judging.
pub fn evolve(mut state: KeyState, event: &KeyEvent) -> KeyState {
    state.version += 1;
    match event {
        KeyEvent::Requested(e) => {
            state.phase = Phase::Provisioning;
            state.failure = None;
            state.used_client_uuids.insert(e.client_uuid);
            state.details = Some(KeyDetails {
                user_id: e.user_id,
                location: e.location.clone(),
                email: e.email.clone(),
                client_uuid: e.client_uuid,
                expires_at: e.expires_at,
                traffic_limit_bytes: e.traffic_limit_bytes,
                inbound_id: None,
                link: None,
            });
        }
        KeyEvent::Provisioned(e) => {
            state.phase = Phase::Active;
            state.failure = None;
            if let Some(details) = state.details.as_mut() {
                details.inbound_id = Some(e.inbound_id);
                details.link.clone_from(&e.link);
            }
        }
        KeyEvent::RotationRequested(e) => {
            state.phase = Phase::Rotating;
            state.failure = None;
            state.used_client_uuids.insert(e.new_client_uuid);
            if let Some(details) = state.details.as_mut() {
                details.client_uuid = e.new_client_uuid;
                // The old link names a UUID that is on its way out.
                details.link = None;
            }
        }
        KeyEvent::Rotated(e) => {
            state.phase = Phase::Active;
            state.failure = None;
            if let Some(details) = state.details.as_mut() {
                details.link.clone_from(&e.link);
            }
        }
        KeyEvent::RevocationRequested(_) => {
            state.phase = Phase::Revoking;
            state.failure = None;
            if let Some(details) = state.details.as_mut() {
                details.link = None;
            }
        }
        KeyEvent::Revoked(_) => {
            state.phase = Phase::Revoked;
            state.failure = None;
        }
        KeyEvent::Expired(_) => {
            state.phase = Phase::Expired;
        }
        KeyEvent::Renewed(e) => {
            if let Some(details) = state.details.as_mut() {
                details.expires_at = Some(e.expires_at);
            }
            // The panel disabled the client when the key expired; it must be enabled again.
            if state.phase == Phase::Expired {
                state.phase = Phase::Provisioning;
            }
        }
        KeyEvent::ProvisioningFailed(e) => {
            state.failure = Some(FailureNote {
                attempt: e.attempt,
                error: e.error.clone(),
                retry_at: e.retry_at,
            });
        }
        KeyEvent::DriftDetected(_) | KeyEvent::DriftRepaired(_) => {}
        KeyEvent::Depleted(_) => {
            state.phase = Phase::Depleted;
        }
        KeyEvent::QuotaChanged(e) => {
            if let Some(details) = state.details.as_mut() {
                details.traffic_limit_bytes = e.traffic_limit_bytes;
            }
            if state.phase == Phase::Depleted {
                state.phase = Phase::Active;
            }
        }
    }
    state
}

/// The state of a key after all the given events, oldest first.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a KeyEvent>) -> KeyState {
    events.into_iter().fold(KeyState::default(), evolve)
}

fn details(state: &KeyState) -> Result<&KeyDetails, DomainError> {
    state.details.as_ref().ok_or(DomainError::KeyNotFound)
}

fn request(state: &KeyState, cmd: &RequestKey) -> Result<Vec<KeyEvent>, DomainError> {
    if let Some(existing) = &state.details
        && (existing.user_id != cmd.user_id || existing.location != cmd.location)
    {
        return Err(DomainError::IdentityMismatch);
    }
    // Asking again for a key you hold is answered with the key you hold.
    if state.phase.is_live() {
        return Ok(vec![]);
    }
    if let Some(expires_at) = cmd.expires_at {
        ensure_future(expires_at, cmd.now)?;
    }
    ensure_unused(state, cmd.fresh_client_uuid)?;
    Ok(vec![KeyEvent::Requested(KeyRequested {
        user_id: cmd.user_id,
        location: cmd.location.clone(),
        client_uuid: cmd.fresh_client_uuid,
        email: client_email(cmd.user_id, &cmd.location),
        expires_at: cmd.expires_at,
        traffic_limit_bytes: cmd.traffic_limit_bytes,
    })])
}

fn rotate(state: &KeyState, cmd: &RotateKey) -> Result<Vec<KeyEvent>, DomainError> {
    let details = details(state)?;
    match state.phase {
        Phase::Active => {}
        Phase::Rotating => return Err(DomainError::RotationInProgress),
        Phase::Provisioning => return Err(DomainError::NotYetProvisioned),
        Phase::Expired => return Err(DomainError::KeyExpired),
        Phase::Depleted => return Err(DomainError::KeyDepleted),
        Phase::Revoking | Phase::Revoked => return Err(DomainError::KeyRevoked),
        Phase::Absent => return Err(DomainError::KeyNotFound),
    }
    ensure_unused(state, cmd.fresh_client_uuid)?;
    Ok(vec![KeyEvent::RotationRequested(KeyRotationRequested {
        old_client_uuid: details.client_uuid,
        new_client_uuid: cmd.fresh_client_uuid,
    })])
}

fn revoke(state: &KeyState, cmd: &RevokeKey) -> Result<Vec<KeyEvent>, DomainError> {
    details(state)?;
    let reason = cmd.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(DomainError::InvalidReason {
            max: MAX_REASON_CHARS,
        });
    }
    if matches!(state.phase, Phase::Revoking | Phase::Revoked) {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::RevocationRequested(
        KeyRevocationRequested {
            reason: reason.to_owned(),
        },
    )])
}

fn renew(state: &KeyState, cmd: &RenewKey) -> Result<Vec<KeyEvent>, DomainError> {
    let details = details(state)?;
    if matches!(state.phase, Phase::Revoking | Phase::Revoked) {
        return Err(DomainError::KeyRevoked);
    }
    ensure_future(cmd.expires_at, cmd.now)?;
    if details.expires_at == Some(cmd.expires_at) && state.phase != Phase::Expired {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::Renewed(KeyRenewed {
        expires_at: cmd.expires_at,
    })])
}

fn expire(state: &KeyState, cmd: &ExpireKey) -> Result<Vec<KeyEvent>, DomainError> {
    let details = details(state)?;
    if !state.phase.is_live() {
        return Ok(vec![]);
    }
    match details.expires_at {
        Some(expires_at) if expires_at <= cmd.now => Ok(vec![KeyEvent::Expired(KeyExpired {})]),
        expires_at => Err(DomainError::NotYetDue { expires_at }),
    }
}

/// An acknowledgement counts only for the phase it answers and the UUID that is current:
/// a late acknowledgement for a UUID the key has moved away from must not bring it back.
fn acknowledges(
    state: &KeyState,
    phase: Phase,
    client_uuid: uuid::Uuid,
) -> Result<bool, DomainError> {
    let details = details(state)?;
    Ok(state.phase == phase && details.client_uuid == client_uuid)
}

fn confirm_provisioned(
    state: &KeyState,
    cmd: &ConfirmProvisioned,
) -> Result<Vec<KeyEvent>, DomainError> {
    if !acknowledges(state, Phase::Provisioning, cmd.client_uuid)? {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::Provisioned(KeyProvisioned {
        client_uuid: cmd.client_uuid,
        inbound_id: cmd.inbound_id,
        link: cmd.link.clone(),
    })])
}

fn confirm_rotated(state: &KeyState, cmd: &ConfirmRotated) -> Result<Vec<KeyEvent>, DomainError> {
    if !acknowledges(state, Phase::Rotating, cmd.client_uuid)? {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::Rotated(KeyRotated {
        client_uuid: cmd.client_uuid,
        link: cmd.link.clone(),
    })])
}

fn confirm_revoked(state: &KeyState, cmd: &ConfirmRevoked) -> Result<Vec<KeyEvent>, DomainError> {
    if !acknowledges(state, Phase::Revoking, cmd.client_uuid)? {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::Revoked(KeyRevoked {})])
}

/// Failures are recorded when they start and when they change, not on every retry, so a
/// panel that is down for an hour leaves a handful of events rather than thousands.
fn record_failure(
    state: &KeyState,
    cmd: &RecordProvisioningFailure,
) -> Result<Vec<KeyEvent>, DomainError> {
    details(state)?;
    // The text is mostly the panel's own words: kept clean and bounded in the log.
    let error = bounded_text(cmd.error.trim(), MAX_ERROR_CHARS);
    if error.is_empty() || cmd.attempt == 0 {
        return Err(DomainError::InvalidFailure);
    }
    if matches!(state.phase, Phase::Revoked | Phase::Active) {
        return Err(DomainError::WrongPhase(state.phase));
    }
    if state.failure.as_ref().is_some_and(|f| f.error == error) {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::ProvisioningFailed(KeyProvisioningFailed {
        attempt: cmd.attempt,
        error,
        retry_at: cmd.retry_at,
    })])
}

fn record_drift(state: &KeyState, cmd: &RecordDrift) -> Result<Vec<KeyEvent>, DomainError> {
    details(state)?;
    // `observed` is what the panel holds: any of its strings may be hostile.
    Ok(vec![KeyEvent::DriftDetected(KeyDriftDetected {
        kind: cmd.kind,
        expected: bounded_json(&cmd.expected, MAX_FOREIGN_TEXT_CHARS),
        observed: bounded_json(&cmd.observed, MAX_FOREIGN_TEXT_CHARS),
    })])
}

fn record_drift_repaired(
    state: &KeyState,
    cmd: &RecordDriftRepaired,
) -> Result<Vec<KeyEvent>, DomainError> {
    details(state)?;
    Ok(vec![KeyEvent::DriftRepaired(KeyDriftRepaired {
        kind: cmd.kind,
    })])
}

/// Recorded once: the panel's decision is learnt, not fought. Only an active key can be
/// depleted; while a change of ours is on its way to the panel, the next pass judges again.
fn record_depletion(state: &KeyState, cmd: &RecordDepletion) -> Result<Vec<KeyEvent>, DomainError> {
    details(state)?;
    if state.phase != Phase::Active {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::Depleted(KeyDepleted {
        used_bytes: cmd.used_bytes,
        limit_bytes: cmd.limit_bytes,
    })])
}

fn change_quota(state: &KeyState, cmd: &ChangeQuota) -> Result<Vec<KeyEvent>, DomainError> {
    let details = details(state)?;
    if matches!(state.phase, Phase::Revoking | Phase::Revoked) {
        return Err(DomainError::KeyRevoked);
    }
    let limit = cmd.traffic_limit_bytes;
    if state.phase == Phase::Depleted && !cmd.reset_usage && limit != 0 && limit <= cmd.used_bytes {
        return Err(DomainError::QuotaStillUsedUp {
            used_bytes: cmd.used_bytes,
            limit_bytes: limit,
        });
    }
    if !cmd.reset_usage && limit == details.traffic_limit_bytes && state.phase != Phase::Depleted {
        return Ok(vec![]);
    }
    Ok(vec![KeyEvent::QuotaChanged(KeyQuotaChanged {
        traffic_limit_bytes: limit,
        reset_usage: cmd.reset_usage,
    })])
}

fn ensure_future(
    expires_at: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Result<(), DomainError> {
    if expires_at <= now {
        return Err(DomainError::ExpiryNotInFuture { expires_at, now });
    }
    Ok(())
}

fn ensure_unused(state: &KeyState, client_uuid: uuid::Uuid) -> Result<(), DomainError> {
    if client_uuid.is_nil() || state.used_client_uuids.contains(&client_uuid) {
        return Err(DomainError::ClientUuidReused(client_uuid));
    }
    Ok(())
}
