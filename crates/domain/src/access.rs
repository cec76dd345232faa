//! A user's access: whether an administrator has blocked them from getting keys. One stream
//! per Telegram user, its id derived from the user id like the subscription's, records each
//! `user.blocked` and `user.unblocked` with the reason given. Blocking ends what the user
//! holds (the caller revokes their keys, see `eventstore::AccessControl`) and refuses any new
//! key for them, whoever asks; unblocking restores nothing by itself but lets them ask again.
//! The decision of who may ask for keys at all (anyone or an allowlist) is configuration,
//! not log, and lives with the bot.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::decide::MAX_REASON_CHARS;
use crate::error::DomainError;
use crate::event::EventType;
use crate::identity::UserId;

/// Namespace of the name-based (v5) access stream ids; fixed for the life of the system,
/// like the key and subscription ids' own.
const USER_ACCESS_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0003);

/// Prefix of the reason recorded on each key revoked because its user was blocked.
pub const BLOCK_REVOCATION_PREFIX: &str = "user blocked: ";

/// The id of a user's access stream: one per user without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserAccessId(Uuid);

impl UserAccessId {
    pub fn for_user(user_id: UserId) -> Self {
        Self(Uuid::new_v5(
            &USER_ACCESS_ID_NAMESPACE,
            format!("access:{}", user_id.get()).as_bytes(),
        ))
    }

    pub fn as_uuid(self) -> Uuid {
        self.0
    }
}

impl std::fmt::Display for UserAccessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Everything that can happen to a user's access, as docs/events.md names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserAccessEvent {
    #[serde(rename = "user.blocked")]
    Blocked(UserAccessChanged),
    #[serde(rename = "user.unblocked")]
    Unblocked(UserAccessChanged),
}

/// The data of both access events: whose access changed and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccessChanged {
    pub user_id: UserId,
    pub reason: String,
}

impl UserAccessEvent {
    pub fn kind(&self) -> EventType {
        match self {
            Self::Blocked(_) => EventType::UserBlocked,
            Self::Unblocked(_) => EventType::UserUnblocked,
        }
    }

    pub fn event_type(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// A request to change a user's access; only administrators give these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAccessCommand {
    /// Block the user; records nothing when they are blocked already.
    Block(BlockUser),
    /// Let the user ask for keys again; records nothing when they are not blocked.
    Unblock(UnblockUser),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUser {
    pub user_id: UserId,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnblockUser {
    pub user_id: UserId,
    pub reason: String,
}

/// A user's access, folded from their access stream. A user with no stream is not blocked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAccessState {
    pub version: u32,
    pub user_id: Option<UserId>,
    pub blocked: bool,
    /// The reason of the latest block or unblock.
    pub reason: Option<String>,
}

impl UserAccessState {
    /// Whether the user may be given a new key: refused with `user_blocked` while blocked.
    pub fn ensure_may_request(&self) -> Result<(), DomainError> {
        if self.blocked {
            return Err(DomainError::UserBlocked);
        }
        Ok(())
    }
}

/// What a command means for a user's access: the events to record, or why nothing may
/// happen. Blocking a blocked user (or unblocking one who is not) records nothing: the
/// state asked for holds already, and a retried request must not fail.
pub fn decide_user_access(
    state: &UserAccessState,
    command: &UserAccessCommand,
) -> Result<Vec<UserAccessEvent>, DomainError> {
    let (user_id, reason, block) = match command {
        UserAccessCommand::Block(cmd) => (cmd.user_id, &cmd.reason, true),
        UserAccessCommand::Unblock(cmd) => (cmd.user_id, &cmd.reason, false),
    };
    if state.user_id.is_some_and(|holder| holder != user_id) {
        return Err(DomainError::IdentityMismatch);
    }
    let reason = valid_reason(reason)?;
    if state.blocked == block {
        return Ok(vec![]);
    }
    let changed = UserAccessChanged {
        user_id,
        reason: reason.to_owned(),
    };
    Ok(vec![if block {
        UserAccessEvent::Blocked(changed)
    } else {
        UserAccessEvent::Unblocked(changed)
    }])
}

/// Folds one recorded event into the user's access state.
pub fn evolve_user_access(mut state: UserAccessState, event: &UserAccessEvent) -> UserAccessState {
    state.version += 1;
    let (changed, blocked) = match event {
        UserAccessEvent::Blocked(changed) => (changed, true),
        UserAccessEvent::Unblocked(changed) => (changed, false),
    };
    state.user_id = Some(changed.user_id);
    state.blocked = blocked;
    state.reason = Some(changed.reason.clone());
    state
}

/// `reason` trimmed, if it is 1 to [`MAX_REASON_CHARS`] characters.
fn valid_reason(reason: &str) -> Result<&str, DomainError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(DomainError::InvalidReason {
            max: MAX_REASON_CHARS,
        });
    }
    Ok(reason)
}

