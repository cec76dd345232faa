//! The consumer runtime every consumer (worker, projector, bot notifier) runs on.
//!
//! A message is only a pointer into the log. For each delivery the runtime locks the
//! consumer's progress of the event's stream (an advisory lock), reads from the log every event after the
//! last one applied up to the delivered one, hands them to the handler in version order,
//! records the new progress in the handler's transaction, commits, and only then acks. So:
//! - a duplicate delivery finds the version already applied and is acked unapplied;
//! - an event that arrives ahead of a missing one brings the missing ones with it
//!   (docs/architecture.md, rule 2), and the late one is then a duplicate;
//! - a consumer killed mid-message leaves the message unacked; the broker redelivers it
//!   and the transaction that did not commit left nothing behind;
//! - a message that names no event of the log, or a malformed one, changes nothing: it
//!   goes to the queue's dead-letter queue with the reason in a header.
//!
//! A handler error is retried with backoff (the message is returned to the queue after
//! the wait); once the broker has delivered it `max_deliveries` times, it is dead-lettered
//! with the last error as the reason. The broker's own delivery limit (a policy) is the
//! backstop for a consumer that crashes before it can do that.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eventstore::{EventStore, RecordedEvent};
use futures::StreamExt;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::BrokerError;
use crate::connection::{Backoff, OPERATION_TIMEOUT, connect, within};
use crate::message::{self, REASON_HEADER, SOURCE_QUEUE_HEADER};
use crate::relay::open_confirm_channel;
use crate::topology::{self, Queue};

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a panel down, a database hiccup).
    #[error("{0}")]
    Retry(String),
    /// Will never work; dead-letter it now.
    #[error("{0}")]
    Reject(String),
}

/// Longest dead-letter reason (header `x-keyledger-reason`) and logged handler error, in
/// characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// A handler's error or a dead letter's reason as logs and headers carry it. Handler
/// errors quote outsiders (a panel's message, a malformed body), so they are cleaned and
/// bounded like any foreign text ([`domain::bounded_text`]).
fn bounded(text: &str) -> String {
    domain::bounded_text(text, MAX_REASON_CHARS)
}

/// How often a consuming session checks that its channel is still open. The delivery
/// stream does not always end when the broker goes away (reported for lapin in
/// amqp-rs/lapin#389), and a consumer waiting on a dead session would never reconnect.
const SESSION_CHECK: Duration = Duration::from_secs(1);

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        Self::Retry(format!("database: {error}"))
    }
}

/// What a consumer does with each event, in stream order, exactly once.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event`. Writes that belong with it go through `tx`, the transaction that
    /// also records the consumer's progress; effects elsewhere must be idempotent, since a
    /// crash before the commit makes the runtime hand the event over again.
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
        tx: &'a mut PgConnection,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub amqp_url: String,
    pub queue: Queue,
    /// Names the consumer's progress; competing consumers of one queue share it.
    pub name: String,
    pub prefetch: u16,
    /// Deliveries handled at once; each holds a database connection while it runs.
    pub concurrency: usize,
    /// Deliveries of one message before it is dead-lettered.
    pub max_deliveries: i64,
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl ConsumerConfig {
    pub fn new(amqp_url: impl Into<String>, queue: Queue) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            queue,
            name: queue.name().to_owned(),
            prefetch: 32,
            concurrency: 8,
            max_deliveries: 5,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// What happened to one delivery; counted in [`ConsumerStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Applied this many events (the delivered one and any it was ahead of).
    Applied(usize),
    Duplicate,
    Retried,
    DeadLettered,
}

#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub applied: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
    pub retried: std::sync::atomic::AtomicU64,
    pub dead_lettered: std::sync::atomic::AtomicU64,
    pub sessions: std::sync::atomic::AtomicU64,
}

