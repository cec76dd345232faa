//! [`DomainError`]: why `decide` refused a command. A refusal records nothing. Each reason is a
//! variant of its own rather than a message, so that callers such as the API can map it to
//! their own answer (an HTTP status and error code, docs/http-api.md "Errors").

use time::OffsetDateTime;
use uuid::Uuid;

use crate::state::Phase;

/// Why [`crate::decide`] refused a command. Each refusal leaves the log untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("no key has been requested in this stream")]
    KeyNotFound,
    #[error("the key is revoked; request a new key instead")]
    KeyRevoked,
    #[error("the key has expired; renew it or request a new key")]
    KeyExpired,
    #[error("the key is still being set up on the panel")]
    NotYetProvisioned,
    #[error("a rotation of this key is already in progress")]
    RotationInProgress,
    #[error("client UUID {0} was already used by this key; a new one is required")]
    ClientUuidReused(Uuid),
    #[error("expiry {expires_at} is not after the current time {now}")]
    ExpiryNotInFuture {
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    },
    #[error("the key is not due to expire (expires at {expires_at:?})")]
    NotYetDue { expires_at: Option<OffsetDateTime> },
    #[error("the key in this stream belongs to another user or location")]
    IdentityMismatch,
    #[error("a revocation needs a reason of 1 to {max} characters")]
    InvalidReason { max: usize },
    #[error("a failure record needs an error text and an attempt number of at least 1")]
    InvalidFailure,
    #[error("the key's traffic limit is used up; raise the limit or reset the usage")]
    KeyDepleted,
    #[error(
        "a limit of {limit_bytes} bytes is already used up ({used_bytes} bytes used); raise it further or reset the usage"
    )]
    QuotaStillUsedUp { used_bytes: u64, limit_bytes: u64 },
    #[error("no subscription has been issued in this stream")]
    SubscriptionNotFound,
    #[error("the user is blocked by an administrator; unblock them first")]
    UserBlocked,
    #[error("command does not apply to a key in phase {0:?}")]
    WrongPhase(Phase),
}
