//! The reconciler against the real PostgreSQL and the simulated panel: drift found both
//! ways, repaired and recorded; foreign clients left alone; dry runs change nothing.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::stack::Base;
use domain::{EventType, KeyId};
use eventstore::{EventMetadata, NewEvent};
use serde_json::{Map, Value, json};
use uuid::Uuid;
use x3ui_worker::reconcile::{FindingKind, ReconcileReport, Reconciler, Resolution};

/// A base with keys for `users`, each provisioned through the worker.
async fn provisioned(users: &[i64]) -> (Base, Vec<KeyId>) {
    let base = Base::new().await;
    let mut keys = Vec::new();
    for &user in users {
        let (key, _) = base.request(user).await;
        base.worker.sync_key(key, None).await.unwrap();
        keys.push(key);
    }
    (base, keys)
}

fn reconciler(base: &Base) -> Reconciler {
    Reconciler::new(base.db.store.clone(), base.panels.clone())
}

async fn pass(base: &Base, dry_run: bool) -> ReconcileReport {
    reconciler(base)
        .reconcile_location("ams", dry_run)
        .await
        .unwrap()
}

/// A client put straight onto the panel, as an admin would.
pub(crate) fn foreign(email: &str) -> Map<String, Value> {
    let value = json!({"id": Uuid::new_v4().to_string(), "email": email, "enable": true,
        "flow": "", "limitIp": 0, "totalGB": 0, "expiryTime": 0, "tgId": 0, "subId": "x", "comment": ""});
    value.as_object().unwrap().clone()
}

#[tokio::test]
async fn a_panel_equal_to_the_log_has_no_findings() {
    let (base, _) = provisioned(&[1, 2, 3]).await;
    let report = pass(&base, false).await;
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!((report.keys, report.clients_on_panel), (3, 3));
}

#[tokio::test]
async fn a_client_deleted_behind_our_back_is_restored_and_recorded() {
    let (base, keys) = provisioned(&[11, 12]).await;
    let uuid = base.state(keys[0]).await.details.unwrap().client_uuid;
    assert!(base.sim.handle().remove_client("tg11-ams"));

    let report = pass(&base, false).await;
    assert_eq!(report.count(FindingKind::MissingOnPanel), 1);
    assert_eq!(report.repaired, 1);
    assert_eq!(report.findings[0].resolution, Resolution::Repaired);
    assert_eq!(
        base.client("tg11-ams").unwrap()["id"],
        json!(uuid.to_string())
    );
    let events = base.events(keys[0]).await;
    let drift: Vec<_> = events.iter().rev().take(2).rev().collect();
    assert_eq!(drift[0].event_type, EventType::DriftDetected.as_str());
    assert_eq!(drift[0].data["kind"], json!("missing_on_panel"));
    assert_eq!(drift[0].data["observed"], Value::Null);
    assert_eq!(drift[0].metadata["actor"]["kind"], json!("reconciler"));
    assert_eq!(drift[1].event_type, EventType::DriftRepaired.as_str());
    assert_eq!(
        base.count(keys[1], EventType::DriftDetected.as_str()).await,
        0
    );

    assert!(
        pass(&base, false).await.findings.is_empty(),
        "converged after one pass"
    );
}

#[tokio::test]
async fn a_client_altered_behind_our_back_is_put_back_and_recorded() {
    let (base, keys) = provisioned(&[21]).await;
    assert!(base.sim.handle().modify_client("tg21-ams", |c| {
        c.insert("enable".into(), json!(false));
        c.insert("totalGB".into(), json!(0));
    }));
    let report = pass(&base, false).await;
    assert_eq!(report.count(FindingKind::SettingsDiffer), 1);
    assert_eq!(report.findings[0].fields, vec!["enable", "totalGB"]);
    assert_eq!(report.repaired, 1);
    let client = base.client("tg21-ams").unwrap();
    assert_eq!(client["enable"], json!(true));
    assert_eq!(client["totalGB"], json!(50_i64 << 30));
    assert_eq!(
        base.count(keys[0], EventType::DriftDetected.as_str()).await,
        1
    );
    assert_eq!(
        base.count(keys[0], EventType::DriftRepaired.as_str()).await,
        1
    );
}

