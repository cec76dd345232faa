//! Events at the store's edge: [`NewEvent`] going in, [`RecordedEvent`] coming out (the body of
//! docs/events.md and docs/queues.md), and the [`EventMetadata`] stored with every append.
//! Events are held as a `type` and JSON `data` rather than as `domain::KeyEvent`, so the store
//! can keep and serve an event a given build cannot decode, and the reader decides what an
//! unreadable event means.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use domain::{EventDecodeError, KeyEvent};

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Value,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            event_type: event_type.into(),
            data,
        }
    }

    pub fn from_key_event(event: &KeyEvent) -> Self {
        Self::new(event.event_type(), event.data())
    }
}

/// Who caused an event (docs/events.md `actor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    TelegramUser,
    Admin,
    Service,
    Worker,
    Scheduler,
    Reconciler,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn new(kind: ActorKind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }
}

/// Why and by whom events were recorded; stored with every event of one append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub actor: Actor,
    /// The command that produced the events; a second append with the same id is answered
    /// with the first one's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
}

impl EventMetadata {
    /// Metadata for a command that starts a new flow: it is its own correlation and cause.
    pub fn for_command(command_id: Uuid, actor: Actor) -> Self {
        Self {
            correlation_id: command_id,
            causation_id: command_id,
            actor,
            command_id: Some(command_id),
        }
    }
}

/// An event as the log holds it; serialises to the body of docs/events.md and docs/queues.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub version: i32,
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub hash: String,
}

impl RecordedEvent {
    pub fn key_event(&self) -> Result<KeyEvent, EventDecodeError> {
        KeyEvent::from_parts(&self.event_type, &self.data)
    }

    /// An event from a row holding the `events` columns by their names.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            event_id: row.try_get("event_id")?,
            stream_id: row.try_get("stream_id")?,
            version: row.try_get("version")?,
            position: row.try_get("position")?,
            event_type: row.try_get("type")?,
            data: row.try_get("data")?,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
            hash: row.try_get("hash")?,
        })
    }
}

/// The columns every read selects, in `RecordedEvent::from_row`'s names.
pub(crate) const EVENT_COLUMNS: &str =
    "event_id, stream_id, version, position, type, data, metadata, recorded_at, hash";
