//! Usage: what each panel reports of our clients' traffic, kept in `key_usage` for the key
//! views. Counters are observations, not decisions, so they never enter the event log; the
//! one decision the panel takes from them — switching off a client whose quota is used up —
//! is judged here ([`judge_panel_decision`]) and recorded by the reconciler as
//! `key.depleted`. Rows are matched to keys by email (`tg<user>-<location>`), and written
//! only for keys the log knows.

use domain::{DesiredClient, KeyId, KeyState, LocationId, Phase, UserId};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{ClientTraffic, InboundClients};

/// What the panel decided on its own about a client the log wants switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelDecision {
    /// The traffic job switched it off because `up + down` reached its quota, the quota
    /// the log wants: recorded once as `key.depleted`.
    Depleted { used_bytes: u64, limit_bytes: u64 },
    /// The traffic job switched it off because its expiry time passed, before our
    /// scheduler recorded `key.expired`: left to the scheduler.
    Expired,
}

/// Whether the panel's `enable: false` for this key's client is a decision of its own that
/// the log must learn rather than undo. Only an active key that wants its client on is
/// judged: a key waiting for the worker is the worker's, and a depleted or expired one
/// already wants it off. A used-up quota counts only when it is the quota the log wants —
/// a row with another quota is a change of ours still on its way.
pub fn judge_panel_decision(
    state: &KeyState,
    desired: &DesiredClient,
    row: &ClientTraffic,
    now: OffsetDateTime,
) -> Option<PanelDecision> {
    if state.phase != Phase::Active || !desired.enable || row.enable {
        return None;
    }
    let limit_bytes = u64::try_from(row.total).ok()?;
    if row.quota_used_up() && limit_bytes == desired.total_bytes {
        return Some(PanelDecision::Depleted {
            used_bytes: row.used_bytes(),
            limit_bytes,
        });
    }
    let now_ms = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let due = desired.expiry_time_ms > 0 && desired.expiry_time_ms <= now_ms;
    (due && row.expired_by_panel(now_ms)).then_some(PanelDecision::Expired)
}

/// The Telegram user behind one of this location's emails (`tg<digits>-<location>`).
pub(crate) fn our_user(email: &str, location: &str) -> Option<i64> {
    let lowercase = email.to_ascii_lowercase();
    let user = lowercase
        .strip_prefix("tg")?
        .strip_suffix(location)?
        .strip_suffix('-')?;
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    user.parse().ok()
}

/// One key's counters as the panel reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsageRow {
    pub key_id: Uuid,
    pub up_bytes: i64,
    pub down_bytes: i64,
    pub limit_bytes: i64,
    /// Unix ms; 0 = never.
    pub last_online_ms: i64,
    pub enabled_on_panel: bool,
}

/// The usage rows of our clients in `listed` (none when the read carried no traffic).
pub(crate) fn usage_rows(location: &str, listed: &InboundClients) -> Vec<UsageRow> {
    let Ok(location_id) = LocationId::new(location) else {
        return Vec::new();
    };
    listed
        .clients
        .iter()
        .filter_map(|client| {
            let row = listed.traffic_of(&client.email)?;
            let user = UserId::new(our_user(&client.email, location)?).ok()?;
            Some(UsageRow {
                key_id: KeyId::for_user_at(user, &location_id).as_uuid(),
                up_bytes: row.up.max(0),
                down_bytes: row.down.max(0),
                limit_bytes: row.total.max(0),
                last_online_ms: row.last_online_ms.max(0),
                enabled_on_panel: listed.effectively_enabled(client),
            })
        })
        .collect()
}

