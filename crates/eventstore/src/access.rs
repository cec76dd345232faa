//! [`AccessControl`]: blocking and unblocking users, and the check every new key passes.
//! A block is the user's `user.blocked` followed by a revocation of each of their keys that
//! is not revoked yet (reason `user blocked: …`, by whoever blocked), so a blocked user's
//! access ends; each step carries a command id derived from the caller's, so a retried block
//! finishes what a crash interrupted and repeats nothing. An unblock records
//! `user.unblocked` and nothing else: the user may ask again, nothing comes back by itself.
//!
//! A key request checks the user's access before it is recorded and again after. The block
//! revokes the keys it finds after its own event is in the log, so a request racing it is
//! either found by the block or finds the block, and is then revoked right away: no blocked
//! user keeps a live key.

use domain::{
    BlockUser, DomainError, KeyCommand, KeyId, Phase, RequestKey, RevokeKey, UnblockUser,
    UserAccessCommand, UserAccessId, UserAccessState, UserId, block_revocation_reason,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::EventStore;
use crate::error::StoreError;
use crate::ledger::{CommandOutcome, ExecuteError, KeyLedger, UserAccessLedger};
use crate::model::{Actor, ActorKind, EventMetadata};

/// Users' access and the keys it governs.
#[derive(Clone, Debug)]
pub struct AccessControl {
    keys: KeyLedger,
    access: UserAccessLedger,
}

/// A user's access as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessStatus {
    pub user_id: UserId,
    /// Blocked or not, and the reason of the latest block or unblock.
    pub state: UserAccessState,
    /// When the latest block or unblock was recorded.
    pub since: Option<OffsetDateTime>,
    /// The log position of the latest unblock: an administrator's revocation of one of the
    /// user's keys before it no longer keeps the user from asking for that key again.
    pub unblocked_at: Option<i64>,
    /// Who recorded the latest block or unblock.
    pub changed_by: Option<Actor>,
}

/// What a block did.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub status: AccessStatus,
    /// The keys whose revocation this block recorded now.
    pub revoked: Vec<KeyId>,
}

impl AccessControl {
    pub fn new(store: EventStore) -> Self {
        Self {
            keys: KeyLedger::new(store.clone()),
            access: UserAccessLedger::new(store),
        }
    }

    /// The user's access; not blocked when their stream is empty.
    pub async fn status(&self, user_id: UserId) -> Result<AccessStatus, StoreError> {
        let (state, events) = self.access.load(UserAccessId::for_user(user_id)).await?;
        let latest = events.last();
        let unblocked_at = events
            .iter()
            .rev()
            .find(|e| e.event_type == domain::EventType::UserUnblocked.as_str())
            .map(|e| e.position);
        Ok(AccessStatus {
            user_id,
            state,
            since: latest.map(|e| e.recorded_at),
            unblocked_at,
            changed_by: latest
                .and_then(|e| serde_json::from_value(e.metadata["actor"].clone()).ok()),
        })
    }

    /// Blocks the user and revokes every key among `keys` that is theirs and not revoked
    /// yet. Blocking a blocked user records nothing on their access stream but still
    /// revokes what is left, so a block that answered has ended the user's access.
    pub async fn block(
        &self,
        user_id: UserId,
        reason: &str,
        keys: &[KeyId],
        command_id: Uuid,
        actor: Actor,
    ) -> Result<Blocked, ExecuteError> {
        let step = |name: &str| {
            EventMetadata::for_command(Uuid::new_v5(&command_id, name.as_bytes()), actor.clone())
        };
        let command = UserAccessCommand::Block(BlockUser {
            user_id,
            reason: reason.to_owned(),
        });
        self.access
            .execute(UserAccessId::for_user(user_id), &command, &step("block"))
            .await?;
        let mut revoked = Vec::new();
        for &key_id in keys {
            let metadata = step(&format!("revoke:{key_id}"));
            if self
                .revoke_for_block(user_id, key_id, reason, &metadata)
                .await?
            {
                revoked.push(key_id);
            }
        }
        Ok(Blocked {
            status: self.status(user_id).await?,
            revoked,
        })
    }

    /// Lets the user ask for keys again.
    pub async fn unblock(
        &self,
        user_id: UserId,
        reason: &str,
        command_id: Uuid,
        actor: Actor,
    ) -> Result<AccessStatus, ExecuteError> {
        let command = UserAccessCommand::Unblock(UnblockUser {
            user_id,
            reason: reason.to_owned(),
        });
        let metadata = EventMetadata::for_command(command_id, actor);
        self.access
            .execute(UserAccessId::for_user(user_id), &command, &metadata)
            .await?;
        Ok(self.status(user_id).await?)
    }

    /// Records a key request unless its user is blocked (refused with `user_blocked`).
    /// A request that raced a block and lost is revoked at once and refused the same way.
    pub async fn request_key(
        &self,
        key_id: KeyId,
        request: &RequestKey,
        metadata: &EventMetadata,
    ) -> Result<CommandOutcome, ExecuteError> {
        let user_id = request.user_id;
        self.status(user_id).await?.state.ensure_may_request()?;
        let outcome = self
            .keys
            .execute(key_id, &KeyCommand::Request(request.clone()), metadata)
            .await?;
        let status = self.status(user_id).await?;
        if status.state.blocked {
            let reason = status.state.reason.as_deref().unwrap_or("blocked");
            let actor = status
                .changed_by
                .clone()
                .unwrap_or_else(|| Actor::new(ActorKind::Admin, "admin"));
            // Derived from the request's id: a retried request revokes once.
            let revoke_id = metadata.command_id.map_or_else(Uuid::new_v4, |id| {
                Uuid::new_v5(&id, b"revoke: user blocked")
            });
            let revoke = EventMetadata {
                command_id: Some(revoke_id),
                actor,
                ..metadata.clone()
            };
            self.revoke_for_block(user_id, key_id, reason, &revoke)
                .await?;
            tracing::info!(user_id = %user_id, %key_id, "a key requested while its user was being blocked was revoked");
            return Err(DomainError::UserBlocked.into());
        }
        Ok(outcome)
    }

    /// Revokes the key for a block of its user, if it is theirs and not revoked already;
    /// `true` when the revocation is in the log now.
    async fn revoke_for_block(
        &self,
        user_id: UserId,
        key_id: KeyId,
        reason: &str,
        metadata: &EventMetadata,
    ) -> Result<bool, ExecuteError> {
        let (state, _) = self.keys.load(key_id).await?;
        let theirs = state.details.as_ref().is_some_and(|d| d.user_id == user_id);
        if !theirs || matches!(state.phase, Phase::Revoking | Phase::Revoked) {
            return Ok(false);
        }
        let revoke = KeyCommand::Revoke(RevokeKey {
            reason: block_revocation_reason(reason),
        });
        let outcome = self.keys.execute(key_id, &revoke, metadata).await?;
        Ok(outcome.append.is_some())
    }
}
