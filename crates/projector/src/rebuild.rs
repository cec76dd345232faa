use std::collections::HashMap;

use eventstore::EventStore;
use serde::Serialize;
use uuid::Uuid;

use crate::view::{KeyFold, ViewError, upsert, view_of};

/// What a rebuild did.
#[derive(Debug, Serialize)]
pub struct RebuildReport {
    pub events: usize,
    pub views: usize,
    /// Keys that got events while the rebuild ran, brought up to date before the swap.
    pub caught_up: usize,
}

const PAGE: i64 = 5_000;

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
    let (mut position, mut events) = (0i64, 0usize);
    let mut folds: HashMap<Uuid, KeyFold> = HashMap::new();
    loop {
        let page = store.read_page_until(position, target, PAGE).await?;
        let Some(last) = page.last() else { break };
        position = last.position;
        for event in &page {
            folds.entry(event.stream_id).or_default().apply(event)?;
        }
        events += page.len();
    }
    let mut conn = pool.acquire().await?;
    let mut views = 0;
    for (key_id, fold) in &folds {
        if let Some(view) = fold.view(*key_id) {
            upsert(&mut conn, "key_views_next", &view).await?;
            views += 1;
        }
    }
    drop(conn);

    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE key_views IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let late: Vec<Uuid> =
        sqlx::query_scalar("SELECT DISTINCT stream_id FROM events WHERE position > $1")
            .bind(position)
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
    Ok(RebuildReport {
        events,
        views,
        caught_up: late.len(),
    })
}
