//! RabbitMQ for keyledger: the topology of docs/queues.md, the relay that carries every
//! event of the log to the `keyledger.events` exchange with publisher confirms, and the
//! consumer runtime that every consumer shares (manual acks, dedupe and ordering against
//! the log, retries with backoff, dead letters with a reason, reconnects).
//!
//! Delivery is at least once end to end; "exactly once" is the consumers' effect, made so
//! by recording each consumer's progress per stream in the same transaction as its work.

pub mod bot_updates;
mod connection;
pub mod consumer;
pub mod management;
pub mod message;
pub mod relay;
pub mod topology;

pub use bot_updates::{UpdatePublisher, consume_partition, partition_of};
pub use connection::{Backoff, OPERATION_TIMEOUT, close as connection_close, connect};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerStats, Disposition, EventHandler, HandlerError,
};
pub use management::{Management, ManagementError, QueueInfo};
pub use relay::{Relay, RelayConfig, RelayStats};
pub use topology::Queue;

use eventstore::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ did not answer in time ({0})")]
    Timeout(&'static str),
    #[error("no confirm for the event at position {position} in time")]
    ConfirmTimeout { position: i64 },
    #[error("the broker refused (nack) the event at position {position}")]
    Nacked { position: i64 },
    #[error("no queue is bound for event type {event_type} (position {position})")]
    Unroutable { position: i64, event_type: String },
    #[error("publisher confirms are not on for this channel")]
    ConfirmsOff,
    #[error("the connection to the broker was lost")]
    Disconnected,
    #[error("the broker cancelled the consumer")]
    ConsumerCancelled,
    #[error("the dead-letter exchange did not take a message from {queue}")]
    DeadLetterRefused { queue: String },
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot encode an event: {0}")]
    Encode(#[from] serde_json::Error),
}
