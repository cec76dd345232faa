//! Reading the log: one stream by version, or the whole log by global position. Positions come
//! from a sequence, so position 9 may commit after position 10; reads by position therefore
//! stop at the read horizon (docs/event-log.md, "No reader skips an event that commits late"),
//! and the helpers that read everything committed wait for the horizon rather than stop short.

use uuid::Uuid;

use crate::EventStore;
use crate::error::StoreError;
use crate::model::{EVENT_COLUMNS, RecordedEvent};

impl EventStore {
    /// Every event of one stream, oldest first.
    pub async fn read_stream(&self, stream_id: Uuid) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_stream_after(stream_id, 0).await
    }

    /// The events of one stream with a version above `after_version`, oldest first.
    pub async fn read_stream_after(
        &self,
        stream_id: Uuid,
        after_version: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.read_stream_after_on(&mut conn, stream_id, after_version, i32::MAX as u32)
            .await
    }

    /// Like [`EventStore::read_stream_after`], on a connection the caller holds (inside its
    /// transaction, so that it needs no second connection from the pool).
    pub async fn read_stream_after_on(
        &self,
        conn: &mut sqlx::PgConnection,
        stream_id: Uuid,
        after_version: u32,
        up_to_version: u32,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE stream_id = $1 AND version > $2 AND version <= $3 ORDER BY version"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_id)
            .bind(i32::try_from(after_version).unwrap_or(i32::MAX))
            .bind(i32::try_from(up_to_version).unwrap_or(i32::MAX))
            .fetch_all(conn)
            .await?;
        Ok(decode_rows(&rows)?)
    }

    /// Up to `limit` events after `after_position`, in log order.
    ///
    /// Only events below the read horizon are returned: the oldest transaction among
    /// keyledger's own appends still running (migration 0008), so an event that commits
    /// late is never passed over — a reader that got position p will later get every
    /// position below p that ever commits — while nothing else on the server (another
    /// database's long transaction, an idle session) holds readers back. The horizon is
    /// taken in a statement of its own, before the one that reads: the read's snapshot
    /// then holds every append that ended below it.
    pub async fn read_all(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let horizon: String = sqlx::query_scalar("SELECT keyledger_read_horizon()::text")
            .fetch_one(&self.pool)
            .await?;
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE position > $1 AND tx < $3::xid8
             ORDER BY position LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after_position)
            .bind(limit.clamp(1, 10_000))
            .bind(horizon)
            .fetch_all(&self.pool)
            .await?;
        Ok(decode_rows(&rows)?)
    }
}

fn decode_rows(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    rows.iter().map(RecordedEvent::from_row).collect()
}

/// How long [`EventStore::read_committed`] waits for in-flight transactions to end.
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

impl EventStore {
    /// The highest position committed so far, whether or not readers may pass it yet.
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(last.unwrap_or(0))
    }

    /// Every event after `after_position` that had committed when the call began, in log
    /// order. Appends still running (of other keyledger processes) hold the gap-free reader
    /// back for a moment; this waits for them (up to 30 s) rather than returning short.
    pub async fn read_committed(
        &self,
        after_position: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let target = self.last_position().await?;
        let mut events = Vec::new();
        let mut position = after_position;
        loop {
            let page = self.read_page_until(position, target, 1000).await?;
            let Some(last) = page.last() else {
                return Ok(events);
            };
            position = last.position;
            events.extend(page);
        }
    }

    /// The next page of up to `limit` events after `after_position`, waiting (up to 30 s)
    /// while in-flight transactions hold the reader back. Empty only once `target` is reached.
    pub async fn read_page_until(
        &self,
        after_position: i64,
        target: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if after_position >= target {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let page = self.read_all(after_position, limit).await?;
            if !page.is_empty() {
                return Ok(page);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::HorizonStuck {
                    position: after_position,
                    target,
                });
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
}
