//! Idempotent operations against the simulated panel, on both API flavours.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::{spec, start};
use serde_json::json;
use uuid::Uuid;
use x3ui_sim::SimConfig;
use x3ui_worker::{Absence, Ensured, PanelError};

#[tokio::test]
async fn ensure_client_adds_once_then_does_nothing_then_updates() {
    for config in [SimConfig::v2_9(), SimConfig::v3_1()] {
        let flavour = config.flavour;
        let (sim, panel) = start(config).await;
        let mut wanted = spec("tg1-ams");
        assert_eq!(
            panel.ensure_client(&wanted).await.unwrap(),
            Ensured::Added,
            "{flavour:?}"
        );
        assert_eq!(
            panel.ensure_client(&wanted).await.unwrap(),
            Ensured::Unchanged,
            "{flavour:?}"
        );

        wanted.expiry_time_ms = 1_900_000_000_000;
        wanted.total_bytes = 50 << 30;
        wanted.enable = false;
        assert_eq!(
            panel.ensure_client(&wanted).await.unwrap(),
            Ensured::Updated,
            "{flavour:?}"
        );
        let stored = sim.handle().client("tg1-ams").unwrap();
        assert_eq!(
            stored["expiryTime"],
            json!(1_900_000_000_000_i64),
            "{flavour:?}"
        );
        assert_eq!(stored["totalGB"], json!(50_i64 << 30), "{flavour:?}");
        assert_eq!(stored["enable"], json!(false), "{flavour:?}");
        assert_eq!(sim.handle().clients(1).len(), 1, "{flavour:?}");
    }
}

#[tokio::test]
async fn a_disabled_client_is_added_disabled_even_where_the_panel_enables_new_ones() {
    // v3.1's clients/add switches every new client on.
    let (sim, panel) = start(SimConfig::v3_1()).await;
    let mut wanted = spec("tg2-ams");
    wanted.enable = false;
    assert_eq!(panel.ensure_client(&wanted).await.unwrap(), Ensured::Added);
    assert_eq!(
        sim.handle().client("tg2-ams").unwrap()["enable"],
        json!(false)
    );
}

#[tokio::test]
async fn rotation_replaces_the_uuid_and_keeps_fields_we_do_not_own() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    let mut wanted = spec("tg3-ams");
    panel.ensure_client(&wanted).await.unwrap();
    let created = sim.handle().client("tg3-ams").unwrap()["created_at"].clone();
    assert!(sim.handle().modify_client("tg3-ams", |c| {
        c.insert("reset".into(), json!(30));
    }));

    let old = wanted.id;
    wanted.id = Uuid::new_v4();
    assert_eq!(
        panel.ensure_client(&wanted).await.unwrap(),
        Ensured::Updated
    );

    let clients = sim.handle().clients(1);
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["id"], json!(wanted.id.to_string()));
    assert_ne!(clients[0]["id"], json!(old.to_string()));
    assert_eq!(
        clients[0]["reset"],
        json!(30),
        "a full replace must resend foreign fields"
    );
    assert_eq!(clients[0]["created_at"], created);
}

#[tokio::test]
async fn ensure_absent_deletes_once_and_then_reports_already_gone() {
    for config in [SimConfig::v2_9(), SimConfig::v2_6(), SimConfig::v3_1()] {
        let flavour = config.flavour;
        let (sim, panel) = start(config).await;
        panel
            .ensure_clients(&[spec("tg901-ams"), spec("tg902-ams")])
            .await
            .unwrap();
        assert_eq!(
            panel.ensure_client_absent("tg902-ams").await.unwrap(),
            Absence::Deleted,
            "{flavour:?}"
        );
        assert_eq!(
            panel.ensure_client_absent("tg902-ams").await.unwrap(),
            Absence::AlreadyGone,
            "{flavour:?}"
        );
        assert!(sim.handle().client("tg902-ams").is_none());
        assert!(sim.handle().client("tg901-ams").is_some());
    }
}

#[tokio::test]
async fn the_last_client_is_disabled_instead_of_deleted_until_another_exists() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    panel.ensure_client(&spec("tg903-ams")).await.unwrap();

    assert_eq!(
        panel.ensure_client_absent("tg903-ams").await.unwrap(),
        Absence::Disabled
    );
    let stored = sim.handle().client("tg903-ams").unwrap();
    assert_eq!(stored["enable"], json!(false));
    // Idempotent: still the last one, still disabled, nothing else happens.
    assert_eq!(
        panel.ensure_client_absent("tg903-ams").await.unwrap(),
        Absence::Disabled
    );

    panel.ensure_client(&spec("tg904-ams")).await.unwrap();
    assert_eq!(
        panel.ensure_client_absent("tg903-ams").await.unwrap(),
        Absence::Deleted
    );
    assert!(sim.handle().client("tg903-ams").is_none());
}

