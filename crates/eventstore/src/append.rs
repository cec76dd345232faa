//! Appending to the log: the SQL calls behind [`EventStore::append`], and the turning of a
//! refused append into its meaning (the same command or events already recorded, or a real
//! version conflict). The writer computes each event's content digest before the call so that
//! the database only links it into the chain, and a refusal is explained by reading back
//! afterwards rather than checked before, so the usual append is a single statement.

use std::borrow::Cow;

use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::EventStore;
use crate::error::{AppendError, StoreError};
use crate::integrity::content_digest;
use crate::jsonb_text::jsonb_text;
use crate::model::{EventMetadata, NewEvent};
use crate::trace_context::{self, TraceCarrier};

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

/// An append made alone is a call of `keyledger_append`, appends written together one of
/// `keyledger_append_batch` (migration 0007).
const APPEND_SQL: &str = "SELECT keyledger_append($1, $2, $3, $4, $5, $6, $7, $8)";
const APPEND_BATCH_SQL: &str = "SELECT append_index, first_position, first_version
     FROM keyledger_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// One append as the store carries it between the caller and the batch writer.
/// Borrowed while the caller writes it itself, owned once queued for a writer task.
#[derive(Debug, Clone)]
pub(crate) struct AppendRequest<'a> {
    pub stream_id: Uuid,
    pub expected_version: u32,
    pub events: Cow<'a, [NewEvent]>,
    pub metadata: Cow<'a, EventMetadata>,
    /// The caller's trace context, taken when the request is made: a batch writer task
    /// writes it in a span of its own.
    pub trace: TraceCarrier,
}

impl<'a> AppendRequest<'a> {
    pub fn new(
        stream_id: Uuid,
        expected_version: u32,
        events: &'a [NewEvent],
        metadata: &'a EventMetadata,
    ) -> Result<Self, AppendError> {
        if events.is_empty() {
            return Err(AppendError::NoEvents);
        }
        if i32::try_from(expected_version).is_err() {
            return Err(AppendError::VersionConflict {
                stream_id,
                expected: expected_version,
                actual: 0,
            });
        }
        Ok(Self {
            stream_id,
            expected_version,
            events: Cow::Borrowed(events),
            metadata: Cow::Borrowed(metadata),
            trace: trace_context::current(),
        })
    }

    pub fn into_owned(self) -> AppendRequest<'static> {
        AppendRequest {
            events: Cow::Owned(self.events.into_owned()),
            metadata: Cow::Owned(self.metadata.into_owned()),
            ..self
        }
    }

    fn range(&self, first_position: i64, first_version: i32) -> AppendedRange {
        let last = self.events.len() as i64 - 1;
        let first_version = first_version.max(0) as u32;
        AppendedRange {
            stream_id: self.stream_id,
            first_position,
            last_position: first_position + last,
            first_version,
            last_version: first_version + last as u32,
        }
    }
}

/// The request's metadata as it is bound, after pushing its events' content digests
/// (docs/event-log.md, "Hash chain") onto `digests`. The writer computes them so that the database
/// only links them into the chain: rendering and hashing every event in plpgsql cost
/// about as much as inserting it.
fn metadata_and_digests(request: &AppendRequest<'_>, digests: &mut Vec<String>) -> Value {
    let mut metadata = serde_json::to_value(&*request.metadata).unwrap_or(Value::Null);
    request.trace.write_into_metadata(&mut metadata);
    let metadata_text = jsonb_text(&metadata);
    let first_version = i64::from(request.expected_version) + 1;
    for (offset, event) in (0i64..).zip(request.events.iter()) {
        digests.push(content_digest(
            request.stream_id,
            first_version + offset,
            event.event_id,
            event.event_type.as_str(),
            &jsonb_text(&event.data),
            &metadata_text,
        ));
    }
    metadata
}

/// Writes one request in one statement and one transaction (if the caller holds none).
/// Returns where its events landed, or `None` when its stream was at another version.
pub(crate) async fn write_one(
    conn: &mut PgConnection,
    request: &AppendRequest<'_>,
) -> Result<Option<AppendedRange>, sqlx::Error> {
    let mut digests = Vec::with_capacity(request.events.len());
    let metadata = metadata_and_digests(request, &mut digests);
    let event_ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = request
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    let data: Vec<&Value> = request.events.iter().map(|e| &e.data).collect();
    let expected = request.expected_version as i32;
    let first_position: Option<i64> = sqlx::query_scalar(APPEND_SQL)
        .bind(request.stream_id)
        .bind(expected)
        .bind(&metadata)
        .bind(request.metadata.command_id)
        .bind(&event_ids)
        .bind(&types)
        .bind(&data)
        .bind(&digests)
        .fetch_one(&mut *conn)
        .await?;
    Ok(first_position.map(|position| request.range(position, expected + 1)))
}

