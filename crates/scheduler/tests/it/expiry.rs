//! The scheduler role expires keys whose time has passed, once, and no others.

use std::time::Duration;

use domain::{
    ConfirmProvisioned, EventType, KeyCommand, KeyId, KeyStatus, LocationId, RequestKey, UserId,
};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger};
use scheduler::Scheduler;
use testkit::TestDatabase;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn active_key(ledger: &KeyLedger, user: i64, expires_in: Option<time::Duration>) -> KeyId {
    let user = UserId::new(user).expect("valid");
    let location = LocationId::new("ams").expect("valid");
    let key = KeyId::for_user_at(user, &location);
    let now = OffsetDateTime::now_utc();
    let request = KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: expires_in.map(|d| now + d),
        traffic_limit_bytes: 0,
        now,
    });
    let meta = |kind| EventMetadata::for_command(Uuid::new_v4(), Actor::new(kind, "t"));
    let outcome = ledger
        .execute(key, &request, &meta(ActorKind::Admin))
        .await
        .expect("requested");
    let client_uuid = outcome.state.details.expect("details").client_uuid;
    let confirm = KeyCommand::ConfirmProvisioned(ConfirmProvisioned {
        client_uuid,
        inbound_id: 1,
        link: None,
    });
    ledger
        .execute(key, &confirm, &meta(ActorKind::Worker))
        .await
        .expect("provisioned");
    key
}

#[tokio::test]
async fn due_keys_expire_once_even_with_two_schedulers() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let due = active_key(&ledger, 1, Some(time::Duration::milliseconds(300))).await;
    let later = active_key(&ledger, 2, Some(time::Duration::hours(1))).await;
    let never = active_key(&ledger, 3, None).await;

    let stop = CancellationToken::new();
    let schedulers: Vec<_> = (0..2)
        .map(|_| {
            let scheduler = Scheduler::new(ledger.clone(), Duration::from_millis(20));
            tokio::spawn(scheduler.run(stop.clone()))
        })
        .collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (state, _) = ledger.load(due).await.expect("load");
        if state.status() == Some(KeyStatus::Expired) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "key never expired");
        tokio::task::yield_now().await;
    }
    // Let both schedulers run further passes; neither may record the expiry again.
    let mut passes = Scheduler::new(ledger.clone(), Duration::from_millis(20));
    assert_eq!(passes.pass().await.expect("pass"), 0);
    stop.cancel();
    for scheduler in schedulers {
        scheduler.await.expect("scheduler stops");
    }

    let events = db.store.read_stream(due.as_uuid()).await.expect("read");
    let expiries: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == EventType::Expired.as_str())
        .collect();
    assert_eq!(expiries.len(), 1);
    assert_eq!(expiries[0].metadata["actor"]["kind"], "scheduler");
    for key in [later, never] {
        let (state, _) = ledger.load(key).await.expect("load");
        assert_eq!(state.status(), Some(KeyStatus::Active));
    }
}
