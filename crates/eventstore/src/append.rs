use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::EventStore;
use crate::error::{AppendError, StoreError};
use crate::model::{EventMetadata, NewEvent};

/// Where an append's events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedRange {
    pub stream_id: Uuid,
    pub first_position: i64,
    pub last_position: i64,
    pub first_version: u32,
    pub last_version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The events were written now.
    Appended(AppendedRange),
    /// The same command or events had been written before; this is where they are.
    AlreadyAppended(AppendedRange),
}

impl AppendOutcome {
    pub fn range(&self) -> AppendedRange {
        match self {
            Self::Appended(range) | Self::AlreadyAppended(range) => *range,
        }
    }
}

/// The whole append is one call of `keyledger_append` (see the migration).
const APPEND_SQL: &str = "SELECT out_position AS position, out_version AS version
     FROM keyledger_append($1, $2, $3, $4, $5, $6, $7)";

impl EventStore {
    /// Appends `events` to `stream_id`, which must be at `expected_version` (0 for a new
    /// stream). All events are written atomically, or none.
    pub async fn append(
        &self,
        stream_id: Uuid,
        expected_version: u32,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<AppendOutcome, AppendError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let result = self
            .append_on(&mut conn, stream_id, expected_version, events, metadata)
            .await;
        if matches!(result, Err(AppendError::Store(_))) {
            // An append cut short may have left the position lock held by this session
            // (see keyledger_reserve_positions); closing the session releases it.
            conn.close_on_drop();
        }
        result
    }

    /// Appends on a connection the caller holds, typically inside its own transaction;
    /// the events must be that transaction's first write. The caller commits, and should
    /// close the session if this fails with a store error (see [`EventStore::append`]).
    pub async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream_id: Uuid,
        expected_version: u32,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<AppendOutcome, AppendError> {
        if events.is_empty() {
            return Err(AppendError::NoEvents);
        }
        let expected =
            i32::try_from(expected_version).map_err(|_| AppendError::VersionConflict {
                stream_id,
                expected: expected_version,
                actual: 0,
            })?;
        let event_ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
        let metadata_json = serde_json::to_value(metadata).unwrap_or(Value::Null);

        let result = sqlx::query(APPEND_SQL)
            .bind(stream_id)
            .bind(expected)
            .bind(&event_ids)
            .bind(&types)
            .bind(&data)
            .bind(&metadata_json)
            .bind(metadata.command_id)
            .fetch_all(&mut *conn)
            .await;

        let rows = match result {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                let constraint = db.constraint().unwrap_or_default().to_owned();
                return self
                    .explain_duplicate(
                        &constraint,
                        stream_id,
                        expected_version,
                        &event_ids,
                        metadata,
                    )
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        if rows.is_empty() {
            return self
                .explain_duplicate("version", stream_id, expected_version, &event_ids, metadata)
                .await;
        }
        let first = &rows[0];
        let last = &rows[rows.len() - 1];
        Ok(AppendOutcome::Appended(AppendedRange {
            stream_id,
            first_position: first.try_get("position")?,
            last_position: last.try_get("position")?,
            first_version: version_of(first)?,
            last_version: version_of(last)?,
        }))
    }

    /// Turns a refused append into its meaning: the same command or events already recorded
    /// (answered idempotently), or a real conflict.
    async fn explain_duplicate(
        &self,
        constraint: &str,
        stream_id: Uuid,
        expected_version: u32,
        event_ids: &[Uuid],
        metadata: &EventMetadata,
    ) -> Result<AppendOutcome, AppendError> {
        let resolved = async {
            if let Some(command_id) = metadata.command_id
                && let Some(range) = self.command_range(command_id).await?
            {
                if range.stream_id != stream_id {
                    return Ok(Err(AppendError::CommandIdTaken {
                        command_id,
                        stream_id: range.stream_id,
                        requested: stream_id,
                    }));
                }
                return Ok(Ok(range));
            }
            if constraint == "events_event_id_key" {
                return self.recorded_event_ids(stream_id, event_ids).await;
            }
            let actual = self.stream_version(stream_id).await?;
            Ok(Err(AppendError::VersionConflict {
                stream_id,
                expected: expected_version,
                actual,
            }))
        };
        match resolved.await {
            Ok(Ok(range)) => Ok(AppendOutcome::AlreadyAppended(range)),
            Ok(Err(err)) => Err(err),
            Err(store) => Err(AppendError::Store(store)),
        }
    }

    /// Where the events of an already applied command are, if it was applied.
    pub async fn command_range(
        &self,
        command_id: Uuid,
    ) -> Result<Option<AppendedRange>, StoreError> {
        let row = sqlx::query(
            "SELECT stream_id, first_position, last_position, first_version, last_version
             FROM commands WHERE command_id = $1",
        )
        .bind(command_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| range_from_row(&row)).transpose()
    }

    async fn recorded_event_ids(
        &self,
        stream_id: Uuid,
        event_ids: &[Uuid],
    ) -> Result<Result<AppendedRange, AppendError>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, stream_id, position AS first_position, position AS last_position,
                    version AS first_version, version AS last_version
             FROM events WHERE event_id = ANY($1) ORDER BY position",
        )
        .bind(event_ids)
        .fetch_all(&self.pool)
        .await?;
        let same_events = rows.len() == event_ids.len()
            && rows
                .iter()
                .all(|row| row.try_get::<Uuid, _>("stream_id").ok() == Some(stream_id));
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(Err(AppendError::EventIdTaken {
                event_id: event_ids.first().copied().unwrap_or_default(),
            }));
        };
        if !same_events {
            return Ok(Err(AppendError::EventIdTaken {
                event_id: first.try_get("event_id")?,
            }));
        }
        let (first, last) = (range_from_row(first)?, range_from_row(last)?);
        Ok(Ok(AppendedRange {
            last_position: last.last_position,
            last_version: last.last_version,
            ..first
        }))
    }

    /// The number of events in a stream.
    pub async fn stream_version(&self, stream_id: Uuid) -> Result<u32, StoreError> {
        let version: Option<i32> =
            sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
                .bind(stream_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(version.unwrap_or(0).max(0) as u32)
    }
}

fn version_of(row: &sqlx::postgres::PgRow) -> Result<u32, sqlx::Error> {
    let version: i32 = row.try_get("version")?;
    Ok(version.max(0) as u32)
}

fn range_from_row(row: &sqlx::postgres::PgRow) -> Result<AppendedRange, StoreError> {
    let version = |column: &str| -> Result<u32, sqlx::Error> {
        Ok(row.try_get::<i32, _>(column)?.max(0) as u32)
    };
    Ok(AppendedRange {
        stream_id: row.try_get("stream_id")?,
        first_position: row.try_get("first_position")?,
        last_position: row.try_get("last_position")?,
        first_version: version("first_version")?,
        last_version: version("last_version")?,
    })
}
