//! Blocking and unblocking users against the real log: a block revokes what the user holds,
//! once per command id, and refuses their next key until an unblock; an unblock restores
//! nothing by itself.

use domain::{DomainError, EventType, KeyId, LocationId, Phase, RequestKey, UserAccessId, UserId};
use eventstore::{AccessControl, Actor, ActorKind, EventMetadata, ExecuteError, KeyLedger};
use testkit::TestDatabase;
use time::OffsetDateTime;
use uuid::Uuid;

fn admin() -> Actor {
    Actor::new(ActorKind::Admin, "ops")
}

fn user(raw: i64) -> UserId {
    UserId::new(raw).expect("valid user")
}

fn request(user_id: UserId, location: &LocationId) -> RequestKey {
    RequestKey {
        user_id,
        location: location.clone(),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    }
}

#[tokio::test]
async fn a_block_revokes_the_users_keys_once_and_refuses_new_ones_until_unblocked() {
    let db = TestDatabase::create().await;
    let access = AccessControl::new(db.store.clone());
    let keys = KeyLedger::new(db.store.clone());
    let (alice, bob) = (user(601), user(602));
    let (ams, fra) = (
        LocationId::new("ams").expect("id"),
        LocationId::new("fra").expect("id"),
    );
    let metadata = || EventMetadata::for_command(Uuid::new_v4(), admin());
    for (who, at) in [(alice, &ams), (alice, &fra), (bob, &ams)] {
        access
            .request_key(KeyId::for_user_at(who, at), &request(who, at), &metadata())
            .await
            .expect("requested");
    }
    let alice_keys = [
        KeyId::for_user_at(alice, &ams),
        KeyId::for_user_at(alice, &fra),
    ];
    // Bob's key among the candidates is not Alice's: it must be left alone.
    let candidates = [alice_keys[0], alice_keys[1], KeyId::for_user_at(bob, &ams)];
    let command_id = Uuid::new_v4();
    let blocked = access
        .block(alice, "abuse", &candidates, command_id, admin())
        .await
        .expect("blocked");
    assert!(blocked.status.state.blocked);
    assert_eq!(blocked.status.state.reason.as_deref(), Some("abuse"));
    assert_eq!(blocked.revoked, alice_keys);
    for key in alice_keys {
        assert_eq!(keys.load(key).await.expect("load").0.phase, Phase::Revoking);
    }
    let bobs = KeyId::for_user_at(bob, &ams);
    assert_eq!(
        keys.load(bobs).await.expect("load").0.phase,
        Phase::Provisioning
    );

    // The same block again (a retry) records nothing more.
    let positions = db.store.last_position().await.expect("position");
    let again = access
        .block(alice, "abuse", &candidates, command_id, admin())
        .await
        .expect("blocked again");
    assert!(again.revoked.is_empty());
    assert_eq!(db.store.last_position().await.expect("position"), positions);

    let refused = access
        .request_key(alice_keys[0], &request(alice, &ams), &metadata())
        .await
        .expect_err("a blocked user gets no key");
    assert!(
        matches!(refused, ExecuteError::Refused(DomainError::UserBlocked)),
        "{refused}"
    );
    assert_eq!(db.store.last_position().await.expect("position"), positions);

    let status = access
        .unblock(alice, "appeal", Uuid::new_v4(), admin())
        .await
        .expect("unblocked");
    assert!(!status.state.blocked);
    let stream = db
        .store
        .read_stream(UserAccessId::for_user(alice).as_uuid())
        .await
        .expect("read");
    let types: Vec<&str> = stream.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            EventType::UserBlocked.as_str(),
            EventType::UserUnblocked.as_str()
        ]
    );
    assert_eq!(status.unblocked_at, Some(stream[1].position));
    assert_eq!(status.since, Some(stream[1].recorded_at));
    assert_eq!(status.changed_by, Some(admin()));
    // Nothing comes back by itself; a new request is served.
    assert_eq!(
        keys.load(alice_keys[1]).await.expect("load").0.phase,
        Phase::Revoking
    );
    let outcome = access
        .request_key(alice_keys[0], &request(alice, &ams), &metadata())
        .await
        .expect("served again");
    assert_eq!(outcome.state.phase, Phase::Provisioning);
}

/// Requests racing blocks, many at once: whichever lands first, no blocked user is left
/// with a live key (a request the block did not see finds the block and is revoked).
#[tokio::test]
async fn no_request_racing_a_block_leaves_a_blocked_user_a_live_key() {
    let db = TestDatabase::create().await;
    let ams = LocationId::new("ams").expect("id");
    let mut tasks = tokio::task::JoinSet::new();
    let users: Vec<UserId> = (700..740).map(user).collect();
    for &who in &users {
        let key = KeyId::for_user_at(who, &ams);
        let access = AccessControl::new(db.store.clone());
        let command = request(who, &ams);
        tasks.spawn(async move {
            let metadata = EventMetadata::for_command(Uuid::new_v4(), admin());
            match access.request_key(key, &command, &metadata).await {
                Ok(_) | Err(ExecuteError::Refused(DomainError::UserBlocked)) => {}
                Err(other) => panic!("request for {who}: {other}"),
            }
        });
        let access = AccessControl::new(db.store.clone());
        tasks.spawn(async move {
            access
                .block(who, "raced", &[key], Uuid::new_v4(), admin())
                .await
                .expect("blocked");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    let keys = KeyLedger::new(db.store.clone());
    for who in users {
        let (state, _) = keys
            .load(KeyId::for_user_at(who, &ams))
            .await
            .expect("load");
        assert!(
            matches!(state.phase, Phase::Absent | Phase::Revoking),
            "user {who} is blocked but their key is {:?}",
            state.phase
        );
    }
}
