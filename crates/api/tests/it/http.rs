//! The HTTP API against the real PostgreSQL, over real HTTP: roles, validation,
//! idempotency, commands, queries, the audit routes, probes, metrics and the OpenAPI
//! document.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use api::{ApiConfig, BoxFuture, Breaker, PanelHealth, PanelProbe, PanelStatus, Secret, Tokens};
use domain::{ConfirmProvisioned, EventType, KeyCommand, KeyId, LocationId, UserId};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) const ADMIN: &str = "admin-token-for-tests-0001";
const SERVICE: &str = "service-token-for-tests-0002";
const AUDITOR: &str = "auditor-token-for-tests-0003";

pub(crate) struct Api {
    db: TestDatabase,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Api {
    pub(crate) async fn start() -> Self {
        Self::start_with(None).await
    }

    async fn start_with(amqp_url: Option<String>) -> Self {
        Self::start_full(amqp_url, None).await
    }

    async fn start_full(amqp_url: Option<String>, panels: Option<Arc<dyn PanelStatus>>) -> Self {
        let db = TestDatabase::create().await;
        let tokens = Tokens::new(
            Some(&Secret::new(ADMIN)),
            Some(&Secret::new(SERVICE)),
            Some(&Secret::new(AUDITOR)),
        );
        let locations = [("ams", "Amsterdam"), ("fra", "Frankfurt")]
            .into_iter()
            .map(|(id, name)| domain::Location {
                id: LocationId::new(id).expect("valid id"),
                name: name.to_owned(),
            })
            .collect();
        let config = ApiConfig {
            tokens,
            locations,
            amqp_url,
            panels,
            subscription_urls: None,
        };
        let router = api::router(db.store.clone(), config, api::metrics::recorder());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let stop = CancellationToken::new();
        tokio::spawn(api::serve(listener, router, stop.clone()));
        Self {
            db,
            base,
            http: reqwest::Client::new(),
            stop,
        }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(ADMIN), Some(body)).await
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(ADMIN), None).await
    }

    async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(self.db.pool())
            .await
            .expect("count events")
    }

    /// Plays the worker: the panel now holds the key's client.
    async fn confirm_provisioned(&self, key_id: Uuid, client_uuid: Uuid) {
        let ledger = KeyLedger::new(self.db.store.clone());
        let command = KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
            client_uuid,
            inbound_id: 1,
            link: None,
        });
        let metadata =
            EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Worker, "test"));
        ledger
            .execute(KeyId::from_uuid(key_id), &command, &metadata)
            .await
            .expect("provisioned");
    }
}

fn request_body(user_id: i64) -> Value {
    json!({"user_id": user_id, "location": "ams"})
}

fn key_of(user_id: i64) -> Uuid {
    KeyId::for_user_at(
        UserId::new(user_id).expect("user"),
        &LocationId::new("ams").expect("location"),
    )
    .as_uuid()
}

#[tokio::test]
async fn a_requested_key_answers_202_with_its_view_in_provisioning() {
    let api = Api::start().await;
    let (status, view) = api.post("/v1/keys", request_body(42)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["key_id"], json!(key_of(42)));
    assert_eq!(view["user_id"], json!(42));
    assert_eq!(view["location"], json!("ams"));
    assert_eq!(view["status"], json!("provisioning"));
    assert_eq!(view["version"], json!(1));
    assert!(view["client_uuid"].as_str().is_some(), "{view}");
    assert_eq!(api.event_count().await, 1);
}

/// Every route of docs/http-api.md with the roles allowed on it.
fn routes() -> Vec<(Method, String, Option<Value>, &'static [&'static str])> {
    let key = key_of(42);
    let writers: &'static [&'static str] = &["admin", "service"];
    let readers: &'static [&'static str] = &["admin", "service", "auditor"];
    let auditors: &'static [&'static str] = &["admin", "auditor"];
    vec![
        (
            Method::POST,
            "/v1/keys".into(),
            Some(request_body(42)),
            writers,
        ),
        (
            Method::POST,
            format!("/v1/keys/{key}/rotate"),
            Some(json!({})),
            writers,
        ),
        (
            Method::POST,
            format!("/v1/keys/{key}/revoke"),
            Some(json!({"reason": "test"})),
            writers,
        ),
        (
            Method::POST,
            format!("/v1/keys/{key}/renew"),
            Some(json!({"expires_at": "2099-01-01T00:00:00Z"})),
            writers,
        ),
        (
            Method::POST,
            format!("/v1/keys/{key}/quota"),
            Some(json!({"traffic_limit_bytes": 5000})),
            writers,
        ),
        (Method::GET, format!("/v1/keys/{key}"), None, readers),
        (Method::GET, "/v1/users/42/keys".into(), None, readers),
        (
            Method::GET,
            format!("/v1/keys/{key}/history"),
            None,
            auditors,
        ),
        (
            Method::GET,
            "/v1/events?after=0&limit=10".into(),
            None,
            auditors,
        ),
        (Method::GET, "/v1/audit/verify".into(), None, auditors),
        (
            Method::GET,
            "/v1/audit/checkpoints?after=0&limit=10".into(),
            None,
            auditors,
        ),
        (Method::GET, "/v1/locations".into(), None, readers),
        (
            Method::POST,
            "/v1/users/42/block".into(),
            Some(json!({"reason": "test"})),
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/users/42/unblock".into(),
            Some(json!({"reason": "test"})),
            &["admin"],
        ),
        (Method::GET, "/v1/users/42/access".into(), None, readers),
    ]
}

