//! The panel's own decisions and the usage view, against the simulator's traffic job: a
//! used-up quota is recorded once as `key.depleted` and never fought (no drift, no
//! re-enable, no Xray restart), for panels before and after v2.9.4; a quota change brings
//! the key back for good; a panel expiry ahead of the scheduler is left alone; the
//! counters reach `key_usage`; flow follows the configuration; every client we write gets
//! a random `subId` of its own.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::Arc;

use common::stack::{Base, DEADLINE};
use common::{eventually, fast_policy};
use domain::{
    ChangeQuota, EventType, KeyCommand, KeyId, KeyStatus, LocationId, RequestKey, UserId,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;
use x3ui_sim::SimConfig;
use x3ui_worker::reconcile::{FindingKind, Reconciler, Resolution};
use x3ui_worker::{Panel, PanelLocation, Panels};

/// The two ways the panel's job disables a client: in its traffic row only (before
/// v2.9.4), or in the settings entry too, followed by an Xray restart (v2.9.4+). The job
/// runs only when a test says so.
fn both_behaviours() -> [(&'static str, SimConfig); 2] {
    [
        (
            "before v2.9.4",
            SimConfig::v2_9()
                .with_disable_before_v2_9_4()
                .with_traffic_job_period(None),
        ),
        (
            "v2.9.4+",
            SimConfig::v2_9()
                .with_disable_from_v2_9_4()
                .with_traffic_job_period(None),
        ),
    ]
}

/// A key for `user` at `ams` with a quota of `limit` bytes (and `expires_at`), provisioned
/// through the worker.
async fn provisioned_with(
    base: &Base,
    user: i64,
    limit: u64,
    expires_at: Option<OffsetDateTime>,
) -> KeyId {
    let user = UserId::new(user).unwrap();
    let location = LocationId::new("ams").unwrap();
    let key = KeyId::for_user_at(user, &location);
    let command = KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at,
        traffic_limit_bytes: limit,
        now: OffsetDateTime::now_utc(),
    });
    base.execute(key, command).await;
    base.worker.sync_key(key, None).await.unwrap();
    key
}

fn reconciler(base: &Base) -> Reconciler {
    Reconciler::new(base.db.store.clone(), base.panels.clone())
}

/// The key's row of the usage view: up, down, limit, enabled on the panel, last online set.
async fn usage(base: &Base, key: KeyId) -> Option<(i64, i64, i64, bool, bool)> {
    sqlx::query_as(
        "SELECT up_bytes, down_bytes, limit_bytes, enabled_on_panel, last_online IS NOT NULL
         FROM key_usage WHERE key_id = $1",
    )
    .bind(key.as_uuid())
    .fetch_optional(base.db.pool())
    .await
    .unwrap()
}

/// The user moves 1,100 bytes on a 1,000-byte quota and the panel's job disables it.
async fn deplete(base: &Base, email: &str) {
    assert!(base.sim.handle().add_traffic(email, 600, 500));
    let pass = base.sim.handle().run_traffic_job();
    assert_eq!(pass.disabled, vec![email.to_owned()]);
}

#[tokio::test]
async fn a_used_up_quota_is_recorded_once_and_never_fought() {
    for (behaviour, config) in both_behaviours() {
        let base = Base::with_sim(config).await;
        let key = provisioned_with(&base, 1, 1000, None).await;
        let other = provisioned_with(&base, 2, 0, None).await;
        assert_eq!(usage(&base, key).await, None, "{behaviour}: no report yet");
        deplete(&base, "tg1-ams").await;
        let restarts = base.sim.handle().xray_restarts();
        let settings_enable = base.client("tg1-ams").unwrap()["enable"].clone();
        let settings = base.sim.handle().settings_text(1);

        for round in 0..3 {
            let report = reconciler(&base)
                .reconcile_location("ams", false)
                .await
                .unwrap();
            assert_eq!(
                report.drift().count(),
                0,
                "{behaviour} pass {round}: {report:?}"
            );
            if round == 0 {
                assert_eq!(report.count(FindingKind::DepletedOnPanel), 1, "{behaviour}");
                assert_eq!(report.findings[0].resolution, Resolution::Recorded);
            } else {
                assert!(
                    report.findings.is_empty(),
                    "{behaviour} pass {round}: {report:?}"
                );
            }
        }
        assert_eq!(
            base.count(key, EventType::Depleted.as_str()).await,
            1,
            "{behaviour}"
        );
        assert_eq!(
            base.count(key, EventType::DriftDetected.as_str()).await,
            0,
            "{behaviour}"
        );
        assert_eq!(
            base.count(other, EventType::DriftDetected.as_str()).await,
            0
        );
        let depleted = base.events(key).await.pop().unwrap();
        assert_eq!(depleted.data["used_bytes"], json!(1100), "{behaviour}");
        assert_eq!(depleted.data["limit_bytes"], json!(1000));
        assert_eq!(depleted.metadata["actor"]["kind"], json!("reconciler"));
        assert_eq!(base.state(key).await.status(), Some(KeyStatus::Depleted));

        // Nothing was written to the panel, so nothing was re-enabled or restarted.
        assert_eq!(base.sim.handle().xray_restarts(), restarts, "{behaviour}");
        assert_eq!(
            base.sim.handle().settings_text(1),
            settings,
            "{behaviour}: nothing written"
        );
        assert_eq!(base.client("tg1-ams").unwrap()["enable"], settings_enable);
        assert!(!base.sim.handle().client_traffic("tg1-ams").unwrap().enable);
        assert_eq!(
            usage(&base, key).await,
            Some((600, 500, 1000, false, true)),
            "{behaviour}"
        );
        assert_eq!(usage(&base, other).await, Some((0, 0, 0, true, false)));
        // The next job finds nothing more to disable, and no restart follows.
        assert!(base.sim.handle().run_traffic_job().disabled.is_empty());
        assert_eq!(base.sim.handle().xray_restarts(), restarts, "{behaviour}");
    }
}

