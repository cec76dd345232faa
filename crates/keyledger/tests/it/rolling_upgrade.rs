//! A rolling upgrade: a newer release's migration, which needs an `ACCESS EXCLUSIVE` lock on
//! `events`, is applied while two `keyledger serve` processes of the older release keep
//! serving (API, relay, projector and worker each, against the panel simulator) and keys
//! are requested through both APIs. The migration goes through the retry `keyledger
//! migrate` uses (`service::store::with_migration_patience`, on sessions whose lock waits
//! are bounded) and must be done within 30 s; both processes keep serving throughout, and
//! every key requested before, during and after it becomes active.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Serving, ams_config_file, eventually};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use x3ui_sim::{PanelSimulator, SimConfig};

const ADMIN: &str = "admin-token-for-the-upgrade-test";
/// What the issue allows a migration during a rolling upgrade.
const MIGRATION_BOUND: Duration = Duration::from_secs(30);
/// How long one key request may keep failing before the test gives up on it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// The newer release's migration: far above every version this build carries.
const MIGRATION_VERSION: i64 = 20_990_101_000_000;
const MIGRATION_SQL: &str = "-- A newer release's schema change: ACCESS EXCLUSIVE on events.\n\
     ALTER TABLE events ADD COLUMN rolling_upgrade_note text;\n";

/// The two serving processes' APIs.
#[derive(Clone)]
struct Apis {
    bases: Arc<[String; 2]>,
    http: reqwest::Client,
}

