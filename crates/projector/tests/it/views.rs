//! Key views against the real PostgreSQL: the live projector and a rebuild agree with a
//! replay of the log, on a log with every event type.

use domain::{
    ConfirmProvisioned, ConfirmRevoked, ConfirmRotated, DriftKind, ExpireKey, KeyCommand, KeyId,
    LocationId, RecordDrift, RecordDriftRepaired, RecordProvisioningFailure, RenewKey, RequestKey,
    RevokeKey, RotateKey, UserId,
};
use eventstore::{ActorKind, EventMetadata, KeyLedger};
use projector::{KeyViewProjector, load_view, rebuild, user_views, verify_views};
use serde_json::json;
use testkit::TestDatabase;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn metadata() -> EventMetadata {
    testkit::command_metadata(ActorKind::Admin)
}

async fn run(ledger: &KeyLedger, key: KeyId, command: KeyCommand) {
    ledger
        .execute(key, &command, &metadata())
        .await
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
}

fn request(user: i64, location: &str, now: OffsetDateTime) -> KeyCommand {
    KeyCommand::Request(RequestKey {
        user_id: UserId::new(user).expect("user"),
        location: LocationId::new(location).expect("location"),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: Some(now + Duration::days(30)),
        traffic_limit_bytes: 0,
        now,
    })
}

/// Three keys whose histories use every event type; returns their ids.
async fn every_event_type(ledger: &KeyLedger) -> Vec<KeyId> {
    let now = OffsetDateTime::now_utc();
    let user = UserId::new(42).expect("user");
    let ams = KeyId::for_user_at(user, &LocationId::new("ams").expect("loc"));
    run(ledger, ams, request(42, "ams", now)).await;
    let (state, _) = ledger.load(ams).await.expect("load");
    let first_uuid = state.details.as_ref().expect("details").client_uuid;
    run(
        ledger,
        ams,
        KeyCommand::RecordProvisioningFailure(RecordProvisioningFailure {
            attempt: 1,
            error: "panel down".into(),
            retry_at: now,
        }),
    )
    .await;
    run(
        ledger,
        ams,
        KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
            client_uuid: first_uuid,
            inbound_id: 1,
            link: Some(format!(
                "vless://{first_uuid}@ams.example.com:443?type=tcp#ams-tg42-ams"
            )),
        }),
    )
    .await;
    let rotated = Uuid::new_v4();
    run(
        ledger,
        ams,
        KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: rotated,
        }),
    )
    .await;
    run(
        ledger,
        ams,
        KeyCommand::ConfirmRotated(ConfirmRotated {
            client_uuid: rotated,
            link: Some(format!(
                "vless://{rotated}@ams.example.com:443?type=tcp#ams-tg42-ams"
            )),
        }),
    )
    .await;
    run(
        ledger,
        ams,
        KeyCommand::RecordDrift(RecordDrift {
            kind: DriftKind::MissingOnPanel,
            expected: json!({"id": rotated}),
            observed: json!(null),
        }),
    )
    .await;
    run(
        ledger,
        ams,
        KeyCommand::RecordDriftRepaired(RecordDriftRepaired {
            kind: DriftKind::MissingOnPanel,
        }),
    )
    .await;
    run(
        ledger,
        ams,
        KeyCommand::Renew(RenewKey {
            expires_at: now + Duration::days(60),
            now,
        }),
    )
    .await;

    let fra = KeyId::for_user_at(user, &LocationId::new("fra").expect("loc"));
    run(ledger, fra, request(42, "fra", now - Duration::days(40))).await;
    run(ledger, fra, KeyCommand::Expire(ExpireKey { now })).await;

    let other = KeyId::for_user_at(
        UserId::new(7).expect("user"),
        &LocationId::new("ams").expect("loc"),
    );
    run(ledger, other, request(7, "ams", now)).await;
    run(
        ledger,
        other,
        KeyCommand::Revoke(RevokeKey {
            reason: "lost phone".into(),
        }),
    )
    .await;
    let (state, _) = ledger.load(other).await.expect("load");
    let uuid = state.details.as_ref().expect("details").client_uuid;
    run(
        ledger,
        other,
        KeyCommand::ConfirmRevoked(ConfirmRevoked { client_uuid: uuid }),
    )
    .await;
    vec![ams, fra, other]
}

/// Hands every event of the log to the live projector, in log order, the way the
/// consumer runtime does (one transaction per event).
async fn project_live(db: &TestDatabase) {
    let projector = KeyViewProjector::new(db.store.clone());
    for event in db.store.read_committed(0).await.expect("read") {
        let mut tx = db.pool().begin().await.expect("tx");
        broker::EventHandler::handle(&projector, &event, &mut tx)
            .await
            .expect("project");
        tx.commit().await.expect("commit");
    }
}

