//! `keyledger projections rebuild`: every key view recomputed from position 0 into a fresh
//! table (`key_views_next`) that is swapped in at the end. Building beside the live table
//! instead of truncating it means readers keep the old views until the new set is complete,
//! and a rebuild that fails halfway leaves the old views as they were. The subscription views
//! are rebuilt after them, in one transaction of their own (a small table).

use std::collections::HashMap;

use eventstore::EventStore;
use serde::Serialize;
use uuid::Uuid;

use crate::subscription_view::rebuild_subscription_views;
use crate::view::{KeyFold, KeyView, ViewError, is_key_event, upsert, view_of};

/// What a rebuild did.
#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub events: usize,
    pub views: usize,
    /// Keys that got events while the rebuild ran, brought up to date before the swap.
    pub caught_up: usize,
    /// Subscription views written.
    pub subscriptions: usize,
}

const PAGE: i64 = 5_000;

/// Views written per INSERT into the fresh table.
const INSERT_CHUNK: usize = 2_000;

/// Reads the log up to `target` and folds every key's events. The next page is read while
/// the current one is folded, so the database and the fold work side by side.
async fn fold_log(
    store: &EventStore,
    target: i64,
) -> Result<(i64, usize, HashMap<Uuid, KeyFold>), ViewError> {
    let (pages, mut received) = tokio::sync::mpsc::channel(2);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut position = 0i64;
            loop {
                let page = store.read_page_until(position, target, PAGE).await?;
                let Some(last) = page.last() else {
                    return Ok::<i64, ViewError>(position);
                };
                position = last.position;
                if pages.send(page).await.is_err() {
                    return Ok(position);
                }
            }
        })
    };
    let mut folds: HashMap<Uuid, KeyFold> = HashMap::new();
    let mut events = 0usize;
    while let Some(page) = received.recv().await {
        for event in page.iter().filter(|e| is_key_event(e)) {
            folds.entry(event.stream_id).or_default().apply(event)?;
        }
        events += page.len();
    }
    let position = reader
        .await
        .map_err(|e| ViewError::ReaderFailed(e.to_string()))??;
    Ok((position, events, folds))
}

/// Writes `views` into the fresh table in one statement: it is empty and only this
/// rebuild writes it, so there is nothing to conflict with.
async fn insert_views(conn: &mut sqlx::PgConnection, views: &[KeyView]) -> Result<(), sqlx::Error> {
    let mut key_ids = Vec::with_capacity(views.len());
    let mut user_ids = Vec::with_capacity(views.len());
    let mut locations = Vec::with_capacity(views.len());
    let mut statuses = Vec::with_capacity(views.len());
    let mut client_uuids = Vec::with_capacity(views.len());
    let mut links = Vec::with_capacity(views.len());
    let mut expiries = Vec::with_capacity(views.len());
    let mut versions = Vec::with_capacity(views.len());
    let mut updated = Vec::with_capacity(views.len());
    for view in views {
        key_ids.push(view.key_id);
        user_ids.push(view.user_id);
        locations.push(view.location.as_str());
        statuses.push(view.status.as_str());
        client_uuids.push(view.client_uuid);
        links.push(view.link.as_deref());
        expiries.push(view.expires_at);
        versions.push(view.version);
        updated.push(view.updated_at);
    }
    sqlx::query(
        "INSERT INTO key_views_next
             (key_id, user_id, location, status, client_uuid, link, expires_at, version, updated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::uuid[],
                              $6::text[], $7::timestamptz[], $8::int[], $9::timestamptz[])",
    )
    .bind(key_ids)
    .bind(user_ids)
    .bind(locations)
    .bind(statuses)
    .bind(client_uuids)
    .bind(links)
    .bind(expiries)
    .bind(versions)
    .bind(updated)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rebuilds every key view from position 0 into a fresh table and swaps it in, so readers
/// see the old views until the new ones are complete, then the new ones.
///
/// Events that commit while the rebuild reads are not lost: the swap happens under an
/// exclusive lock on the views, after re-projecting every key that got an event past the
/// position the rebuild read up to. The live projector, held back by that lock, then
/// writes into the new table (an update it retries finds the new table).
pub async fn rebuild(store: &EventStore) -> Result<RebuildReport, ViewError> {
    let pool = store.pool();
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS key_views_next;
         CREATE TABLE key_views_next (LIKE key_views INCLUDING ALL);",
    )
    .execute(pool)
    .await?;

    let target = store.last_position().await?;
    let (position, events, folds) = fold_log(store, target).await?;
    let fresh: Vec<KeyView> = folds
        .iter()
        .filter_map(|(key_id, fold)| fold.view(*key_id))
        .collect();
    let views = fresh.len();
    let mut tx = pool.begin().await?;
    for chunk in fresh.chunks(INSERT_CHUNK) {
        insert_views(&mut tx, chunk).await?;
    }
    tx.commit().await?;

    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE key_views IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let key_types: Vec<&str> = domain::EventType::key_types()
        .map(domain::EventType::as_str)
        .collect();
    let late: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM events WHERE position > $1 AND type = ANY($2)",
    )
    .bind(position)
    .bind(key_types)
    .fetch_all(&mut *tx)
    .await?;
    for key_id in &late {
        let history = store
            .read_stream_after_on(&mut tx, *key_id, 0, u32::MAX >> 1)
            .await?;
        if let Some(view) = view_of(*key_id, &history)? {
            upsert(&mut tx, "key_views_next", &view).await?;
        }
    }
    sqlx::raw_sql(
        "DROP TABLE key_views;
         ALTER TABLE key_views_next RENAME TO key_views;
         ALTER INDEX key_views_next_pkey RENAME TO key_views_pkey;
         ALTER INDEX key_views_next_user_id_idx RENAME TO key_views_user;",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(events, views, caught_up = late.len(), "key views rebuilt");
    let subscriptions = rebuild_subscription_views(store).await?;
    Ok(RebuildReport {
        events,
        views,
        caught_up: late.len(),
        subscriptions,
    })
}
