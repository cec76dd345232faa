//! Per-user limits on what costs work: a key request, a rotation or a revocation records
//! events that stay forever and takes a turn at the location's panel; a history or a
//! message costs queries and a reply. A script pressing 🔄 twenty times must get a polite
//! "not now" rather than twenty rotations.
//!
//! Counts live in the database (`user_action_counts`), one row per user, action and fixed
//! window, bumped with one atomic upsert: every bot replica sees the same count, and a
//! restart forgets nothing.

use std::time::Duration;

use domain::UserId;
use sqlx::PgPool;
use time::OffsetDateTime;

/// Something a user can do that costs work, each with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Costly {
    Message,
    KeyRequest,
    Rotation,
    Revocation,
    History,
    NewLink,
}

impl Costly {
    pub fn name(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::KeyRequest => "key_request",
            Self::Rotation => "rotation",
            Self::Revocation => "revocation",
            Self::History => "history",
            Self::NewLink => "new_link",
        }
    }
}

/// How many of each costly action a user may take per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u32,
    pub per: Duration,
}

/// Every limit, configurable (`[limits]` in the configuration file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    pub messages: Limit,
    pub key_requests: Limit,
    pub rotations: Limit,
    pub revocations: Limit,
    pub history: Limit,
    pub new_links: Limit,
}

impl Default for UserLimits {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        Self {
            messages: Limit {
                count: 30,
                per: MINUTE,
            },
            key_requests: Limit {
                count: 5,
                per: HOUR,
            },
            rotations: Limit {
                count: 5,
                per: HOUR,
            },
            revocations: Limit {
                count: 5,
                per: HOUR,
            },
            history: Limit {
                count: 10,
                per: MINUTE,
            },
            new_links: Limit {
                count: 3,
                per: Duration::from_secs(24 * 3600),
            },
        }
    }
}

impl UserLimits {
    pub fn of(&self, action: Costly) -> Limit {
        match action {
            Costly::Message => self.messages,
            Costly::KeyRequest => self.key_requests,
            Costly::Rotation => self.rotations,
            Costly::Revocation => self.revocations,
            Costly::History => self.history,
            Costly::NewLink => self.new_links,
        }
    }
}

/// What spending one more of an action came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    Allowed,
    /// Over the limit; the window ends in `retry_after`. `first` is set for the first
    /// refusal of the window, the one worth answering.
    Limited {
        retry_after: Duration,
        first: bool,
    },
}

/// Counts one `action` by `user` against `limit` at `now`.
pub async fn spend(
    pool: &PgPool,
    user: UserId,
    action: Costly,
    limit: Limit,
    now: OffsetDateTime,
) -> Result<Spent, sqlx::Error> {
    let window = limit.per.as_secs().max(1) as i64;
    let start = now.unix_timestamp().div_euclid(window) * window;
    let window_start = OffsetDateTime::from_unix_timestamp(start).unwrap_or(now);
    let count: i32 = sqlx::query_scalar(
        "INSERT INTO user_action_counts (user_id, action, window_start, count)
         VALUES ($1, $2, $3, 1)
         ON CONFLICT (user_id, action, window_start)
         DO UPDATE SET count = user_action_counts.count + 1
         RETURNING count",
    )
    .bind(user.get())
    .bind(action.name())
    .bind(window_start)
    .fetch_one(pool)
    .await?;
    let count = count.max(0) as u32;
    if count <= limit.count {
        return Ok(Spent::Allowed);
    }
    let ends = window_start + limit.per;
    let retry_after = Duration::try_from(ends - now).unwrap_or(Duration::ZERO);
    Ok(Spent::Limited {
        retry_after,
        first: count == limit.count + 1,
    })
}

/// Drops windows that ended long ago; called now and then, not on every action.
pub async fn prune(pool: &PgPool, now: OffsetDateTime) -> Result<u64, sqlx::Error> {
    let result = sqlx::query("DELETE FROM user_action_counts WHERE window_start < $1")
        .bind(now - Duration::from_secs(2 * 24 * 3600))
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