impl ConsumerStats {
    fn count(&self, disposition: Disposition) {
        use std::sync::atomic::Ordering::Relaxed;
        match disposition {
            Disposition::Applied(n) => self.applied.fetch_add(n as u64, Relaxed),
            Disposition::Duplicate => self.duplicates.fetch_add(1, Relaxed),
            Disposition::Retried => self.retried.fetch_add(1, Relaxed),
            Disposition::DeadLettered => self.dead_lettered.fetch_add(1, Relaxed),
        };
    }
}

pub struct Consumer<H> {
    inner: Arc<Inner<H>>,
}

struct Inner<H> {
    store: EventStore,
    config: ConsumerConfig,
    handler: H,
    stats: Arc<ConsumerStats>,
    /// The last handler error per event, for the reason of a dead letter.
    last_errors: std::sync::Mutex<HashMap<Uuid, String>>,
}

impl<H: EventHandler> Consumer<H> {
    pub fn new(store: EventStore, config: ConsumerConfig, handler: H) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                handler,
                stats: Default::default(),
                last_errors: Default::default(),
            }),
        }
    }

    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.inner.stats.clone()
    }

    /// Consumes until `stop` is cancelled, reconnecting after any failure. On stop it
    /// takes no new message, lets the ones in hand finish (ack or return), and closes.
    pub async fn run(self, stop: CancellationToken) {
        let queue = self.inner.config.queue.name();
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            match self.session(&stop, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(queue, %error, retry_in_ms = delay.as_millis() as u64, "consumer lost its broker session; reconnecting");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(queue, "consumer stopped");
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), BrokerError> {
        let config = &self.inner.config;
        let connection = connect(&config.amqp_url).await?;
        let channel = within("opening a channel", connection.create_channel()).await?;
        within("declaring the topology", topology::declare(&channel)).await?;
        within(
            "setting the prefetch",
            channel.basic_qos(config.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let dead_letters = Arc::new(open_confirm_channel(&connection).await?);
        let tag = format!("{}-{}", config.name, Uuid::new_v4().simple());
        let mut deliveries = within(
            "starting to consume",
            channel.basic_consume(
                config.queue.name().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        backoff.reset();
        self.inner
            .stats
            .sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            queue = config.queue.name(),
            prefetch = config.prefetch,
            "consuming"
        );

        let mut in_hand = tokio::task::JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1)));
        let mut health = tokio::time::interval(SESSION_CHECK);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
                _ = health.tick() => {
                    if !channel.status().connected() {
                        break Err(BrokerError::Disconnected);
                    }
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let inner = self.inner.clone();
                        let dead_letters = dead_letters.clone();
                        let slots = slots.clone();
                        in_hand.spawn(async move {
                            let Ok(_slot) = slots.acquire_owned().await else { return };
                            inner.process(delivery, &dead_letters).await
                        });
                    }
                    Some(Err(error)) => break Err(BrokerError::Amqp(error)),
                    None => break Err(BrokerError::ConsumerCancelled),
                }
            }
        };
        if ended.is_ok() {
            let _ = within(
                "cancelling the consumer",
                channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
            while in_hand.join_next().await.is_some() {}
        } else {
            self.drain_lost_session(in_hand).await;
        }
        crate::connection::close(&connection, "consumer stopping").await;
        ended
    }

    /// Lets the deliveries still in hand of a lost session finish, for a while. Past that
    /// they are dropped: their transactions roll back, and the broker delivers their
    /// messages again to the next session, so waiting longer would only delay it.
    async fn drain_lost_session(&self, mut in_hand: tokio::task::JoinSet<()>) {
        let drained = tokio::time::timeout(OPERATION_TIMEOUT, async {
            while in_hand.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                queue = self.inner.config.queue.name(),
                left = in_hand.len(),
                "deliveries of a lost broker session did not finish; dropping them"
            );
            in_hand.shutdown().await;
        }
    }
}