#[tokio::test]
async fn on_v3_1_the_last_client_can_be_deleted() {
    let (sim, panel) = start(SimConfig::v3_1()).await;
    panel.ensure_client(&spec("tg903-ams")).await.unwrap();
    assert_eq!(
        panel.ensure_client_absent("tg903-ams").await.unwrap(),
        Absence::Deleted
    );
    assert!(sim.handle().clients(1).is_empty());
}

#[tokio::test]
async fn several_missing_clients_go_into_one_add_request() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    let mut existing = spec("tg905-ams");
    panel.ensure_client(&existing).await.unwrap();
    let adds_before = sim.handle().stats().add_calls;

    existing.comment = "changed".into();
    let batch = [
        spec("tg906-ams"),
        spec("tg907-ams"),
        existing,
        spec("tg908-ams"),
    ];
    let outcomes = panel.ensure_clients(&batch).await.unwrap();

    assert_eq!(
        outcomes,
        [
            Ensured::Added,
            Ensured::Added,
            Ensured::Updated,
            Ensured::Added
        ]
    );
    assert_eq!(sim.handle().stats().add_calls, adds_before + 1);
    assert_eq!(sim.handle().clients(1).len(), 4);
}

#[tokio::test]
async fn drift_behind_our_back_is_repaired_by_ensuring_again() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    let wanted = spec("tg4-ams");
    panel
        .ensure_clients(&[wanted.clone(), spec("tg909-ams")])
        .await
        .unwrap();

    assert!(sim.handle().remove_client("tg4-ams"));
    assert_eq!(panel.ensure_client(&wanted).await.unwrap(), Ensured::Added);

    assert!(sim.handle().modify_client("tg4-ams", |c| {
        c.insert("enable".into(), json!(false));
        c.insert("expiryTime".into(), json!(1));
    }));
    let listed = panel.list_clients().await.unwrap();
    assert_eq!(
        wanted.differences(listed.by_email("tg4-ams").unwrap()),
        ["enable", "expiryTime"]
    );
    assert_eq!(
        panel.ensure_client(&wanted).await.unwrap(),
        Ensured::Updated
    );
    assert!(
        wanted.matches(
            panel
                .list_clients()
                .await
                .unwrap()
                .by_email("tg4-ams")
                .unwrap()
        )
    );
}

#[tokio::test]
async fn an_email_held_by_another_inbound_is_reported_not_retried() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    let other = sim.handle().add_inbound("other", 8443);
    let mut foreign = serde_json::Map::new();
    foreign.insert("id".into(), json!(Uuid::new_v4().to_string()));
    foreign.insert("email".into(), json!("TG5-ams"));
    sim.handle().insert_client(other, foreign);

    let error = panel.ensure_client(&spec("tg5-ams")).await.unwrap_err();
    assert!(
        matches!(&error, PanelError::EmailTakenElsewhere { email, .. } if email.eq_ignore_ascii_case("tg5-ams")),
        "{error:?}"
    );
    // One try, one look again, one more try: no retry loop on a refusal.
    assert_eq!(sim.handle().stats().add_calls, 2);
}

#[tokio::test]
async fn list_clients_carries_what_links_need() {
    for config in [SimConfig::v2_9(), SimConfig::v3_1()] {
        let (_sim, panel) = start(config).await;
        panel.ensure_client(&spec("tg6-ams")).await.unwrap();
        let listed = panel.list_clients().await.unwrap();
        assert_eq!(listed.inbound.port, 443);
        assert_eq!(listed.inbound.protocol, "vless");
        assert_eq!(listed.inbound.settings["encryption"], json!("none"));
        assert!(!listed.inbound.settings.contains_key("clients"));
        let reality = &listed.inbound.stream_settings["realitySettings"];
        assert_eq!(reality["settings"]["publicKey"], json!("sim-public-key"));
        assert_eq!(listed.clients.len(), 1);
        assert_eq!(listed.clients[0].email, "tg6-ams");
    }
}
