//! The key view itself: its type, the fold that computes it from a key's events, and the SQL
//! that stores, loads and verifies it. The live projector, the rebuild and `audit verify` all
//! use the one `KeyFold`, so there is a single definition of what a view says, and it can only
//! be what a replay of the log says.

use std::collections::HashMap;

use domain::{EventType, KeyEvent, KeyState, StreamKind, evolve};
use eventstore::{EventStore, RecordedEvent, StoreError};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// A key as users and services see it (docs/http-api.md "Key view").
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyView {
    pub key_id: Uuid,
    pub user_id: i64,
    pub location: String,
    pub status: String,
    pub client_uuid: Uuid,
    /// The `vless://` link of the current client, as the worker recorded it when the
    /// panel confirmed holding it; `None` until then, and while a rotation or revocation
    /// is pending.
    pub link: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("event {event_id} (version {version} of key {key_id}) cannot be read: {reason}")]
    UndecodableEvent {
        key_id: Uuid,
        event_id: Uuid,
        version: i32,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the log reader stopped: {0}")]
    ReaderFailed(String),
}

/// Folds a key's events one at a time; the fold behind every view.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyFold {
    state: KeyState,
    last: Option<(i32, OffsetDateTime)>,
}

impl KeyFold {
    pub(crate) fn apply(&mut self, event: &RecordedEvent) -> Result<(), ViewError> {
        let decoded: KeyEvent = event.key_event().map_err(|e| ViewError::UndecodableEvent {
            key_id: event.stream_id,
            event_id: event.event_id,
            version: event.version,
            reason: e.to_string(),
        })?;
        self.state = evolve(std::mem::take(&mut self.state), &decoded);
        self.last = Some((event.version, event.recorded_at));
        Ok(())
    }

    pub(crate) fn view(&self, key_id: Uuid) -> Option<KeyView> {
        let details = self.state.details.as_ref()?;
        let status = self.state.status()?;
        let (version, updated_at) = self.last?;
        Some(KeyView {
            key_id,
            user_id: details.user_id.get(),
            location: details.location.as_str().to_owned(),
            status: status.as_str().to_owned(),
            client_uuid: details.client_uuid,
            link: details.link.clone(),
            expires_at: details.expires_at.map(to_micros),
            version,
            updated_at,
        })
    }
}

/// PostgreSQL keeps microseconds; a view says what the table can hold.
fn to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// Whether `event` belongs to a key's stream rather than a subscription's or a user's
/// access. A type this build does not know counts as a key's, so that it shows up as
/// undecodable instead of being passed over.
pub fn is_key_event(event: &RecordedEvent) -> bool {
    EventType::parse(&event.event_type).is_none_or(|kind| kind.stream_kind() == StreamKind::Key)
}

/// The view of a key after `events` (its events, oldest first); `None` before it was
/// requested.
pub fn view_of(key_id: Uuid, events: &[RecordedEvent]) -> Result<Option<KeyView>, ViewError> {
    let mut fold = KeyFold::default();
    for event in events {
        fold.apply(event)?;
    }
    Ok(fold.view(key_id))
}

const VIEW_COLUMNS: &str =
    "key_id, user_id, location, status, client_uuid, link, expires_at, version, updated_at";

/// Writes `view` into `table` unless the table already holds a newer version of it.
pub(crate) async fn upsert(
    conn: &mut PgConnection,
    table: &str,
    view: &KeyView,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {table} ({VIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (key_id) DO UPDATE SET
             user_id = excluded.user_id, location = excluded.location,
             status = excluded.status, client_uuid = excluded.client_uuid,
             link = excluded.link, expires_at = excluded.expires_at,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE {table}.version < excluded.version"
    );
    sqlx::query(&sql)
        .bind(view.key_id)
        .bind(view.user_id)
        .bind(&view.location)
        .bind(&view.status)
        .bind(view.client_uuid)
        .bind(&view.link)
        .bind(view.expires_at)
        .bind(view.version)
        .bind(view.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// The stored view of one key.
pub async fn load_view(pool: &PgPool, key_id: Uuid) -> Result<Option<KeyView>, sqlx::Error> {
    let sql = format!("SELECT {VIEW_COLUMNS} FROM key_views WHERE key_id = $1");
    sqlx::query_as(&sql).bind(key_id).fetch_optional(pool).await
}

/// The stored views of one user's keys, by location.
pub async fn user_views(pool: &PgPool, user_id: i64) -> Result<Vec<KeyView>, sqlx::Error> {
    let sql = format!("SELECT {VIEW_COLUMNS} FROM key_views WHERE user_id = $1 ORDER BY location");
    sqlx::query_as(&sql).bind(user_id).fetch_all(pool).await
}

/// A stored view that says something a replay of the log does not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewDifference {
    pub key_id: Uuid,
    /// What the view holds (`None`: no view although the log has the key).
    pub stored: Option<KeyView>,
    /// What a replay of the log up to the view's version gives.
    pub replayed: Option<KeyView>,
}

/// The outcome of comparing every stored view with a replay.
#[derive(Debug, Default, Serialize)]
pub struct ViewReport {
    pub keys: usize,
    pub differences: Vec<ViewDifference>,
    /// Keys whose view is behind the log (the projector has not caught up yet); a
    /// difference only if it lasts.
    pub lagging: Vec<Uuid>,
}

impl ViewReport {
    pub fn holds(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares every stored view with a replay of its key's events up to the view's
/// version, and reports keys whose view is missing or behind the log.
pub async fn verify_views(store: &EventStore) -> Result<ViewReport, ViewError> {
    let events = store.read_committed(0).await?;
    let mut by_key: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
    // Subscription streams have views of their own (crate::subscription_view); users'
    // access streams have none.
    for event in events.into_iter().filter(is_key_event) {
        by_key.entry(event.stream_id).or_default().push(event);
    }
    let sql = format!("SELECT {VIEW_COLUMNS} FROM key_views");
    let stored: Vec<KeyView> = sqlx::query_as(&sql).fetch_all(store.pool()).await?;
    let mut stored: HashMap<Uuid, KeyView> = stored.into_iter().map(|v| (v.key_id, v)).collect();
    let mut report = ViewReport {
        keys: by_key.len(),
        ..ViewReport::default()
    };
    for (key_id, events) in &by_key {
        let view = stored.remove(key_id);
        let upto = view.as_ref().map(|v| v.version).unwrap_or(i32::MAX);
        let seen: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| e.version <= upto)
            .cloned()
            .collect();
        let replayed = view_of(*key_id, &seen)?;
        let latest = events.last().map(|e| e.version).unwrap_or(0);
        match (&view, &replayed) {
            (Some(v), Some(r)) if same_view(v, r) => {
                if v.version < latest {
                    report.lagging.push(*key_id);
                }
            }
            (None, None) => {}
            (None, Some(_)) => report.lagging.push(*key_id),
            _ => report.differences.push(ViewDifference {
                key_id: *key_id,
                stored: view,
                replayed,
            }),
        }
    }
    // Views of keys the log does not have at all.
    for (key_id, view) in stored {
        report.differences.push(ViewDifference {
            key_id,
            stored: Some(view),
            replayed: None,
        });
    }
    report.differences.sort_by_key(|d| d.key_id);
    report.lagging.sort();
    Ok(report)
}

/// Equal in everything a replay determines, which is every field: the link comes from
/// the acknowledgement events too.
fn same_view(stored: &KeyView, replayed: &KeyView) -> bool {
    stored == replayed
}
