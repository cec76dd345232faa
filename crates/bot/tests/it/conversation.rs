//! Whole conversations through the bot, with real PostgreSQL, RabbitMQ and panel simulators.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::BTreeSet;

use bot::texts::Lang;
use common::{Harness, check_key_message};
use domain::EventType;
use telegram_fake::TestUser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_refresh_three_times_revoke_and_history() {
    let h = Harness::start().await;
    let alice = TestUser::new(1001, "Alice", Some("en"));
    let key = Harness::key_id(&alice, "ams");

    let mark = h.say(&alice, "/start").await;
    let menu = h.expect(&alice, mark, "Hello, Alice").await;
    assert_eq!(menu.parse_mode.as_deref(), Some("HTML"));

    // Get a key: one location, so no choice; the link and QR come once the panel has it.
    let mark = h.press(&alice, &menu, "My key").await;
    h.expect(&alice, mark, "Setting up your key for Amsterdam")
        .await;
    let ready = h.expect(&alice, mark, "is ready").await;
    let first = h.only_panel_client(&alice, "ams");
    let state = h.state(key).await;
    assert_eq!(state.details.as_ref().unwrap().client_uuid, first);
    let link = check_key_message(&ready, first);
    let view = projector::load_view(h.db.pool(), key.as_uuid())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.client_uuid, first);
    assert_eq!(
        view.link.as_ref(),
        Some(&link),
        "the bot shows the view's link"
    );

    // Refresh three times: each a new UUID, the panel's only client for the user.
    let mut seen = BTreeSet::from([first]);
    let mut card = ready;
    for round in 1..=3 {
        let mark = h.press(&alice, &card, "Refresh").await;
        let confirm = h
            .expect(&alice, mark, "Refresh your key for Amsterdam?")
            .await;
        let data = confirm.button("Yes, refresh").unwrap().to_owned();
        let mark = h.telegram.mark();
        // A quick double press of the confirmation: one rotation.
        let first_press = h.telegram.press(&alice, &confirm, &data);
        let second_press = h.telegram.press(&alice, &confirm, &data);
        h.handled(first_press).await;
        h.handled(second_press).await;
        h.expect(&alice, mark, "Refreshing your key for Amsterdam")
            .await;
        let refreshed = h.expect(&alice, mark, "was refreshed").await;
        assert_eq!(
            h.count(key, EventType::RotationRequested.as_str()).await,
            round
        );
        let uuid = h.only_panel_client(&alice, "ams");
        assert!(
            seen.insert(uuid),
            "round {round} gave back an old UUID {uuid}"
        );
        assert_eq!(h.state(key).await.details.unwrap().client_uuid, uuid);
        check_key_message(&refreshed, uuid);
        // The old key's link never comes back in the refreshed message.
        for old in &seen {
            if *old != uuid {
                assert!(!refreshed.text.contains(&old.to_string()));
            }
        }
        card = refreshed;
    }
    assert_eq!(seen.len(), 4);

    // An old card's refresh button is stale now: refused, nothing changes.
    let rotations = h.count(key, EventType::RotationRequested.as_str()).await;
    let old_card = h
        .telegram
        .sent_to(alice.id, 0)
        .into_iter()
        .find(|s| s.text.contains("is ready"))
        .unwrap();
    let mark = h.press(&alice, &old_card, "Refresh").await;
    h.telegram
        .wait_for("the stale-button answer", mark, |s| {
            s.method == "answerCallbackQuery" && s.text.contains("out of date")
        })
        .await;
    assert_eq!(
        h.count(key, EventType::RotationRequested.as_str()).await,
        rotations
    );

    // Revoke, with confirmation.
    let mark = h.press(&alice, &card, "Revoke").await;
    let confirm = h
        .expect(&alice, mark, "Revoke your key for Amsterdam?")
        .await;
    let mark = h.press(&alice, &confirm, "Yes, revoke").await;
    h.expect(&alice, mark, "Revoking your key").await;
    h.expect(&alice, mark, "is revoked and no longer works")
        .await;
    assert!(
        h.enabled_panel_clients(&alice, "ams").is_empty(),
        "the panel no longer serves the key"
    );

    // History: everything, from the log, with dates.
    let mark = h.say(&alice, "/history").await;
    let history = h.expect(&alice, mark, "Your key for Amsterdam").await;
    assert_eq!(
        history.text.matches("— issued").count(),
        1,
        "{}",
        history.text
    );
    assert_eq!(
        history.text.matches("— refreshed").count(),
        3,
        "{}",
        history.text
    );
    assert_eq!(
        history.text.matches("— revoked").count(),
        1,
        "{}",
        history.text
    );
    assert!(history.text.contains(" UTC — "), "{}", history.text);

    // After a revocation the user can get a new key in the same stream.
    let mark = h.say(&alice, "/key").await;
    h.expect(&alice, mark, "Setting up your key").await;
    let again = h.expect(&alice, mark, "is ready").await;
    let fresh = h.only_panel_client(&alice, "ams");
    assert!(!seen.contains(&fresh));
    check_key_message(&again, fresh);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_button_and_forged_data_are_refused() {
    let h = Harness::start().await;
    let alice = TestUser::new(2001, "Alice", Some("en"));
    let mallory = TestUser::new(2002, "Mallory", Some("en"));
    let key = Harness::key_id(&alice, "ams");

    let mark = h.say(&alice, "/key").await;
    let ready = h.expect(&alice, mark, "is ready").await;
    let uuid = h.only_panel_client(&alice, "ams");
    let refresh = ready.button("Refresh").unwrap().to_owned();
    let revoke = ready.button("Revoke").unwrap().to_owned();
    let version = h.state(key).await.version;
    let confirm_refresh = refresh.replacen("r:", "R:", 1);
    let confirm_revoke = revoke.replacen("x:", "X:", 1);

    for data in [refresh, confirm_refresh, revoke, confirm_revoke] {
        // Mallory replays Alice's button data from his own chat.
        h.replay_refused(&mallory, &data, "someone else's key")
            .await;
    }
    // Forged or mangled data: a polite answer, nothing else.
    for data in [
        "R:not-a-key:1",
        "X:00000000000000000000000000000000:1",
        "zzz",
        "",
    ] {
        let mark = h.telegram.mark();
        let update = h.telegram.press_in(&mallory, mallory.id, 1, data);
        h.handled(update).await;
        h.telegram
            .wait_for("the stale answer", mark, |s| {
                s.chat_id == mallory.id && s.method == "answerCallbackQuery"
            })
            .await;
    }
    // Nothing changed for Alice: same version, same panel client; Mallory got no key.
    assert_eq!(h.state(key).await.version, version);
    assert_eq!(h.only_panel_client(&alice, "ams"), uuid);
    assert!(
        h.state(Harness::key_id(&mallory, "ams"))
            .await
            .details
            .is_none()
    );
    assert!(
        h.telegram
            .sent_to(mallory.id, 0)
            .iter()
            .all(|s| !s.text.contains("vless://")),
        "Mallory never sees a link"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn russian_user_chooses_a_location_and_menus_exist_in_both_languages() {
    let h = Harness::with(&[("ams", "Amsterdam 🇳🇱"), ("fra", "Frankfurt 🇩🇪")], |_| {}).await;
    let ivan = TestUser::new(3001, "Иван", Some("ru"));
    let john = TestUser::new(3002, "John", None);

    let mark = h.say(&ivan, "/start").await;
    let menu = h.expect(&ivan, mark, "Здравствуйте, Иван").await;
    let mark = h.say(&ivan, "/help").await;
    h.expect(&ivan, mark, "Что я умею").await;

    // Several locations: a choice by button, then the key at the chosen one.
    let mark = h.press(&ivan, &menu, "Мой ключ").await;
    let choice = h.expect(&ivan, mark, "Для какой локации").await;
    assert!(choice.button("Amsterdam").is_some());
    let mark = h.press(&ivan, &choice, "Frankfurt").await;
    h.expect(&ivan, mark, "Настраиваю ваш ключ (Frankfurt 🇩🇪)")
        .await;
    let ready = h.expect(&ivan, mark, "готов").await;
    assert!(ready.text.contains("Действует"), "{}", ready.text);
    let uuid = h.only_panel_client(&ivan, "fra");
    check_key_message(&ready, uuid);
    assert!(h.panel_clients(&ivan, "ams").is_empty());
    assert!(ready.button("Обновить").is_some() && ready.button("Отозвать").is_some());

    // The choice now marks the location where the user holds a key.
    let mark = h.say(&ivan, "/key").await;
    let choice = h.expect(&ivan, mark, "Для какой локации").await;
    assert!(
        choice.button("✅ Frankfurt").is_some(),
        "{:?}",
        choice.buttons
    );

    // No language code: English.
    let mark = h.say(&john, "/start").await;
    h.expect(&john, mark, "Hello, John").await;

    // The command menu is registered in both languages.
    h.until("both command menus", || async {
        h.telegram.commands().len() >= 2
    })
    .await;
    let commands = h.telegram.commands();
    let default = commands.iter().find(|(lang, _)| lang.is_none()).unwrap();
    let russian = commands
        .iter()
        .find(|(lang, _)| lang.as_deref() == Some("ru"))
        .unwrap();
    for menu in [default, russian] {
        let names: Vec<&str> = menu.1.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["start", "key", "history", "help"]);
    }
    assert!(russian.1.iter().any(|(_, d)| d.contains("ключ")));
    assert!(default.1.iter().any(|(_, d)| d.contains("key")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_gets_a_helpful_answer_and_retried_updates_act_once() {
    let h = Harness::start().await;
    let user = TestUser::new(4001, "Odd", Some("en"));
    let helpful = "I only understand the buttons";

    let mark = h.telegram.mark();
    let update = h.telegram.send_sticker(&user);
    h.handled(update).await;
    h.expect(&user, mark, helpful).await;

    let mark = h.say(&user, &"long text ".repeat(500)).await;
    let answer = h.expect(&user, mark, helpful).await;
    assert!(!answer.text.contains("long text"), "input is never echoed");

    let mark = h.say(&user, "/frobnicate <b>now</b>").await;
    h.expect(&user, mark, helpful).await;

    // An edited message is ignored; the next real message is answered as usual.
    let mark = h.telegram.mark();
    let edit = h.telegram.edit_text(&user, "/key");
    h.handled(edit).await;
    let after_edit = h.say(&user, "/help").await;
    h.expect(&user, after_edit, "What I can do").await;
    assert!(
        h.telegram
            .sent_to(user.id, mark)
            .iter()
            .all(|s| s.text.contains("What I can do")),
        "the edit got no answer"
    );
    assert!(
        h.state(Harness::key_id(&user, "ams"))
            .await
            .details
            .is_none()
    );

    // Telegram delivers an update again (the bot's confirmation was lost): handled once.
    let mark = h.telegram.mark();
    let update = h.telegram.send_text(&user, "/key");
    h.handled(update).await;
    h.telegram.redeliver(update);
    h.telegram.wait_redelivered().await;
    let ready = h.expect(&user, mark, "is ready").await;
    let setting_up = h
        .telegram
        .sent_to(user.id, mark)
        .into_iter()
        .filter(|s| s.text.contains("Setting up"))
        .count();
    assert_eq!(setting_up, 1, "the retried update was answered once");
    assert_eq!(
        h.count(Harness::key_id(&user, "ams"), EventType::Requested.as_str())
            .await,
        1
    );
    assert!(ready.seq > mark);

    // No error trace ever reaches a user.
    for sent in h.telegram.sent() {
        for leak in ["Error", "error:", "panicked", "sqlx", "database"] {
            assert!(!sent.text.contains(leak), "{leak} in {:?}", sent.text);
        }
    }
    assert_eq!(h.telegram.unauthorized(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_card_shows_traffic_used_and_left_and_the_expiry() {
    let h = Harness::with(&[("ams", "Amsterdam")], |config| {
        config.key_lifetime = Some(std::time::Duration::from_secs(30 * 24 * 3600));
    })
    .await;
    let user = TestUser::new(4101, "Tess", Some("en"));
    let key = Harness::key_id(&user, "ams");
    let mark = h.say(&user, "/key").await;
    h.expect(&user, mark, "is ready").await;
    let expires_at = h.state(key).await.details.unwrap().expires_at.unwrap();
    let expiry = Lang::ENGLISH.texts().date(expires_at);

    // Before the panel has reported any traffic: the expiry, no traffic line.
    let mark = h.say(&user, "/key").await;
    let card = h.expect(&user, mark, "Your key for Amsterdam").await;
    assert!(
        card.text.contains(&format!("Valid until: {expiry}")),
        "{}",
        card.text
    );
    assert!(!card.text.contains("Traffic"), "{}", card.text);

    // The panel's counters, as the worker keeps them: 1 GiB up, 0.5 GiB down of 10 GiB.
    sqlx::query(
        "INSERT INTO key_usage (key_id, up_bytes, down_bytes, limit_bytes, enabled_on_panel)
         VALUES ($1, $2, $3, $4, true)",
    )
    .bind(key.as_uuid())
    .bind(1_i64 << 30)
    .bind(1_i64 << 29)
    .bind(10_i64 << 30)
    .execute(h.db.pool())
    .await
    .unwrap();
    let mark = h.say(&user, "/key").await;
    let card = h.expect(&user, mark, "Your key for Amsterdam").await;
    assert!(
        card.text
            .contains("Traffic: 1.5 GB of 10 GB used, 8.5 GB left"),
        "{}",
        card.text
    );
    assert!(card.text.contains(&format!("Valid until: {expiry}")));
    check_key_message(&card, h.only_panel_client(&user, "ams"));

    // No limit on the panel: "no limit", never "0 B left".
    sqlx::query("UPDATE key_usage SET limit_bytes = 0 WHERE key_id = $1")
        .bind(key.as_uuid())
        .execute(h.db.pool())
        .await
        .unwrap();
    let mark = h.say(&user, "/key").await;
    let card = h.expect(&user, mark, "Your key for Amsterdam").await;
    assert!(
        card.text.contains("Traffic: 1.5 GB used, no limit"),
        "{}",
        card.text
    );
    h.stop().await;
}