#[tokio::test]
async fn our_email_without_a_live_key_is_removed_and_foreign_clients_are_untouched() {
    let (base, keys) = provisioned(&[31, 32]).await;
    // A revoked key whose client came back, an older system's client with our email
    // pattern, and someone else's client.
    base.revoke(keys[0]).await;
    base.worker.sync_key(keys[0], None).await.unwrap();
    let handle = base.sim.handle();
    handle.insert_client(1, foreign("tg31-ams"));
    handle.insert_client(1, foreign("tg999-ams"));
    handle.insert_client(1, foreign("alice@example.org"));

    let report = pass(&base, false).await;
    assert_eq!(report.count(FindingKind::UnknownOnPanel), 2, "{report:?}");
    assert_eq!(report.count(FindingKind::Foreign), 1);
    assert_eq!(report.repaired, 2);
    assert!(base.client("tg31-ams").is_none());
    assert!(base.client("tg999-ams").is_none());
    assert!(base.client("alice@example.org").is_some(), "foreign kept");
    assert!(base.client("tg32-ams").is_some());
    assert_eq!(
        base.count(keys[0], EventType::DriftRepaired.as_str()).await,
        1
    );

    let again = pass(&base, false).await;
    assert_eq!(again.drift().count(), 0, "{again:?}");
    assert_eq!(again.count(FindingKind::Foreign), 1, "still reported");
}

#[tokio::test]
async fn the_inbounds_last_client_left_disabled_for_a_revoked_key_is_not_drift() {
    let (base, keys) = provisioned(&[41]).await;
    base.revoke(keys[0]).await;
    base.worker.sync_key(keys[0], None).await.unwrap();
    assert_eq!(base.client("tg41-ams").unwrap()["enable"], json!(false));
    for _ in 0..2 {
        let report = pass(&base, false).await;
        assert!(report.findings.is_empty(), "{:?}", report.findings);
    }
    assert_eq!(
        base.count(keys[0], EventType::DriftDetected.as_str()).await,
        0
    );
}

#[tokio::test]
async fn a_dry_run_reports_and_changes_nothing() {
    let (base, keys) = provisioned(&[51, 52]).await;
    let handle = base.sim.handle();
    handle.remove_client("tg51-ams");
    handle.modify_client("tg52-ams", |c| {
        c.insert("expiryTime".into(), json!(1));
    });
    handle.insert_client(1, foreign("tg998-ams"));
    let before = handle.settings_text(1);
    let positions = base.db.store.last_position().await.unwrap();

    let report = pass(&base, true).await;
    assert!(report.dry_run);
    assert_eq!(report.count(FindingKind::MissingOnPanel), 1);
    assert_eq!(report.count(FindingKind::SettingsDiffer), 1);
    assert_eq!(report.count(FindingKind::UnknownOnPanel), 1);
    assert_eq!(report.repaired, 0);
    assert!(
        report
            .findings
            .iter()
            .all(|f| f.resolution == Resolution::Reported)
    );
    assert_eq!(handle.settings_text(1), before, "panel untouched");
    assert_eq!(
        base.db.store.last_position().await.unwrap(),
        positions,
        "log untouched"
    );
    assert_eq!(
        base.count(keys[0], EventType::DriftDetected.as_str()).await,
        0
    );
}

#[tokio::test]
async fn keys_waiting_for_the_worker_are_left_to_it() {
    let base = Base::new().await;
    let (key, _) = base.request(61).await;
    let report = pass(&base, false).await;
    assert_eq!(report.in_flight, 1);
    assert!(report.findings.is_empty());
    assert!(base.clients().is_empty());
    assert_eq!(base.count(key, EventType::DriftDetected.as_str()).await, 0);
}

fn impatient(base: &Base) -> Reconciler {
    reconciler(base).with_in_flight_grace(Duration::ZERO)
}

