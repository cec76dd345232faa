//! The `keyledger` binary end to end: migrate, audit and exit codes, against a real database.

use crate::common;

use std::process::Command;

use common::{Serving, ams_config_file, eventually, keyledger, seeded_key, stdout};

use domain::EventType;
use eventstore::{Actor, ActorKind, EventMetadata};
use serde_json::Value;
use testkit::{TestDatabase, database_server_url as server_url};
use uuid::Uuid;

#[tokio::test]
async fn migrate_creates_a_missing_database_and_is_repeatable() {
    let name = format!("keyledger_cli_{}", Uuid::new_v4().simple());
    let url = eventstore::with_database(&server_url(), &name).expect("valid URL");
    for _ in 0..2 {
        let output = keyledger(&url, &["migrate"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let verify = keyledger(&url, &["audit", "verify"]);
    assert!(verify.status.success());
    assert!(stdout(&verify).contains("checked 0 events"));
    eventstore::drop_database(&url).await.expect("cleanup");
}

#[tokio::test]
async fn history_prints_a_keys_events_oldest_first() {
    let db = TestDatabase::create().await;
    let key = seeded_key(&db).await;
    let output = keyledger(&db.url, &["audit", "history", &key.to_string()]);
    assert!(output.status.success());
    let text = stdout(&output);
    let requested = text
        .find(EventType::Requested.as_str())
        .expect("requested shown");
    let revocation = text
        .find(EventType::RevocationRequested.as_str())
        .expect("revocation shown");
    assert!(requested < revocation);
    assert!(text.contains("reason: lost phone") && text.contains("telegram_user:42"));

    let output = keyledger(&db.url, &["audit", "history", &key.to_string(), "--json"]);
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[1]["type"], EventType::RevocationRequested.as_str());
    assert_eq!(lines[0]["stream_id"], key.to_string());

    let unknown = keyledger(&db.url, &["audit", "history", &Uuid::new_v4().to_string()]);
    assert_eq!(unknown.status.code(), Some(1));
}

#[tokio::test]
async fn export_prints_every_event_in_log_order() {
    let db = TestDatabase::create().await;
    seeded_key(&db).await;
    let output = keyledger(&db.url, &["audit", "export"]);
    let positions: Vec<i64> = stdout(&output)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["position"]
                .as_i64()
                .expect("position")
        })
        .collect();
    assert_eq!(positions.len(), 3);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let after = keyledger(
        &db.url,
        &["audit", "export", "--after", &positions[1].to_string()],
    );
    assert_eq!(stdout(&after).lines().count(), 1);
}

#[tokio::test]
async fn verify_exits_non_zero_after_tampering() {
    let db = TestDatabase::create().await;
    let key = seeded_key(&db).await;
    let clean = keyledger(&db.url, &["audit", "verify"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("all hash chains hold"));

    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER events_append_only;
         UPDATE events SET data = jsonb_set(data, '{{reason}}', '\"nothing\"') WHERE stream_id = '{key}' AND version = 2;
         ALTER TABLE events ENABLE TRIGGER events_append_only;"
    ))
    .execute(db.pool())
    .await
    .expect("tamper");
    let tampered = keyledger(&db.url, &["audit", "verify"]);
    assert_eq!(tampered.status.code(), Some(1));
    let text = stdout(&tampered);
    assert!(
        text.contains(&format!("BREAK  stream {key} version 2")),
        "{text}"
    );
}

#[test]
fn bad_configuration_and_usage_exit_with_2() {
    let bad_url = keyledger("mysql://nope", &["audit", "verify"]);
    assert_eq!(bad_url.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("DATABASE_URL"));
    let usage = keyledger("postgres://x@127.0.0.1/none", &["audit", "frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
    let no_file = keyledger(
        "postgres://x@127.0.0.1/none",
        &["--config", "/nonexistent.toml", "migrate"],
    );
    assert_eq!(no_file.status.code(), Some(2));
}

#[test]
fn serve_refuses_unknown_roles() {
    let output = keyledger(
        "postgres://x@127.0.0.1/none",
        &["serve", "--roles", "scheduler,janitor"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("janitor"));
}

#[tokio::test]
async fn serve_runs_until_sigterm_and_exits_cleanly() {
    let db = TestDatabase::create().await;
    let serving = Serving::start("scheduler", &[("DATABASE_URL", &db.url)]).await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("shutting down")));
}

/// Takes `n` messages off `queue`, waiting for them (and for the queue to be declared).
async fn take_messages(amqp_url: &str, queue: &str, n: usize) -> Vec<lapin::message::Delivery> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut delivered = Vec::new();
    while delivered.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} messages",
            delivered.len()
        );
        // A get on a queue not declared yet closes the channel (and lapin the connection
        // with it): start over on a fresh connection then.
        let Ok(connection) =
            lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await
        else {
            continue;
        };
        let Ok(channel) = connection.create_channel().await else {
            continue;
        };
        while delivered.len() < n {
            match channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
            {
                Ok(Some(message)) => delivered.push(message.delivery),
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                    break;
                }
            }
            if std::time::Instant::now() > deadline {
                break;
            }
        }
    }
    delivered
}