#[tokio::test]
async fn the_usage_pass_records_counters_and_the_depletion_once() {
    let base = Base::with_sim(
        SimConfig::v2_9()
            .with_disable_before_v2_9_4()
            .with_traffic_job_period(None),
    )
    .await;
    let key = provisioned_with(&base, 3, 1000, None).await;
    assert!(base.sim.handle().add_traffic("tg3-ams", 100, 200));
    base.sim.handle().run_traffic_job();
    let reports = reconciler(&base).usage_pass().await;
    assert_eq!((reports[0].recorded, reports[0].depleted), (1, 0));
    assert_eq!(usage(&base, key).await, Some((100, 200, 1000, true, true)));

    deplete(&base, "tg3-ams").await;
    for _ in 0..2 {
        reconciler(&base).usage_pass().await;
    }
    assert_eq!(base.count(key, EventType::Depleted.as_str()).await, 1);
    assert_eq!(base.state(key).await.status(), Some(KeyStatus::Depleted));
    assert_eq!(usage(&base, key).await, Some((700, 700, 1000, false, true)));
    let report = reconciler(&base)
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
}

/// Records a quota change as an admin would and lets the worker apply it.
async fn change_quota(base: &Base, key: KeyId, limit: u64, reset_usage: bool) {
    base.execute(
        key,
        KeyCommand::ChangeQuota(ChangeQuota {
            traffic_limit_bytes: limit,
            reset_usage,
            used_bytes: 1100,
        }),
    )
    .await;
    let applied = base.events(key).await.pop().unwrap();
    assert_eq!(applied.event_type, EventType::QuotaChanged.as_str());
    use broker::EventHandler as _;
    let mut conn = base.db.pool().acquire().await.unwrap();
    base.worker.handle(&applied, &mut conn).await.unwrap();
}

#[tokio::test]
async fn a_quota_change_brings_a_depleted_key_back_for_good() {
    for (behaviour, config) in both_behaviours() {
        for reset_usage in [false, true] {
            let base = Base::with_sim(config.clone()).await;
            let key = provisioned_with(&base, 4, 1000, None).await;
            deplete(&base, "tg4-ams").await;
            reconciler(&base)
                .reconcile_location("ams", false)
                .await
                .unwrap();
            assert_eq!(base.state(key).await.status(), Some(KeyStatus::Depleted));
            // Raised above the usage, or the same limit with the usage reset.
            let limit = if reset_usage { 1000 } else { 5000 };
            change_quota(&base, key, limit, reset_usage).await;
            let case = format!("{behaviour}, reset_usage {reset_usage}");
            assert_eq!(
                base.state(key).await.status(),
                Some(KeyStatus::Active),
                "{case}"
            );

            let client = base.client("tg4-ams").unwrap();
            assert_eq!(client["enable"], json!(true), "{case}");
            assert_eq!(client["totalGB"], json!(limit), "{case}");
            let row = base.sim.handle().client_traffic("tg4-ams").unwrap();
            assert!(row.enable, "{case}");
            let used = if reset_usage { 0 } else { 1100 };
            assert_eq!(row.up + row.down, used, "{case}");

            // The panel's next job leaves it on: the quota is not used up.
            let restarts = base.sim.handle().xray_restarts();
            assert!(
                base.sim.handle().run_traffic_job().disabled.is_empty(),
                "{case}"
            );
            assert!(base.sim.handle().client_traffic("tg4-ams").unwrap().enable);
            assert_eq!(base.sim.handle().xray_restarts(), restarts, "{case}");
            let report = reconciler(&base)
                .reconcile_location("ams", false)
                .await
                .unwrap();
            assert!(report.findings.is_empty(), "{case}: {report:?}");
            assert_eq!(base.count(key, EventType::DriftDetected.as_str()).await, 0);
        }
    }
}