#[tokio::test]
async fn a_key_whose_message_never_reached_the_worker_is_applied_after_the_grace_period() {
    let base = Base::new().await;
    // Requested, but the worker never sees the message (dead-lettered, or lost before
    // the relay): nothing else will ever move this key.
    let (key, uuid) = base.request(71).await;
    let report = impatient(&base)
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert_eq!(report.in_flight, 0);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let finding = &report.findings[0];
    assert!(finding.stuck);
    assert_eq!(finding.kind, FindingKind::MissingOnPanel);
    assert_eq!(finding.resolution, Resolution::Repaired);
    assert_eq!(report.repaired, 1);

    assert_eq!(
        base.client("tg71-ams").unwrap()["id"],
        json!(uuid.to_string())
    );
    assert_eq!(
        base.state(key).await.status(),
        Some(domain::KeyStatus::Active)
    );
    let events = base.events(key).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            EventType::Requested.as_str(),
            EventType::DriftDetected.as_str(),
            EventType::Provisioned.as_str(),
            EventType::DriftRepaired.as_str()
        ]
    );
    assert_eq!(events[1].data["kind"], json!("missing_on_panel"));
    assert_eq!(events[2].metadata["actor"]["kind"], json!("reconciler"));
    assert!(
        events[2].data["link"]
            .as_str()
            .unwrap()
            .contains(&uuid.to_string())
    );

    // The message turns up after all (moved back from the dead-letter queue): the worker
    // finds the acknowledgement recorded and adds none.
    let mut conn = base.db.pool().acquire().await.unwrap();
    broker::EventHandler::handle(&base.worker, &events[0], &mut conn)
        .await
        .unwrap();
    assert_eq!(base.count(key, EventType::Provisioned.as_str()).await, 1);
    assert!(pass(&base, false).await.findings.is_empty());
}

#[tokio::test]
async fn a_stuck_rotation_and_a_stuck_revocation_are_finished_by_the_reconciler() {
    let (base, keys) = provisioned(&[81, 82]).await;
    let fresh = base.rotate(keys[0]).await;
    base.revoke(keys[1]).await;
    // Within the grace period both are left to the worker.
    let waiting = pass(&base, false).await;
    assert_eq!(waiting.in_flight, 2);
    assert!(waiting.findings.is_empty());

    let report = impatient(&base)
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert_eq!(report.repaired, 2, "{:?}", report.findings);
    let kinds: std::collections::HashMap<_, _> = report
        .findings
        .iter()
        .map(|f| (f.email.as_str(), (f.kind, f.stuck)))
        .collect();
    assert_eq!(kinds["tg81-ams"], (FindingKind::SettingsDiffer, true));
    assert_eq!(kinds["tg82-ams"], (FindingKind::UnknownOnPanel, true));
    let clients = base.clients();
    assert_eq!(clients.len(), 1, "only the rotated client is left");
    assert_eq!(clients[0]["id"], json!(fresh.to_string()));
    assert_eq!(base.count(keys[0], EventType::Rotated.as_str()).await, 1);
    assert_eq!(base.count(keys[1], EventType::Revoked.as_str()).await, 1);
    assert_eq!(
        base.state(keys[0]).await.status(),
        Some(domain::KeyStatus::Active)
    );
}

#[tokio::test]
async fn a_stuck_key_the_panel_already_holds_only_gets_its_acknowledgement() {
    let base = Base::new().await;
    let (key, _) = base.request(91).await;
    // The worker wrote the panel, then died before recording the acknowledgement.
    let location = base.panels.get("ams").unwrap();
    let state = base.state(key).await;
    // As the worker builds it: the flow is the inbound's default, read first.
    let spec = location
        .desired_spec(&state.desired_client().unwrap())
        .await
        .unwrap();
    location.ensure(spec).await.unwrap();

    let report = impatient(&base)
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert_eq!(report.findings.len(), 1);
    assert_eq!(report.findings[0].kind, FindingKind::Unacknowledged);
    assert_eq!(report.drift().count(), 0);
    assert_eq!(
        base.types(key).await,
        [
            EventType::Requested.as_str(),
            EventType::Provisioned.as_str()
        ],
        "no drift to record: the panel was right"
    );
}