/// The reason recorded on a key revoked because its user was blocked for `reason`:
/// [`BLOCK_REVOCATION_PREFIX`] and the block's reason, shortened with an ellipsis so the
/// whole stays within [`MAX_REASON_CHARS`].
pub fn block_revocation_reason(reason: &str) -> String {
    let room = MAX_REASON_CHARS - BLOCK_REVOCATION_PREFIX.chars().count();
    let reason = reason.trim();
    if reason.chars().count() <= room {
        return format!("{BLOCK_REVOCATION_PREFIX}{reason}");
    }
    let kept: String = reason.chars().take(room - 1).collect();
    format!("{BLOCK_REVOCATION_PREFIX}{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(raw: i64) -> UserId {
        UserId::new(raw).expect("valid user id")
    }

    fn block(reason: &str) -> UserAccessCommand {
        UserAccessCommand::Block(BlockUser {
            user_id: user(7),
            reason: reason.into(),
        })
    }

    fn unblock(reason: &str) -> UserAccessCommand {
        UserAccessCommand::Unblock(UnblockUser {
            user_id: user(7),
            reason: reason.into(),
        })
    }

    fn changed(reason: &str) -> UserAccessChanged {
        UserAccessChanged {
            user_id: user(7),
            reason: reason.into(),
        }
    }

    /// Given these events, when this command: the outcome and the state before it.
    fn given_when(
        events: &[UserAccessEvent],
        command: &UserAccessCommand,
    ) -> (UserAccessState, Result<Vec<UserAccessEvent>, DomainError>) {
        let state = events
            .iter()
            .fold(UserAccessState::default(), evolve_user_access);
        let outcome = decide_user_access(&state, command);
        (state, outcome)
    }

    #[test]
    fn one_access_stream_per_user_apart_from_keys_and_subscriptions() {
        let id = UserAccessId::for_user(user(7));
        assert_eq!(id, UserAccessId::for_user(user(7)));
        assert_ne!(id, UserAccessId::for_user(user(8)));
        assert_ne!(
            id.as_uuid(),
            crate::SubscriptionId::for_user(user(7)).as_uuid()
        );
    }

    #[test]
    fn given_nothing_when_blocked_then_user_blocked_with_the_trimmed_reason() {
        let (state, outcome) = given_when(&[], &block("  abuse report  "));
        let events = outcome.expect("accepted");
        assert_eq!(events, [UserAccessEvent::Blocked(changed("abuse report"))]);
        let after = events.iter().fold(state, evolve_user_access);
        assert!(after.blocked);
        assert_eq!(after.version, 1);
        assert_eq!(after.reason.as_deref(), Some("abuse report"));
        assert_eq!(after.ensure_may_request(), Err(DomainError::UserBlocked));
    }

    #[test]
    fn given_blocked_when_blocked_again_then_nothing() {
        let blocked = [UserAccessEvent::Blocked(changed("abuse"))];
        assert_eq!(given_when(&blocked, &block("again")).1, Ok(vec![]));
    }

    #[test]
    fn given_blocked_when_unblocked_then_user_unblocked_and_requests_are_allowed() {
        let blocked = [UserAccessEvent::Blocked(changed("abuse"))];
        let (state, outcome) = given_when(&blocked, &unblock("appeal accepted"));
        let events = outcome.expect("accepted");
        assert_eq!(
            events,
            [UserAccessEvent::Unblocked(changed("appeal accepted"))]
        );
        let after = events.iter().fold(state, evolve_user_access);
        assert!(!after.blocked);
        assert_eq!(after.version, 2);
        assert_eq!(after.ensure_may_request(), Ok(()));
    }

    #[test]
    fn given_nothing_or_unblocked_when_unblocked_then_nothing() {
        assert_eq!(given_when(&[], &unblock("why not")).1, Ok(vec![]));
        let history = [
            UserAccessEvent::Blocked(changed("abuse")),
            UserAccessEvent::Unblocked(changed("appeal")),
        ];
        assert_eq!(given_when(&history, &unblock("again")).1, Ok(vec![]));
        assert_eq!(
            UserAccessState::default().ensure_may_request(),
            Ok(()),
            "a user never blocked may request"
        );
    }

    #[test]
    fn a_reason_is_required_and_bounded_like_a_revocation_reason() {
        let too_long = "x".repeat(MAX_REASON_CHARS + 1);
        for reason in ["", "   ", too_long.as_str()] {
            for command in [block(reason), unblock(reason)] {
                assert_eq!(
                    given_when(&[], &command).1,
                    Err(DomainError::InvalidReason {
                        max: MAX_REASON_CHARS
                    }),
                    "{command:?}"
                );
            }
        }
        let longest = "x".repeat(MAX_REASON_CHARS);
        assert!(given_when(&[], &block(&longest)).1.is_ok());
    }

    #[test]
    fn a_stream_of_one_user_refuses_a_command_for_another() {
        let blocked = [UserAccessEvent::Blocked(changed("abuse"))];
        let other = UserAccessCommand::Unblock(UnblockUser {
            user_id: user(8),
            reason: "mix-up".into(),
        });
        assert_eq!(
            given_when(&blocked, &other).1,
            Err(DomainError::IdentityMismatch)
        );
    }

    #[test]
    fn revocation_reasons_name_the_block_and_stay_within_the_bound() {
        assert_eq!(block_revocation_reason(" spam "), "user blocked: spam");
        let longest = "y".repeat(MAX_REASON_CHARS);
        let reason = block_revocation_reason(&longest);
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS);
        assert!(reason.starts_with(BLOCK_REVOCATION_PREFIX) && reason.ends_with('…'));
    }

    #[test]
    fn events_round_trip_through_type_and_data() {
        for event in [
            UserAccessEvent::Blocked(changed("abuse")),
            UserAccessEvent::Unblocked(changed("appeal")),
        ] {
            let tagged = serde_json::to_value(&event).expect("serialises");
            assert_eq!(tagged["type"], event.kind().as_str());
            let data = crate::event::data_of(&event);
            assert_eq!(data["user_id"], 7);
            let decoded: UserAccessEvent =
                crate::event::from_type_and_data(event.event_type(), &data).expect("decodes");
            assert_eq!(decoded, event);
        }
        let empty = crate::event::from_type_and_data::<UserAccessEvent>(
            "user.blocked",
            &serde_json::json!({}),
        );
        assert!(empty.is_err());
    }
}
