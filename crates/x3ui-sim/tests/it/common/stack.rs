//! The whole path of a key against real services: PostgreSQL (a database per test),
//! RabbitMQ (a vhost per test), the relay, the consumer running the worker, and a
//! simulated panel serving location `ams` (inbound 1).

use std::sync::Arc;
use std::time::Duration;

use broker::ConsumerStats;
use domain::{
    EventType, ExpireKey, KeyCommand, KeyId, KeyState, LocationId, RequestKey, RevokeKey,
    RotateKey, UserId,
};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger, RecordedEvent};
use serde_json::{Map, Value};
use service::Role;
use service::pipeline::{Pipeline, RunningRoles, WorkerRetry};
use testkit::TestBroker;
use testkit::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};
use x3ui_worker::{Panel, PanelLocation, Panels, Worker, WorkerConfig};

pub use testkit::{eventually, init_logs};

use super::fast_policy;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The host `ams` puts into its links.
pub const PUBLIC_HOST: &str = "ams.example.com";

/// A database, a simulated panel and the panels and worker in front of it; no broker.
pub struct Base {
    pub db: TestDatabase,
    pub sim: PanelSimulator,
    pub panels: Arc<Panels>,
    pub ledger: KeyLedger,
    pub worker: Worker,
}

impl Base {
    pub async fn new() -> Self {
        Self::with_sim(SimConfig::v2_9()).await
    }

    pub async fn with_sim(config: SimConfig) -> Self {
        init_logs();
        let db = TestDatabase::create().await;
        let sim = PanelSimulator::start(config).await.unwrap();
        let panel = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
        let mut panels = Panels::default();
        panels.insert(PanelLocation::new("ams", panel, 1).with_public_host(PUBLIC_HOST));
        let panels = Arc::new(panels);
        let worker_config = WorkerConfig {
            retry_base: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            ..WorkerConfig::default()
        };
        let worker = Worker::new(db.store.clone(), panels.clone(), worker_config);
        Self {
            ledger: KeyLedger::new(db.store.clone()),
            db,
            sim,
            panels,
            worker,
        }
    }

    pub async fn execute(&self, key: KeyId, command: KeyCommand) {
        let metadata =
            EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "test"));
        self.ledger
            .execute(key, &command, &metadata)
            .await
            .unwrap_or_else(|e| panic!("{command:?} on {key}: {e}"));
    }

    /// Requests a key for `user` at `location`; returns its id and client UUID.
    pub async fn request_at(&self, user: i64, location: &str) -> (KeyId, Uuid) {
        request_with(&self.ledger, user, location).await
    }

    /// Requests keys for all `users` at `ams` at once, from concurrent tasks.
    pub async fn request_many(&self, users: impl IntoIterator<Item = i64>) -> Vec<KeyId> {
        let tasks: Vec<_> = users
            .into_iter()
            .map(|user| {
                let ledger = self.ledger.clone();
                tokio::spawn(async move { request_with(&ledger, user, "ams").await.0 })
            })
            .collect();
        let mut keys = Vec::new();
        for task in tasks {
            keys.push(task.await.unwrap());
        }
        keys
    }

    pub async fn request(&self, user: i64) -> (KeyId, Uuid) {
        self.request_at(user, "ams").await
    }

    pub async fn rotate(&self, key: KeyId) -> Uuid {
        let fresh = Uuid::new_v4();
        self.execute(
            key,
            KeyCommand::Rotate(RotateKey {
                fresh_client_uuid: fresh,
            }),
        )
        .await;
        fresh
    }

    pub async fn revoke(&self, key: KeyId) {
        self.execute(
            key,
            KeyCommand::Revoke(RevokeKey {
                reason: "test".into(),
            }),
        )
        .await;
    }

    /// Records `key.expired` as the scheduler would once the key's time has passed.
    pub async fn expire(&self, key: KeyId) {
        let later = OffsetDateTime::now_utc() + time::Duration::days(31);
        self.execute(key, KeyCommand::Expire(ExpireKey { now: later }))
            .await;
    }

    pub async fn events(&self, key: KeyId) -> Vec<RecordedEvent> {
        self.db.store.read_stream(key.as_uuid()).await.unwrap()
    }

    pub async fn types(&self, key: KeyId) -> Vec<String> {
        self.events(key)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// The key's first event of `event_type`; panics if it has none.
    pub async fn first(&self, key: KeyId, event_type: EventType) -> RecordedEvent {
        self.events(key)
            .await
            .into_iter()
            .find(|e| e.event_type == event_type.as_str())
            .unwrap_or_else(|| panic!("{key} has no {}", event_type.as_str()))
    }

    pub async fn count(&self, key: KeyId, event_type: &str) -> usize {
        self.types(key)
            .await
            .iter()
            .filter(|t| *t == event_type)
            .count()
    }

    pub async fn state(&self, key: KeyId) -> KeyState {
        self.ledger.load(key).await.unwrap().0
    }

    /// Waits until the key's stream holds `n` events of `event_type`.
    pub async fn wait_for(&self, key: KeyId, event_type: &str, n: usize) {
        let what = format!("{n} x {event_type} for {key}");
        eventually(&what, DEADLINE, || async {
            (self.count(key, event_type).await >= n).then_some(())
        })
        .await;
    }

    pub fn client(&self, email: &str) -> Option<Map<String, Value>> {
        self.sim.handle().client(email)
    }

    pub fn clients(&self) -> Vec<Map<String, Value>> {
        self.sim.handle().clients(1)
    }
}

