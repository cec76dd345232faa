//! A broken or hostile panel (docs/panel.md "Hostile panels"): an answer of gigabytes is
//! read only up to `max_response_bytes`; its text (a refusal's message, a client's fields)
//! reaches events, logs and dead-letter headers only cleaned and bounded; ids and emails
//! that are not the shapes keyledger writes never go into a request.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::health::Recorded;
use crate::reconcile::foreign;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use broker::Queue;
use broker::message::REASON_HEADER;
use common::stack::{Base, DEADLINE, Stack};
use domain::EventType;
use metrics_util::debugging::DebuggingRecorder;
use serde_json::json;
use testkit::wait_until;
use url::Url;
use uuid::Uuid;
use x3ui_sim::SimConfig;
use x3ui_worker::reconcile::FindingKind;
use x3ui_worker::{
    AnyPanelApi, ClientSpec, Credentials, PanelApi, PanelConfig, PanelError, Reconciler, Secret,
};

/// Two gigabytes, streamed a megabyte at a time and never held whole.
const HUGE: u64 = 2 * 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

fn endless_answer() -> Body {
    let chunks = (0..HUGE / CHUNK as u64).map(|_| Ok::<_, std::io::Error>(vec![b' '; CHUNK]));
    Body::from_stream(futures::stream::iter(chunks))
}