/// Upserts `rows` into `key_usage` in one statement, skipping emails the log has no key
/// for (an older system's clients); returns how many rows were written.
pub(crate) async fn record_usage(pool: &PgPool, rows: &[UsageRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let column = |f: fn(&UsageRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
    let key_ids: Vec<Uuid> = rows.iter().map(|r| r.key_id).collect();
    let enabled: Vec<bool> = rows.iter().map(|r| r.enabled_on_panel).collect();
    let done = sqlx::query(
        "INSERT INTO key_usage
             (key_id, up_bytes, down_bytes, limit_bytes, last_online, enabled_on_panel, observed_at)
         SELECT u.key_id, u.up, u.down, u.lim,
                CASE WHEN u.online_ms > 0 THEN to_timestamp(u.online_ms / 1000.0) END,
                u.enabled, now()
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[])
              AS u(key_id, up, down, lim, online_ms, enabled)
         WHERE EXISTS (SELECT 1 FROM events e WHERE e.stream_id = u.key_id)
         ON CONFLICT (key_id) DO UPDATE SET
             up_bytes = excluded.up_bytes, down_bytes = excluded.down_bytes,
             limit_bytes = excluded.limit_bytes, last_online = excluded.last_online,
             enabled_on_panel = excluded.enabled_on_panel, observed_at = excluded.observed_at",
    )
    .bind(&key_ids)
    .bind(column(|r| r.up_bytes))
    .bind(column(|r| r.down_bytes))
    .bind(column(|r| r.limit_bytes))
    .bind(column(|r| r.last_online_ms))
    .bind(&enabled)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::KeyDetails;

    fn row(enable: bool, up: i64, down: i64, total: i64, expiry: i64) -> ClientTraffic {
        ClientTraffic {
            email: "tg42-ams".into(),
            enable,
            up,
            down,
            total,
            expiry_time_ms: expiry,
            last_online_ms: 0,
        }
    }

    fn active(total_bytes: u64, expiry_time_ms: i64) -> (KeyState, DesiredClient) {
        let state = KeyState {
            phase: Phase::Active,
            details: None::<KeyDetails>,
            ..KeyState::default()
        };
        let desired = DesiredClient {
            client_uuid: Uuid::nil(),
            email: "tg42-ams".into(),
            enable: true,
            expiry_time_ms,
            total_bytes,
            telegram_id: 42,
        };
        (state, desired)
    }

    #[test]
    fn a_used_up_quota_the_log_wants_is_a_depletion() {
        let now = OffsetDateTime::now_utc();
        let (state, desired) = active(1000, 0);
        assert_eq!(
            judge_panel_decision(&state, &desired, &row(false, 600, 500, 1000, 0), now),
            Some(PanelDecision::Depleted {
                used_bytes: 1100,
                limit_bytes: 1000
            })
        );
        // Still on, or another quota than the log's (our raise on its way): not judged.
        assert_eq!(
            judge_panel_decision(&state, &desired, &row(true, 600, 500, 1000, 0), now),
            None
        );
        assert_eq!(
            judge_panel_decision(&state, &desired, &row(false, 600, 500, 900, 0), now),
            None
        );
        // Off, but not for the quota: not the panel's quota decision.
        assert_eq!(
            judge_panel_decision(&state, &desired, &row(false, 6, 5, 1000, 0), now),
            None
        );
        let depleted = KeyState {
            phase: Phase::Depleted,
            ..state.clone()
        };
        assert_eq!(
            judge_panel_decision(&depleted, &desired, &row(false, 600, 500, 1000, 0), now),
            None
        );
    }

    #[test]
    fn an_expiry_the_panel_enforced_first_is_left_to_the_scheduler() {
        let now = OffsetDateTime::now_utc();
        let past = (now.unix_timestamp() - 60) * 1000;
        let (state, desired) = active(0, past);
        assert_eq!(
            judge_panel_decision(&state, &desired, &row(false, 1, 1, 0, past), now),
            Some(PanelDecision::Expired)
        );
        let (state, future) = active(0, past + 3_600_000);
        assert_eq!(
            judge_panel_decision(&state, &future, &row(false, 1, 1, 0, past), now),
            None,
            "the log does not say the key is due"
        );
    }

    #[test]
    fn our_users_come_from_our_emails_only() {
        assert_eq!(our_user("tg42-ams", "ams"), Some(42));
        assert_eq!(our_user("TG42-ams", "ams"), Some(42));
        assert_eq!(our_user("tg42-fra", "ams"), None);
        assert_eq!(our_user("tg-ams", "ams"), None);
        assert_eq!(our_user("alice@example.org", "ams"), None);
    }
}
