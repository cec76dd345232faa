//! Who may get keys in the bot: a user an administrator blocked is told so politely and
//! nothing is recorded for them, until an unblock lets them ask again; with an allowlist, a
//! stranger is refused and a listed user served.

use std::collections::BTreeSet;

use bot::RequestPolicy;
use domain::{EventType, UserAccessId, UserId};
use eventstore::{AccessControl, Actor, ActorKind};
use telegram_fake::TestUser;
use uuid::Uuid;

use crate::common::Harness;

fn admin() -> Actor {
    Actor::new(ActorKind::Admin, "ops")
}

/// Events in the whole log: a refusal must add none anywhere.
async fn log_length(h: &Harness) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(h.db.pool())
        .await
        .expect("count events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_pressing_my_key_is_told_politely_and_nothing_is_appended() {
    let h = Harness::start().await;
    let access = AccessControl::new(h.db.store.clone());
    let alice = TestUser::new(3001, "Alice", Some("en"));
    let alice_id = UserId::new(alice.id).expect("user");
    let key = Harness::key_id(&alice, "ams");
    let mark = h.say(&alice, "/start").await;
    let menu = h.expect(&alice, mark, "Hello, Alice").await;
    let mark = h.press(&alice, &menu, "My key").await;
    h.expect(&alice, mark, "is ready").await;

    let mark = h.telegram.mark();
    access
        .block(alice_id, "abuse report", &[key], Uuid::new_v4(), admin())
        .await
        .expect("blocked");
    // The block ends the key for real: the panel switches it off, and she is told.
    h.expect(&alice, mark, "is revoked").await;
    assert!(h.enabled_panel_clients(&alice, "ams").is_empty());
    // The relay routed `user.blocked` (no queue refused it) and the projector passed over
    // it without a dead letter: its progress covers the access stream.
    let access_stream = UserAccessId::for_user(alice_id).as_uuid();
    h.until("the projector applied user.blocked", || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT version FROM consumer_progress WHERE consumer = 'keyledger.projector' AND stream_id = $1",
        )
        .bind(access_stream)
        .fetch_optional(h.db.pool())
        .await
        .expect("read progress")
            == Some(1)
    })
    .await;

    let before = log_length(&h).await;
    let mark = h.say(&alice, "/key").await;
    h.expect(&alice, mark, "access has been suspended").await;
    let mark = h.press(&alice, &menu, "My key").await;
    h.expect(&alice, mark, "access has been suspended").await;
    assert_eq!(log_length(&h).await, before, "nothing appended for her");
    assert_eq!(h.count(key, EventType::Requested.as_str()).await, 1);

    // In her own language, even without any key.
    let boris = TestUser::new(3002, "Борис", Some("ru"));
    access
        .block(
            UserId::new(boris.id).expect("user"),
            "spam",
            &[],
            Uuid::new_v4(),
            admin(),
        )
        .await
        .expect("blocked");
    let before = log_length(&h).await;
    let mark = h.say(&boris, "/key").await;
    h.expect(&boris, mark, "администратор приостановил ваш доступ")
        .await;
    assert_eq!(log_length(&h).await, before);

    // Unblocked, she asks again and is served, though an administrator revoked her key.
    access
        .unblock(alice_id, "appeal accepted", Uuid::new_v4(), admin())
        .await
        .expect("unblocked");
    let mark = h.say(&alice, "/key").await;
    h.expect(&alice, mark, "is ready").await;
    assert_eq!(h.count(key, EventType::Requested.as_str()).await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_refuses_a_stranger_and_serves_a_listed_user() {
    let listed = TestUser::new(3101, "Lena", Some("en"));
    let stranger = TestUser::new(3102, "Sam", Some("ru"));
    let allowed = BTreeSet::from([UserId::new(listed.id).expect("user")]);
    let h = Harness::with(&[("ams", "Amsterdam"), ("fra", "Frankfurt")], |config| {
        config.request_policy = RequestPolicy::Allowlist(allowed);
    })
    .await;

    let mark = h.say(&stranger, "/key").await;
    h.expect(&stranger, mark, "только приглашённым").await;
    assert_eq!(log_length(&h).await, 0, "nothing recorded for a stranger");

    let mark = h.say(&listed, "/key").await;
    let choice = h.expect(&listed, mark, "Which location").await;
    let mark = h.press(&listed, &choice, "Frankfurt").await;
    h.expect(&listed, mark, "is ready").await;
    let key = Harness::key_id(&listed, "fra");
    assert_eq!(h.count(key, EventType::Requested.as_str()).await, 1);
    h.stop().await;
}
