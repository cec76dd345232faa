//! The simulator itself, spoken to in raw HTTP: it must answer as docs/panel.md says the
//! real panel does, or the client tests prove nothing.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};

pub(crate) struct Raw {
    pub(crate) http: reqwest::Client,
    base: Url,
}

impl Raw {
    pub(crate) async fn logged_in(sim: &PanelSimulator) -> Self {
        let raw = Self::anonymous(sim);
        let answer = raw
            .http
            .post(raw.url("login"))
            .json(&json!({"username": "admin", "password": "sim-password"}))
            .send()
            .await
            .unwrap();
        let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.starts_with("3x-ui="), "{cookie}");
        // sessionMaxAge: 360 minutes by default.
        assert!(cookie.contains("Max-Age=21600"), "{cookie}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            body["msg"],
            " You have successfully logged into your account."
        );
        raw
    }

    pub(crate) fn anonymous(sim: &PanelSimulator) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            http,
            base: sim.base_url(),
        }
    }

    pub(crate) fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap()
    }

    pub(crate) async fn post(&self, path: &str, body: Option<Value>) -> (u16, String) {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let answer = self.http.get(self.url(path)).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }
}

pub(crate) fn add_body(inbound: i64, clients: Value) -> Value {
    json!({"id": inbound, "settings": json!({"clients": clients}).to_string()})
}

pub(crate) fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn login_answers_200_on_a_wrong_password_and_api_calls_without_session_get_404() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let raw = Raw::anonymous(&sim);
    let answer = raw
        .http
        .post(raw.url("login"))
        .form(&[("username", "admin"), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers().get("set-cookie").is_none());
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "msg": "Invalid username or password or two-factor code.", "obj": null})
    );

    assert_eq!(
        raw.get("panel/api/inbounds/get/1").await,
        (404, String::new())
    );
}

#[tokio::test]
async fn old_panels_redirect_or_answer_401_without_a_session() {
    let sim = PanelSimulator::start(SimConfig::v2_6()).await.unwrap();
    let raw = Raw::anonymous(&sim);
    assert_eq!(raw.get("panel/api/inbounds/get/1").await.0, 307);
    let xhr = raw
        .http
        .get(raw.url("panel/api/inbounds/get/1"))
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 401);
}

#[tokio::test]
async fn add_client_checks_emails_before_the_inbound_and_never_uuids() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let raw = Raw::logged_in(&sim).await;
    let shared_uuid = Uuid::new_v4().to_string();
    let (status, body) = raw
        .post(
            "panel/api/inbounds/addClient",
            Some(add_body(
                1,
                json!([{"id": shared_uuid, "email": "a"}, {"id": shared_uuid, "email": "b"}]),
            )),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body)["msg"], "Inbound client(s) have been added.");

    // Case-insensitive clash, reported before the missing inbound 99.
    let (_, body) = raw
        .post(
            "panel/api/inbounds/addClient",
            Some(add_body(99, json!([{"id": "x", "email": "A"}]))),
        )
        .await;
    assert_eq!(
        parse(&body),
        json!({"success": false, "msg": "Something went wrong (Duplicate email: A\n)", "obj": null})
    );
    let (_, body) = raw
        .post(
            "panel/api/inbounds/addClient",
            Some(add_body(99, json!([{"id": "x", "email": "c"}]))),
        )
        .await;
    assert_eq!(
        parse(&body)["msg"],
        "Something went wrong (record not found)"
    );
    let (_, body) = raw
        .post(
            "panel/api/inbounds/addClient",
            Some(add_body(1, json!([{"id": "", "email": "c"}]))),
        )
        .await;
    assert_eq!(
        parse(&body)["msg"],
        "Something went wrong (empty client ID\n)"
    );
}

#[tokio::test]
async fn settings_must_be_a_string_and_a_malformed_body_crashes_the_handler() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let raw = Raw::logged_in(&sim).await;
    let object = json!({"id": 1, "settings": {"clients": [{"id": "x", "email": "a"}]}});
    let (status, body) = raw.post("panel/api/inbounds/addClient", Some(object)).await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body)["success"], false);

    let answer = raw
        .http
        .post(raw.url("panel/api/inbounds/addClient"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);
    assert_eq!(answer.text().await.unwrap(), "");
}

