//! The subscription views (`subscription_views`): each user's subscription as its stream
//! says — whose it is and which generation of its URL is current. The `sub` role reads them
//! to map a token to its subscription, the API to show a user's URL. Like the key views they
//! are a pure fold of the log ([`subscription_view_of`]), kept live by the projector, rebuilt
//! by `projections rebuild` and compared with a replay by `audit verify`.

use std::collections::HashMap;

use domain::{EventType, StreamKind, SubscriptionEvent, SubscriptionState, evolve_subscription};
use eventstore::{EventStore, RecordedEvent};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::view::ViewError;

/// A user's subscription as the API and the `sub` role read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SubscriptionView {
    pub subscription_id: Uuid,
    pub user_id: i64,
    pub generation: i32,
    pub version: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Whether `event` belongs to a subscription's stream rather than a key's.
pub fn is_subscription_event(event: &RecordedEvent) -> bool {
    EventType::parse(&event.event_type)
        .is_some_and(|kind| kind.stream_kind() == StreamKind::Subscription)
}

/// The event types of subscription streams, for SQL filters.
fn subscription_types() -> Vec<&'static str> {
    EventType::ALL
        .into_iter()
        .filter(|kind| kind.stream_kind() == StreamKind::Subscription)
        .map(EventType::as_str)
        .collect()
}

/// The view of a subscription after `events` (its events, oldest first); `None` before it
/// was issued.
pub fn subscription_view_of(
    id: Uuid,
    events: &[RecordedEvent],
) -> Result<Option<SubscriptionView>, ViewError> {
    let mut state = SubscriptionState::default();
    let mut last = None;
    for event in events {
        let decoded =
            SubscriptionEvent::from_parts(&event.event_type, &event.data).map_err(|e| {
                ViewError::UndecodableEvent {
                    key_id: event.stream_id,
                    event_id: event.event_id,
                    version: event.version,
                    reason: e.to_string(),
                }
            })?;
        state = evolve_subscription(state, &decoded);
        last = Some((event.version, event.recorded_at));
    }
    let (Some(user_id), Some((version, updated_at))) = (state.user_id, last) else {
        return Ok(None);
    };
    Ok(Some(SubscriptionView {
        subscription_id: id,
        user_id: user_id.get(),
        generation: i32::try_from(state.generation).unwrap_or(i32::MAX),
        version,
        updated_at,
    }))
}

const COLUMNS: &str = "subscription_id, user_id, generation, version, updated_at";

/// Writes `view` unless the table already holds a newer version of it.
pub(crate) async fn upsert_subscription(
    conn: &mut PgConnection,
    view: &SubscriptionView,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO subscription_views ({COLUMNS}) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (subscription_id) DO UPDATE SET
             user_id = excluded.user_id, generation = excluded.generation,
             version = excluded.version, updated_at = excluded.updated_at
         WHERE subscription_views.version < excluded.version"
    ))
    .bind(view.subscription_id)
    .bind(view.user_id)
    .bind(view.generation)
    .bind(view.version)
    .bind(view.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored view of a user's subscription.
pub async fn load_subscription_view(
    pool: &PgPool,
    user_id: i64,
) -> Result<Option<SubscriptionView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM subscription_views WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// Every subscription event of the log, by stream, oldest first.
async fn subscription_streams(
    conn: &mut PgConnection,
) -> Result<HashMap<Uuid, Vec<RecordedEvent>>, ViewError> {
    let rows = sqlx::query(
        "SELECT event_id, stream_id, version, position, type, data, metadata, recorded_at, hash
           FROM events WHERE type = ANY($1) ORDER BY stream_id, version",
    )
    .bind(subscription_types())
    .fetch_all(conn)
    .await?;
    let mut streams: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
    for row in rows {
        let event = RecordedEvent::from_row(&row)?;
        streams.entry(event.stream_id).or_default().push(event);
    }
    Ok(streams)
}

/// Replaces every subscription view with a replay of the log, in one transaction that holds
/// the live projector off the table, so readers see the old set until the new one commits
/// and no live update is lost (one that waited applies its newer version afterwards).
pub async fn rebuild_subscription_views(store: &EventStore) -> Result<usize, ViewError> {
    let mut tx = store.pool().begin().await?;
    sqlx::query("LOCK TABLE subscription_views IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let streams = subscription_streams(&mut tx).await?;
    sqlx::query("DELETE FROM subscription_views")
        .execute(&mut *tx)
        .await?;
    let mut views = 0;
    for (id, events) in &streams {
        if let Some(view) = subscription_view_of(*id, events)? {
            upsert_subscription(&mut tx, &view).await?;
            views += 1;
        }
    }
    tx.commit().await?;
    tracing::info!(views, "subscription views rebuilt");
    Ok(views)
}

/// A stored subscription view that says something a replay does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionDifference {
    pub subscription_id: Uuid,
    pub stored: Option<SubscriptionView>,
    pub replayed: Option<SubscriptionView>,
}

/// The outcome of comparing every stored subscription view with a replay.
#[derive(Debug, Default, Serialize)]
pub struct SubscriptionViewReport {
    pub subscriptions: usize,
    pub differences: Vec<SubscriptionDifference>,
    /// Subscriptions whose view is behind the log (the projector has not caught up yet).
    pub lagging: Vec<Uuid>,
}

impl SubscriptionViewReport {
    pub fn holds(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares every stored subscription view with a replay of its stream up to the view's
/// version.
pub async fn verify_subscription_views(
    store: &EventStore,
) -> Result<SubscriptionViewReport, ViewError> {
    let mut conn = store.pool().acquire().await?;
    let streams = subscription_streams(&mut conn).await?;
    let stored: Vec<SubscriptionView> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM subscription_views"))
            .fetch_all(&mut *conn)
            .await?;
    let mut stored: HashMap<Uuid, SubscriptionView> =
        stored.into_iter().map(|v| (v.subscription_id, v)).collect();
    let mut report = SubscriptionViewReport {
        subscriptions: streams.len(),
        ..SubscriptionViewReport::default()
    };
    for (id, events) in &streams {
        let view = stored.remove(id);
        let upto = view.as_ref().map_or(i32::MAX, |v| v.version);
        let seen: Vec<RecordedEvent> = events
            .iter()
            .filter(|e| e.version <= upto)
            .cloned()
            .collect();
        let replayed = subscription_view_of(*id, &seen)?;
        let latest = events.last().map_or(0, |e| e.version);
        match (&view, &replayed) {
            (Some(v), Some(r)) if v == r => {
                if v.version < latest {
                    report.lagging.push(*id);
                }
            }
            (None, None) => {}
            (None, Some(_)) => report.lagging.push(*id),
            _ => report.differences.push(SubscriptionDifference {
                subscription_id: *id,
                stored: view,
                replayed,
            }),
        }
    }
    for (id, view) in stored {
        report.differences.push(SubscriptionDifference {
            subscription_id: id,
            stored: Some(view),
            replayed: None,
        });
    }
    report.differences.sort_by_key(|d| d.subscription_id);
    report.lagging.sort();
    Ok(report)
}