impl<H: EventHandler> Inner<H> {
    async fn process(&self, delivery: Delivery, dead_letters: &Channel) {
        let queue = self.config.queue.name();
        let disposition = match self.dispose(&delivery, dead_letters).await {
            Ok(disposition) => disposition,
            Err(error) => {
                // Could not even settle the message (the channel is gone): the broker
                // will deliver it again.
                tracing::warn!(queue, %error, "could not settle a delivery");
                return;
            }
        };
        self.stats.count(disposition);
    }

    async fn dispose(
        &self,
        delivery: &Delivery,
        dead_letters: &Channel,
    ) -> Result<Disposition, BrokerError> {
        let queue = self.config.queue.name();
        let event = match message::decode(&delivery.data, &delivery.properties) {
            Ok(event) => event,
            Err(malformed) => {
                let reason = bounded(&format!("malformed message: {malformed}"));
                tracing::error!(queue, %reason, "dead-lettering a malformed message");
                return self.dead_letter(delivery, dead_letters, &reason).await;
            }
        };
        // Every line logged while handling the event names its key and its flow.
        let correlation_id = event
            .metadata
            .get("correlation_id")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        let span = tracing::info_span!(
            "event",
            queue,
            key_id = %event.stream_id,
            correlation_id,
            event_type = %event.event_type,
            version = event.version,
        );
        self.dispose_event(delivery, dead_letters, event)
            .instrument(span)
            .await
    }

    async fn dispose_event(
        &self,
        delivery: &Delivery,
        dead_letters: &Channel,
        event: RecordedEvent,
    ) -> Result<Disposition, BrokerError> {
        let queue = self.config.queue.name();
        let key_id = event.stream_id;
        let previous_deliveries = message::delivery_count(&delivery.properties);
        if previous_deliveries + 1 > self.config.max_deliveries {
            let last_error = self.take_last_error(event.event_id);
            let reason = bounded(&format!(
                "gave up after {previous_deliveries} deliveries; last error: {}",
                last_error
                    .as_deref()
                    .unwrap_or("unknown (an earlier consumer process)")
            ));
            tracing::error!(queue, %key_id, event_id = %event.event_id, %reason, "dead-lettering an event");
            return self.dead_letter(delivery, dead_letters, &reason).await;
        }
        match self.apply(&event).await {
            Ok(disposition) => {
                self.take_last_error(event.event_id);
                within("acking", delivery.ack(BasicAckOptions::default())).await?;
                Ok(disposition)
            }
            Err(HandlerError::Reject(reason)) => {
                let reason = bounded(&reason);
                tracing::error!(queue, %key_id, event_id = %event.event_id, %reason, "handler refused an event; dead-lettering it");
                self.dead_letter(delivery, dead_letters, &reason).await
            }
            Err(HandlerError::Retry(error)) => {
                let error = bounded(&error);
                let delay = Backoff::delay_for(
                    self.config.retry_base,
                    self.config.retry_max,
                    previous_deliveries.clamp(0, 16) as u32,
                );
                tracing::warn!(queue, %key_id, event_id = %event.event_id, %error, attempt = previous_deliveries + 1, retry_in_ms = delay.as_millis() as u64, "handler failed; retrying");
                self.remember_error(event.event_id, error);
                tokio::time::sleep(delay).await;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                within("returning a message", delivery.nack(requeue)).await?;
                Ok(Disposition::Retried)
            }
        }
    }