#[tokio::test]
async fn stored_settings_are_sorted_and_indented_and_get_has_no_client_stats() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let raw = Raw::logged_in(&sim).await;
    raw.post(
        "panel/api/inbounds/addClient",
        Some(add_body(
            1,
            json!([{"id": "u1", "email": "a", "enable": true}]),
        )),
    )
    .await;
    let text = sim.handle().settings_text(1).unwrap();
    assert!(text.starts_with("{\n  \"clients\": ["), "{text}");
    let keys: Vec<_> = [
        "\"clients\"",
        "\"decryption\"",
        "\"encryption\"",
        "\"fallbacks\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted: {text}");
    let stored = sim.handle().client("a").unwrap();
    assert!(stored["created_at"].as_i64().unwrap() > 0);

    let got = parse(&raw.get("panel/api/inbounds/get/1").await.1);
    assert_eq!(got["obj"]["clientStats"], Value::Null);
    assert!(
        got["obj"]["settings"].is_string(),
        "legacy panels send JSON text"
    );
    let listed = parse(&raw.get("panel/api/inbounds/list").await.1);
    assert_eq!(listed["obj"][0]["clientStats"][0]["email"], "a");
    assert_eq!(
        parse(&raw.post("panel/api/inbounds/onlines", None).await.1)["obj"],
        Value::Null
    );
}

#[tokio::test]
async fn update_and_delete_answer_like_the_panel_for_unknown_and_last_clients() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let raw = Raw::logged_in(&sim).await;
    raw.post(
        "panel/api/inbounds/addClient",
        Some(add_body(1, json!([{"id": "u1", "email": "a"}]))),
    )
    .await;

    let (_, body) = raw
        .post(
            "panel/api/inbounds/updateClient/nope",
            Some(add_body(1, json!([{"id": "u2", "email": "a"}]))),
        )
        .await;
    assert_eq!(
        parse(&body)["msg"],
        "Something went wrong (empty client ID\n)"
    );
    let (_, body) = raw.post("panel/api/inbounds/1/delClient/nope", None).await;
    assert_eq!(
        parse(&body)["msg"],
        "Something went wrong (Client Not Found In Inbound For ID: nope\n)"
    );
    let (_, body) = raw.post("panel/api/inbounds/1/delClient/u1", None).await;
    assert_eq!(
        parse(&body)["msg"],
        "Something went wrong (no client remained in Inbound\n)"
    );

    // updateClient is a full replace: what is left out is gone.
    raw.post(
        "panel/api/inbounds/updateClient/u1",
        Some(add_body(
            1,
            json!([{"id": "u2", "email": "a", "comment": "x"}]),
        )),
    )
    .await;
    raw.post(
        "panel/api/inbounds/updateClient/u2",
        Some(add_body(1, json!([{"id": "u2", "email": "a"}]))),
    )
    .await;
    let stored = sim.handle().client("a").unwrap();
    assert_eq!(stored["id"], "u2");
    assert!(stored.get("comment").is_none());

    assert_eq!(
        raw.get("panel/api/nothing-here").await,
        (404, String::new())
    );
    assert_eq!(
        raw.get("panel/api/inbounds/addClient").await,
        (404, String::new())
    );
}

#[tokio::test]
async fn v3_1_has_no_per_inbound_client_routes_and_sends_settings_as_objects() {
    let sim = PanelSimulator::start(SimConfig::v3_1()).await.unwrap();
    let raw = Raw::anonymous(&sim);
    let token = parse(&raw.get("csrf-token").await.1)["obj"]
        .as_str()
        .unwrap()
        .to_owned();
    let login = raw
        .http
        .post(raw.url("login"))
        .header("X-CSRF-Token", &token)
        .form(&[("username", "admin"), ("password", "sim-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(parse(&login.text().await.unwrap())["success"], true);

    let answer = raw
        .http
        .post(raw.url("panel/api/inbounds/addClient"))
        .header("X-CSRF-Token", &token)
        .json(&add_body(1, json!([{"id": "u1", "email": "a"}])))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    let got = parse(&raw.get("panel/api/inbounds/get/1").await.1);
    assert!(got["obj"]["settings"].is_object());
    assert!(got["obj"]["streamSettings"]["realitySettings"].is_object());
}