#[tokio::test]
async fn every_route_admits_its_roles_refuses_the_others_and_wants_a_token() {
    let api = Api::start().await;
    let tokens = [("admin", ADMIN), ("service", SERVICE), ("auditor", AUDITOR)];
    for (method, path, body, allowed) in routes() {
        let (status, error) = api.call(method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without token"
        );
        assert_eq!(error["error"]["code"], json!("missing_token"));
        let (status, error) = api
            .call(
                method.clone(),
                &path,
                Some("not-a-token-at-all-xyz"),
                body.clone(),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} bad token"
        );
        assert_eq!(error["error"]["code"], json!("invalid_token"));
        for (role, token) in tokens {
            let (status, answer) = api
                .call(method.clone(), &path, Some(token), body.clone())
                .await;
            if allowed.contains(&role) {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} on {method} {path}: {status} {answer}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} on {method} {path}");
                assert_eq!(answer["error"]["code"], json!("forbidden"));
            }
        }
    }
}

#[tokio::test]
async fn bad_bodies_are_refused_with_400_and_append_nothing() {
    let api = Api::start().await;
    let oversized = json!({"user_id": 42, "location": "ams", "pad": "x".repeat(20_000)});
    let cases = [
        (
            json!({"user_id": 42, "location": "ams", "colour": "red"}),
            "invalid_body",
        ),
        (json!({"user_id": "42", "location": "ams"}), "invalid_body"),
        (json!({"location": "ams"}), "invalid_body"),
        (json!({"user_id": -5, "location": "ams"}), "invalid_user_id"),
        (
            json!({"user_id": 42, "location": "nowhere"}),
            "unknown_location",
        ),
        (
            json!({"user_id": 42, "location": "ams", "traffic_limit_bytes": -1}),
            "invalid_body",
        ),
        (
            json!({"user_id": 42, "location": "ams", "traffic_limit_bytes": 1u64 << 60}),
            "invalid_traffic_limit",
        ),
        (
            json!({"user_id": 42, "location": "ams", "expires_at": "next tuesday"}),
            "invalid_body",
        ),
        (oversized, "body_too_large"),
        (json!([1, 2, 3]), "invalid_body"),
    ];
    for (body, code) in cases {
        let (status, error) = api.post("/v1/keys", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"]["code"], json!(code), "{body}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{error}"
        );
    }
    let raw = api
        .http
        .post(format!("{}/v1/keys", api.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"user_id\": 42,")
        .send()
        .await
        .expect("sent");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let raw = api
        .http
        .post(format!("{}/v1/keys", api.base))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(request_body(42).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);

    let (status, _) = api.post("/v1/keys/not-a-uuid/rotate", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let key = key_of(42);
    let (status, _) = api
        .post(&format!("/v1/keys/{key}/revoke"), json!({"reason": ""}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api
        .post(&format!("/v1/keys/{key}/rotate"), json!({"now": true}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/v1/users/abc/keys").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/v1/events?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/v1/events?after=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.get("/v1/events?limit=5000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Only the hyphenated form is a UUID to this API, as to the document's `uuid` format.
    for form in [
        key.simple().to_string(),
        key.braced().to_string(),
        key.urn().to_string(),
    ] {
        let (status, error) = api.get(&format!("/v1/keys/{form}/history")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{form}: {error}");
        assert_eq!(error["error"]["code"], json!("invalid_key_id"), "{form}");
    }
    // "In the future" is no shape a schema can state: the domain's refusal, declared as 422.
    let (status, error) = api
        .post(
            "/v1/keys",
            json!({"user_id": 42, "location": "ams", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], json!("expiry_not_in_future"));
    assert_eq!(api.event_count().await, 0, "bad input appended something");
}

#[tokio::test]
async fn the_same_idempotency_key_gets_the_same_answer_and_one_command() {
    let api = Api::start().await;
    let send = |key: &'static str, body: Value| {
        api.http
            .post(format!("{}/v1/keys", api.base))
            .bearer_auth(SERVICE)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("req-1", request_body(7)).await.expect("sent");
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.expect("json");
    let again = send("req-1", request_body(7)).await.expect("sent");
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.expect("json");
    assert_eq!(first, again);

    let reused = send("req-1", request_body(8)).await.expect("sent");
    assert_eq!(reused.status(), StatusCode::CONFLICT);
    let reused: Value = reused.json().await.expect("json");
    assert_eq!(reused["error"]["code"], json!("idempotency_key_reused"));
    assert_eq!(api.event_count().await, 1);

    // Concurrent retries of one rotation rotate once.
    let key = key_of(7);
    let client: Uuid = serde_json::from_value(first["client_uuid"].clone()).expect("uuid");
    api.confirm_provisioned(key, client).await;
    let rotate = || {
        api.http
            .post(format!("{}/v1/keys/{key}/rotate", api.base))
            .bearer_auth(SERVICE)
            .header("Idempotency-Key", "rotate-once")
            .send()
    };
    let (a, b, c) = tokio::join!(rotate(), rotate(), rotate());
    let mut answers = Vec::new();
    for response in [a, b, c] {
        let response = response.expect("sent");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        answers.push(response.json::<Value>().await.expect("json"));
    }
    assert_eq!(answers[0]["client_uuid"], answers[1]["client_uuid"]);
    assert_eq!(answers[1]["client_uuid"], answers[2]["client_uuid"]);
    let rotations: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE type = $1")
        .bind(EventType::RotationRequested.as_str())
        .fetch_one(api.db.pool())
        .await
        .expect("count");
    assert_eq!(rotations, 1);
}

#[tokio::test]
async fn a_key_is_rotated_revoked_renewed_and_refused_as_the_domain_says() {
    let api = Api::start().await;
    let (_, requested) = api.post("/v1/keys", request_body(5)).await;
    let key = key_of(5);
    let (status, error) = api.post(&format!("/v1/keys/{key}/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], json!("not_yet_provisioned"));

    let client: Uuid = serde_json::from_value(requested["client_uuid"].clone()).expect("uuid");
    api.confirm_provisioned(key, client).await;
    // A bare POST, without a body, rotates too.
    let response = api
        .http
        .post(format!("{}/v1/keys/{key}/rotate", api.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let rotated: Value = response.json().await.expect("json");
    assert_eq!(rotated["status"], json!("rotating"));
    assert_ne!(rotated["client_uuid"], requested["client_uuid"]);
    assert_eq!(
        rotated["link"],
        Value::Null,
        "no link before the panel confirms"
    );

    let (status, renewed) = api
        .post(
            &format!("/v1/keys/{key}/renew"),
            json!({"expires_at": "2099-05-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{renewed}");
    assert_eq!(renewed["expires_at"], json!("2099-05-01T00:00:00Z"));

    let (status, revoked) = api
        .post(&format!("/v1/keys/{key}/revoke"), json!({"reason": "left"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{revoked}");
    assert_eq!(revoked["status"], json!("revoking"));
    let (status, error) = api.post(&format!("/v1/keys/{key}/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");

    let unknown = Uuid::new_v4();
    let (status, error) = api
        .post(&format!("/v1/keys/{unknown}/rotate"), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"]["code"], json!("key_not_found"));
}

#[tokio::test]
async fn views_history_and_the_log_are_served_from_what_was_recorded() {
    let api = Api::start().await;
    for user in [1, 2, 3] {
        let (status, _) = api.post("/v1/keys", request_body(user)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, _) = api
        .post("/v1/keys", json!({"user_id": 1, "location": "fra"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let key = key_of(1);
    // Before the projector ran, the key is replayed from the log: never 404 after its 202.
    let (status, replayed) = api.get(&format!("/v1/keys/{key}")).await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["status"], json!("provisioning"));
    projector::rebuild(&api.db.store).await.expect("rebuild");

    let (status, view) = api.get(&format!("/v1/keys/{key}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view, replayed, "the projected view is the replayed one");
    let (status, views) = api.get("/v1/users/1/keys").await;
    assert_eq!(status, StatusCode::OK);
    let locations: BTreeSet<String> = views
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["location"].as_str().expect("location").to_owned())
        .collect();
    assert_eq!(
        locations,
        BTreeSet::from(["ams".to_owned(), "fra".to_owned()])
    );

    let (status, history) = api.get(&format!("/v1/keys/{key}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], json!(EventType::Requested.as_str()));
    assert_eq!(events[0]["hash"].as_str().map(str::len), Some(64));
    let (status, _) = api
        .get(&format!("/v1/keys/{}/history", Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Paging two at a time walks the whole log in order, without gaps.
    let mut after = 0;
    let mut positions = Vec::new();
    loop {
        let (status, page) = api.get(&format!("/v1/events?after={after}&limit=2")).await;
        assert_eq!(status, StatusCode::OK);
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            assert_eq!(page["next_after"], json!(after));
            break;
        }
        assert!(events.len() <= 2);
        positions.extend(
            events
                .iter()
                .map(|e| e["position"].as_i64().expect("position")),
        );
        after = page["next_after"].as_i64().expect("next");
    }
    let expected: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(api.db.pool())
        .await
        .expect("positions");
    assert_eq!(positions, expected);

    let (status, report) = api.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], json!(true), "{report}");
    sqlx::query("UPDATE key_views SET status = 'active' WHERE key_id = $1")
        .bind(key)
        .execute(api.db.pool())
        .await
        .expect("tamper with a view");
    let (_, report) = api.get("/v1/audit/verify").await;
    assert_eq!(report["ok"], json!(false), "{report}");
    assert_eq!(report["views"]["differences"][0]["key_id"], json!(key));

    let (status, locations) = api.get("/v1/locations").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(locations[0]["id"], json!("ams"));
    assert_eq!(locations[0]["name"], json!("Amsterdam"));
    assert_eq!(locations[1]["id"], json!("fra"));
}

#[tokio::test]
async fn probes_metrics_and_errors_for_unknown_routes() {
    let api = Api::start().await;
    let (status, body) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], json!("ok"));
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["database"], json!("ok"));

    let (status, body) = api.call(Method::GET, "/v1/nothing-here", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], json!("not_found"));
    let (status, body) = api
        .call(Method::DELETE, "/v1/keys", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    let (status, _) = api.post("/v1/keys", request_body(9)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, text) = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text").to_owned();
    assert!(
        text.lines()
            .any(|line| line.starts_with("keyledger_http_requests_total")
                && line.contains("route=\"/v1/keys\"")
                && line.contains("status=\"202\"")),
        "{text}"
    );
    assert!(
        text.contains("keyledger_http_request_duration_seconds_bucket"),
        "latency must be a histogram: {text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("keyledger_events_appended_total")),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_fails_when_the_broker_is_unreachable() {
    // Nothing listens on port 1.
    let api = Api::start_with(Some("amqp://guest:guest@127.0.0.1:1/%2f".into())).await;
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], json!("not_ready"));
    assert_eq!(body["checks"]["database"], json!("ok"));
    assert_eq!(body["checks"]["broker"], json!("failing"));
    let (_, detailed) = api.call(Method::GET, "/readyz", Some(ADMIN), None).await;
    assert!(
        detailed["checks"]["broker"]
            .as_str()
            .is_some_and(|verdict| verdict != "ok" && verdict != "failing"),
        "{detailed}"
    );
    assert!(!detailed.to_string().contains("guest:guest"), "{detailed}");
}

/// Panels that count how often they are probed.
struct CountingPanels(std::sync::atomic::AtomicUsize);

impl PanelStatus for CountingPanels {
    fn probe(&self, _timeout: Duration) -> BoxFuture<'_, Vec<PanelProbe>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {
            vec![PanelProbe {
                location: "ams".to_owned(),
                outcome: Ok(std::time::Duration::from_millis(3)),
            }]
        })
    }

    fn health(&self, _location: &str) -> Option<PanelHealth> {
        None
    }
}

#[tokio::test]
async fn a_flood_of_readiness_probes_checks_the_panels_once() {
    let panels = Arc::new(CountingPanels(Default::default()));
    let api = Api::start_full(None, Some(panels.clone())).await;
    let probes = (0..100).map(|_| api.call(Method::GET, "/readyz", None, None));
    for (status, body) in futures::future::join_all(probes).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(panels.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Panels as a test wants them: `ams` has an open breaker and a failing probe, `fra` is
/// not served by this process.
struct FakePanels;

impl PanelStatus for FakePanels {
    fn probe(&self, _timeout: Duration) -> BoxFuture<'_, Vec<PanelProbe>> {
        Box::pin(async {
            vec![PanelProbe {
                location: "ams".to_owned(),
                outcome: Err("ams: login refused".to_owned()),
            }]
        })
    }

    fn health(&self, location: &str) -> Option<PanelHealth> {
        (location == "ams").then(|| PanelHealth {
            breaker: Breaker::HalfOpen,
            last_success_at: Some(time::macros::datetime!(2025-01-02 03:04:05 UTC)),
            last_reconcile_at: None,
            drift_found_last_pass: Some(2),
            last_reconcile_error: Some("listing failed".to_owned()),
        })
    }
}

#[tokio::test]
async fn injected_panel_status_shows_in_readiness_and_locations() {
    let api = Api::start_full(None, Some(Arc::new(FakePanels))).await;
    let (status, body) = api.call(Method::GET, "/readyz", Some(AUDITOR), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["database"], json!("ok"));
    assert_eq!(
        body["checks"]["panel:ams"],
        json!("error: ams: login refused")
    );
    // Without a token: which check fails, not what the panel said.
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["panel:ams"], json!("failing"));
    assert!(!body.to_string().contains("login refused"), "{body}");

    let (status, locations) = api.get("/v1/locations").await;
    assert_eq!(status, StatusCode::OK, "{locations}");
    let ams = &locations[0];
    assert_eq!(ams["id"], json!("ams"));
    assert_eq!(ams["breaker"], json!("half_open"));
    assert_eq!(ams["panel_reachable"], json!(true));
    assert_eq!(ams["last_success_at"], json!("2025-01-02T03:04:05Z"));
    assert_eq!(ams["last_reconcile_at"], json!(null));
    assert_eq!(ams["drift_found_last_pass"], json!(2));
    assert_eq!(ams["last_reconcile_error"], json!("listing failed"));
    let fra = &locations[1];
    assert_eq!(fra["id"], json!("fra"));
    assert_eq!(fra["breaker"], json!(null));
    assert_eq!(fra["panel_reachable"], json!(null));
}

#[test]
fn breaker_names() {
    assert_eq!(Breaker::Closed.as_str(), "closed");
    assert_eq!(Breaker::Open.as_str(), "open");
    assert_eq!(Breaker::HalfOpen.as_str(), "half_open");
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let api = Api::start().await;
    let (status, document) = api.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = document["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, operations) in paths {
        for method in operations.as_object().expect("operations").keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let contract: BTreeSet<String> = [
        "POST /v1/keys",
        "POST /v1/keys/{key_id}/rotate",
        "POST /v1/keys/{key_id}/revoke",
        "POST /v1/keys/{key_id}/renew",
        "POST /v1/keys/{key_id}/quota",
        "GET /v1/keys/{key_id}",
        "GET /v1/users/{user_id}/keys",
        "GET /v1/users/{user_id}/subscription",
        "POST /v1/users/{user_id}/subscription/rotate",
        "POST /v1/users/{user_id}/block",
        "POST /v1/users/{user_id}/unblock",
        "GET /v1/users/{user_id}/access",
        "GET /v1/keys/{key_id}/history",
        "GET /v1/events",
        "GET /v1/audit/verify",
        "GET /v1/audit/checkpoints",
        "GET /v1/locations",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(documented, contract);
    // The reference page users read names every operation exactly as the document does.
    let page = include_str!("../../../../docs/http-api.md");
    for operation in &documented {
        assert!(
            page.contains(&format!("`{operation}`")),
            "docs/http-api.md does not document `{operation}`"
        );
    }
    // And every documented operation is really served: none falls through to 404/405.
    for operation in &documented {
        let (method, path) = operation.split_once(' ').expect("method and path");
        let path = path
            .replace("{key_id}", &Uuid::new_v4().to_string())
            .replace("{user_id}", "42");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let (status, body) = api.call(method, &path, None, None).await;
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED
                || body["error"]["code"] == json!("key_not_found"),
            "{operation} is documented but not served: {status} {body}"
        );
    }
    assert!(
        document["components"]["schemas"]["KeyView"].is_object(),
        "{document}"
    );
    let usage = &document["components"]["schemas"]["KeyUsage"]["properties"];
    for field in ["up_bytes", "down_bytes", "limit_bytes", "last_online"] {
        assert!(
            usage[field].is_object(),
            "KeyUsage lacks {field}: {document}"
        );
    }
}

/// What the worker's usage pass writes, as it writes it.
async fn report_usage(api: &Api, key: Uuid, up: i64, down: i64, limit: i64) {
    sqlx::query(
        "INSERT INTO key_usage (key_id, up_bytes, down_bytes, limit_bytes, last_online, enabled_on_panel)
         VALUES ($1, $2, $3, $4, '2030-01-02T03:04:05Z', false)
         ON CONFLICT (key_id) DO UPDATE SET up_bytes = excluded.up_bytes,
             down_bytes = excluded.down_bytes, limit_bytes = excluded.limit_bytes",
    )
    .bind(key)
    .bind(up)
    .bind(down)
    .bind(limit)
    .execute(api.db.pool())
    .await
    .expect("usage written");
}

#[tokio::test]
async fn views_carry_usage_and_a_quota_change_brings_a_depleted_key_back() {
    let api = Api::start().await;
    let (_, requested) = api
        .post(
            "/v1/keys",
            json!({"user_id": 8, "location": "ams", "traffic_limit_bytes": 1000}),
        )
        .await;
    assert_eq!(
        requested["usage"],
        Value::Null,
        "no report yet: {requested}"
    );
    let key = key_of(8);
    let client: Uuid = serde_json::from_value(requested["client_uuid"].clone()).expect("uuid");
    api.confirm_provisioned(key, client).await;
    report_usage(&api, key, 600, 500, 1000).await;
    let ledger = KeyLedger::new(api.db.store.clone());
    let depleted = KeyCommand::RecordDepletion(domain::RecordDepletion {
        used_bytes: 1100,
        limit_bytes: 1000,
    });
    let metadata =
        EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Reconciler, "test"));
    ledger
        .execute(KeyId::from_uuid(key), &depleted, &metadata)
        .await
        .expect("depleted");
    // The view replayed from the log (the projector does not run here) and its usage.
    let (status, view) = api
        .post(
            &format!("/v1/keys/{key}/quota"),
            json!({"traffic_limit_bytes": 1000}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{view}");
    assert_eq!(view["error"]["code"], json!("quota_still_used_up"));
    let (status, error) = api
        .post(
            &format!("/v1/keys/{key}/quota"),
            json!({"traffic_limit_bytes": 1000, "extra": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");

    let (status, view) = api
        .post(
            &format!("/v1/keys/{key}/quota"),
            json!({"traffic_limit_bytes": 5000}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], json!("active"));
    assert_eq!(
        view["usage"],
        json!({"up_bytes": 600, "down_bytes": 500, "limit_bytes": 1000, "last_online": "2030-01-02T03:04:05Z"})
    );
    let history = api.get(&format!("/v1/keys/{key}/history")).await.1;
    let last = history["events"]
        .as_array()
        .and_then(|events| events.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        last["type"],
        json!(EventType::QuotaChanged.as_str()),
        "{history}"
    );
    assert_eq!(last["data"]["traffic_limit_bytes"], json!(5000));
    assert_eq!(last["data"]["reset_usage"], json!(false));

    // Depleted again: the same limit with the usage reset is allowed.
    ledger
        .execute(
            KeyId::from_uuid(key),
            &depleted,
            &EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Reconciler, "test")),
        )
        .await
        .expect("depleted again");
    report_usage(&api, key, 3000, 2000, 5000).await;
    let (status, view) = api
        .post(
            &format!("/v1/keys/{key}/quota"),
            json!({"traffic_limit_bytes": 5000, "reset_usage": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], json!("active"));
}

#[tokio::test]
async fn shutting_down_stops_taking_requests() {
    let api = Api::start().await;
    let (status, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    api.stop.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let refused = api
            .http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_err();
        if refused {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still serving after stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn made_up_methods_collapse_into_one_metric_label() {
    let api = Api::start().await;
    for n in 0..40 {
        let method = Method::from_bytes(format!("XM{n}").as_bytes()).expect("token");
        let (status, _) = api.call(method, "/v1/keys", None, None).await;
        assert!(status.is_client_error(), "{status}");
    }
    let (_, text) = api.call(Method::GET, "/metrics", None, None).await;
    let text = text.as_str().expect("text").to_owned();
    assert!(!text.contains("method=\"XM"), "a label per made-up method");
    assert!(
        text.lines()
            .any(|line| line.starts_with("keyledger_http_requests_total")
                && line.contains("method=\"other\"")),
        "{text}"
    );
}

#[tokio::test]
async fn a_nul_character_in_a_body_is_a_bad_request_that_changes_nothing() {
    let api = Api::start().await;
    let (status, created) = api.post("/v1/keys", request_body(31)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let before = api.event_count().await;
    let key = key_of(31);
    let (status, body) = api
        .post(
            &format!("/v1/keys/{key}/revoke"),
            json!({"reason": "stolen\u{0}phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], json!("invalid_body"));
    assert_eq!(api.event_count().await, before);
    // The escape spelled out as text is not a NUL and goes through.
    let (status, body) = api
        .post(
            &format!("/v1/keys/{key}/revoke"),
            json!({"reason": "literally \\u0000"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let api = Api::start().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = api
            .http
            .get(format!("{}/v1/users/5/keys", api.base))
            .header("Authorization", format!("{scheme} {ADMIN}"))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    let response = api
        .http
        .get(format!("{}/v1/users/5/keys", api.base))
        .header("Authorization", format!("Basic {ADMIN}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A listener with short bounds, serving the API, and the handle that stops it.
async fn bounded_listener(
    limits: api::ServeLimits,
) -> (
    TestDatabase,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let db = TestDatabase::create().await;
    let config = api::ApiConfig {
        tokens: Tokens::new(Some(&Secret::new(ADMIN)), None, None),
        locations: vec![],
        amqp_url: None,
        panels: None,
        subscription_urls: None,
    };
    let router = api::router(db.store.clone(), config, api::metrics::recorder());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let served = tokio::spawn(api::serve_with(listener, router, stop.clone(), limits));
    (db, address, stop, served)
}

/// Whether the server closed `stream` (EOF or reset) before `deadline`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // a 408 or similar before closing is fine
            }
        }
    };
    tokio::time::timeout(deadline, read).await.is_ok()
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_cut_off_and_do_not_hold_shutdown() {
    use tokio::io::AsyncWriteExt;
    let limits = api::ServeLimits {
        header_timeout: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(2),
        ..Default::default()
    };
    let (_db, address, stop, served) = bounded_listener(limits).await;
    let mut slow = Vec::new();
    for n in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        if n % 2 == 0 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .expect("partial headers");
        }
        slow.push(stream);
    }
    for (n, stream) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream, Duration::from_secs(5)).await,
            "connection {n} still open"
        );
    }

    // Connections held open again, this time idle after a complete request: shutdown
    // still ends within its grace period.
    let http = reqwest::Client::new();
    let response = http
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .expect("served while others were slow");
    assert_eq!(response.status(), StatusCode::OK);
    let mut lingering = Vec::new();
    for _ in 0..10 {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        lingering.push(stream);
    }
    let stopped_at = std::time::Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("shutdown within the grace period")
        .expect("task")
        .expect("served");
    assert!(stopped_at.elapsed() < Duration::from_secs(4));
}

/// The events of a stream, as the log holds them.
async fn stream(api: &Api, stream_id: Uuid) -> Vec<eventstore::RecordedEvent> {
    api.db
        .store
        .read_stream(stream_id)
        .await
        .expect("read stream")
}

fn key_at(user_id: i64, location: &str) -> Uuid {
    KeyId::for_user_at(
        UserId::new(user_id).expect("user"),
        &LocationId::new(location).expect("location"),
    )
    .as_uuid()
}

#[tokio::test]
async fn blocking_revokes_the_users_keys_refuses_new_ones_and_unblocking_lets_them_ask_again() {
    let api = Api::start().await;
    let (_, requested) = api.post("/v1/keys", request_body(77)).await;
    let client: Uuid = serde_json::from_value(requested["client_uuid"].clone()).expect("uuid");
    api.confirm_provisioned(key_at(77, "ams"), client).await;
    api.post("/v1/keys", json!({"user_id": 77, "location": "fra"}))
        .await;
    api.post("/v1/keys", request_body(78)).await;

    let (status, access) = api
        .post("/v1/users/77/block", json!({"reason": "abuse report"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{access}");
    assert_eq!(access["user_id"], json!(77));
    assert_eq!(access["blocked"], json!(true));
    assert_eq!(access["reason"], json!("abuse report"));
    assert!(access["since"].is_string(), "{access}");
    // Both keys of the user, the active one and the one still being set up, are revoked
    // by the admin with the block's reason; another user's key is not touched.
    for location in ["ams", "fra"] {
        let events = stream(&api, key_at(77, location)).await;
        let last = events.last().expect("events");
        assert_eq!(
            last.event_type,
            EventType::RevocationRequested.as_str(),
            "{location}"
        );
        assert_eq!(last.data["reason"], json!("user blocked: abuse report"));
        assert_eq!(last.metadata["actor"]["kind"], json!("admin"));
    }
    let other = stream(&api, key_at(78, "ams")).await;
    assert_eq!(other.len(), 1, "user 78 keeps their key: {other:?}");
    let access_stream = domain::UserAccessId::for_user(UserId::new(77).expect("user"));
    let recorded = stream(&api, access_stream.as_uuid()).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].event_type, EventType::UserBlocked.as_str());
    assert_eq!(
        recorded[0].data,
        json!({"user_id": 77, "reason": "abuse report"})
    );

    let (status, seen) = api
        .call(Method::GET, "/v1/users/77/access", Some(AUDITOR), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        seen, access,
        "the access view reads what the block answered"
    );

    // No new key for a blocked user, whoever asks; nothing is recorded.
    let before = api.event_count().await;
    for token in [ADMIN, SERVICE] {
        let (status, error) = api
            .call(
                Method::POST,
                "/v1/keys",
                Some(token),
                Some(request_body(77)),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert_eq!(error["error"]["code"], json!("user_blocked"));
    }
    // Blocking again changes nothing and still answers.
    let (status, again) = api
        .post("/v1/users/77/block", json!({"reason": "second report"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["reason"], json!("abuse report"));
    assert_eq!(api.event_count().await, before);

    let (status, access) = api
        .post("/v1/users/77/unblock", json!({"reason": "appeal accepted"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{access}");
    assert_eq!(access["blocked"], json!(false));
    assert_eq!(access["reason"], json!("appeal accepted"));
    // Unblocking restores nothing by itself…
    let fra = stream(&api, key_at(77, "fra")).await;
    assert_eq!(
        fra.last().expect("events").event_type,
        EventType::RevocationRequested.as_str()
    );
    // …but the user may be given a key again.
    let (status, view) = api.post("/v1/keys", request_body(77)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["status"], json!("provisioning"));
    assert_ne!(view["client_uuid"], requested["client_uuid"]);
}

#[tokio::test]
async fn block_and_unblock_are_the_admins_alone_and_bad_requests_change_nothing() {
    let api = Api::start().await;
    for token in [SERVICE, AUDITOR] {
        for action in ["block", "unblock"] {
            let (status, error) = api
                .call(
                    Method::POST,
                    &format!("/v1/users/9/{action}"),
                    Some(token),
                    Some(json!({"reason": "no"})),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {error}");
        }
    }
    let too_long = "x".repeat(501);
    for (path, body, code) in [
        ("/v1/users/9/block", json!({}), "invalid_body"),
        (
            "/v1/users/9/block",
            json!({"reason": "   "}),
            "invalid_reason",
        ),
        (
            "/v1/users/9/block",
            json!({"reason": too_long}),
            "invalid_reason",
        ),
        (
            "/v1/users/9/block",
            json!({"reason": "x", "until": "never"}),
            "invalid_body",
        ),
        (
            "/v1/users/9/unblock",
            json!({"reason": ""}),
            "invalid_reason",
        ),
        (
            "/v1/users/0/block",
            json!({"reason": "x"}),
            "invalid_user_id",
        ),
        (
            "/v1/users/4503599627370497/block",
            json!({"reason": "x"}),
            "invalid_user_id",
        ),
    ] {
        let (status, error) = api.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {error}");
        assert_eq!(error["error"]["code"], json!(code), "{path} {body}");
    }
    let (status, _) = api.get("/v1/users/abc/access").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.event_count().await, 0);
    // A user never blocked reads as such.
    let (status, access) = api.get("/v1/users/9/access").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        access,
        json!({"user_id": 9, "blocked": false, "reason": null, "since": null})
    );
    // Unblocking someone not blocked records nothing.
    let (status, _) = api
        .post("/v1/users/9/unblock", json!({"reason": "just in case"}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(api.event_count().await, 0);

    let (_, document) = api.call(Method::GET, "/openapi.json", None, None).await;
    let schemas = &document["components"]["schemas"];
    let reason = &schemas["AccessChangeBody"]["properties"]["reason"];
    assert_eq!(reason["maxLength"], json!(500), "{document}");
    assert_eq!(reason["minLength"], json!(1));
    assert_eq!(
        schemas["AccessChangeBody"]["additionalProperties"],
        json!(false)
    );
    let block = &document["paths"]["/v1/users/{user_id}/block"]["post"];
    assert_eq!(block["requestBody"]["required"], json!(true), "{block}");
    let user_id = &block["parameters"][0]["schema"];
    assert_eq!(user_id["minimum"], json!(1), "{block}");
    assert_eq!(user_id["maximum"], json!(4_503_599_627_370_496_i64));
}
