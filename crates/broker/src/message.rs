//! An event as a RabbitMQ message (docs/queues.md), and back.

use eventstore::RecordedEvent;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

pub const CONTENT_TYPE: &str = "application/json";
pub const APP_ID: &str = "keyledger";
/// Header a dead-lettered message carries: why it was given up on.
pub const REASON_HEADER: &str = "x-keyledger-reason";
/// Header a dead-lettered message carries: the queue it was taken from.
pub const SOURCE_QUEUE_HEADER: &str = "x-keyledger-queue";

/// The body and properties the relay publishes for `event`.
pub fn encode(event: &RecordedEvent) -> Result<(Vec<u8>, BasicProperties), serde_json::Error> {
    let body = serde_json::to_vec(event)?;
    let mut headers = FieldTable::default();
    headers.insert(
        "stream_id".into(),
        AMQPValue::LongString(event.stream_id.to_string().into()),
    );
    headers.insert("version".into(), AMQPValue::LongInt(event.version));
    headers.insert("position".into(), AMQPValue::LongLongInt(event.position));
    let mut properties = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_message_id(event.event_id.to_string().into())
        .with_type(event.event_type.as_str().into())
        .with_timestamp(event.recorded_at.unix_timestamp().max(0) as u64)
        .with_app_id(APP_ID.into())
        .with_headers(headers);
    if let Some(correlation_id) = correlation_id(event) {
        properties = properties.with_correlation_id(correlation_id.to_string().into());
    }
    Ok((body, properties))
}

fn correlation_id(event: &RecordedEvent) -> Option<Uuid> {
    event.metadata["correlation_id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// Largest message body taken as an event. Our events are a few kilobytes at most (panel
/// texts in them are truncated); anything larger did not come from the relay and is
/// dead-lettered before it is parsed.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Why a message cannot be taken as an event.
#[derive(Debug, thiserror::Error)]
pub enum MalformedMessage {
    #[error("body of {bytes} bytes is larger than the {limit} bytes an event can be")]
    TooLarge { bytes: usize, limit: usize },
    #[error("body is not an event: {0}")]
    Body(String),
    #[error("message_id {message_id:?} differs from the body's event_id {event_id}")]
    MessageId {
        message_id: Option<String>,
        event_id: Uuid,
    },
    #[error("event {event_id} has no valid version ({version})")]
    Version { event_id: Uuid, version: i32 },
}

/// The event a delivered message announces. The body is only a pointer into the log:
/// consumers apply what the log holds for that stream and version.
pub fn decode(
    body: &[u8],
    properties: &BasicProperties,
) -> Result<RecordedEvent, MalformedMessage> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MalformedMessage::TooLarge {
            bytes: body.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let event: RecordedEvent =
        serde_json::from_slice(body).map_err(|e| MalformedMessage::Body(e.to_string()))?;
    let message_id = properties.message_id().as_ref().map(ShortString::to_string);
    if message_id.as_deref() != Some(event.event_id.to_string().as_str()) {
        return Err(MalformedMessage::MessageId {
            message_id,
            event_id: event.event_id,
        });
    }
    if event.version < 1 {
        return Err(MalformedMessage::Version {
            event_id: event.event_id,
            version: event.version,
        });
    }
    Ok(event)
}

/// How often the broker has delivered this message before (quorum queues count it).
pub fn delivery_count(properties: &BasicProperties) -> i64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    match headers.inner().get("x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        _ => 0,
    }
}
