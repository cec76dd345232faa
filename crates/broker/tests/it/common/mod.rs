//! Shared by the broker's tests: a database and a vhost of their own, a recording
//! handler, and waiting on conditions with a deadline.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use broker::{EventHandler, HandlerError};
use domain::EventType;
use eventstore::{EventStore, NewEvent, RecordedEvent};
use serde_json::json;
use sqlx::PgConnection;
use testkit::TestBroker;
use testkit::TestDatabase;
use uuid::Uuid;

pub use testkit::{metadata, wait_until};

pub struct Env {
    pub db: TestDatabase,
    pub broker: TestBroker,
}

impl Env {
    pub async fn new() -> Self {
        // Logs show in a failing test's output.
        testkit::init_logs();
        let db = TestDatabase::create().await;
        sqlx::raw_sql(
            "CREATE TABLE applied (
                 seq bigserial PRIMARY KEY, consumer text NOT NULL, stream_id uuid NOT NULL,
                 version integer NOT NULL, event_id uuid NOT NULL,
                 UNIQUE (consumer, stream_id, version))",
        )
        .execute(db.pool())
        .await
        .expect("applied table");
        Self {
            db,
            broker: TestBroker::create().await,
        }
    }

    pub fn store(&self) -> EventStore {
        self.db.store.clone()
    }

    /// A store with a pool of its own, as another process would have.
    pub async fn separate_store(&self) -> EventStore {
        EventStore::connect(&self.db.url, 5).await.expect("connect")
    }

    /// Appends `n` events to `stream`, one append each, starting after `from_version`.
    pub async fn append(&self, stream: Uuid, from_version: u32, n: u32) {
        for i in 0..n {
            let version = from_version + i;
            let event = NewEvent::new(
                if version == 0 {
                    EventType::Requested.as_str()
                } else {
                    EventType::DriftRepaired.as_str()
                },
                json!({"kind": "missing_on_panel", "n": version}),
            );
            self.db
                .store
                .append(stream, version, &[event], &metadata())
                .await
                .expect("append");
        }
    }

    /// (stream, version) pairs a consumer applied, in the order it applied them.
    pub async fn applied(&self, consumer: &str) -> Vec<(Uuid, i32)> {
        sqlx::query_as("SELECT stream_id, version FROM applied WHERE consumer = $1 ORDER BY seq")
            .bind(consumer)
            .fetch_all(self.db.pool())
            .await
            .expect("read applied")
    }

    /// Messages ready in `queue`, straight from the broker (the management API's figures
    /// lag by its statistics interval).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let connection = lapin::Connection::connect(
            &self.broker.amqp_url,
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        let depth = declared.map(|q| q.message_count()).unwrap_or(0);
        let _ = connection.close(200, "done".into()).await;
        depth
    }

    pub async fn applied_count(&self, consumer: &str) -> usize {
        self.applied(consumer).await.len()
    }
}

/// Records every event it is handed in the `applied` table, in the runtime's transaction;
/// the table's unique key makes a second application of one event fail loudly. While
/// `fail_stream` names a stream, its events fail with a retryable error.
#[derive(Clone, Default)]
pub struct Recorder {
    pub consumer: String,
    pub failing: Arc<std::sync::Mutex<Option<Uuid>>>,
    /// While set, the handler blocks (after announcing it entered) until released.
    pub hold: Option<Arc<Hold>>,
}

#[derive(Default)]
pub struct Hold {
    pub entered: tokio::sync::Notify,
    pub entered_flag: AtomicBool,
    pub release: tokio::sync::Notify,
}

impl Recorder {
    pub fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_owned(),
            ..Self::default()
        }
    }

    pub fn fail_stream(&self, stream: Option<Uuid>) {
        *self.failing.lock().expect("lock") = stream;
    }
}

impl EventHandler for Recorder {
    async fn handle(
        &self,
        event: &RecordedEvent,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        if *self.failing.lock().expect("lock") == Some(event.stream_id) {
            return Err(HandlerError::Retry(format!(
                "panel for {} is down (test)",
                event.stream_id
            )));
        }
        if let Some(hold) = &self.hold {
            hold.entered_flag.store(true, Ordering::SeqCst);
            hold.entered.notify_waiters();
            hold.release.notified().await;
        }
        sqlx::query(
            "INSERT INTO applied (consumer, stream_id, version, event_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(&self.consumer)
        .bind(event.stream_id)
        .bind(event.version)
        .bind(event.event_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| HandlerError::Reject(format!("applied twice or broken: {e}")))?;
        Ok(())
    }
}

/// Checks that each stream's versions were applied exactly once each, 1..=n, in order.
pub fn assert_exactly_once_in_order(applied: &[(Uuid, i32)], expected: &[(Uuid, i32)]) {
    let mut per_stream: std::collections::HashMap<Uuid, Vec<i32>> = Default::default();
    for (stream, version) in applied {
        per_stream.entry(*stream).or_default().push(*version);
    }
    for (stream, last) in expected {
        let versions = per_stream.remove(stream).unwrap_or_default();
        let wanted: Vec<i32> = (1..=*last).collect();
        assert_eq!(
            versions, wanted,
            "stream {stream}: applied versions in order"
        );
    }
    assert!(
        per_stream.is_empty(),
        "applied events of unknown streams: {per_stream:?}"
    );
}

/// Appends one event to each of `streams` per round, every 20 ms, until ten rounds after
/// `done` is cancelled; returns the number of rounds (the version each stream reaches).
/// An append that fails (the database dropped the session) is tried again with the same
/// event, which the store answers as already appended if it had committed.
pub fn spawn_writer(
    store: EventStore,
    streams: Vec<Uuid>,
    done: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let (mut rounds, mut after_done) = (0u32, 0);
        while after_done < 10 {
            for stream in &streams {
                let event = NewEvent::new(
                    EventType::DriftRepaired.as_str(),
                    json!({"kind": "missing_on_panel"}),
                );
                let metadata = metadata();
                while store
                    .append(*stream, rounds, std::slice::from_ref(&event), &metadata)
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            rounds += 1;
            if done.is_cancelled() {
                after_done += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rounds
    })
}
