//! The bot's own tables (migration `0006_bot.sql`), and the traffic view it reads
//! (`key_usage`, written by the worker).

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::texts::{Lang, Usage};

/// The traffic the panel last reported for a key; `None` before its first report.
pub async fn key_usage(pool: &PgPool, key_id: Uuid) -> Result<Option<Usage>, sqlx::Error> {
    let row: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT up_bytes, down_bytes, limit_bytes FROM key_usage WHERE key_id = $1")
            .bind(key_id)
            .fetch_optional(pool)
            .await?;
    // The table's checks keep the counters non-negative.
    let bytes = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(row.map(|(up, down, limit)| Usage {
        used_bytes: bytes(up).saturating_add(bytes(down)),
        limit_bytes: bytes(limit),
    }))
}

/// Remembers where to reach a user and in which language.
pub async fn remember_user(
    pool: &PgPool,
    user_id: i64,
    chat_id: i64,
    lang: Lang,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bot_users (user_id, chat_id, language) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE
         SET chat_id = excluded.chat_id, language = excluded.language, updated_at = now()
         WHERE (bot_users.chat_id, bot_users.language) IS DISTINCT FROM (excluded.chat_id, excluded.language)",
    )
    .bind(user_id)
    .bind(chat_id)
    .bind(lang.code())
    .execute(pool)
    .await?;
    Ok(())
}

/// Where and how to reach `user_id`, if they ever talked to the bot.
pub async fn user_contact(
    conn: &mut PgConnection,
    user_id: i64,
) -> Result<Option<(i64, Lang)>, sqlx::Error> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT chat_id, language FROM bot_users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(chat, lang)| (chat, Lang::from_stored(&lang))))
}

/// Whether the update was already handled.
pub async fn update_seen(pool: &PgPool, update_id: i64) -> Result<bool, sqlx::Error> {
    let seen: Option<i32> = sqlx::query_scalar("SELECT 1 FROM bot_updates WHERE update_id = $1")
        .bind(update_id)
        .fetch_optional(pool)
        .await?;
    Ok(seen.is_some())
}

/// Records that `replica` handled the update.
pub async fn mark_update(pool: &PgPool, update_id: i64, replica: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bot_updates (update_id, handled_by) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(update_id)
    .bind(replica)
    .execute(pool)
    .await?;
    Ok(())
}

/// Telegram keeps an unconfirmed update for 24 hours; ours are kept a little longer.
pub async fn prune_updates(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM bot_updates WHERE processed_at < now() - interval '2 days'")
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// A notification owed to a user.
#[derive(Debug, Clone)]
pub struct Owed {
    pub id: String,
    pub key_id: Uuid,
    pub user_id: i64,
    pub chat_id: i64,
    pub lang: Lang,
    pub kind: String,
    pub payload: Value,
    pub attempts: i32,
}

/// Records a notification unless one with the same id exists; `true` if it is new.
#[allow(clippy::too_many_arguments)]
pub async fn owe(
    conn: &mut PgConnection,
    id: &str,
    key_id: Uuid,
    user_id: i64,
    chat_id: i64,
    lang: Lang,
    kind: &str,
    payload: &Value,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO bot_notifications (id, key_id, user_id, chat_id, language, kind, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(key_id)
    .bind(user_id)
    .bind(chat_id)
    .bind(lang.code())
    .bind(kind)
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Owes an expiry warning for every active key that expires within `within`, once per
/// expiry time (a renewed key is warned again before its new end).
pub async fn owe_expiry_warnings(
    pool: &PgPool,
    within: time::Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO bot_notifications (id, key_id, user_id, chat_id, language, kind, payload)
         SELECT v.key_id::text || '/warn/' || extract(epoch FROM v.expires_at)::bigint,
                v.key_id, v.user_id, u.chat_id, u.language, 'expiry_warning',
                jsonb_build_object('location', v.location, 'expires_at', v.expires_at)
         FROM key_views v JOIN bot_users u ON u.user_id = v.user_id
         WHERE v.status = 'active' AND v.expires_at IS NOT NULL
           AND v.expires_at > now() AND v.expires_at <= now() + $1
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(within)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Claims up to `limit` notifications that are due, for `lease` (another sender may take
/// them after that, if this one died). A short statement of its own: no transaction is
/// held open while Telegram is called.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: time::Duration,
) -> Result<Vec<Owed>, sqlx::Error> {
    #[allow(clippy::type_complexity)]
    let rows: Vec<(String, Uuid, i64, i64, String, String, Value, i32)> = sqlx::query_as(
        "UPDATE bot_notifications SET leased_until = now() + $2
         WHERE id IN (
             SELECT id FROM bot_notifications
             WHERE outcome IS NULL AND not_before <= now()
               AND (leased_until IS NULL OR leased_until < now())
             ORDER BY created_at, id
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, key_id, user_id, chat_id, language, kind, payload, attempts",
    )
    .bind(limit)
    .bind(lease)
    .fetch_all(pool)
    .await?;
    let mut owed: Vec<Owed> = rows
        .into_iter()
        .map(
            |(id, key_id, user_id, chat_id, lang, kind, payload, attempts)| Owed {
                id,
                key_id,
                user_id,
                chat_id,
                lang: Lang::from_stored(&lang),
                kind,
                payload,
                attempts,
            },
        )
        .collect();
    // RETURNING does not keep the subquery's order; a user's messages go out in order.
    owed.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(owed)
}

/// Settles a notification: sent, superseded or undeliverable.
pub async fn settle(
    pool: &PgPool,
    id: &str,
    outcome: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bot_notifications
         SET outcome = $2, done_at = now(), leased_until = NULL, last_error = coalesce($3, last_error),
             attempts = attempts + 1
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts a notification back to be tried again at `not_before`.
pub async fn postpone(
    pool: &PgPool,
    id: &str,
    not_before: OffsetDateTime,
    error: &str,
    count_attempt: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bot_notifications
         SET not_before = $2, leased_until = NULL, last_error = $3,
             attempts = attempts + CASE WHEN $4 THEN 1 ELSE 0 END
         WHERE id = $1",
    )
    .bind(id)
    .bind(not_before)
    .bind(error)
    .bind(count_attempt)
    .execute(pool)
    .await?;
    Ok(())
}
