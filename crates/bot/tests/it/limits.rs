//! Per-user limits, tried as a script would: a flood of refreshes or messages gets one
//! polite "try again in …" and no more work, and a key an administrator switched off is
//! not the user's to get back by pressing "My key".

use std::time::Duration;

use bot::Limit;
use domain::{EventType, KeyCommand, RevokeKey};
use eventstore::{Actor, ActorKind, EventMetadata};
use telegram_fake::TestUser;
use uuid::Uuid;

use crate::common::Harness;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_scripted_refreshes_make_as_many_rotations_as_the_limit_allows() {
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.limits.rotations = Limit {
            count: 3,
            per: HOUR,
        };
        config.limits.messages = Limit {
            count: 1_000,
            per: HOUR,
        };
    })
    .await;
    let alice = TestUser::new(2001, "Alice", Some("en"));
    let key = Harness::key_id(&alice, "ams");
    let mark = h.say(&alice, "/key").await;
    let mut card = h.expect(&alice, mark, "is ready").await;
    let script_started = h.telegram.mark();
    for _ in 0..20 {
        let rotations = h.count(key, EventType::RotationRequested.as_str()).await;
        let mark = h.press(&alice, &card, "Refresh").await;
        let confirm = h.expect(&alice, mark, "Refresh your key").await;
        h.press(&alice, &confirm, "Yes, refresh").await;
        if h.count(key, EventType::RotationRequested.as_str()).await > rotations {
            card = h.expect(&alice, mark, "was refreshed").await;
        }
    }
    assert_eq!(h.count(key, EventType::RotationRequested.as_str()).await, 3);
    let told: Vec<_> = h
        .telegram
        .sent_to(alice.id, script_started)
        .into_iter()
        .filter(|s| s.text.contains("try again in"))
        .collect();
    assert_eq!(told.len(), 1, "told once, then quiet: {told:#?}");
    assert!(told[0].text.contains("minutes"), "{}", told[0].text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_messages_is_answered_up_to_the_limit_and_once_more() {
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.limits.messages = Limit {
            count: 5,
            per: HOUR,
        };
    })
    .await;
    let mallory = TestUser::new(2002, "Mallory", Some("ru"));
    let bob = TestUser::new(2003, "Bob", Some("en"));
    let start = h.telegram.mark();
    for _ in 0..40 {
        h.say(&mallory, "/help").await;
    }
    let answers = h.telegram.sent_to(mallory.id, start);
    assert_eq!(
        answers.len(),
        6,
        "five answers and one 'slow down': {answers:#?}"
    );
    assert!(
        answers[5].text.contains("Попробуйте снова через"),
        "{}",
        answers[5].text
    );
    // Another user is not affected.
    let mark = h.say(&bob, "/help").await;
    h.expect(&bob, mark, "/key").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_an_administrator_revoked_is_not_reissued_by_pressing_my_key() {
    let h = Harness::start().await;
    let alice = TestUser::new(2004, "Alice", Some("en"));
    let key = Harness::key_id(&alice, "ams");
    let mark = h.say(&alice, "/key").await;
    h.expect(&alice, mark, "is ready").await;

    let revoke = KeyCommand::Revoke(RevokeKey {
        reason: "abuse report".into(),
    });
    let metadata = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "ops"));
    let mark = h.telegram.mark();
    h.ledger
        .execute(key, &revoke, &metadata)
        .await
        .expect("revoked by an admin");
    h.expect(&alice, mark, "is revoked").await;

    let mark = h.say(&alice, "/key").await;
    h.expect(&alice, mark, "switched off by an administrator")
        .await;
    assert_eq!(h.count(key, EventType::Requested.as_str()).await, 1);
    h.stop().await;
}
