//! Domain commands against the real log: load, decide, append, retry.

use domain::{
    DomainError, EventType, KeyCommand, KeyId, KeyStatus, LocationId, RequestKey, RotateKey, UserId,
};
use eventstore::{Actor, ActorKind, AppendOutcome, EventMetadata, ExecuteError, KeyLedger};
use testkit::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;

fn request(user: UserId, location: &LocationId) -> KeyCommand {
    KeyCommand::Request(RequestKey {
        user_id: user,
        location: location.clone(),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    })
}

fn by_user(user: UserId) -> EventMetadata {
    EventMetadata::for_command(
        Uuid::new_v4(),
        Actor::new(ActorKind::TelegramUser, user.to_string()),
    )
}

#[tokio::test]
async fn a_double_tapped_request_makes_one_key() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let user = UserId::new(77).expect("valid");
    let ams = LocationId::new("ams").expect("valid");
    let key = KeyId::for_user_at(user, &ams);

    let taps = (0..6).map(|_| {
        let ledger = ledger.clone();
        let command = request(user, &ams);
        tokio::spawn(async move { ledger.execute(key, &command, &by_user(user)).await })
    });
    for outcome in futures::future::join_all(taps).await {
        let outcome = outcome.expect("task").expect("accepted");
        assert_eq!(outcome.state.status(), Some(KeyStatus::Provisioning));
    }
    let events = db.store.read_stream(key.as_uuid()).await.expect("read");
    assert_eq!(events.len(), 1, "one key.requested, not one per tap");
    assert_eq!(events[0].event_type, EventType::Requested.as_str());
}

#[tokio::test]
async fn a_retried_command_is_not_applied_twice() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let user = UserId::new(78).expect("valid");
    let ams = LocationId::new("ams").expect("valid");
    let key = KeyId::for_user_at(user, &ams);
    ledger
        .execute(key, &request(user, &ams), &by_user(user))
        .await
        .expect("request");
    let (state, _) = ledger.load(key).await.expect("load");
    let client = state.details.expect("details").client_uuid;
    ledger
        .execute(
            key,
            &KeyCommand::ConfirmProvisioned(domain::ConfirmProvisioned {
                client_uuid: client,
                inbound_id: 1,
                link: None,
            }),
            &EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Worker, "w")),
        )
        .await
        .expect("provisioned");

    let rotate = KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: Uuid::new_v4(),
    });
    let metadata = by_user(user);
    let first = ledger
        .execute(key, &rotate, &metadata)
        .await
        .expect("rotate");
    assert!(matches!(first.append, Some(AppendOutcome::Appended(_))));
    // The same command again (a retried HTTP call, a redelivered update): same answer.
    let retry = ledger
        .execute(key, &rotate, &metadata)
        .await
        .expect("retry");
    assert!(matches!(
        retry.append,
        Some(AppendOutcome::AlreadyAppended(_))
    ));
    assert_eq!(retry.recorded, first.recorded);
    // A new rotation command while the first is in flight is refused by the domain.
    let second = KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: Uuid::new_v4(),
    });
    let refused = ledger.execute(key, &second, &by_user(user)).await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Refused(DomainError::RotationInProgress))
    ));
    assert_eq!(
        db.store
            .read_stream(key.as_uuid())
            .await
            .expect("read")
            .len(),
        3
    );
}

#[tokio::test]
async fn refused_commands_leave_the_log_untouched() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let key = KeyId::from_uuid(Uuid::new_v4());
    let rotate = KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: Uuid::new_v4(),
    });
    let refused = ledger
        .execute(key, &rotate, &by_user(UserId::new(1).expect("valid")))
        .await;
    assert!(matches!(
        refused,
        Err(ExecuteError::Refused(DomainError::KeyNotFound))
    ));
    assert!(db.store.read_all(0, 10).await.expect("read").is_empty());
}

#[tokio::test]
async fn concurrent_retries_of_one_command_all_get_its_answer() {
    let db = TestDatabase::create().await;
    let ledger = KeyLedger::new(db.store.clone());
    let user = UserId::new(79).expect("valid");
    let ams = LocationId::new("ams").expect("valid");
    let key = KeyId::for_user_at(user, &ams);
    let requested = ledger
        .execute(key, &request(user, &ams), &by_user(user))
        .await
        .expect("request");
    let client = requested.state.details.expect("details").client_uuid;
    let provisioned = KeyCommand::ConfirmProvisioned(domain::ConfirmProvisioned {
        client_uuid: client,
        inbound_id: 1,
        link: None,
    });
    let worker = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Worker, "w"));
    ledger
        .execute(key, &provisioned, &worker)
        .await
        .expect("provisioned");

    // One rotation, retried six times at once (the same command id): the racers that
    // lose see the key already rotating, caused by their own twin, and must get the
    // twin's answer rather than a refusal.
    let rotate = KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: Uuid::new_v4(),
    });
    let metadata = by_user(user);
    let racing = (0..6).map(|_| {
        let (ledger, rotate, metadata) = (ledger.clone(), rotate.clone(), metadata.clone());
        tokio::spawn(async move { ledger.execute(key, &rotate, &metadata).await })
    });
    let mut recorded = Vec::new();
    for answer in futures::future::join_all(racing).await {
        let outcome = answer.expect("task").expect("every retry gets the answer");
        assert_eq!(outcome.state.status(), Some(KeyStatus::Rotating));
        recorded.push(outcome.recorded);
    }
    assert!(recorded.windows(2).all(|pair| pair[0] == pair[1]));
    let rotations = db
        .store
        .read_stream(key.as_uuid())
        .await
        .expect("read")
        .iter()
        .filter(|e| e.event_type == EventType::RotationRequested.as_str())
        .count();
    assert_eq!(rotations, 1);
}
