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
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2 ORDER BY version"
        );
        let rows = sqlx::query(&sql)
            .bind(stream_id)
            .bind(i32::try_from(after_version).unwrap_or(i32::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(RecordedEvent::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Up to `limit` events after `after_position`, in log order.
    ///
    /// Only events whose transaction is older than every transaction still running are
    /// returned, so an event that commits late is never passed over: a reader that got
    /// position p will later get every position below p that ever commits. The price is
    /// that one long-running writing transaction holds every reader back until it ends.
    pub async fn read_all(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE position > $1 AND tx < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY position LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(after_position)
            .bind(limit.clamp(1, 10_000))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(RecordedEvent::from_row)
            .collect::<Result<_, _>>()?)
    }
}