impl Apis {
    /// Requests a key for `user` through process `user % 2`, sending it again while the
    /// answer is not 202 (a lock wait given up on during the migration is answered with an
    /// error; the key id comes from the user, so a repeat records nothing twice).
    async fn request(&self, user: i64) -> String {
        let base = &self.bases[(user % 2) as usize];
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let sent = self
                .http
                .post(format!("{base}/v1/keys"))
                .bearer_auth(ADMIN)
                .json(&json!({"user_id": user, "location": "ams"}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let outcome = match sent {
                Ok(response) if response.status().as_u16() == 202 => {
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if let Some(key) = body["key_id"].as_str() {
                        return key.to_owned();
                    }
                    format!("202 without a key id: {body}")
                }
                Ok(response) => format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ),
                Err(error) => error.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "user {user}: no key after {REQUEST_DEADLINE:?}: {outcome}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The key's status as process `which` shows it.
    async fn status(&self, which: usize, key: &str) -> Option<String> {
        let response = self
            .http
            .get(format!("{}/v1/keys/{key}", self.bases[which]))
            .bearer_auth(ADMIN)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if response.status().as_u16() != 200 {
            return None;
        }
        let view: Value = response.json().await.ok()?;
        view["status"].as_str().map(str::to_owned)
    }

    async fn healthy(&self, which: usize) -> bool {
        self.http
            .get(format!("{}/healthz", self.bases[which]))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    /// Waits until every key is active, as both processes show it.
    async fn all_active(&self, keys: &[String]) {
        for key in keys {
            for which in 0..2 {
                eventually(&format!("key {key} active at process {which}"), || async {
                    self.status(which, key).await.as_deref() == Some("active")
                })
                .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_applied_while_two_serve_processes_run_completes_within_30_s() {
    let db = testkit::TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("simulator");
    // Slow panel calls keep the workers' deliveries in hand while the migration waits.
    panel
        .handle()
        .update_faults(|f| f.latency = Duration::from_millis(100));
    let config = ams_config_file(&panel.base_url());
    let addresses = [common::free_address(), common::free_address()];
    let mut processes = Vec::new();
    for address in &addresses {
        let env = [
            ("DATABASE_URL", db.url.as_str()),
            ("AMQP_URL", broker.amqp_url.as_str()),
            ("KEYLEDGER_CONFIG", config.as_str()),
            ("X3UI_AMS_PASSWORD", "sim-password"),
            ("KEYLEDGER_HTTP_ADDR", address.as_str()),
            ("KEYLEDGER_ADMIN_TOKEN", ADMIN),
        ];
        processes.push(Serving::start("api,relay,projector,worker", &env).await);
    }
    let apis = Apis {
        bases: Arc::new(addresses.map(|a| format!("http://{a}"))),
        http: reqwest::Client::new(),
    };

    // Before: keys flow through both processes.
    let mut before = Vec::new();
    for user in 1..=20 {
        before.push(apis.request(user).await);
    }
    apis.all_active(&before).await;

    // During: a stream of requests through both APIs, while the newer release migrates.
    let stop = CancellationToken::new();
    let stream = tokio::spawn({
        let (apis, stop) = (apis.clone(), stop.clone());
        async move {
            let mut keys = Vec::new();
            let mut user = 1_000;
            while !stop.is_cancelled() {
                keys.push(apis.request(user).await);
                user += 1;
            }
            keys
        }
    });
    // The stream is under way before the migration starts.
    let flowing = db.store.pool().clone();
    eventually("requests flowing during the upgrade", || async {
        let count: Result<i64, _> = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE (data->>'user_id')::bigint >= 1000",
        )
        .fetch_one(&flowing)
        .await;
        count.is_ok_and(|n| n >= 5)
    })
    .await;

    let directory = std::env::temp_dir().join(format!(
        "keyledger-upgrade-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&directory).expect("migration directory");
    std::fs::write(
        directory.join(format!("{MIGRATION_VERSION}_rolling_upgrade_note.sql")),
        MIGRATION_SQL,
    )
    .expect("write the migration");
    let mut migrator = sqlx::migrate::Migrator::new(directory.as_path())
        .await
        .expect("read the migration");
    // The database also holds this build's migrations, which this source does not list.
    migrator.set_ignore_missing(true);
    // As `keyledger migrate` does: sessions whose lock waits are bounded (3 s).
    let owner = eventstore::EventStore::connect(&db.url, 2)
        .await
        .expect("the migrating login");
    let in_flight = awaiting_panel(&db).await;
    assert!(
        in_flight > 0,
        "no key waited for the panel when the migration began"
    );
    let started = Instant::now();
    let migrated = tokio::time::timeout(
        MIGRATION_BOUND + Duration::from_secs(30),
        service::store::with_migration_patience(|| async {
            migrator.run(owner.pool()).await.map_err(Into::into)
        }),
    )
    .await;
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&directory);
    match migrated {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("the migration failed after {took:?}: {error:#}"),
        Err(_) => panic!("the migration was still waiting after {took:?}"),
    }
    assert!(
        took < MIGRATION_BOUND,
        "the migration took {took:?} while two processes served"
    );
    let applied: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)
            AND EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'events' AND column_name = 'rolling_upgrade_note')",
    )
    .bind(MIGRATION_VERSION)
    .fetch_one(db.pool())
    .await
    .expect("read the schema");
    assert!(applied, "the migration is recorded and its column exists");

    // The stream went on through the migration; it ends a moment after.
    let during_migration = stream_len_after(&db, 1_000).await;
    stop.cancel();
    let during = stream.await.expect("request stream");
    assert!(
        during.len() >= during_migration,
        "the stream lost requests: {} < {during_migration}",
        during.len()
    );

    // After: both processes still serve, and every key of every phase becomes active.
    for which in 0..2 {
        assert!(
            apis.healthy(which).await,
            "process {which} answers /healthz"
        );
    }
    let mut after = Vec::new();
    for user in 2_000..2_020 {
        after.push(apis.request(user).await);
    }
    apis.all_active(&before).await;
    apis.all_active(&during).await;
    apis.all_active(&after).await;
    eprintln!(
        "migration took {took:?} ({in_flight} keys awaiting the panel when it began); \
         keys: {} before, {} during, {} after",
        before.len(),
        during.len(),
        after.len()
    );
    for (i, process) in processes.into_iter().enumerate() {
        let (code, logs) = process.terminate().await;
        assert_eq!(code, Some(0), "process {i}: {logs:#?}");
    }
}

/// How many keys of users from `first` on the log holds.
async fn stream_len_after(db: &testkit::TestDatabase, first: i64) -> usize {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT stream_id) FROM events
         WHERE type = 'key.requested' AND (data->>'user_id')::bigint >= $1",
    )
    .bind(first)
    .fetch_one(db.pool())
    .await
    .expect("count requested keys");
    usize::try_from(count).unwrap_or(0)
}

/// Keys requested and not yet acknowledged by the panel.
async fn awaiting_panel(db: &testkit::TestDatabase) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events r
         WHERE r.type = 'key.requested'
           AND NOT EXISTS (SELECT 1 FROM events p
                           WHERE p.stream_id = r.stream_id AND p.type = 'key.provisioned')",
    )
    .fetch_one(db.pool())
    .await
    .expect("count keys awaiting the panel")
}