    /// Applies `event` and every event of its stream before it not yet applied, in one
    /// transaction with the progress record.
    async fn apply(&self, event: &RecordedEvent) -> Result<Disposition, HandlerError> {
        let mut tx = self.store.pool().begin().await?;
        // Serialise the consumers of one key with an advisory lock rather than a row lock:
        // a row lock would give this transaction an id for as long as the handler runs
        // (a panel call may take seconds), and any transaction holding an id holds back
        // every gap-free reader of the log, the relay included.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2::text, 0))")
            .bind(&self.config.name)
            .bind(event.stream_id)
            .execute(&mut *tx)
            .await?;
        let applied: i32 = sqlx::query_scalar(
            "SELECT coalesce(max(version), 0) FROM consumer_progress
             WHERE consumer = $1 AND stream_id = $2",
        )
        .bind(&self.config.name)
        .bind(event.stream_id)
        .fetch_one(&mut *tx)
        .await?;
        if event.version <= applied {
            tx.commit().await?;
            return Ok(Disposition::Duplicate);
        }
        let pending = self.pending_from_log(event, applied).await?;
        for pending_event in &pending {
            self.handler.handle(pending_event, &mut tx).await?;
        }
        sqlx::query(
            "INSERT INTO consumer_progress (consumer, stream_id, version) VALUES ($1, $2, $3)
             ON CONFLICT (consumer, stream_id)
             DO UPDATE SET version = excluded.version, updated_at = now()",
        )
        .bind(&self.config.name)
        .bind(event.stream_id)
        .bind(event.version)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Disposition::Applied(pending.len()))
    }

    /// The log's events of the stream after `applied` up to the delivered one, which the
    /// log must hold exactly as delivered.
    ///
    /// Read on a connection of its own, not in the consumer's transaction: that
    /// transaction stays open while the handler works (a panel call may take seconds), and
    /// had it read `events` it would hold a lock on the table all that time, so an outside
    /// `TRUNCATE` or `ALTER TABLE` queued behind it would hold up every later reader.
    async fn pending_from_log(
        &self,
        event: &RecordedEvent,
        applied: i32,
    ) -> Result<Vec<RecordedEvent>, HandlerError> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| HandlerError::Retry(format!("reading the log: {e}")))?;
        let pending = self
            .store
            .read_stream_after_on(
                &mut conn,
                event.stream_id,
                applied.max(0) as u32,
                event.version as u32,
            )
            .await
            .map_err(|e| HandlerError::Retry(format!("reading the log: {e}")))?;
        match pending.last() {
            Some(last) if last.version == event.version && last.event_id == event.event_id => {
                Ok(pending)
            }
            Some(last) if last.version == event.version => Err(HandlerError::Reject(format!(
                "the log holds event {} at version {} of stream {}, not the delivered {}",
                last.event_id, event.version, event.stream_id, event.event_id
            ))),
            _ => Err(HandlerError::Reject(format!(
                "the log holds no version {} of stream {}",
                event.version, event.stream_id
            ))),
        }
    }

    /// Publishes the message to the dead-letter exchange with the reason, then acks it.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        dead_letters: &Channel,
        reason: &str,
    ) -> Result<Disposition, BrokerError> {
        let queue = self.config.queue.name();
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        // Bounded here too, whoever built it: the header is what operators read.
        let reason = bounded(reason);
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        headers.insert(
            SOURCE_QUEUE_HEADER.into(),
            AMQPValue::LongString(queue.into()),
        );
        let properties: BasicProperties = delivery.properties.clone().with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = within(
            "dead-lettering",
            dead_letters.basic_publish(
                topology::DEAD_LETTER_EXCHANGE.into(),
                queue.into(),
                options,
                &delivery.data,
                properties,
            ),
        )
        .await?;
        let confirmation = within("awaiting a dead letter's confirm", confirm).await?;
        if !matches!(confirmation, Confirmation::Ack(None)) {
            // Not safely in the dead-letter queue: keep the message where it is.
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            within("returning a message", delivery.nack(requeue)).await?;
            return Err(BrokerError::DeadLetterRefused {
                queue: queue.to_owned(),
            });
        }
        within("acking", delivery.ack(BasicAckOptions::default())).await?;
        Ok(Disposition::DeadLettered)
    }

    fn remember_error(&self, event_id: Uuid, error: String) {
        if let Ok(mut errors) = self.last_errors.lock() {
            errors.insert(event_id, error);
        }
    }

    fn take_last_error(&self, event_id: Uuid) -> Option<String> {
        self.last_errors.lock().ok()?.remove(&event_id)
    }
}
