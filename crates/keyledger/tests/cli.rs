//! The `keyledger` binary end to end: migrate, audit and exit codes, against a real database.

use std::process::{Command, Output};

use eventstore::testing::{TestDatabase, server_url};
use eventstore::{Actor, ActorKind, EventMetadata, NewEvent};
use serde_json::{Value, json};
use uuid::Uuid;

fn keyledger(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("KEYLEDGER_LOG_FORMAT", "json")
        .output()
        .expect("binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn seeded_key(db: &TestDatabase) -> Uuid {
    let key = Uuid::new_v4();
    let meta =
        EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::TelegramUser, "42"));
    let events = [
        NewEvent::new(
            "key.requested",
            json!({"user_id": 42, "location": "ams", "client_uuid": Uuid::new_v4(),
                   "email": "tg42-ams", "expires_at": null, "traffic_limit_bytes": 0}),
        ),
        NewEvent::new("key.revocation_requested", json!({"reason": "lost phone"})),
    ];
    db.store.append(key, 0, &events, &meta).await.expect("seed");
    db.store
        .append(
            Uuid::new_v4(),
            0,
            &[NewEvent::new("key.expired", json!({}))],
            &EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Scheduler, "s")),
        )
        .await
        .expect("seed other");
    key
}

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
    let requested = text.find("key.requested").expect("requested shown");
    let revocation = text
        .find("key.revocation_requested")
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
    assert_eq!(lines[1]["type"], "key.revocation_requested");
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
fn serve_refuses_roles_this_build_lacks() {
    let output = keyledger(
        "postgres://x@127.0.0.1/none",
        &["serve", "--roles", "scheduler,api"],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Api"));
}

/// A `keyledger serve` child process, its stderr drained into lines.
struct Serving {
    child: std::process::Child,
    drain: tokio::task::JoinHandle<Vec<String>>,
}

impl Serving {
    /// Starts `serve --roles <roles>` with `env` and waits for its ready line.
    async fn start(roles: &str, env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_keyledger"))
            .args(["serve", "--roles", roles])
            .env_clear()
            .envs(env.iter().copied())
            .env("KEYLEDGER_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        // Keep draining stderr after the ready line: a closed pipe would fail the child's logging.
        let drain = tokio::task::spawn_blocking(move || {
            let mut ready_tx = Some(ready_tx);
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("keyledger serving")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        tokio::time::timeout(std::time::Duration::from_secs(30), ready_rx)
            .await
            .expect("serve became ready in time")
            .expect("serve logged that it was serving");
        Self { child, drain }
    }

    /// Sends SIGTERM; returns the exit code and every log line.
    async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        let child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("placeholder"),
        );
        let drain = std::mem::replace(&mut self.drain, tokio::spawn(async { Vec::new() }));
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let mut child = child;
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        (status.code(), drain.await.expect("drain"))
    }
}

impl Drop for Serving {
    /// A failing test must not leave the server running: the runtime would wait forever
    /// for the thread draining its output.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn serve_runs_until_sigterm_and_exits_cleanly() {
    let db = TestDatabase::create().await;
    let serving = Serving::start("scheduler", &[("DATABASE_URL", &db.url)]).await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("shutting down")));
}

#[tokio::test]
async fn serve_with_the_relay_role_publishes_the_log() {
    let db = TestDatabase::create().await;
    let broker = broker::testing::TestBroker::create().await;
    let serving = Serving::start(
        "relay",
        &[("DATABASE_URL", &db.url), ("AMQP_URL", &broker.amqp_url)],
    )
    .await;
    let key = seeded_key(&db).await;
    let connection =
        lapin::Connection::connect(&broker.amqp_url, lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let mut channel = connection.create_channel().await.expect("channel");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "relay published {delivered:?}"
        );
        match channel
            .basic_get(
                broker::Queue::Projector.name().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
        {
            Ok(Some(message)) => delivered.push(message.delivery),
            Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            Err(_) => {
                // The queue did not exist yet, which closes the channel; the relay
                // declares it.
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                channel = connection.create_channel().await.expect("channel");
            }
        }
    }
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
