//! The reconciler against the real PostgreSQL and the simulated panel: drift found both
//! ways, repaired and recorded; foreign clients left alone; dry runs change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::stack::Base;
use domain::KeyId;
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

fn foreign(email: &str) -> Map<String, Value> {
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
    assert_eq!(drift[0].event_type, "key.drift_detected");
    assert_eq!(drift[0].data["kind"], json!("missing_on_panel"));
    assert_eq!(drift[0].data["observed"], Value::Null);
    assert_eq!(drift[0].metadata["actor"]["kind"], json!("reconciler"));
    assert_eq!(drift[1].event_type, "key.drift_repaired");
    assert_eq!(base.count(keys[1], "key.drift_detected").await, 0);

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
    assert_eq!(base.count(keys[0], "key.drift_detected").await, 1);
    assert_eq!(base.count(keys[0], "key.drift_repaired").await, 1);
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
    assert_eq!(base.count(keys[0], "key.drift_repaired").await, 1);

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
    assert_eq!(base.count(keys[0], "key.drift_detected").await, 0);
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
    assert_eq!(base.count(keys[0], "key.drift_detected").await, 0);
}

#[tokio::test]
async fn keys_waiting_for_the_worker_are_left_to_it() {
    let base = Base::new().await;
    let (key, _) = base.request(61).await;
    let report = pass(&base, false).await;
    assert_eq!(report.in_flight, 1);
    assert!(report.findings.is_empty());
    assert!(base.clients().is_empty());
    assert_eq!(base.count(key, "key.drift_detected").await, 0);
}

/// One pass over 10,000 clients: one list call, and our own work (reading and folding the
/// log, comparing) well under a second. Debug builds are slower than release; the bound
/// is generous and the figure is printed.
#[tokio::test]
async fn one_pass_over_ten_thousand_clients_is_one_list_call_and_well_under_a_second() {
    const N: i64 = 10_000;
    let base = Base::new().await;
    let store = base.db.store.clone();
    let location = domain::LocationId::new("ams").unwrap();
    // The log: each key requested and provisioned, written by concurrent appends.
    let mut clients = Vec::with_capacity(N as usize);
    let mut tasks = tokio::task::JoinSet::new();
    let setup = Instant::now();
    for chunk in (1..=N).collect::<Vec<_>>().chunks(500) {
        let (store, location, chunk) = (store.clone(), location.clone(), chunk.to_vec());
        let mut made = Vec::new();
        for &user in &chunk {
            let user_id = domain::UserId::new(user).unwrap();
            let uuid = Uuid::new_v4();
            let spec = x3ui_worker::ClientSpec {
                tg_id: user,
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
    println!("setup: {N} keys in {:?}", setup.elapsed());

    // Log in first, so that the pass's requests are its own.
    let panel = base.panels.get("ams").unwrap().panel();
    panel.list_clients().await.unwrap();
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
