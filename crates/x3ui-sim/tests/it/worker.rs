//! The worker role end to end: commands recorded in PostgreSQL, relayed through RabbitMQ,
//! consumed by the worker, applied to the simulated panel and acknowledged in the log.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::{EventHandler, HandlerError};
use common::eventually;
use common::stack::{Base, DEADLINE, PUBLIC_HOST, Stack};
use domain::{EventType, KeyStatus, Phase};
use serde_json::json;
use x3ui_sim::DownMode;

#[tokio::test]
async fn a_requested_key_is_on_the_panel_with_its_uuid_and_acknowledged() {
    let stack = Stack::start().await;
    let (key, uuid) = stack.provisioned(101).await;

    let client = stack.client("tg101-ams").expect("client on the panel");
    assert_eq!(client["id"], json!(uuid.to_string()));
    assert_eq!(client["enable"], json!(true));
    assert_eq!(client["totalGB"], json!(50_i64 << 30));
    assert_eq!(client["tgId"], json!(101));
    let state = stack.state(key).await;
    assert_eq!(state.status(), Some(KeyStatus::Active));
    assert_eq!(state.details.unwrap().inbound_id, Some(1));
    let provisioned = stack.events(key).await.pop().unwrap();
    assert_eq!(provisioned.metadata["actor"]["kind"], json!("worker"));
    stack.stop().await;
}

/// The link the panel's "copy link" gives for a client of the simulator's inbound 1
/// (remark `ams`, port 443, tcp + reality), written out by hand from docs/panel.md so the
/// test does not check the renderer against itself.
fn panel_copy_link(client_id: &str, email: &str) -> String {
    format!(
        "vless://{client_id}@{PUBLIC_HOST}:443?type=tcp&encryption=none&security=reality\
         &pbk=sim-public-key&fp=chrome&sni=www.example.com&sid=6ba85179e30d4fc2&spx=%2F\
         &flow=xtls-rprx-vision#ams-{email}"
    )
}

#[tokio::test]
async fn acknowledgements_carry_the_link_of_the_client_the_panel_holds() {
    let stack = Stack::start().await;
    let (key, _) = stack.provisioned(120).await;
    let on_panel = stack.client("tg120-ams").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let provisioned = stack.events(key).await.pop().unwrap();
    assert_eq!(provisioned.event_type, EventType::Provisioned.as_str());
    let link = provisioned.data["link"].as_str().unwrap().to_owned();
    assert!(link.starts_with(&format!("vless://{on_panel}@")), "{link}");
    assert_eq!(link, panel_copy_link(&on_panel, "tg120-ams"));
    assert_eq!(stack.state(key).await.details.unwrap().link, Some(link));

    // A refresh: the state drops the old link at once, and the acknowledgement brings the
    // new client's.
    let fresh = stack.rotate(key).await;
    assert_eq!(stack.state(key).await.details.unwrap().link, None);
    stack.wait_for(key, EventType::Rotated.as_str(), 1).await;
    let on_panel = stack.client("tg120-ams").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(on_panel, fresh.to_string());
    let rotated = stack.events(key).await.pop().unwrap();
    let link = rotated.data["link"].as_str().unwrap();
    assert_eq!(link, panel_copy_link(&on_panel, "tg120-ams"));
    assert_eq!(
        stack.state(key).await.details.unwrap().link.as_deref(),
        Some(link)
    );
    stack.stop().await;
}

#[tokio::test]
async fn without_a_public_host_the_key_is_acknowledged_without_a_link() {
    let base = Base::new().await;
    let sim_panel =
        x3ui_worker::Panel::connect(base.sim.panel_config("ams", 1), common::fast_policy())
            .unwrap();
    let mut panels = x3ui_worker::Panels::default();
    panels.insert(x3ui_worker::PanelLocation::new("ams", sim_panel, 1));
    let worker = x3ui_worker::Worker::new(
        base.db.store.clone(),
        std::sync::Arc::new(panels),
        x3ui_worker::WorkerConfig::default(),
    );
    let (key, _) = base.request(121).await;
    worker.sync_key(key, None).await.unwrap();
    let provisioned = base.events(key).await.pop().unwrap();
    assert_eq!(provisioned.event_type, EventType::Provisioned.as_str());
    assert!(
        provisioned.data.get("link").is_none(),
        "{}",
        provisioned.data
    );
    assert_eq!(base.state(key).await.status(), Some(KeyStatus::Active));
}

