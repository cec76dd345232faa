//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

use uuid::Uuid;

/// Polls `condition` until it holds, or panics naming `what` after the kit's deadline.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    testkit::wait_until(what, testkit::DEADLINE, condition).await;
}

pub fn keyledger(database_url: &str, args: &[&str]) -> Output {
    keyledger_with(database_url, args, &[])
}

/// The binary with a clean environment: `DATABASE_URL`, JSON logs and `env`.
pub fn keyledger_with(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("KEYLEDGER_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .output()
        .expect("binary runs")
}

/// Two streams in the log: a key requested and being revoked (returned), and another
/// stream's `key.expired`.
pub async fn seeded_key(db: &testkit::TestDatabase) -> Uuid {
    use domain::EventType;
    use eventstore::{Actor, ActorKind, EventMetadata, NewEvent};
    use serde_json::json;
    let key = Uuid::new_v4();
    let meta =
        EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::TelegramUser, "42"));
    let events = [
        NewEvent::new(
            EventType::Requested.as_str(),
            json!({"user_id": 42, "location": "ams", "client_uuid": Uuid::new_v4(),
                   "email": "tg42-ams", "expires_at": null, "traffic_limit_bytes": 0}),
        ),
        NewEvent::new(
            EventType::RevocationRequested.as_str(),
            json!({"reason": "lost phone"}),
        ),
    ];
    db.store.append(key, 0, &events, &meta).await.expect("seed");
    db.store
        .append(
            Uuid::new_v4(),
            0,
            &[NewEvent::new(EventType::Expired.as_str(), json!({}))],
            &EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Scheduler, "s")),
        )
        .await
        .expect("seed other");
    key
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `keyledger serve` child process, its stderr drained into lines.
pub struct Serving {
    child: std::process::Child,
    drain: tokio::task::JoinHandle<Vec<String>>,
}

impl Serving {
    /// Starts `serve --roles <roles>` with `env` and waits for its ready line.
    pub async fn start(roles: &str, env: &[(&str, &str)]) -> Self {
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
        let ready = tokio::time::timeout(std::time::Duration::from_secs(30), ready_rx).await;
        if !matches!(ready, Ok(Ok(()))) {
            let _ = child.kill();
            let lines = drain.await.unwrap_or_default();
            panic!("serve did not log that it was serving within 30 s:\n{lines:#?}");
        }
        Self { child, drain }
    }

    /// Sends SIGTERM; returns the exit code and every log line.
    pub async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
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

/// Writes `content` to a fresh file and returns its path.
pub fn tempfile_with(content: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("keyledger-test-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(&path, content).expect("write config");
    path.to_string_lossy().into_owned()
}

/// A config file with one location, `ams`, on the panel at `panel_url` (a simulator; its
/// password is read from `X3UI_AMS_PASSWORD`).
pub fn ams_config_file(panel_url: &url::Url) -> String {
    tempfile_with(&format!(
        "[[locations]]\nid = \"ams\"\nname = \"Amsterdam\"\npanel_url = \"{panel_url}\"\n\
         username = \"admin\"\npassword_env = \"X3UI_AMS_PASSWORD\"\ninbound_id = 1\n\
         public_host = \"ams.example.com\"\n\
         allow_plain_http = true\n"
    ))
}
