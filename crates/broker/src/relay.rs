//! The relay: publishes every event of the log to `keyledger.events`, in log order, once
//! it is committed.
//!
//! It follows the log itself (the store's gap-free `read_all`), so there is no outbox to
//! keep in step. Publishes are pipelined: up to `window` are in flight, and their broker
//! confirms are collected in order; the checkpoint only ever moves to a position whose
//! event, and every one before it, the broker acked. A nack, a return (unroutable) or a
//! confirm that does not come in time ends the session: the relay reconnects and
//! publishes again from the checkpoint. So events can be published twice around a
//! failure, never skipped, and never out of order within a stream on first publication.
//!
//! One relay publishes at a time: the leader holds a PostgreSQL advisory lock on a session
//! of its own and writes the checkpoint through that session, so a relay that lost its
//! session (and with it the lock) cannot move the checkpoint any more. Others wait and
//! take over when the lock is released, which PostgreSQL does when the leader's session
//! ends, however it ends.

use std::collections::VecDeque;
use std::time::Duration;

use eventstore::{EventStore, RecordedEvent};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres};
use tokio_util::sync::CancellationToken;

use crate::connection::{Backoff, connect, within};
use crate::{BrokerError, message, topology};

/// Key of the relay leader's advisory lock ("keyledger relay").
const LEADER_LOCK: i64 = 0x6b6c_7265_6c61_7901;

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub amqp_url: String,
    /// Names the checkpoint; relays with the same name share one.
    pub name: String,
    /// Publishes awaiting their confirm at most.
    pub window: usize,
    pub confirm_timeout: Duration,
    /// How often an idle relay looks for new events.
    pub idle_poll: Duration,
    /// How often a relay that is not the leader tries to become it.
    pub election_poll: Duration,
    /// Events read from the log at a time.
    pub page: i64,
}

impl RelayConfig {
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            name: "relay".to_owned(),
            window: 256,
            confirm_timeout: Duration::from_secs(10),
            idle_poll: Duration::from_millis(50),
            election_poll: Duration::from_millis(500),
            page: 1024,
        }
    }
}

/// What one relay process has done; shared with whoever watches it (metrics, tests).
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: std::sync::atomic::AtomicU64,
    pub is_leader: std::sync::atomic::AtomicBool,
    pub checkpoint: std::sync::atomic::AtomicI64,
}

pub struct Relay {
    store: EventStore,
    config: RelayConfig,
    stats: std::sync::Arc<RelayStats>,
}

impl Relay {
    pub fn new(store: EventStore, config: RelayConfig) -> Self {
        Self {
            store,
            config,
            stats: Default::default(),
        }
    }

    pub fn stats(&self) -> std::sync::Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `stop` is cancelled: waits to lead, then publishes; after a failure,
    /// starts over.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        while !stop.is_cancelled() {
            let Some(mut leader) = self.become_leader(&stop).await else {
                break;
            };
            self.stats
                .is_leader
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(relay = %self.config.name, "relay leads: publishing the log");
            let result = self.lead(&mut leader, &stop, &mut backoff).await;
            self.stats
                .is_leader
                .store(false, std::sync::atomic::Ordering::SeqCst);
            // Closing the session releases the lock for another relay.
            drop(leader);
            match result {
                Ok(()) => break,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(relay = %self.config.name, %error, retry_in_ms = delay.as_millis() as u64, "relay session ended; publishing again from the checkpoint");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(relay = %self.config.name, "relay stopped");
    }

