//! A user's subscription against the real log: issued once, and a new link that also gives
//! every active key a new client UUID, exactly once per command id.

use domain::{
    ConfirmProvisioned, EventType, KeyCommand, KeyId, KeyStatus, LocationId, RequestKey,
    SubscriptionId, UserId,
};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger, Subscriptions};
use testkit::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;

fn location(id: &str) -> LocationId {
    LocationId::new(id).expect("valid location")
}

fn admin() -> Actor {
    Actor::new(ActorKind::Admin, "test")
}

async fn active_key(ledger: &KeyLedger, user: UserId, at: &LocationId) -> Uuid {
    let key = KeyId::for_user_at(user, at);
    let request = KeyCommand::Request(RequestKey {
        user_id: user,
        location: at.clone(),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    });
    let metadata = EventMetadata::for_command(Uuid::new_v4(), admin());
    let state = ledger
        .execute(key, &request, &metadata)
        .await
        .expect("requested")
        .state;
    let client_uuid = state.details.expect("details").client_uuid;
    let confirm = KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
        client_uuid,
        inbound_id: 1,
        link: None,
    });
    let metadata = EventMetadata::for_command(Uuid::new_v4(), admin());
    ledger
        .execute(key, &confirm, &metadata)
        .await
        .expect("confirmed");
    client_uuid
}

#[tokio::test]
async fn a_subscription_is_issued_once_per_user() {
    let db = TestDatabase::create().await;
    let subscriptions = Subscriptions::new(db.store.clone());
    let user = UserId::new(501).expect("valid");
    let first = subscriptions
        .ensure_issued(user, &EventMetadata::for_command(Uuid::new_v4(), admin()))
        .await
        .expect("issued");
    let again = subscriptions
        .ensure_issued(user, &EventMetadata::for_command(Uuid::new_v4(), admin()))
        .await
        .expect("issued");
    assert_eq!(first, again);
    assert_eq!(first.generation, 1);
    let events = db
        .store
        .read_stream(SubscriptionId::for_user(user).as_uuid())
        .await
        .expect("read");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, [EventType::SubscriptionIssued.as_str()]);
}

#[tokio::test]
async fn a_new_link_rotates_every_active_key_once_per_command() {
    let db = TestDatabase::create().await;
    let keys = KeyLedger::new(db.store.clone());
    let subscriptions = Subscriptions::new(db.store.clone());
    let user = UserId::new(502).expect("valid");
    let (ams, fra, hel) = (location("ams"), location("fra"), location("hel"));
    let ams_client = active_key(&keys, user, &ams).await;
    let fra_client = active_key(&keys, user, &fra).await;
    let locations = [ams.clone(), fra.clone(), hel];

    let command_id = Uuid::new_v4();
    let replaced = subscriptions
        .replace_link(user, "leaked", &locations, command_id, admin())
        .await
        .expect("replaced");
    assert_eq!(replaced.subscription.generation, 2, "issued, then rotated");
    assert_eq!(
        replaced.rotated.len(),
        2,
        "no key at hel, nothing to rotate"
    );
    assert!(replaced.skipped.is_empty());
    for (at, old) in [(&ams, ams_client), (&fra, fra_client)] {
        let (state, _) = keys.load(KeyId::for_user_at(user, at)).await.expect("load");
        assert_eq!(state.status(), Some(KeyStatus::Rotating));
        assert_ne!(state.details.expect("details").client_uuid, old);
    }

    // The same request again (a retry after a lost answer) changes nothing more.
    let retried = subscriptions
        .replace_link(user, "leaked", &locations, command_id, admin())
        .await
        .expect("retried");
    assert_eq!(retried.subscription.generation, 2);
    let (state, events) = keys
        .load(KeyId::for_user_at(user, &ams))
        .await
        .expect("load");
    assert_eq!(state.version, 3, "requested, provisioned, one rotation");
    assert_eq!(
        events.last().map(|e| e.event_type.as_str()),
        Some(EventType::RotationRequested.as_str())
    );
}