/// The command a user's first key request is: key `user` at `location`, its fresh client
/// UUID, 30 days and 50 GiB.
pub fn request_command(user: i64, location: &str) -> (KeyId, Uuid, KeyCommand) {
    let user = UserId::new(user).unwrap();
    let location = LocationId::new(location).unwrap();
    let key = KeyId::for_user_at(user, &location);
    let fresh = Uuid::new_v4();
    let now = OffsetDateTime::now_utc();
    let command = KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: fresh,
        expires_at: Some(now + time::Duration::days(30)),
        traffic_limit_bytes: 50 << 30,
        now,
    });
    (key, fresh, command)
}

async fn request_with(ledger: &KeyLedger, user: i64, location: &str) -> (KeyId, Uuid) {
    let (key, fresh, command) = request_command(user, location);
    let metadata = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "test"));
    ledger
        .execute(key, &command, &metadata)
        .await
        .unwrap_or_else(|e| panic!("{command:?} on {key}: {e}"));
    (key, fresh)
}

/// [`Base`] plus RabbitMQ, the relay and the worker role, started by the pipeline builder
/// `serve` uses, with retries shortened to milliseconds.
pub struct Stack {
    pub base: Base,
    pub broker: TestBroker,
    pub stats: Arc<ConsumerStats>,
    running: RunningRoles,
}

impl std::ops::Deref for Stack {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.base
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::with_max_deliveries(100).await
    }

    /// [`Stack::start`] with the worker giving a message up (dead-lettering it) after
    /// `max_deliveries`.
    pub async fn with_max_deliveries(max_deliveries: i64) -> Self {
        let base = Base::new().await;
        let broker = TestBroker::create().await;
        let running = Pipeline::new(base.db.store.clone(), broker.amqp_url.clone())
            .with_panels(base.panels.clone())
            .without_periodic_reconcile()
            .with_worker_retry(WorkerRetry {
                base: Duration::from_millis(20),
                max: Duration::from_millis(200),
                max_deliveries,
            })
            .start(&[Role::Relay, Role::Worker])
            .await
            .expect("start the pipeline");
        let stats = running.worker_stats.clone().expect("the worker runs");
        Self {
            base,
            broker,
            stats,
            running,
        }
    }

    /// Requests a key for `user` and waits until the worker has acknowledged it.
    pub async fn provisioned(&self, user: i64) -> (KeyId, Uuid) {
        let (key, uuid) = self.request(user).await;
        self.wait_for(key, EventType::Provisioned.as_str(), 1).await;
        (key, uuid)
    }

    pub async fn stop(self) {
        tokio::time::timeout(DEADLINE, self.running.stop())
            .await
            .expect("every role stops");
    }
}