/// Writes `requests` in one statement and one transaction (if the caller holds none).
/// Returns, per request, where its events landed, or `None` when its stream was at
/// another version. A database error means nothing of the batch was written.
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    requests: &[&AppendRequest<'_>],
) -> Result<Vec<Option<AppendedRange>>, sqlx::Error> {
    let mut stream_ids = Vec::with_capacity(requests.len());
    let mut expected = Vec::with_capacity(requests.len());
    let mut metadata = Vec::with_capacity(requests.len());
    let mut command_ids = Vec::with_capacity(requests.len());
    let mut counts = Vec::with_capacity(requests.len());
    let (mut event_ids, mut types, mut data, mut digests) = (vec![], vec![], vec![], vec![]);
    for request in requests {
        stream_ids.push(request.stream_id);
        expected.push(request.expected_version as i32);
        metadata.push(metadata_and_digests(request, &mut digests));
        command_ids.push(request.metadata.command_id);
        counts.push(request.events.len() as i32);
        for event in request.events.iter() {
            event_ids.push(event.event_id);
            types.push(event.event_type.as_str());
            data.push(&event.data);
        }
    }
    let rows = sqlx::query(APPEND_BATCH_SQL)
        .bind(&stream_ids)
        .bind(&expected)
        .bind(&metadata)
        .bind(&command_ids)
        .bind(&counts)
        .bind(&event_ids)
        .bind(&types)
        .bind(&data)
        .bind(&digests)
        .fetch_all(&mut *conn)
        .await?;
    let mut ranges = vec![None; requests.len()];
    for row in rows {
        let index: i32 = row.try_get("append_index")?;
        let request = usize::try_from(index - 1)
            .ok()
            .and_then(|i| requests.get(i).map(|r| (i, r)));
        let Some((i, request)) = request else {
            return Err(sqlx::Error::Protocol(format!(
                "keyledger_append_batch answered for append {index} of {}",
                requests.len()
            )));
        };
        ranges[i] = Some(request.range(
            row.try_get("first_position")?,
            row.try_get("first_version")?,
        ));
    }
    Ok(ranges)
}

/// Counts newly appended events (`keyledger_events_appended_total`); an idempotent repeat
/// appended nothing.
fn count_appended(outcome: &Result<AppendOutcome, AppendError>, events: usize) {
    if let Ok(AppendOutcome::Appended(_)) = outcome {
        metrics::counter!("keyledger_events_appended_total").increment(events as u64);
    }
}

impl EventStore {
    /// Appends `events` to `stream_id`, which must be at `expected_version` (0 for a new
    /// stream). All events are written atomically, or none. Concurrent appends share
    /// transactions (group commit, see `group.rs`); each still gets its own answer.
    #[tracing::instrument(name = "eventstore.append", skip_all,
        fields(key_id = %stream_id, event_type = events.first().map(|e| e.event_type.as_str())))]
    pub async fn append(
        &self,
        stream_id: Uuid,
        expected_version: u32,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<AppendOutcome, AppendError> {
        let request = AppendRequest::new(stream_id, expected_version, events, metadata)?;
        let outcome = self.group.append(self, request).await;
        count_appended(&outcome, events.len());
        outcome
    }

    /// Appends one request alone, on a pooled connection.
    pub(crate) async fn append_alone(
        &self,
        request: &AppendRequest<'_>,
    ) -> Result<AppendOutcome, AppendError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let result = self.append_request_on(&mut conn, request).await;
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
    #[tracing::instrument(name = "eventstore.append", skip_all,
        fields(key_id = %stream_id, event_type = events.first().map(|e| e.event_type.as_str())))]
    pub async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream_id: Uuid,
        expected_version: u32,
        events: &[NewEvent],
        metadata: &EventMetadata,
    ) -> Result<AppendOutcome, AppendError> {
        let request = AppendRequest::new(stream_id, expected_version, events, metadata)?;
        let outcome = self.append_request_on(conn, &request).await;
        count_appended(&outcome, events.len());
        outcome
    }

    async fn append_request_on(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest<'_>,
    ) -> Result<AppendOutcome, AppendError> {
        match write_one(conn, request).await {
            Ok(Some(range)) => Ok(AppendOutcome::Appended(range)),
            Ok(None) => self.explain_refusal("version", request).await,
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
                let constraint = db.constraint().unwrap_or_default().to_owned();
                self.explain_refusal(&constraint, request).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Turns a refused append into its meaning: the same command or events already recorded
    /// (answered idempotently), or a real conflict.
    pub(crate) async fn explain_refusal(
        &self,
        constraint: &str,
        request: &AppendRequest<'_>,
    ) -> Result<AppendOutcome, AppendError> {
        let AppendRequest {
            stream_id,
            expected_version,
            metadata,
            ..
        } = request;
        let (stream_id, expected_version) = (*stream_id, *expected_version);
        let event_ids: Vec<Uuid> = request.events.iter().map(|e| e.event_id).collect();
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
            // Also when the version moved: the events may be ours, written by an earlier
            // attempt whose answer was lost.
            if constraint == "events_event_id_key" || self.any_recorded(&event_ids).await? {
                return self.recorded_event_ids(stream_id, &event_ids).await;
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

    async fn any_recorded(&self, event_ids: &[Uuid]) -> Result<bool, StoreError> {
        let found: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM events WHERE event_id = ANY($1))")
                .bind(event_ids)
                .fetch_one(&self.pool)
                .await?;
        Ok(found)
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