    /// A session holding the leader lock, or `None` if stopped first.
    async fn become_leader(&self, stop: &CancellationToken) -> Option<PoolConnection<Postgres>> {
        let mut announced = false;
        loop {
            match self.try_lock().await {
                Ok(Some(session)) => return Some(session),
                Ok(None) if !announced => {
                    tracing::info!(relay = %self.config.name, "another relay leads; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "relay cannot reach the database"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(self.config.election_poll) => {}
            }
        }
    }

    async fn try_lock(&self) -> Result<Option<PoolConnection<Postgres>>, sqlx::Error> {
        let mut session = self.store.pool().acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *session)
            .await?;
        if locked {
            // Never hand this session back to the pool: it would keep the lock there, and
            // no relay could lead after this one is gone (a dropped task included).
            session.close_on_drop();
            return Ok(Some(session));
        }
        Ok(None)
    }

    async fn lead(
        &self,
        leader: &mut PgConnection,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), BrokerError> {
        let connection = connect(&self.config.amqp_url).await?;
        let channel = open_confirm_channel(&connection).await?;
        backoff.reset();
        let mut position = load_checkpoint(leader, &self.config.name).await?;
        self.stats
            .checkpoint
            .store(position, std::sync::atomic::Ordering::SeqCst);
        let result = self
            .publish_loop(leader, &channel, &mut position, stop)
            .await;
        crate::connection::close(&connection, "relay stopping").await;
        result
    }

    async fn publish_loop(
        &self,
        leader: &mut PgConnection,
        channel: &Channel,
        position: &mut i64,
        stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            let events = self.store.read_all(*position, self.config.page).await?;
            if events.is_empty() {
                // An idle relay would not notice a lost broker connection until its next
                // publish; find out now, so a broker restart is recovered from at once.
                if !channel.status().connected() {
                    return Err(BrokerError::Disconnected);
                }
                // Also proves the leader session (and so the lock) is still there.
                sqlx::query("SELECT 1").execute(&mut *leader).await?;
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(self.config.idle_poll) => {}
                }
                continue;
            }
            tracing::debug!(
                from = events[0].position,
                count = events.len(),
                "relay publishing"
            );
            let outcome = publish_confirmed(channel, &events, &self.config).await;
            tracing::debug!(acked = outcome.acked, error = ?outcome.error, "relay published");
            if outcome.acked > *position {
                save_checkpoint(leader, &self.config.name, outcome.acked).await?;
                let published = events
                    .iter()
                    .filter(|e| e.position <= outcome.acked)
                    .count();
                self.stats
                    .published
                    .fetch_add(published as u64, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("keyledger_events_published_total").increment(published as u64);
                self.stats
                    .checkpoint
                    .store(outcome.acked, std::sync::atomic::Ordering::SeqCst);
                *position = outcome.acked;
            }
            if let Some(error) = outcome.error {
                return Err(error);
            }
        }
    }
}

pub(crate) async fn open_confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = within("opening a channel", connection.create_channel()).await?;
    within("declaring the topology", topology::declare(&channel)).await?;
    within(
        "turning on publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    Ok(channel)
}

async fn load_checkpoint(session: &mut PgConnection, relay: &str) -> Result<i64, BrokerError> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE relay = $1")
            .bind(relay)
            .fetch_optional(&mut *session)
            .await?;
    Ok(position.unwrap_or(0))
}

async fn save_checkpoint(
    session: &mut PgConnection,
    relay: &str,
    position: i64,
) -> Result<(), BrokerError> {
    sqlx::query(
        "INSERT INTO relay_checkpoints (relay, position) VALUES ($1, $2)
         ON CONFLICT (relay) DO UPDATE SET position = excluded.position, updated_at = now()",
    )
    .bind(relay)
    .bind(position)
    .execute(&mut *session)
    .await?;
    Ok(())
}

/// How far a run of publishes got: every event up to `acked` was confirmed.
pub(crate) struct PublishOutcome {
    pub acked: i64,
    pub error: Option<BrokerError>,
}

/// Publishes `events` in order with up to `window` confirms outstanding.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    events: &[RecordedEvent],
    config: &RelayConfig,
) -> PublishOutcome {
    let mut in_flight: VecDeque<(&RecordedEvent, PublisherConfirm)> = VecDeque::new();
    let mut acked = events.first().map(|e| e.position - 1).unwrap_or(0);
    for event in events {
        if in_flight.len() >= config.window.max(1)
            && let Some((oldest, confirm)) = in_flight.pop_front()
        {
            if let Err(error) = await_confirm(oldest, confirm, config.confirm_timeout).await {
                return PublishOutcome {
                    acked,
                    error: Some(error),
                };
            }
            acked = oldest.position;
        }
        match publish(channel, event).await {
            Ok(confirm) => in_flight.push_back((event, confirm)),
            Err(error) => {
                return PublishOutcome {
                    acked,
                    error: Some(error),
                };
            }
        }
    }
    while let Some((event, confirm)) = in_flight.pop_front() {
        if let Err(error) = await_confirm(event, confirm, config.confirm_timeout).await {
            return PublishOutcome {
                acked,
                error: Some(error),
            };
        }
        acked = event.position;
    }
    PublishOutcome { acked, error: None }
}

async fn publish(
    channel: &Channel,
    event: &RecordedEvent,
) -> Result<PublisherConfirm, BrokerError> {
    let (body, properties) = message::encode(event)?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    within(
        "publishing",
        channel.basic_publish(
            topology::EVENTS_EXCHANGE.into(),
            event.event_type.as_str().into(),
            options,
            &body,
            properties,
        ),
    )
    .await
}

async fn await_confirm(
    event: &RecordedEvent,
    confirm: PublisherConfirm,
    timeout: Duration,
) -> Result<(), BrokerError> {
    let confirmation = tokio::time::timeout(timeout, confirm).await.map_err(|_| {
        BrokerError::ConfirmTimeout {
            position: event.position,
        }
    })??;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable {
            position: event.position,
            event_type: event.event_type.clone(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::Nacked {
            position: event.position,
        }),
        Confirmation::NotRequested => Err(BrokerError::ConfirmsOff),
    }
}