#[tokio::test]
async fn a_client_the_panel_expired_before_the_scheduler_is_left_alone() {
    for (behaviour, config) in both_behaviours() {
        let base = Base::with_sim(config).await;
        let expires_at = OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
        let key = provisioned_with(&base, 5, 0, Some(expires_at)).await;
        // The panel's job disables it once its time passes (the scheduler has not run).
        let handle = base.sim.handle();
        eventually(
            "the panel's job disables the expired client",
            DEADLINE,
            || {
                let handle = handle.clone();
                async move {
                    handle.run_traffic_job();
                    (!handle.client_traffic("tg5-ams")?.enable).then_some(())
                }
            },
        )
        .await;
        let restarts = base.sim.handle().xray_restarts();
        let settings = base.sim.handle().settings_text(1);
        for _ in 0..2 {
            let report = reconciler(&base)
                .reconcile_location("ams", false)
                .await
                .unwrap();
            assert_eq!(report.drift().count(), 0, "{behaviour}: {report:?}");
            assert_eq!(report.count(FindingKind::ExpiredOnPanel), 1, "{behaviour}");
        }
        assert_eq!(base.count(key, EventType::DriftDetected.as_str()).await, 0);
        assert_eq!(
            base.sim.handle().settings_text(1),
            settings,
            "{behaviour}: nothing written"
        );
        assert_eq!(base.sim.handle().xray_restarts(), restarts);
        assert!(!base.sim.handle().client_traffic("tg5-ams").unwrap().enable);
        // Once the scheduler records the expiry, the log wants it off too: nothing left.
        base.expire(key).await;
        let report = reconciler(&base)
            .reconcile_location("ams", false)
            .await
            .unwrap();
        assert!(report.findings.is_empty(), "{behaviour}: {report:?}");
    }
}

#[tokio::test]
async fn a_flow_change_in_the_configuration_is_repaired_as_settings_drift() {
    let base = Base::new().await;
    let key = provisioned_with(&base, 6, 0, None).await;
    // The simulator's inbound is tcp + reality: Vision by default, in the client and link.
    assert_eq!(
        base.client("tg6-ams").unwrap()["flow"],
        json!("xtls-rprx-vision")
    );
    let link = base.state(key).await.details.unwrap().link.unwrap();
    assert!(link.contains("&flow=xtls-rprx-vision#"), "{link}");

    // The operator sets `flow = ""` for the location.
    let panel = Panel::connect(base.sim.panel_config("ams", 1), fast_policy()).unwrap();
    let mut panels = Panels::default();
    panels.insert(PanelLocation::new("ams", panel, 1).with_flow(""));
    let reconciler = Reconciler::new(base.db.store.clone(), Arc::new(panels));
    let report = reconciler.reconcile_location("ams", false).await.unwrap();
    assert_eq!(report.count(FindingKind::SettingsDiffer), 1, "{report:?}");
    assert_eq!(report.findings[0].fields, vec!["flow"]);
    assert_eq!(report.findings[0].resolution, Resolution::Repaired);
    assert_eq!(base.client("tg6-ams").unwrap()["flow"], json!(""));
    let types = base.types(key).await;
    assert_eq!(
        types[types.len() - 2..],
        [
            EventType::DriftDetected.as_str().to_owned(),
            EventType::DriftRepaired.as_str().to_owned()
        ]
    );
    let again = reconciler.reconcile_location("ams", false).await.unwrap();
    assert!(again.findings.is_empty(), "{again:?}");
}

fn sub_id(base: &Base, email: &str) -> String {
    base.client(email).unwrap()["subId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn every_client_gets_a_random_sub_id_of_its_own_kept_across_rotation() {
    let base = Base::new().await;
    let mut keys = Vec::new();
    for user in [7, 8, 9] {
        keys.push(provisioned_with(&base, user, 0, None).await);
    }
    let ids: Vec<String> = ["tg7-ams", "tg8-ams", "tg9-ams"]
        .iter()
        .map(|email| sub_id(&base, email))
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 16, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{id}"
        );
    }
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );

    let old_uuid = base.client("tg7-ams").unwrap()["id"].clone();
    base.rotate(keys[0]).await;
    base.worker.sync_key(keys[0], None).await.unwrap();
    assert_ne!(base.client("tg7-ams").unwrap()["id"], old_uuid);
    assert_eq!(
        sub_id(&base, "tg7-ams"),
        ids[0],
        "a rotation keeps the subId"
    );

    // A subId changed on the panel is not drift: the panel owns it, we only seed it.
    base.sim.handle().modify_client("tg8-ams", |c| {
        c.insert("subId".into(), Value::String("changedbyadmin01".into()));
    });
    let report = reconciler(&base)
        .reconcile_location("ams", false)
        .await
        .unwrap();
    assert!(report.findings.is_empty(), "{report:?}");
    assert_eq!(sub_id(&base, "tg8-ams"), "changedbyadmin01");
}