async fn hostile_panel() -> Url {
    let login = || async {
        (
            [("set-cookie", "3x-ui=session; Path=/")],
            r#"{"success":true,"msg":"","obj":null}"#,
        )
    };
    let app = Router::new()
        .route("/login", post(login))
        .route(
            "/panel/api/inbounds/get/{id}",
            get(|| async { endless_answer() }),
        )
        .route(
            "/panel/api/inbounds/list",
            get(|| async { endless_answer() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Url::parse(&format!("http://{address}/")).expect("url")
}

#[tokio::test]
async fn a_panel_answering_two_gigabytes_is_refused_after_the_cap() {
    let base = hostile_panel().await;
    let config = PanelConfig::new(
        "ams",
        base,
        Credentials::Password {
            username: "admin".into(),
            password: Secret::new("pw"),
        },
        1,
    )
    .with_max_response_bytes(4 * 1024 * 1024)
    .with_timeouts(Duration::from_secs(2), Duration::from_secs(30));
    let api = AnyPanelApi::new(config).expect("client");
    let started = Instant::now();
    let error = api.get_inbound().await.expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("larger than 4194304 bytes"), "{text}");
    assert!(text.contains("ams"), "the error names the location: {text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after the cap, not after the body: {:?}",
        started.elapsed()
    );
}

/// About a megabyte of what a broken panel might say: newlines that would forge log
/// lines, NUL that PostgreSQL refuses in `jsonb`, and ANSI escapes.
fn megabyte_of_hostile_text() -> String {
    let line = "Something went wrong\n\0\u{1b}[31m level=ERROR forged=line\r\n";
    line.repeat(1024 * 1024 / line.len() + 1)
}

/// At most `max_chars`, with no control character left (line breaks, NUL, ESC).
fn assert_bounded_and_clean(text: &str, max_chars: usize) {
    let chars = text.chars().count();
    assert!(chars <= max_chars, "{chars} chars, more than {max_chars}");
    assert!(!text.chars().any(char::is_control), "{text:?}");
}

#[tokio::test]
async fn a_megabyte_refusal_is_recorded_and_dead_lettered_bounded_and_clean() {
    let stack = Stack::with_max_deliveries(2).await;
    let hostile = megabyte_of_hostile_text();
    stack
        .sim
        .handle()
        .update_faults(|f| f.refusal_msg = Some(hostile.clone()));
    let (key, _) = stack.request(301).await;
    stack
        .wait_for(key, EventType::ProvisioningFailed.as_str(), 1)
        .await;
    let failed = stack.first(key, EventType::ProvisioningFailed).await;
    let error = failed.data["error"].as_str().unwrap();
    assert_bounded_and_clean(error, 1000);
    assert!(
        error.contains("the panel refused: Something went wrong"),
        "{error}"
    );
    assert!(error.ends_with('…'), "cut, and says so: {error}");

    // After its second delivery the message is given up, with the reason in a header.
    wait_until("the message is dead-lettered", DEADLINE, || async {
        stack.stats.dead_lettered.load(Ordering::SeqCst) >= 1
    })
    .await;
    let dead = stack
        .broker
        .management
        .peek_messages(
            &stack.broker.vhost,
            &Queue::X3uiWorker.dead_letter_queue(),
            10,
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].properties["headers"][REASON_HEADER]
        .as_str()
        .unwrap();
    assert_bounded_and_clean(reason, broker::consumer::MAX_REASON_CHARS);
    assert!(
        reason.starts_with("gave up after 2 deliveries; last error: key"),
        "{reason}"
    );

    // The worker kept going: once the panel behaves, the next key is served.
    stack.sim.handle().update_faults(|f| f.refusal_msg = None);
    stack.provisioned(302).await;
    stack.stop().await;
}

const HOSTILE_EMAILS: [&str; 2] = ["../x?y", "a/b"];

/// Whether a request line was built from one of [`HOSTILE_EMAILS`], encoded or not.
fn built_from_hostile_email(line: &str) -> bool {
    ["..", "x?y", "x%3Fy", "/a/b", "a%2Fb", "%2E%2E"]
        .iter()
        .any(|part| line.contains(part))
}

// The local metrics recorder is per thread: a current-thread runtime records everything.
#[tokio::test(flavor = "current_thread")]
async fn emails_that_are_not_ours_never_go_into_a_request() {
    for config in [SimConfig::v2_9(), SimConfig::v3_1()] {
        let recorder = DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let base = Base::with_sim(config).await;
        let (key, _) = base.request(311).await;
        base.worker.sync_key(key, None).await.unwrap();
        let sim = base.sim.handle();
        sim.insert_clients(1, HOSTILE_EMAILS.map(foreign).to_vec());

        // A pass sees them, reports them as foreign, and leaves them alone.
        let reconciler = Reconciler::new(base.db.store.clone(), base.panels.clone());
        let report = reconciler.reconcile_location("ams", false).await.unwrap();
        assert_eq!(
            report.count(FindingKind::Foreign),
            2,
            "{:?}",
            report.findings
        );
        reconciler.usage_pass().await;

        // Asked to write one of them, the panel client refuses before sending anything.
        let panel = base.panels.get("ams").unwrap().panel();
        let before = sim.request_log().len();
        let error = panel
            .ensure_client(&ClientSpec::new(Uuid::new_v4(), "a/b"))
            .await
            .expect_err("refused");
        assert!(
            matches!(error, PanelError::Unaddressable { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("\"a/b\" is not one keyledger gives"),
            "{error}"
        );
        let error = panel
            .api()
            .reset_client_traffic("../x?y")
            .await
            .expect_err("refused");
        assert!(
            matches!(error, PanelError::Unaddressable { .. }),
            "{error:?}"
        );
        let sent: Vec<String> = sim.request_log().split_off(before);
        assert!(
            sent.iter().all(|line| line.starts_with("GET ")),
            "only the look before the write went out: {sent:?}"
        );
        let recorded = Recorded::since_last(&metrics);
        let refused = [("operation", "update_client"), ("outcome", "unaddressable")];
        assert_eq!(
            recorded.counter("keyledger_panel_calls_total", &refused),
            1,
            "the refusal is counted where operators look"
        );

        let log = sim.request_log();
        assert!(log.len() > 5, "{log:?}");
        let leaked: Vec<&String> = log.iter().filter(|l| built_from_hostile_email(l)).collect();
        assert!(leaked.is_empty(), "{leaked:?}");
        assert!(sim.client("a/b").is_some() && sim.client("../x?y").is_some());
    }
}

#[tokio::test]
async fn hostile_client_settings_are_recorded_as_drift_bounded_and_clean() {
    let base = Base::new().await;
    let (key, _) = base.request(321).await;
    base.worker.sync_key(key, None).await.unwrap();
    let hostile = megabyte_of_hostile_text();
    assert!(base.sim.handle().modify_client("tg321-ams", |client| {
        client.insert("flow".into(), json!(hostile));
    }));

    let report = Reconciler::new(base.db.store.clone(), base.panels.clone())
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert_eq!(
        report.count(FindingKind::SettingsDiffer),
        1,
        "{:?}",
        report.findings
    );
    assert_eq!(report.repaired, 1);
    // Recorded at all: a NUL in `observed` would have been refused by PostgreSQL.
    let drift = base.first(key, EventType::DriftDetected).await;
    let flow = drift.data["observed"]["flow"].as_str().unwrap();
    assert_eq!(flow.chars().count(), domain::MAX_FOREIGN_TEXT_CHARS);
    assert_bounded_and_clean(flow, domain::MAX_FOREIGN_TEXT_CHARS);
    assert!(flow.starts_with("Something went wrong"), "{flow}");
    assert_eq!(drift.data["observed"]["email"], json!("tg321-ams"));
    assert_eq!(
        base.client("tg321-ams").unwrap()["flow"],
        json!("xtls-rprx-vision")
    );
}
