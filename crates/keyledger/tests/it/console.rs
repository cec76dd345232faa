//! The console in a real browser (issue 17, docs/console.md): `keyledger serve --roles
//! api,relay,projector,worker` with simulated panels, the real PostgreSQL and RabbitMQ, and
//! Debian's Chromium driven by Playwright (`tests/browser/console.mjs`). This test makes
//! what the pages must show — a key, a drift found and repaired, a dead letter — runs the
//! script, and checks behind the browser's back that what it did happened: the rotation
//! reached the panel, the moved dead letter provisioned its key.
//!
//! The dead letter is a key requested at a location the running worker does not serve
//! (its configuration lacks it), which the worker refuses for good; the operator then
//! restarts with the location configured and moves the message back from the console, as
//! the runbook does. Screenshots of every page go to
//! `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::common::{Serving, eventually, stdout, tempfile_with};
use eventstore::{ActorKind, KeyLedger};
use serde_json::{Value, json};
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};

const ADMIN: &str = "admin-token-for-the-console-test";
const AUDITOR: &str = "auditor-token-for-the-console-test";
const SERVICE: &str = "service-token-for-the-console-test";
const ROLES: &str = "api,relay,projector,worker";

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

fn location(id: &str, name: &str, panel: &PanelSimulator) -> String {
    let upper = id.to_uppercase();
    format!(
        "[[locations]]\nid = \"{id}\"\nname = \"{name}\"\npanel_url = \"{}\"\n\
         username = \"admin\"\npassword_env = \"X3UI_{upper}_PASSWORD\"\ninbound_id = 1\n\
         public_host = \"{id}.example.com\"\nallow_plain_http = true\n",
        panel.base_url()
    )
}

fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn browser_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/browser"))
}

/// Runs one phase of the Playwright script; returns its output after checking it passed
/// every step it names.
fn run_browser(phase: &str, env: &[(&str, String)], expected_steps: usize) -> String {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (.ci/run does)"
    );
    let started = Instant::now();
    let output = Command::new("node")
        .arg("console.mjs")
        .arg(phase)
        .current_dir(&dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("node runs");
    let text = stdout(&output);
    eprintln!(
        "browser phase {phase} took {:?}:\n{text}{}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "phase {phase} failed:\n{text}");
    let passed = text.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(passed, expected_steps, "steps passed in {phase}:\n{text}");
    text
}

async fn view(db: &testkit::TestDatabase, key: Uuid) -> Option<projector::KeyView> {
    projector::load_view(db.pool(), key).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_auditors_use_the_console_in_a_browser() {
    let started = Instant::now();
    let db = testkit::TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let ams = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("ams simulator");
    let fra = PanelSimulator::start_on(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        SimConfig::v2_9(),
        "fra",
        443,
    )
    .await
    .expect("fra simulator");
    let only_ams = tempfile_with(&location("ams", "Amsterdam", &ams));
    let both = tempfile_with(&format!(
        "{}{}",
        location("ams", "Amsterdam", &ams),
        location("fra", "Frankfurt", &fra)
    ));
    let address = free_address();
    let base = format!("http://{address}");
    let env_with = |config: &str| -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("AMQP_URL", broker.amqp_url.clone()),
            ("KEYLEDGER_CONFIG", config.to_owned()),
            ("X3UI_AMS_PASSWORD", "sim-password".to_owned()),
            ("X3UI_FRA_PASSWORD", "sim-password".to_owned()),
            ("KEYLEDGER_HTTP_ADDR", address.clone()),
            ("KEYLEDGER_ADMIN_TOKEN", ADMIN.to_owned()),
            ("KEYLEDGER_AUDITOR_TOKEN", AUDITOR.to_owned()),
            ("KEYLEDGER_SERVICE_TOKEN", SERVICE.to_owned()),
        ]
    };
    let first_env = env_with(&only_ams);
    let serving = Serving::start(ROLES, &as_refs(&first_env)).await;

    // A key at ams, requested over the API and provisioned.
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"user_id": 42, "location": "ams"}))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("json");
    let key: Uuid = answer["key_id"]
        .as_str()
        .and_then(|k| k.parse().ok())
        .expect("key id");
    eventually("the key to be active", || async {
        view(&db, key).await.is_some_and(|v| v.status == "active")
    })
    .await;
    let first_uuid = view(&db, key).await.expect("view").client_uuid;

    // Drift: the client disappears from the panel; a reconcile finds and repairs it.
    let ams_panel = ams.handle();
    assert!(ams_panel.remove_client("tg42-ams"));
    let reconcile = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(["reconcile", "--location", "ams"])
        .env_clear()
        .envs(as_refs(&first_env))
        .output()
        .expect("reconcile runs");
    assert!(
        reconcile.status.success(),
        "{}",
        String::from_utf8_lossy(&reconcile.stderr)
    );
    assert!(ams_panel.client("tg42-ams").is_some(), "reconcile repaired");

    // A dead letter: a key at fra, which this worker does not serve.
    let (dead_key, request) = testkit::key_request(43, "fra");
    let meta = testkit::command_metadata(ActorKind::TelegramUser);
    KeyLedger::new(db.store.clone())
        .execute(dead_key, &request, &meta)
        .await
        .expect("request at fra");
    eventually("the fra request to be dead-lettered", || async {
        broker
            .management
            .queue(&broker.vhost, "keyledger.x3ui-worker.dlq")
            .await
            .is_ok_and(|q| q.messages == 1)
    })
    .await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let browser_env = vec![
        ("BASE_URL", base.clone()),
        ("SHOTS_DIR", shots.to_string_lossy().into_owned()),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("AUDITOR_TOKEN", AUDITOR.to_owned()),
        ("SERVICE_TOKEN", SERVICE.to_owned()),
        ("KEY_ID", key.to_string()),
        ("USER_ID", "42".to_owned()),
        ("CLIENT_UUID", first_uuid.to_string()),
        ("DEAD_LETTER_KEY_ID", dead_key.as_uuid().to_string()),
    ];
    run_browser("before-restart", &browser_env, 12);

    // The rotation the admin confirmed in the browser reached the panel.
    let rotated = view(&db, key).await.expect("view");
    assert_ne!(rotated.client_uuid, first_uuid);
    let on_panel = ams_panel.client("tg42-ams").expect("client on the panel");
    assert_eq!(on_panel["id"], json!(rotated.client_uuid.to_string()));
    assert!(fra.handle().client("tg43-fra").is_none());

    // The operator configures fra and restarts; then moves the dead letter back.
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    let second_env = env_with(&both);
    let serving = Serving::start(ROLES, &as_refs(&second_env)).await;
    run_browser("after-restart", &browser_env, 3);
    assert!(
        fra.handle().client("tg43-fra").is_some(),
        "the moved message provisioned the key on fra's panel"
    );
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        shots.join("08-admin-key-timeline.png").exists(),
        "screenshots in {shots:?}"
    );
    eprintln!("console browser test took {:?}", started.elapsed());
}