#[tokio::test]
async fn three_rotations_leave_only_the_newest_uuid_on_the_panel() {
    let stack = Stack::start().await;
    let (key, first) = stack.provisioned(102).await;
    let mut uuids = vec![first];
    for n in 1..=3 {
        uuids.push(stack.rotate(key).await);
        stack.wait_for(key, EventType::Rotated.as_str(), n).await;
        let clients = stack.clients();
        assert_eq!(clients.len(), 1, "one client after rotation {n}");
        assert_eq!(clients[0]["id"], json!(uuids[n].to_string()));
    }
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), 4);
    assert_eq!(stack.count(key, EventType::Rotated.as_str()).await, 3);
    assert_eq!(stack.state(key).await.phase, Phase::Active);
    stack.stop().await;
}

#[tokio::test]
async fn revocation_removes_the_client_and_disables_the_inbounds_last_one() {
    let stack = Stack::start().await;
    let (first, _) = stack.provisioned(103).await;
    let (second, _) = stack.provisioned(104).await;

    stack.revoke(first).await;
    stack.wait_for(first, EventType::Revoked.as_str(), 1).await;
    assert!(stack.client("tg103-ams").is_none(), "revoked client gone");

    // The panel will not delete an inbound's last client: it is disabled instead.
    stack.revoke(second).await;
    stack.wait_for(second, EventType::Revoked.as_str(), 1).await;
    let last = stack.client("tg104-ams").expect("last client kept");
    assert_eq!(last["enable"], json!(false));
    assert_eq!(stack.state(second).await.phase, Phase::Revoked);
    stack.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_disabled_and_a_request_after_revocation_gets_a_new_client() {
    let stack = Stack::start().await;
    let (key, _) = stack.provisioned(105).await;
    stack.expire(key).await;
    eventually("the expired client is disabled", DEADLINE, || async {
        let client = stack.client("tg105-ams")?;
        (client["enable"] == json!(false)).then_some(())
    })
    .await;

    stack.revoke(key).await;
    stack.wait_for(key, EventType::Revoked.as_str(), 1).await;
    let (again, uuid) = stack.request(105).await;
    assert_eq!(again, key, "one stream per user and location");
    stack
        .wait_for(key, EventType::Provisioned.as_str(), 2)
        .await;
    let client = stack.client("tg105-ams").unwrap();
    assert_eq!(client["id"], json!(uuid.to_string()));
    assert_eq!(client["enable"], json!(true));
    stack.stop().await;
}

#[tokio::test]
async fn a_panel_down_for_a_while_is_recorded_once_then_the_key_is_provisioned() {
    let stack = Stack::start().await;
    stack.sim.go_down(DownMode::Refused).await.unwrap();
    let (key, uuid) = stack.request(106).await;
    stack
        .wait_for(key, EventType::ProvisioningFailed.as_str(), 1)
        .await;
    assert_eq!(stack.state(key).await.status(), Some(KeyStatus::Failed));
    // Several more failed deliveries, the breaker opening and probing among them.
    let retried = stack.stats.retried.load(Ordering::Relaxed);
    eventually("more retries while the panel is down", DEADLINE, || async {
        (stack.stats.retried.load(Ordering::Relaxed) >= retried + 4).then_some(())
    })
    .await;
    assert_eq!(
        stack
            .count(key, EventType::ProvisioningFailed.as_str())
            .await,
        1
    );

    stack.sim.come_up().await.unwrap();
    stack
        .wait_for(key, EventType::Provisioned.as_str(), 1)
        .await;
    assert_eq!(
        stack
            .count(key, EventType::ProvisioningFailed.as_str())
            .await,
        1
    );
    let failed = stack.first(key, EventType::ProvisioningFailed).await;
    assert_eq!(failed.data["attempt"], json!(1));
    assert!(
        failed.data["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach the panel"),
        "{}",
        failed.data
    );
    assert_eq!(
        stack.client("tg106-ams").unwrap()["id"],
        json!(uuid.to_string())
    );
    assert_eq!(stack.state(key).await.status(), Some(KeyStatus::Active));
    stack.stop().await;
}

#[tokio::test]
async fn a_hundred_keys_at_once_are_a_hundred_clients_in_far_fewer_add_calls() {
    let stack = Stack::start().await;
    let keys = stack.request_many(200..300).await;
    for key in &keys {
        stack
            .wait_for(*key, EventType::Provisioned.as_str(), 1)
            .await;
    }
    assert_eq!(stack.clients().len(), 100);
    let adds = stack.sim.handle().stats().add_calls;
    println!("100 keys: {adds} addClient calls");
    assert!(adds <= 40, "{adds} addClient calls for 100 keys");
    stack.stop().await;
}

#[tokio::test]
async fn a_redelivered_event_records_no_second_acknowledgement() {
    let base = Base::new().await;
    let (key, _) = base.request(107).await;
    let requested = base.events(key).await.remove(0);
    let mut conn = base.db.pool().acquire().await.unwrap();
    // The runtime would drop a duplicate; this is the crash between our append and its
    // commit, where the same event is handed over again.
    for _ in 0..3 {
        base.worker.handle(&requested, &mut conn).await.unwrap();
    }
    assert_eq!(base.count(key, EventType::Provisioned.as_str()).await, 1);
    assert_eq!(base.clients().len(), 1);
}

#[tokio::test]
async fn an_old_message_applies_the_keys_newest_state() {
    let base = Base::new().await;
    let (key, _) = base.request(108).await;
    let (other, _) = base.request(109).await;
    base.revoke(key).await;
    let requested = base.events(key).await.remove(0);
    let mut conn = base.db.pool().acquire().await.unwrap();
    base.worker
        .handle(&base.events(other).await.remove(0), &mut conn)
        .await
        .unwrap();
    // The key.requested message arrives after the key was revoked: nothing is added,
    // and the revocation is what gets acknowledged.
    base.worker.handle(&requested, &mut conn).await.unwrap();
    assert!(base.client("tg108-ams").is_none());
    assert_eq!(base.count(key, EventType::Provisioned.as_str()).await, 0);
    assert_eq!(base.count(key, EventType::Revoked.as_str()).await, 1);
}

#[tokio::test]
async fn a_key_at_a_location_this_worker_does_not_serve_is_rejected() {
    let base = Base::new().await;
    let (key, _) = base.request_at(110, "fra").await;
    let requested = base.events(key).await.remove(0);
    let mut conn = base.db.pool().acquire().await.unwrap();
    let error = base.worker.handle(&requested, &mut conn).await.unwrap_err();
    assert!(
        matches!(&error, HandlerError::Reject(reason) if reason.contains("fra") && reason.contains(&key.to_string())),
        "{error:?}"
    );
    assert!(base.clients().is_empty());
}

#[tokio::test]
async fn a_panel_failure_is_retried_and_not_recorded_twice_with_the_same_error() {
    let base = Base::new().await;
    base.sim.go_down(DownMode::BadGateway).await.unwrap();
    let (key, _) = base.request(111).await;
    let requested = base.events(key).await.remove(0);
    let mut conn = base.db.pool().acquire().await.unwrap();
    for _ in 0..4 {
        let error = base.worker.handle(&requested, &mut conn).await.unwrap_err();
        assert!(matches!(error, HandlerError::Retry(_)), "{error:?}");
        // Past the breaker's open period, so the next try reaches the panel again.
        tokio::time::sleep(Duration::from_millis(350)).await;
    }
    assert_eq!(
        base.count(key, EventType::ProvisioningFailed.as_str())
            .await,
        1
    );
    base.sim.come_up().await.unwrap();
    base.worker.handle(&requested, &mut conn).await.unwrap();
    assert_eq!(base.count(key, EventType::Provisioned.as_str()).await, 1);
}

#[tokio::test]
async fn keys_converge_while_a_third_of_the_panels_connections_drop() {
    let stack = Stack::start().await;
    stack.sim.handle().update_faults(|f| {
        f.drop_rate = 0.3;
        f.drop_after_handling = true;
    });
    let keys = stack.request_many(400..410).await;
    for key in &keys {
        stack
            .wait_for(*key, EventType::Provisioned.as_str(), 1)
            .await;
    }
    assert!(stack.sim.handle().stats().dropped_connections > 0);
    stack.sim.handle().update_faults(|f| f.drop_rate = 0.0);
    let clients = stack.clients();
    assert_eq!(clients.len(), 10, "nothing lost, nothing doubled");
    for key in keys {
        let details = stack.state(key).await.details.unwrap();
        let client = stack.client(&details.email).unwrap();
        assert_eq!(client["id"], json!(details.client_uuid.to_string()));
        assert_eq!(stack.count(key, EventType::Provisioned.as_str()).await, 1);
    }
    stack.stop().await;
}
