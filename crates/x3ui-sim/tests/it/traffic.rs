//! The simulator's traffic side, over HTTP where the panel's answers matter: traffic rows
//! (`clientStats`, `getClientTraffics`), `onlines` and `lastOnline`, and the traffic job
//! that disables depleted and expired clients the way each panel version does.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Map, Value, json};
use x3ui_sim::{PanelSimulator, SimConfig, TrafficRow};

use super::simulator::{Raw, add_body, parse};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A panel whose traffic job runs only when a test says so.
async fn panel(config: SimConfig) -> (PanelSimulator, Raw) {
    let sim = PanelSimulator::start(config.with_traffic_job_period(None))
        .await
        .unwrap();
    let raw = Raw::logged_in(&sim).await;
    (sim, raw)
}

fn client(id: &str, email: &str, extra: Value) -> Value {
    let mut client = json!({
        "id": id, "email": email, "enable": true, "flow": "", "limitIp": 0,
        "totalGB": 0, "expiryTime": 0, "tgId": 0, "subId": "", "comment": "", "reset": 0,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut client, extra) {
        base.extend(extra);
    }
    client
}

async fn add(raw: &Raw, clients: Value) {
    let (status, body) = raw
        .post("panel/api/inbounds/addClient", Some(add_body(1, clients)))
        .await;
    assert_eq!(status, 200);
    assert_eq!(parse(&body)["success"], true, "{body}");
}

/// updateClient: the complete new client replaces the one with `old_id`.
async fn update(raw: &Raw, old_id: &str, new: Value) {
    let (_, body) = raw
        .post(
            &format!("panel/api/inbounds/updateClient/{old_id}"),
            Some(add_body(1, json!([new]))),
        )
        .await;
    assert_eq!(parse(&body)["success"], true, "{body}");
}

async fn traffic_over_http(raw: &Raw, email: &str) -> Value {
    let (status, body) = raw
        .get(&format!("panel/api/inbounds/getClientTraffics/{email}"))
        .await;
    assert_eq!(status, 200);
    parse(&body)
}

async fn onlines(raw: &Raw) -> Value {
    parse(&raw.post("panel/api/inbounds/onlines", None).await.1)["obj"].clone()
}

/// The client with this email in inbound 1's settings, read over HTTP.
async fn settings_entry(raw: &Raw, email: &str) -> Map<String, Value> {
    let got = parse(&raw.get("panel/api/inbounds/get/1").await.1);
    let settings = parse(got["obj"]["settings"].as_str().unwrap());
    settings["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["email"] == email)
        .and_then(Value::as_object)
        .cloned()
        .unwrap()
}

fn row(sim: &PanelSimulator, email: &str) -> TrafficRow {
    sim.handle().client_traffic(email).unwrap()
}

#[tokio::test]
async fn counters_show_in_list_client_stats_and_get_client_traffics() {
    let (sim, raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    add(
        &raw,
        json!([
            client("u1", "a", json!({"totalGB": 10_000, "subId": "sub-a"})),
            client("u2", "keep", json!({})),
        ]),
    )
    .await;
    assert_eq!(
        traffic_over_http(&raw, "a").await,
        json!({"success": true, "msg": "", "obj": {
            "id": 1, "inboundId": 1, "enable": true, "email": "a", "uuid": "u1",
            "subId": "sub-a", "up": 0, "down": 0, "allTime": 0, "expiryTime": 0,
            "total": 10_000, "reset": 0, "lastOnline": 0,
        }})
    );
    assert_eq!(settings_entry(&raw, "a").await["subId"], "sub-a");
    assert_eq!(onlines(&raw).await, Value::Null);

    // Counted by Xray, not yet in the row: the job adds it at its next pass.
    assert!(handle.add_traffic("A", 100, 200));
    assert_eq!(traffic_over_http(&raw, "a").await["obj"]["up"], 0);
    let before = now_ms();
    let pass = handle.run_traffic_job();
    assert_eq!(pass.online, vec!["a".to_owned()]);
    assert!(pass.disabled.is_empty());

    let listed = parse(&raw.get("panel/api/inbounds/list").await.1);
    let stats = listed["obj"][0]["clientStats"].as_array().unwrap().clone();
    assert_eq!(stats.len(), 2);
    assert_eq!(
        (&stats[0]["email"], &stats[0]["up"], &stats[0]["down"]),
        (&json!("a"), &json!(100), &json!(200))
    );
    assert_eq!(stats[0]["allTime"], 300);
    assert!(stats[0]["lastOnline"].as_i64().unwrap() >= before);
    assert_eq!(
        (&stats[1]["email"], &stats[1]["up"]),
        (&json!("keep"), &json!(0))
    );
    let got = parse(&raw.get("panel/api/inbounds/get/1").await.1);
    assert_eq!(got["obj"]["clientStats"], Value::Null);
    assert_eq!(onlines(&raw).await, json!(["a"]));
    let last = parse(&raw.post("panel/api/inbounds/lastOnline", None).await.1);
    assert_eq!(last["success"], true);
    assert!(last["obj"]["a"].as_i64().unwrap() >= before);
    assert_eq!(last["obj"]["keep"], 0);

    // A pass in which nobody moved traffic: nobody online, and the panel says null.
    assert!(handle.run_traffic_job().online.is_empty());
    assert_eq!(onlines(&raw).await, Value::Null);

    // updateClient renames the row and takes the new quota; the counters stay.
    update(
        &raw,
        "u1",
        client("u1b", "b", json!({"totalGB": 20_000, "subId": "sub-b"})),
    )
    .await;
    let renamed = traffic_over_http(&raw, "b").await["obj"].clone();
    assert_eq!(
        (&renamed["up"], &renamed["down"], &renamed["total"]),
        (&json!(100), &json!(200), &json!(20_000))
    );
    assert_eq!(
        (&renamed["uuid"], &renamed["subId"]),
        (&json!("u1b"), &json!("sub-b"))
    );
    assert_eq!(traffic_over_http(&raw, "a").await["success"], false);

    // delClient takes the row with it.
    let (_, body) = raw.post("panel/api/inbounds/1/delClient/u1b", None).await;
    assert_eq!(parse(&body)["success"], true);
    assert!(handle.client_traffic("b").is_none());
    assert_eq!(handle.client_traffics().len(), 1);
}

#[tokio::test]
async fn an_unknown_email_answers_inbound_not_found_for_email() {
    let (_sim, raw) = panel(SimConfig::v2_9()).await;
    assert_eq!(
        traffic_over_http(&raw, "nobody").await,
        json!({
            "success": false,
            "msg": "Error getting traffics (Inbound Not Found For Email: nobody\n)",
            "obj": null,
        })
    );
    let (_, body) = raw
        .post("panel/api/inbounds/1/resetClientTraffic/nobody", None)
        .await;
    let body = parse(&body);
    assert_eq!(body["success"], false);
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("Inbound Not Found For Email: nobody"),
        "{body}"
    );
}

/// A client with a 1000-byte quota that has used 1100 bytes, after the pass that saw it.
async fn depleted(config: SimConfig) -> (PanelSimulator, Raw) {
    let (sim, raw) = panel(config).await;
    add(
        &raw,
        json!([
            client("u1", "a", json!({"totalGB": 1000})),
            client("u2", "keep", json!({})),
        ]),
    )
    .await;
    assert!(sim.handle().add_traffic("a", 600, 500));
    let pass = sim.handle().run_traffic_job();
    assert_eq!(pass.disabled, vec!["a".to_owned()]);
    (sim, raw)
}

#[tokio::test]
async fn from_v2_9_4_a_depleted_client_is_disabled_in_its_settings_and_xray_restarts() {
    let (sim, raw) = depleted(SimConfig::v2_9()).await;
    let handle = sim.handle();
    let stats = traffic_over_http(&raw, "a").await["obj"].clone();
    assert_eq!(
        (&stats["enable"], &stats["up"]),
        (&json!(false), &json!(600))
    );
    assert_eq!(settings_entry(&raw, "a").await["enable"], false);
    assert_eq!(settings_entry(&raw, "keep").await["enable"], true);
    assert_eq!(handle.xray_restarts(), 1);
    assert_eq!(handle.stats().xray_restarts, 1);
    // "a" moved traffic in that very pass, but the restart forgot it.
    assert_eq!(onlines(&raw).await, Value::Null);
    // Out of Xray: nothing more is counted.
    assert!(!handle.add_traffic("a", 1, 1));
    assert!(handle.run_traffic_job().disabled.is_empty());
    assert_eq!(handle.xray_restarts(), 1);
}

#[tokio::test]
async fn before_v2_9_4_only_the_traffic_row_shows_a_depleted_client_disabled() {
    let (sim, raw) = depleted(SimConfig::v2_6()).await;
    let handle = sim.handle();
    let listed = parse(&raw.get("panel/api/inbounds/list").await.1);
    assert_eq!(listed["obj"][0]["clientStats"][0]["email"], "a");
    assert_eq!(listed["obj"][0]["clientStats"][0]["enable"], false);
    assert_eq!(settings_entry(&raw, "a").await["enable"], true);
    assert_eq!(handle.xray_restarts(), 0);
    assert_eq!(onlines(&raw).await, json!(["a"]));
    // Still out of Xray, whatever the settings say.
    assert!(!handle.add_traffic("a", 1, 1));

    // The same switches on the v2.9 preset give the same behaviour.
    let (sim, raw) = depleted(SimConfig::v2_9().with_disable_before_v2_9_4()).await;
    assert_eq!(settings_entry(&raw, "a").await["enable"], true);
    assert_eq!(sim.handle().xray_restarts(), 0);
}

#[tokio::test]
async fn re_enabling_a_depleted_client_is_undone_by_the_next_pass_with_another_restart() {
    let (sim, raw) = depleted(SimConfig::v2_9()).await;
    let handle = sim.handle();
    update(&raw, "u1", client("u1", "a", json!({"totalGB": 1000}))).await;
    // Back on with no quota check, counters kept.
    let row = row(&sim, "a");
    assert!(row.enable);
    assert_eq!((row.up, row.down, row.total), (600, 500, 1000));
    assert_eq!(settings_entry(&raw, "a").await["enable"], true);
    assert!(handle.add_traffic("a", 10, 0), "served by Xray again");

    let pass = handle.run_traffic_job();
    assert_eq!(pass.disabled, vec!["a".to_owned()]);
    assert!(pass.restarted_xray);
    assert_eq!(handle.xray_restarts(), 2);
    assert_eq!(settings_entry(&raw, "a").await["enable"], false);
    assert_eq!(traffic_over_http(&raw, "a").await["obj"]["up"], 610);
    assert_eq!(onlines(&raw).await, Value::Null);

    // Before v2.9.4 the same dance: the row goes off again, with no restart.
    let (sim, raw) = depleted(SimConfig::v2_6()).await;
    update(&raw, "u1", client("u1", "a", json!({"totalGB": 1000}))).await;
    assert!(row_enabled(&sim, "a"));
    assert_eq!(
        sim.handle().run_traffic_job().disabled,
        vec!["a".to_owned()]
    );
    assert!(!row_enabled(&sim, "a"));
    assert_eq!(sim.handle().xray_restarts(), 0);
}

fn row_enabled(sim: &PanelSimulator, email: &str) -> bool {
    row(sim, email).enable
}

#[tokio::test]
async fn raising_the_quota_or_lifting_it_keeps_a_re_enabled_client_on() {
    let (sim, raw) = depleted(SimConfig::v2_9()).await;
    let handle = sim.handle();
    update(&raw, "u1", client("u1", "a", json!({"totalGB": 5000}))).await;
    assert!(handle.run_traffic_job().disabled.is_empty());
    assert!(row_enabled(&sim, "a"));
    assert_eq!(settings_entry(&raw, "a").await["enable"], true);

    // Up to the new quota, and off again; then a quota of 0: unlimited.
    assert!(handle.add_traffic("a", 3900, 0));
    assert_eq!(handle.run_traffic_job().disabled, vec!["a".to_owned()]);
    update(&raw, "u1", client("u1", "a", json!({"totalGB": 0}))).await;
    assert!(handle.add_traffic("a", 1_000_000, 0));
    assert!(handle.run_traffic_job().disabled.is_empty());
    let row = row(&sim, "a");
    assert!(row.enable);
    assert_eq!((row.up, row.total), (1_004_500, 0));
    assert_eq!(handle.xray_restarts(), 2);
}

#[tokio::test]
async fn reset_then_update_with_enable_keeps_a_depleted_client_on() {
    let (sim, raw) = depleted(SimConfig::v2_9()).await;
    let handle = sim.handle();
    let (_, body) = raw
        .post("panel/api/inbounds/1/resetClientTraffic/a", None)
        .await;
    assert_eq!(
        parse(&body),
        json!({"success": true, "msg": "Traffic has been reset.", "obj": null})
    );
    // The row is on and empty; the settings entry is still off, so Xray does not serve it.
    let row_now = row(&sim, "a");
    assert!(row_now.enable);
    assert_eq!((row_now.up, row_now.down, row_now.all_time), (0, 0, 1100));
    assert_eq!(settings_entry(&raw, "a").await["enable"], false);
    assert!(!handle.add_traffic("a", 1, 1));
    assert!(handle.run_traffic_job().disabled.is_empty());

    update(&raw, "u1", client("u1", "a", json!({"totalGB": 1000}))).await;
    assert!(handle.add_traffic("a", 100, 100));
    assert!(handle.run_traffic_job().disabled.is_empty());
    assert!(row_enabled(&sim, "a"));
    assert_eq!(settings_entry(&raw, "a").await["enable"], true);
    assert_eq!(handle.xray_restarts(), 1);
}

#[tokio::test]
async fn a_passed_expiry_disables_and_a_later_one_keeps_the_client_on() {
    let (sim, raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    let past = now_ms() - 1000;
    let future = now_ms() + DAY_MS;
    add(
        &raw,
        json!([
            client("u1", "old", json!({"expiryTime": past})),
            client("u2", "new", json!({"expiryTime": future})),
        ]),
    )
    .await;
    let pass = handle.run_traffic_job();
    assert_eq!(pass.disabled, vec!["old".to_owned()]);
    assert_eq!(settings_entry(&raw, "old").await["enable"], false);
    assert_eq!(settings_entry(&raw, "new").await["enable"], true);
    assert_eq!(handle.xray_restarts(), 1);

    // Enabled again with the same expiry: off again. With a later one: it stays.
    update(&raw, "u1", client("u1", "old", json!({"expiryTime": past}))).await;
    assert_eq!(handle.run_traffic_job().disabled, vec!["old".to_owned()]);
    update(
        &raw,
        "u1",
        client("u1", "old", json!({"expiryTime": future})),
    )
    .await;
    assert!(handle.run_traffic_job().disabled.is_empty());
    assert!(row_enabled(&sim, "old"));
    assert_eq!(row(&sim, "old").expiry_time, future);
    assert_eq!(handle.xray_restarts(), 2);
}

#[tokio::test]
async fn a_reset_period_renews_an_expired_client_instead() {
    let (sim, raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    let expired = now_ms() - 1000;
    add(
        &raw,
        json!([client(
            "u1",
            "a",
            json!({"expiryTime": expired, "reset": 30})
        )]),
    )
    .await;
    assert!(handle.add_traffic("a", 500, 0));
    let pass = handle.run_traffic_job();
    assert_eq!(pass.renewed, vec!["a".to_owned()]);
    assert!(pass.disabled.is_empty());
    let row = row(&sim, "a");
    assert_eq!(row.expiry_time, expired + 30 * DAY_MS);
    assert_eq!((row.up, row.all_time, row.enable), (0, 500, true));
    assert_eq!(
        settings_entry(&raw, "a").await["expiryTime"],
        expired + 30 * DAY_MS
    );
    assert_eq!(handle.xray_restarts(), 0);
}

#[tokio::test]
async fn a_negative_expiry_becomes_a_real_time_at_first_traffic() {
    let (sim, raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    add(
        &raw,
        json!([client("u1", "a", json!({"expiryTime": -7 * DAY_MS}))]),
    )
    .await;
    // No traffic yet: the duration stays a duration, and is not "passed".
    let pass = handle.run_traffic_job();
    assert!(pass.started.is_empty() && pass.disabled.is_empty());
    assert_eq!(row(&sim, "a").expiry_time, -7 * DAY_MS);

    assert!(handle.add_traffic("a", 1, 0));
    let before = now_ms();
    let pass = handle.run_traffic_job();
    let after = now_ms();
    assert_eq!(pass.started, vec!["a".to_owned()]);
    let expiry = row(&sim, "a").expiry_time;
    assert!(
        (before + 7 * DAY_MS..=after + 7 * DAY_MS).contains(&expiry),
        "{expiry}"
    );
    assert_eq!(settings_entry(&raw, "a").await["expiryTime"], expiry);
    assert_eq!(
        traffic_over_http(&raw, "a").await["obj"]["expiryTime"],
        expiry
    );
    assert!(row_enabled(&sim, "a"));
}

#[tokio::test]
async fn a_float_or_string_quota_is_no_quota_at_all() {
    let (sim, raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    add(
        &raw,
        json!([
            client("u1", "float", json!({"totalGB": 1000.0})),
            client("u2", "text", json!({"totalGB": "1000"})),
            client("u3", "int", json!({"totalGB": 1000})),
        ]),
    )
    .await;
    for email in ["float", "text", "int"] {
        assert!(handle.add_traffic(email, 5000, 0), "{email}");
    }
    assert_eq!(row(&sim, "float").total, 0);
    assert_eq!(row(&sim, "text").total, 0);
    assert_eq!(handle.run_traffic_job().disabled, vec!["int".to_owned()]);
    assert!(row_enabled(&sim, "float") && row_enabled(&sim, "text"));
    // The settings keep whatever was sent.
    assert_eq!(settings_entry(&raw, "float").await["totalGB"], 1000.0);
    assert_eq!(settings_entry(&raw, "text").await["totalGB"], "1000");
}

#[tokio::test]
async fn the_timed_job_runs_every_period() {
    let config = SimConfig::v2_9().with_traffic_job_period(Some(Duration::from_millis(100)));
    let sim = PanelSimulator::start(config).await.unwrap();
    let raw = Raw::logged_in(&sim).await;
    let handle = sim.handle();
    add(&raw, json!([client("u1", "a", json!({"totalGB": 1000}))])).await;
    assert!(handle.add_traffic("a", 2000, 0));
    let next = handle.next_traffic_pass();
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the job runs by itself");
    let row = row(&sim, "a");
    assert_eq!((row.up, row.enable), (2000, false));
    assert_eq!(settings_entry(&raw, "a").await["enable"], false);
    let stats = handle.stats();
    assert!(stats.traffic_job_runs >= 1);
    assert_eq!(stats.xray_restarts, 1);
}

#[tokio::test]
async fn presets_set_the_job_period_and_the_disable_behaviour() {
    let v2_6 = SimConfig::v2_6();
    assert!(!v2_6.disable_sets_settings_flag && !v2_6.restart_xray_on_disable);
    let v2_9 = SimConfig::default();
    assert!(v2_9.disable_sets_settings_flag && v2_9.restart_xray_on_disable);
    assert_eq!(v2_9.traffic_job_period, Some(Duration::from_secs(10)));
    assert_eq!(
        SimConfig::v3_0().traffic_job_period,
        Some(Duration::from_secs(5))
    );
    let back = SimConfig::v2_6().with_disable_from_v2_9_4();
    assert!(back.disable_sets_settings_flag && back.restart_xray_on_disable);
}

#[tokio::test]
async fn direct_edits_keep_traffic_rows_like_the_panels_ui() {
    let (sim, _raw) = panel(SimConfig::v2_9()).await;
    let handle = sim.handle();
    let client = |email: &str, total: i64| {
        json!({"id": format!("id-{email}"), "email": email, "enable": true, "totalGB": total})
            .as_object()
            .cloned()
            .unwrap()
    };
    handle.insert_clients(1, vec![client("a", 100), client("b", 0)]);
    assert_eq!(handle.client_traffics().len(), 2);
    assert!(handle.add_traffic("a", 50, 0));
    handle.run_traffic_job();
    assert!(handle.modify_client("a", |c| {
        c.insert("email".into(), json!("a2"));
        c.insert("totalGB".into(), json!(40));
    }));
    let renamed = handle.client_traffic("a2").unwrap();
    assert_eq!((renamed.up, renamed.total), (50, 40));
    assert_eq!(handle.run_traffic_job().disabled, vec!["a2".to_owned()]);
    assert!(handle.remove_client("b"));
    assert!(handle.client_traffic("b").is_none());

    // Xray restarts on demand too, forgetting who was online.
    handle.insert_client(1, client("c", 0));
    assert!(handle.add_traffic("c", 1, 1));
    handle.run_traffic_job();
    assert_eq!(handle.onlines(), Some(vec!["c".to_owned()]));
    handle.restart_xray();
    assert_eq!(handle.onlines(), None);
    assert_eq!(handle.xray_restarts(), 2);
}

#[tokio::test]
async fn the_clients_api_has_its_own_traffic_routes() {
    let sim = PanelSimulator::start(SimConfig::v3_1().with_traffic_job_period(None))
        .await
        .unwrap();
    let handle = sim.handle();
    let http = reqwest::Client::new();
    let url = |path: &str| sim.base_url().join(path).unwrap();
    let call = |request: reqwest::RequestBuilder| async move {
        let answer = request.bearer_auth("sim-api-token").send().await.unwrap();
        assert_eq!(answer.status(), 200);
        parse(&answer.text().await.unwrap())
    };
    let added = call(http.post(url("panel/api/clients/add")).json(&json!({
        "client": {"uuid": "u1", "email": "a", "totalGB": 1000, "subId": "sub-a"},
        "inboundIds": [1],
    })))
    .await;
    assert_eq!(added["success"], true, "{added}");
    assert!(handle.add_traffic("a", 700, 400));
    handle.run_traffic_job();

    let traffic = call(http.get(url("panel/api/clients/traffic/a"))).await;
    assert_eq!(
        (&traffic["obj"]["up"], &traffic["obj"]["enable"]),
        (&json!(700), &json!(false))
    );
    assert_eq!(traffic["obj"]["subId"], "sub-a");
    let last = call(http.post(url("panel/api/clients/lastOnline"))).await;
    assert!(last["obj"]["a"].as_i64().unwrap() > 0);
    assert_eq!(
        call(http.post(url("panel/api/clients/onlines"))).await["obj"],
        Value::Null
    );
    let reset = call(http.post(url("panel/api/clients/resetTraffic/a"))).await;
    assert_eq!(reset["msg"], "Traffic has been reset.");
    let row = handle.client_traffic("a").unwrap();
    assert_eq!((row.up, row.down, row.enable), (0, 0, true));
    let unknown = call(http.get(url("panel/api/clients/traffic/nobody"))).await;
    assert_eq!(unknown["success"], false);
}