#[tokio::test]
async fn a_dry_run_reports_a_stuck_key_and_leaves_it() {
    let base = Base::new().await;
    let (key, _) = base.request(95).await;
    let report = impatient(&base)
        .reconcile_location("ams", true)
        .await
        .unwrap();
    assert_eq!(report.findings.len(), 1);
    assert!(report.findings[0].stuck);
    assert_eq!(report.findings[0].resolution, Resolution::Reported);
    assert!(base.clients().is_empty());
    assert_eq!(base.types(key).await, [EventType::Requested.as_str()]);
}

/// A base whose log holds `n` provisioned keys at `ams` and whose panel holds exactly
/// their clients, written directly (the worker would take minutes for this many).
async fn ten_thousand_keys(n: i64) -> Base {
    let base = Base::new().await;
    let store = base.db.store.clone();
    let location = domain::LocationId::new("ams").unwrap();
    // The log: each key requested and provisioned, written by concurrent appends.
    let mut clients = Vec::with_capacity(n as usize);
    let mut tasks = tokio::task::JoinSet::new();
    let setup = Instant::now();
    for chunk in (1..=n).collect::<Vec<_>>().chunks(500) {
        let (store, location, chunk) = (store.clone(), location.clone(), chunk.to_vec());
        let mut made = Vec::new();
        for &user in &chunk {
            let user_id = domain::UserId::new(user).unwrap();
            let uuid = Uuid::new_v4();
            // The simulator's inbound is tcp + reality: Vision is the location's flow.
            let spec = x3ui_worker::ClientSpec {
                tg_id: user,
                flow: x3ui_worker::FLOW_VISION.into(),
                ..x3ui_worker::ClientSpec::new(uuid, domain::client_email(user_id, &location))
            };
            clients.push(spec.apply_to(None));
            made.push((user_id, uuid));
        }
        tasks.spawn(async move {
            for (user_id, uuid) in made {
                let key = KeyId::for_user_at(user_id, &location);
                let events = [
                    domain::KeyEvent::Requested(domain::KeyRequested {
                        user_id,
                        location: location.clone(),
                        client_uuid: uuid,
                        email: domain::client_email(user_id, &location),
                        expires_at: None,
                        traffic_limit_bytes: 0,
                    }),
                    domain::KeyEvent::Provisioned(domain::KeyProvisioned {
                        client_uuid: uuid,
                        inbound_id: 1,
                        link: None,
                    }),
                ];
                let new: Vec<NewEvent> = events.iter().map(NewEvent::from_key_event).collect();
                let metadata = EventMetadata::for_command(
                    Uuid::new_v4(),
                    eventstore::Actor::new(eventstore::ActorKind::Admin, "bench"),
                );
                store
                    .append(key.as_uuid(), 0, &new, &metadata)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let on_panel = clients
        .into_iter()
        .map(|c| {
            serde_json::to_value(c)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    base.sim.handle().insert_clients(1, on_panel);
    println!("setup: {n} keys in {:?}", setup.elapsed());
    // Log in first, so that the pass's requests are its own.
    let panel = base.panels.get("ams").unwrap().panel();
    panel.list_clients().await.unwrap();
    base
}

/// One pass over 10,000 clients: one list call, and our own work (reading and folding the
/// log, comparing) well under a second. Debug builds are slower than release; the bound
/// is generous and the figure is printed. `bench_reconcile_pass_over_ten_thousand_clients`
/// measures it properly, in release.
#[tokio::test]
async fn one_pass_over_ten_thousand_clients_is_one_list_call_and_well_under_a_second() {
    const N: i64 = 10_000;
    let base = ten_thousand_keys(N).await;
    let requests = base.sim.handle().requests();
    let report = pass(&base, false).await;
    let calls = base.sim.handle().requests() - requests;
    println!(
        "reconcile {N} clients: list call {:?}, own work {:?} (log read and fold {:?}, compare {:?}), {calls} panel request(s)",
        report.list_call,
        report.own_work,
        report.log_read,
        report.own_work - report.log_read,
    );
    assert_eq!(report.clients_on_panel, N as usize);
    assert_eq!(report.keys, N as usize);
    assert!(report.findings.is_empty(), "{:?}", &report.findings[..3]);
    assert_eq!(calls, 1, "one list call");
    assert!(
        report.own_work < Duration::from_secs(3),
        "own work {:?}",
        report.own_work
    );
}

/// The reconcile benchmark: a program that prints JSON, not a timed test. Run it in
/// release:
///
/// ```sh
/// cargo test --release -p x3ui-sim --test it -- --ignored --nocapture bench_
/// ```
///
/// Per round: one full pass over 10,000 clients and keys (dry run, so every round sees
/// the same panel), and the baseline measured in the same run: parsing the very same
/// list answer alone, the least any pass must do with it.
#[tokio::test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
async fn bench_reconcile_pass_over_ten_thousand_clients() {
    const N: i64 = 10_000;
    const ROUNDS: usize = 5;
    let base = ten_thousand_keys(N).await;
    let body = raw_list_answer(&base).await;
    let millis = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let requests = base.sim.handle().requests();
        let report = pass(&base, true).await;
        let list_calls = base.sim.handle().requests() - requests;
        assert_eq!(report.clients_on_panel, N as usize);
        assert!(report.findings.is_empty());
        let started = Instant::now();
        let parsed = x3ui_worker::InboundClients::from_answer(&body).unwrap();
        let baseline = started.elapsed();
        assert_eq!(parsed.clients.len(), N as usize);
        rounds.push(json!({
            "list_calls": list_calls,
            "list_call_ms": millis(report.list_call),
            "own_work_ms": millis(report.own_work),
            "log_read_and_fold_ms": millis(report.log_read),
            "compare_ms": millis(report.own_work - report.log_read),
            "baseline_parse_list_answer_ms": millis(baseline),
        }));
    }
    let median = |field: &str| {
        let mut values: Vec<f64> = rounds.iter().map(|r| r[field].as_f64().unwrap()).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let summary = json!({
        "bench": "reconcile",
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "clients": N,
        "keys": N,
        "rounds": rounds,
        "median": {
            "list_call_ms": median("list_call_ms"),
            "own_work_ms": median("own_work_ms"),
            "log_read_and_fold_ms": median("log_read_and_fold_ms"),
            "compare_ms": median("compare_ms"),
            "baseline_parse_list_answer_ms": median("baseline_parse_list_answer_ms"),
        },
        "list_answer_bytes": body.len(),
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
}

/// The list call's answer as the panel sends it (`get/1`), fetched with a session of its
/// own.
async fn raw_list_answer(base: &Base) -> Vec<u8> {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let url = base.sim.base_url();
    let login = http
        .post(url.join("login").unwrap())
        .form(&[("username", "admin"), ("password", "sim-password")])
        .send()
        .await
        .unwrap();
    assert!(login.status().is_success());
    http.get(url.join("panel/api/inbounds/get/1").unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_periodic_pass_is_skipped_while_another_process_runs_one() {
    let (base, keys) = provisioned(&[21]).await;
    assert!(base.sim.handle().remove_client("tg21-ams"));
    // Another process's pass holds the lock on its own session.
    let mut other = base.db.pool().acquire().await.unwrap();
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind("keyledger.reconcile-pass")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(taken);

    let skipped = reconciler(&base).reconcile_if_alone().await.unwrap();
    assert!(skipped.is_none(), "a second pass ran beside the first");
    assert!(
        base.client("tg21-ams").is_none(),
        "the skipped pass changed the panel"
    );
    assert_eq!(
        base.count(keys[0], EventType::DriftDetected.as_str()).await,
        0
    );

    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind("keyledger.reconcile-pass")
        .execute(&mut *other)
        .await
        .unwrap();
    let pass = reconciler(&base).reconcile_if_alone().await.unwrap();
    assert_eq!(pass.expect("alone now").reports[0].repaired, 1);
    assert!(base.client("tg21-ams").is_some());
    // And the lock was handed back.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(base.db.pool())
    .await
    .unwrap();
    assert_eq!(held, 0);
}