#[tokio::test]
async fn serve_with_the_relay_role_publishes_the_log() {
    let db = TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let serving = Serving::start(
        "relay",
        &[("DATABASE_URL", &db.url), ("AMQP_URL", &broker.amqp_url)],
    )
    .await;
    let key = seeded_key(&db).await;
    let delivered = take_messages(&broker.amqp_url, broker::Queue::Projector.name(), 2).await;
    for delivery in &delivered {
        let event = broker::message::decode(&delivery.data, &delivery.properties).expect("event");
        assert_eq!(event.stream_id, key);
    }
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains("broker policies applied")),
        "{logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("relay stopped")),
        "{logs:#?}"
    );
}

#[tokio::test]
async fn serve_with_relay_and_projector_keeps_key_views_and_verify_checks_them() {
    let db = TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let serving = Serving::start(
        "relay,projector",
        &[("DATABASE_URL", &db.url), ("AMQP_URL", &broker.amqp_url)],
    )
    .await;
    let key = seeded_key(&db).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let view = projector::load_view(db.pool(), key)
            .await
            .expect("load view");
        if view.as_ref().map(|v| v.version) == Some(2) {
            let view = view.expect("view");
            assert_eq!((view.status.as_str(), view.user_id), ("revoking", 42));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no view: {view:?}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");

    let verify = keyledger(&db.url, &["audit", "verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("every key view equals a replay"));
    sqlx::query("UPDATE key_views SET status = 'active'")
        .execute(db.pool())
        .await
        .expect("tamper with a view");
    let verify = keyledger(&db.url, &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(stdout(&verify).contains(&format!("VIEW   key {key}")));
    let rebuilt = keyledger(&db.url, &["projections", "rebuild"]);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(keyledger(&db.url, &["audit", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_provisions_a_requested_key_on_the_panel_and_reconcile_repairs_drift() {
    use x3ui_sim::{PanelSimulator, SimConfig};
    let db = TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("simulator");
    let config = ams_config_file(&panel.base_url());
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", broker.amqp_url.as_str()),
        ("KEYLEDGER_CONFIG", config.as_str()),
        ("X3UI_AMS_PASSWORD", "sim-password"),
    ];
    let serving = Serving::start("relay,projector,worker", &env).await;

    let ledger = eventstore::KeyLedger::new(db.store.clone());
    let user = domain::UserId::new(42).expect("user");
    let ams = domain::LocationId::new("ams").expect("location");
    let key = domain::KeyId::for_user_at(user, &ams);
    let request = domain::KeyCommand::Request(domain::RequestKey {
        user_id: user,
        location: ams,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: time::OffsetDateTime::now_utc(),
    });
    let meta =
        EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::TelegramUser, "42"));
    ledger.execute(key, &request, &meta).await.expect("request");
    let handle = panel.handle();
    eventually("the client on the panel", || async {
        handle.client("tg42-ams").is_some()
    })
    .await;
    eventually("the view to say active", || async {
        projector::load_view(db.pool(), key.as_uuid())
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.status == "active")
    })
    .await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");

    // Behind our back, the client disappears; reconcile finds it, and repairs it.
    assert!(handle.remove_client("tg42-ams"));
    let run = |args: &'static [&'static str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
        command.args(args).env_clear().envs(env.iter().copied());
        command.output().expect("keyledger runs")
    };
    let dry = run(&["reconcile", "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        stdout(&dry).contains("missing_on_panel"),
        "{}",
        stdout(&dry)
    );
    assert!(
        handle.client("tg42-ams").is_none(),
        "a dry run changes nothing"
    );
    let repair = run(&["reconcile", "--location", "ams"]);
    assert!(
        repair.status.success(),
        "{}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(
        handle.client("tg42-ams").is_some(),
        "reconcile put the client back"
    );
    let history = db.store.read_stream(key.as_uuid()).await.expect("history");
    assert!(
        history
            .iter()
            .any(|e| e.event_type == EventType::DriftRepaired.as_str())
    );
    let unknown = run(&["reconcile", "--location", "nowhere"]);
    assert_ne!(unknown.status.code(), Some(0));
}