#[tokio::test]
async fn live_views_rebuilt_views_and_a_replay_agree_on_every_event_type() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let keys = every_event_type(&ledger).await;
    let types: std::collections::BTreeSet<String> = db
        .store
        .read_committed(0)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    assert_eq!(types.len(), 11, "every event type is in the log: {types:?}");

    project_live(&db).await;
    let live: Vec<_> = futures_views(&db, &keys).await;
    let statuses: Vec<&str> = live.iter().map(|v| v.status.as_str()).collect();
    assert_eq!(statuses, ["active", "expired", "revoked"]);
    // The rotated client's link, from the log; none for keys the panel never confirmed
    // or that were revoked.
    let link = live[0].link.as_deref().expect("the active key has a link");
    assert!(
        link.starts_with(&format!("vless://{}@", live[0].client_uuid)),
        "{link}"
    );
    assert_eq!((&live[1].link, &live[2].link), (&None, &None));
    assert!(verify_views(&db.store).await.expect("verify").holds());

    let report = rebuild(&db.store).await.expect("rebuild");
    assert_eq!(report.views, 3);
    assert_eq!(
        futures_views(&db, &keys).await,
        live,
        "rebuild equals the live views"
    );
    // A second rebuild works too (names of the swapped table's indexes are reused).
    rebuild(&db.store).await.expect("rebuild again");
    assert_eq!(futures_views(&db, &keys).await, live);
    assert_eq!(
        user_views(db.pool(), 42).await.expect("user views").len(),
        2
    );
}

async fn futures_views(db: &TestDatabase, keys: &[KeyId]) -> Vec<projector::KeyView> {
    let mut views = Vec::new();
    for key in keys {
        views.push(
            load_view(db.pool(), key.as_uuid())
                .await
                .expect("load")
                .expect("view"),
        );
    }
    views
}

#[tokio::test]
async fn verify_reports_a_view_that_differs_from_the_replay() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let keys = every_event_type(&ledger).await;
    project_live(&db).await;
    sqlx::query("UPDATE key_views SET status = 'active' WHERE key_id = $1")
        .bind(keys[2].as_uuid())
        .execute(db.pool())
        .await
        .expect("tamper");
    // The link is in the log now, so a view showing another one differs too.
    sqlx::query("UPDATE key_views SET link = 'vless://someone-else' WHERE key_id = $1")
        .bind(keys[0].as_uuid())
        .execute(db.pool())
        .await
        .expect("tamper");
    let report = verify_views(&db.store).await.expect("verify");
    assert!(!report.holds());
    let differing: Vec<_> = report.differences.iter().map(|d| d.key_id).collect();
    let mut expected = vec![keys[0].as_uuid(), keys[2].as_uuid()];
    expected.sort();
    assert_eq!(differing, expected);
    for difference in &report.differences {
        let (stored, replayed) = (
            difference.stored.as_ref().expect("stored"),
            difference.replayed.as_ref().expect("replayed"),
        );
        if difference.key_id == keys[2].as_uuid() {
            assert_eq!(replayed.status, "revoked");
        } else {
            assert_eq!(stored.link.as_deref(), Some("vless://someone-else"));
            assert_ne!(stored.link, replayed.link);
        }
    }
}

/// Users' access streams share the log but have no view: the live projector, a rebuild and
/// `audit verify` pass over them instead of failing to read them as keys.
#[tokio::test]
async fn a_users_access_events_are_passed_over_by_the_live_projector_rebuild_and_verify() {
    let db = TestDatabase::create().await;
    let user = UserId::new(42).expect("user");
    let ams = LocationId::new("ams").expect("location");
    let key = KeyId::for_user_at(user, &ams);
    let access = eventstore::AccessControl::new(db.store.clone());
    let request = RequestKey {
        user_id: user,
        location: ams,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    };
    access
        .request_key(key, &request, &metadata())
        .await
        .expect("requested");
    let actor = eventstore::Actor::new(ActorKind::Admin, "ops");
    access
        .block(user, "abuse report", &[key], Uuid::new_v4(), actor)
        .await
        .expect("blocked");

    project_live(&db).await;
    let view = load_view(db.pool(), key.as_uuid()).await.expect("load");
    assert_eq!(view.expect("the key's view").status, "revoking");
    let report = verify_views(&db.store).await.expect("verify");
    assert!(report.holds(), "{:?}", report.differences);
    assert_eq!(report.keys, 1, "the access stream is not counted as a key");
    assert_eq!(rebuild(&db.store).await.expect("rebuild").views, 1);
}
