//! Notifications from `keyledger.bot-notify`: sent once, rate limits waited out, expiry
//! warned about, failures told plainly and followed up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bot::NotifyHandler;
use broker::EventHandler;
use common::{Harness, check_key_message};
use domain::EventType;
use telegram_fake::TestUser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_twice_is_told_once() {
    let h = Harness::start().await;
    let user = TestUser::new(5001, "Dora", Some("en"));
    let key = Harness::key_id(&user, "ams");

    let mark = h.say(&user, "/key").await;
    let ready = h.expect(&user, mark, "is ready").await;
    check_key_message(&ready, h.only_panel_client(&user, "ams"));

    // The same event handed over again, as after a consumer whose progress was lost: the
    // handler owes nothing new.
    let events = h.db.store.read_stream(key.as_uuid()).await.unwrap();
    let provisioned = events
        .iter()
        .find(|e| e.event_type == EventType::Provisioned.as_str())
        .unwrap();
    let handler = NotifyHandler::new(h.db.store.clone(), Arc::default());
    for _ in 0..2 {
        let mut tx = h.db.pool().begin().await.unwrap();
        handler.handle(provisioned, &mut tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    let owed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bot_notifications WHERE key_id = $1 AND kind = 'ready'",
    )
    .bind(key.as_uuid())
    .fetch_one(h.db.pool())
    .await
    .unwrap();
    assert_eq!(owed, 1);

    // A later notification goes out after anything owed before it; once it is there, a
    // second "ready" would have been sent already.
    let mark = h.press(&user, &ready, "Revoke").await;
    let confirm = h.expect(&user, mark, "Revoke your key").await;
    h.press(&user, &confirm, "Yes, revoke").await;
    h.expect(&user, mark, "is revoked").await;
    let readies = h
        .telegram
        .sent_to(user.id, 0)
        .iter()
        .filter(|s| s.text.contains("is ready"))
        .count();
    assert_eq!(readies, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_rate_limits_are_waited_out_without_losing_a_message() {
    let h = Harness::start().await;
    let user = TestUser::new(5101, "Rita", Some("en"));

    // The conversation: the answer to /help comes after the 429's retry_after.
    h.telegram.rate_limit("sendMessage", 1, 1);
    let mark = h.say(&user, "/help").await;
    let help = h.expect(&user, mark, "What I can do").await;
    let limited = h.telegram.rate_limited();
    assert_eq!(limited.len(), 1);
    assert!(help.at.duration_since(limited[0].at) >= Duration::from_millis(950));

    // A notification: twice refused, then delivered, each time after the wait asked for.
    h.telegram.rate_limit("sendPhoto", 2, 1);
    let mark = h.say(&user, "/key").await;
    let ready = h.expect(&user, mark, "is ready").await;
    check_key_message(&ready, h.only_panel_client(&user, "ams"));
    let limited: Vec<_> = h
        .telegram
        .rate_limited()
        .into_iter()
        .filter(|l| l.method == "sendPhoto")
        .collect();
    assert_eq!(limited.len(), 2);
    assert!(limited[1].at.duration_since(limited[0].at) >= Duration::from_millis(950));
    assert!(ready.at.duration_since(limited[1].at) >= Duration::from_millis(950));
    let photos = h
        .telegram
        .sent_to(user.id, 0)
        .iter()
        .filter(|s| s.method == "sendPhoto")
        .count();
    assert_eq!(photos, 1, "delivered once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_about_to_expire_is_warned_about() {
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.key_lifetime = Some(Duration::from_secs(3600));
        config.expiry_warning = Duration::from_secs(2 * 3600);
        config.expiry_check_every = Duration::from_millis(100);
    })
    .await;
    let user = TestUser::new(5201, "Ева", Some("ru"));
    let key = Harness::key_id(&user, "ams");

    let mark = h.say(&user, "/key").await;
    let ready = h.expect(&user, mark, "готов").await;
    assert!(ready.text.contains("Действует до:"), "{}", ready.text);
    let warning = h.expect(&user, mark, "истекает").await;
    let expires_at = h.state(key).await.details.unwrap().expires_at.unwrap();
    assert!(
        warning.text.contains(&format!("{}", expires_at.year())),
        "{}",
        warning.text
    );
    // The check runs every 100 ms; the warning is owed once per expiry time.
    h.until("the warning settled", || async {
        let settled: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT kind, outcome FROM bot_notifications WHERE kind = 'expiry_warning'",
        )
        .fetch_all(h.db.pool())
        .await
        .unwrap();
        assert!(settled.len() <= 1, "{settled:?}");
        settled.first().and_then(|(_, outcome)| outcome.as_deref()) == Some("sent")
    })
    .await;
    let warnings = h
        .telegram
        .sent_to(user.id, 0)
        .iter()
        .filter(|s| s.text.contains("истекает"))
        .count();
    assert_eq!(warnings, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panel_failure_is_told_plainly_and_followed_up() {
    let h = Harness::start().await;
    let user = TestUser::new(5301, "Fred", Some("en"));
    let key = Harness::key_id(&user, "ams");

    h.sim("ams").handle().update_faults(|f| f.error_rate = 1.0);
    let mark = h.say(&user, "/key").await;
    let failed = h.expect(&user, mark, "is not answering right now").await;
    assert!(failed.text.contains("We keep trying and will message you"));
    assert!(h.count(key, EventType::ProvisioningFailed.as_str()).await >= 1);

    // Asking for the key meanwhile says the same, plainly.
    let mark = h.say(&user, "/key").await;
    h.expect(&user, mark, "is not answering").await;

    h.sim("ams").handle().update_faults(|f| f.error_rate = 0.0);
    let ready = h.expect(&user, failed.seq, "Amsterdam is ready").await;
    assert!(ready.text.contains("sorry for the wait"), "{}", ready.text);
    check_key_message(&ready, h.only_panel_client(&user, "ams"));
    let failures_told = h
        .telegram
        .sent_to(user.id, 0)
        .iter()
        .filter(|s| s.text.contains("is not answering right now"))
        .count();
    assert_eq!(
        failures_told, 1,
        "one message per failure, however often it is retried"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_and_a_repaired_key_are_told_and_in_the_history() {
    use domain::{DriftKind, ExpireKey, KeyCommand, RecordDrift, RecordDriftRepaired};
    use eventstore::{Actor, ActorKind, EventMetadata};

    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.key_lifetime = Some(Duration::from_secs(30 * 24 * 3600));
    })
    .await;
    let user = TestUser::new(5401, "Gus", Some("en"));
    let key = Harness::key_id(&user, "ams");
    let mark = h.say(&user, "/key").await;
    h.expect(&user, mark, "Amsterdam is ready").await;

    // What the reconciler and the scheduler record, as they would.
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(31);
    let commands = [
        (
            ActorKind::Reconciler,
            KeyCommand::RecordDrift(RecordDrift {
                kind: DriftKind::MissingOnPanel,
                expected: serde_json::json!({}),
                observed: serde_json::Value::Null,
            }),
        ),
        (
            ActorKind::Reconciler,
            KeyCommand::RecordDriftRepaired(RecordDriftRepaired {
                kind: DriftKind::MissingOnPanel,
            }),
        ),
        (
            ActorKind::Scheduler,
            KeyCommand::Expire(ExpireKey { now: later }),
        ),
    ];
    for (actor, command) in commands {
        let metadata = EventMetadata::for_command(uuid::Uuid::new_v4(), Actor::new(actor, "test"));
        h.ledger.execute(key, &command, &metadata).await.unwrap();
    }
    h.expect(&user, mark, "has expired and no longer works")
        .await;

    let mark = h.say(&user, "/history").await;
    let history = h.expect(&user, mark, "Your key for Amsterdam").await;
    for milestone in ["— issued", "— repaired on the server", "— expired"] {
        assert!(
            history.text.contains(milestone),
            "{milestone}: {}",
            history.text
        );
    }
    // An expired key's card offers a new key, not a refresh.
    let mark = h.say(&user, "/key").await;
    let setting_up = h.expect(&user, mark, "Setting up your key").await;
    assert!(setting_up.button("Refresh").is_none());
    assert_eq!(h.count(key, EventType::Requested.as_str()).await, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_up_traffic_and_the_key_working_again_are_told_in_the_users_language() {
    use domain::{ChangeQuota, KeyCommand, Phase, RecordDepletion};
    use eventstore::{Actor, ActorKind, EventMetadata};

    let h = Harness::start().await;
    let user = TestUser::new(5501, "Ира", Some("ru-RU"));
    let key = Harness::key_id(&user, "ams");
    let mark = h.say(&user, "/key").await;
    h.expect(&user, mark, "готов").await;

    // The panel paused the client at its limit, as the worker records it.
    let depleted = KeyCommand::RecordDepletion(RecordDepletion {
        used_bytes: 10 << 30,
        limit_bytes: 10 << 30,
    });
    let metadata =
        EventMetadata::for_command(uuid::Uuid::new_v4(), Actor::new(ActorKind::Worker, "test"));
    h.ledger.execute(key, &depleted, &metadata).await.unwrap();
    let told = h
        .expect(&user, mark, "израсходовал весь трафик: 10 ГБ из 10 ГБ")
        .await;
    assert!(told.text.contains("увеличить лимит"), "{}", told.text);
    assert_eq!(h.state(key).await.phase, Phase::Depleted);

    // The card says so too, with no refresh offered.
    let mark = h.say(&user, "/key").await;
    let card = h.expect(&user, mark, "приостановлен").await;
    assert!(card.button("Обновить").is_none(), "{:?}", card.buttons);
    assert!(card.text.contains("Действует"), "{}", card.text);
    let mark = h.say(&user, "/history").await;
    let history = h.expect(&user, mark, "трафик израсходован").await;
    assert!(history.text.contains("— выдан"), "{}", history.text);

    // A new limit brings it back, and the user hears of it.
    let quota = KeyCommand::ChangeQuota(ChangeQuota {
        traffic_limit_bytes: 20 << 30,
        reset_usage: false,
        used_bytes: 10 << 30,
    });
    let metadata =
        EventMetadata::for_command(uuid::Uuid::new_v4(), Actor::new(ActorKind::Admin, "test"));
    h.ledger.execute(key, &quota, &metadata).await.unwrap();
    h.expect(&user, mark, "снова работает: новый лимит трафика — 20 ГБ")
        .await;
    let told = h
        .telegram
        .sent_to(user.id, 0)
        .iter()
        .filter(|s| s.text.contains("израсходовал весь трафик:"))
        .count();
    assert_eq!(told, 1, "told once");
    h.stop().await;
}
