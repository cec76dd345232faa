//! `keyledger serve` with every role but the bot, a simulated panel, the real PostgreSQL
//! and RabbitMQ: a key requested over HTTP becomes active with a link, rotates to a new
//! UUID and is revoked, and its history shows all of it.

use crate::common;

use common::{Serving, ams_config_file, eventually};
use domain::EventType;
use serde_json::{Value, json};
use x3ui_sim::{PanelSimulator, SimConfig};

const ADMIN: &str = "admin-token-for-the-e2e-test";
const AUDITOR: &str = "auditor-token-for-the-e2e-test";

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn view(&self, key: &str) -> Option<Value> {
        let (status, view) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/keys/{key}"),
                ADMIN,
                None,
            )
            .await;
        (status == 200).then_some(view)
    }

    /// Waits until the key's view has `status`, and returns it.
    async fn view_when(&self, key: &str, status: &str) -> Value {
        eventually(&format!("key {key} to be {status}"), || async {
            self.view(key)
                .await
                .is_some_and(|v| v["status"] == json!(status))
        })
        .await;
        self.view(key).await.expect("view")
    }
}

/// The UUID a `vless://` link carries.
fn link_uuid(link: &Value) -> String {
    let link = link.as_str().expect("a link");
    let rest = link.strip_prefix("vless://").expect("a vless link");
    rest.split('@').next().expect("uuid part").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_requested_over_http_is_provisioned_rotated_and_revoked() {
    let db = testkit::TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("simulator");
    let config = ams_config_file(&panel.base_url());
    let address = common::free_address();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", broker.amqp_url.as_str()),
        ("KEYLEDGER_CONFIG", config.as_str()),
        ("X3UI_AMS_PASSWORD", "sim-password"),
        ("KEYLEDGER_HTTP_ADDR", address.as_str()),
        ("KEYLEDGER_ADMIN_TOKEN", ADMIN),
        ("KEYLEDGER_AUDITOR_TOKEN", AUDITOR),
    ];
    let serving = Serving::start("api,relay,projector,worker,scheduler", &env).await;
    let client = Client {
        base: format!("http://{address}"),
        http: reqwest::Client::new(),
    };
    let handle = panel.handle();

    let (status, requested) = client
        .send(
            reqwest::Method::POST,
            "/v1/keys",
            ADMIN,
            Some(json!({"user_id": 42, "location": "ams"})),
        )
        .await;
    assert_eq!(status, 202, "{requested}");
    assert_eq!(requested["status"], json!("provisioning"));
    let key = requested["key_id"].as_str().expect("key id").to_owned();

    let active = client.view_when(&key, "active").await;
    let first_uuid = link_uuid(&active["link"]);
    assert_eq!(json!(first_uuid), active["client_uuid"]);
    let on_panel = handle
        .client("tg42-ams")
        .expect("the panel holds the client");
    assert_eq!(on_panel["id"], json!(first_uuid));

    let (status, rotating) = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/keys/{key}/rotate"),
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, 202, "{rotating}");
    assert_eq!(rotating["status"], json!("rotating"));
    eventually("the rotation to reach the view", || async {
        client.view(&key).await.is_some_and(|v| {
            v["status"] == json!("active") && v["client_uuid"] != json!(first_uuid)
        })
    })
    .await;
    let rotated = client.view(&key).await.expect("view");
    let second_uuid = link_uuid(&rotated["link"]);
    assert_ne!(second_uuid, first_uuid, "a refresh hands out a new key");
    assert_eq!(json!(second_uuid), rotated["client_uuid"]);
    let on_panel = handle
        .client("tg42-ams")
        .expect("the panel holds the client");
    assert_eq!(on_panel["id"], json!(second_uuid));

    let (status, revoking) = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/keys/{key}/revoke"),
            ADMIN,
            Some(json!({"reason": "user left"})),
        )
        .await;
    assert_eq!(status, 202, "{revoking}");
    client.view_when(&key, "revoked").await;
    // The panel cannot delete an inbound's last client (docs/panel.md), so the worker
    // disables it instead: either way the key no longer works.
    let left = handle.client("tg42-ams");
    assert!(
        left.as_ref().is_none_or(|c| c["enable"] == json!(false)),
        "a revoked key must not stay usable on the panel: {left:?}"
    );

    let (status, history) = client
        .send(
            reqwest::Method::GET,
            &format!("/v1/keys/{key}/history"),
            AUDITOR,
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            EventType::Requested.as_str(),
            EventType::Provisioned.as_str(),
            EventType::RotationRequested.as_str(),
            EventType::Rotated.as_str(),
            EventType::RevocationRequested.as_str(),
            EventType::Revoked.as_str(),
        ]
    );
    let (status, report) = client
        .send(reqwest::Method::GET, "/v1/audit/verify", AUDITOR, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], json!(true), "{report}");
    let (status, ready) = client
        .send(reqwest::Method::GET, "/readyz", AUDITOR, None)
        .await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["panel:ams"], json!("ok"));
    let (status, locations) = client
        .send(reqwest::Method::GET, "/v1/locations", AUDITOR, None)
        .await;
    assert_eq!(status, 200, "{locations}");
    assert_eq!(locations[0]["id"], json!("ams"));
    assert_eq!(locations[0]["breaker"], json!("closed"));
    assert_eq!(locations[0]["panel_reachable"], json!(true));
    assert!(locations[0]["last_success_at"].is_string(), "{locations}");

    let metrics = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "keyledger_events_appended_total",
        "keyledger_events_published_total",
        "keyledger_panel_calls_total",
        "keyledger_http_requests_total",
        "keyledger_http_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    // Every line the worker logged about this key names it and its flow.
    let about_key: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("\"event_type\""))
        .collect();
    assert!(!about_key.is_empty(), "no consumer log lines: {logs:#?}");
    for line in about_key {
        assert!(
            line.contains(&key) && line.contains("correlation_id"),
            "{line}"
        );
    }
}
