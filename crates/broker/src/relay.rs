//! The relay: publishes every event of the log to `keyledger.events`, in log order, once
//! it is committed.
//!
//! It follows the log itself (the store's gap-free `read_all`), so there is no outbox to
//! keep in step. Publishes are pipelined: up to `window` are in flight, from one page of
//! the log to the next, while the next page is read; their broker confirms are collected
//! in order, and the checkpoint only ever moves to a position whose
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
use tracing::Instrument;

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

    /// Publishes the log from `position` on, until stopped or a publish fails.
    ///
    /// The pipeline never empties while there is work: the next page is read while the
    /// current one is published, and the window of unconfirmed publishes carries over from
    /// page to page. The checkpoint moves to whatever the broker has confirmed so far after
    /// each page, and to the end once the log has nothing new (every confirm awaited).
    async fn publish_loop(
        &self,
        leader: &mut PgConnection,
        channel: &Channel,
        position: &mut i64,
        stop: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut window = Window::new(*position, &self.config);
        let mut read_up_to = *position;
        let mut prefetched: Option<Prefetch> = None;
        let result = loop {
            if stop.is_cancelled() {
                break window.settle().await;
            }
            let events = match prefetched.take() {
                Some(next) => next.page().await,
                None => self.store.read_all(read_up_to, self.config.page).await,
            };
            let events = match events {
                Ok(events) => events,
                Err(error) => break Err(error.into()),
            };
            if events.is_empty() {
                // Nothing new: have everything in flight confirmed and recorded.
                if let Err(error) = window.settle().await {
                    break Err(error);
                }
                self.advance(leader, position, &mut window).await?;
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
            read_up_to = events[events.len() - 1].position;
            // Gap-free reads may start anywhere the reader has seen: the next page comes
            // in while this one goes out.
            prefetched = Some(Prefetch::start(
                self.store.clone(),
                read_up_to,
                self.config.page,
            ));
            if let Err(error) = window.publish_all(channel, &events).await {
                break Err(error);
            }
            if let Err(error) = window.collect_ready() {
                break Err(error);
            }
            self.advance(leader, position, &mut window).await?;
        };
        // Whatever was confirmed before a failure stays published: record it, so that a
        // new session starts after it.
        self.advance(leader, position, &mut window).await?;
        result
    }

    /// Moves the checkpoint (and the stats) to what the broker has confirmed, if that is
    /// further.
    async fn advance(
        &self,
        leader: &mut PgConnection,
        position: &mut i64,
        window: &mut Window<'_>,
    ) -> Result<(), BrokerError> {
        let acked = window.acked;
        if acked <= *position {
            return Ok(());
        }
        save_checkpoint(leader, &self.config.name, acked).await?;
        let published = std::mem::take(&mut window.confirmed);
        self.stats
            .published
            .fetch_add(published, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("keyledger_events_published_total").increment(published);
        self.stats
            .checkpoint
            .store(acked, std::sync::atomic::Ordering::SeqCst);
        *position = acked;
        Ok(())
    }
}

/// The next page of the log, read by a task of its own while the relay publishes; the
/// task is aborted if the relay drops it unread.
struct Prefetch(
    tokio_util::task::AbortOnDropHandle<Result<Vec<RecordedEvent>, eventstore::StoreError>>,
);

impl Prefetch {
    fn start(store: EventStore, after: i64, page: i64) -> Self {
        Self(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            async move { store.read_all(after, page).await },
        )))
    }

    async fn page(self) -> Result<Vec<RecordedEvent>, eventstore::StoreError> {
        match self.0.await {
            Ok(page) => page,
            Err(error) => Err(eventstore::StoreError::Database(sqlx::Error::Io(
                std::io::Error::other(format!("the relay's page read ended: {error}")),
            ))),
        }
    }
}

/// Publishes awaiting their confirm, oldest first, and how far the broker confirmed.
struct Window<'a> {
    in_flight: VecDeque<(Published, PublisherConfirm)>,
    /// Every event up to this position was confirmed.
    acked: i64,
    /// Events confirmed since the checkpoint last moved.
    confirmed: u64,
    config: &'a RelayConfig,
}

/// What a confirm is about.
struct Published {
    position: i64,
    event_type: String,
}

impl<'a> Window<'a> {
    fn new(acked: i64, config: &'a RelayConfig) -> Self {
        Self {
            in_flight: VecDeque::new(),
            acked,
            confirmed: 0,
            config,
        }
    }

    /// Publishes `events` in order, waiting for the oldest confirm whenever `window`
    /// publishes are unconfirmed.
    async fn publish_all(
        &mut self,
        channel: &Channel,
        events: &[RecordedEvent],
    ) -> Result<(), BrokerError> {
        for event in events {
            if self.in_flight.len() >= self.config.window.max(1) {
                self.confirm_oldest().await?;
            }
            let confirm = publish(channel, event).await?;
            self.in_flight.push_back((
                Published {
                    position: event.position,
                    event_type: event.event_type.clone(),
                },
                confirm,
            ));
        }
        Ok(())
    }

    /// Takes the confirms that have already come in, without waiting for any.
    fn collect_ready(&mut self) -> Result<(), BrokerError> {
        use futures::FutureExt;
        while let Some((_, confirm)) = self.in_flight.front_mut() {
            let Some(confirmation) = confirm.now_or_never() else {
                return Ok(());
            };
            let Some((published, _)) = self.in_flight.pop_front() else {
                return Ok(());
            };
            check_confirmation(&published, confirmation)?;
            self.acked = published.position;
            self.confirmed += 1;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> Result<(), BrokerError> {
        let Some((published, confirm)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let confirmation = tokio::time::timeout(self.config.confirm_timeout, confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout {
                position: published.position,
            })?;
        check_confirmation(&published, confirmation)?;
        self.acked = published.position;
        self.confirmed += 1;
        Ok(())
    }

    /// Waits for every confirm still outstanding.
    async fn settle(&mut self) -> Result<(), BrokerError> {
        while !self.in_flight.is_empty() {
            self.confirm_oldest().await?;
        }
        Ok(())
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

async fn publish(
    channel: &Channel,
    event: &RecordedEvent,
) -> Result<PublisherConfirm, BrokerError> {
    let span = tracing::info_span!(
        "relay.publish",
        key_id = %event.stream_id,
        event_type = %event.event_type,
        position = event.position,
    );
    eventstore::trace_context::TraceCarrier::from_metadata(&event.metadata).adopt_as_parent(&span);
    let (body, properties) = message::encode(event)?;
    let properties = crate::trace_headers::with_trace(
        properties,
        &span.in_scope(eventstore::trace_context::current),
    );
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
    .instrument(span)
    .await
}

fn check_confirmation(
    published: &Published,
    confirmation: Result<Confirmation, lapin::Error>,
) -> Result<(), BrokerError> {
    confirmed(confirmation, published.position, &published.event_type)
}

/// What the broker's answer to one publish means: only a plain ack is success. `position`
/// and `what` name the message in the error (an event's position and type, or a Telegram
/// update's id).
pub(crate) fn confirmed(
    confirmation: Result<Confirmation, lapin::Error>,
    position: i64,
    what: &str,
) -> Result<(), BrokerError> {
    match confirmation? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable {
            position,
            event_type: what.to_owned(),
        }),
        Confirmation::Nack(_) => Err(BrokerError::Nacked { position }),
        Confirmation::NotRequested => Err(BrokerError::ConfirmsOff),
    }
}
