//! The subscription in the conversation: `/key` leads with the user's subscription URL (a
//! button to its page and its QR code) before the per-location link, a refresh keeps the
//! URL, and a new link takes a confirmation and replaces the URL and every key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Harness, check_key_message, check_subscription_message, subscription_url};
use domain::{EventType, SubscriptionId, UserId};
use telegram_fake::TestUser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_leads_with_the_subscription_url_and_its_qr_code() {
    let h = Harness::with_subscriptions().await;
    let alice = TestUser::new(6001, "Alice", Some("en"));

    // The first key brings the subscription with it, issued once.
    let mark = h.say(&alice, "/key").await;
    let first = h.expect(&alice, mark, "Your subscription").await;
    let setting_up = h.expect(&alice, mark, "Setting up your key").await;
    assert!(first.seq < setting_up.seq, "the subscription comes first");
    assert!(setting_up.text.contains("Your subscription gets it"));
    assert_eq!(
        check_subscription_message(&first),
        subscription_url(&alice, 1)
    );
    let ready = h.expect(&alice, mark, "is ready").await;
    assert!(
        ready.text.contains("in your subscription too"),
        "{}",
        ready.text
    );
    check_key_message(&ready, h.only_panel_client(&alice, "ams"));

    // /key again: the same subscription, then the key for manual set-up.
    let mark = h.say(&alice, "/key").await;
    let subscription = h.expect(&alice, mark, "Your subscription").await;
    let card = h.expect(&alice, mark, "Manual set-up").await;
    assert!(
        subscription.seq < card.seq,
        "the subscription comes before the per-location link"
    );
    let url = check_subscription_message(&subscription);
    assert_eq!(url, subscription_url(&alice, 1));
    for app in ["v2rayNG", "Hiddify", "Happ", "Streisand", "sing-box"] {
        assert!(
            subscription.text.contains(app),
            "{app}: {}",
            subscription.text
        );
    }
    assert!(subscription.button("New subscription link").is_some());
    assert_eq!(
        subscription.url_button("Open the subscription page"),
        Some(url.as_str())
    );
    check_key_message(&card, h.only_panel_client(&alice, "ams"));
    assert_eq!(h.subscription_generation(&alice).await, 1);
    let issued =
        h.db.store
            .read_stream(SubscriptionId::for_user(UserId::new(alice.id).unwrap()).as_uuid())
            .await
            .unwrap();
    assert_eq!(issued.len(), 1, "issued once: {issued:?}");
    assert_eq!(issued[0].event_type, EventType::SubscriptionIssued.as_str());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_subscription_url_and_says_so() {
    let h = Harness::with_subscriptions().await;
    let bob = TestUser::new(6101, "Bob", Some("en"));
    let mark = h.say(&bob, "/key").await;
    let ready = h.expect(&bob, mark, "is ready").await;
    let before = h.only_panel_client(&bob, "ams");
    let url = subscription_url(&bob, 1);

    let mark = h.press(&bob, &ready, "Refresh").await;
    let confirm = h
        .expect(&bob, mark, "Refresh your key for Amsterdam?")
        .await;
    assert!(
        confirm.text.contains("subscription link stays the same"),
        "{}",
        confirm.text
    );
    let mark = h.press(&bob, &confirm, "Yes, refresh").await;
    let started = h.expect(&bob, mark, "Refreshing your key").await;
    assert!(
        started.text.contains("Update subscription"),
        "{}",
        started.text
    );
    let refreshed = h.expect(&bob, mark, "was refreshed").await;
    let after = h.only_panel_client(&bob, "ams");
    assert_ne!(before, after);
    check_key_message(&refreshed, after);
    assert!(
        refreshed.text.contains(&format!("<code>{url}</code>")),
        "the same URL: {}",
        refreshed.text
    );
    assert!(refreshed.text.contains("Update subscription"));

    let mark = h.say(&bob, "/key").await;
    let subscription = h.expect(&bob, mark, "Your subscription").await;
    assert_eq!(check_subscription_message(&subscription), url);
    assert_eq!(h.subscription_generation(&bob).await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_link_takes_a_confirmation_and_replaces_the_url_and_the_key() {
    let h = Harness::with_subscriptions().await;
    let ivan = TestUser::new(6201, "Иван", Some("ru"));
    let mallory = TestUser::new(6202, "Mallory", Some("en"));
    let mark = h.say(&ivan, "/key").await;
    let subscription = h.expect(&ivan, mark, "Ваша подписка").await;
    h.expect(&ivan, mark, "готов").await;
    let old_url = check_subscription_message(&subscription);
    let old_uuid = h.only_panel_client(&ivan, "ams");

    // Cancelled: nothing changes.
    let mark = h.press(&ivan, &subscription, "Новая ссылка").await;
    let confirm = h.expect(&ivan, mark, "Сделать новую ссылку").await;
    let mark = h.press(&ivan, &confirm, "Отмена").await;
    h.expect(&ivan, mark, "ничего не изменено").await;
    assert_eq!(h.subscription_generation(&ivan).await, 1);

    // Mallory replays Ivan's buttons from his own chat: refused, nothing changes.
    let ask = subscription.button("Новая ссылка").unwrap().to_owned();
    let confirmed = confirm.button("Да, новая ссылка").unwrap().to_owned();
    for data in [ask, confirmed] {
        h.replay_refused(&mallory, &data, "someone else's").await;
    }
    assert_eq!(h.subscription_generation(&ivan).await, 1);
    assert_eq!(h.subscription_generation(&mallory).await, 0);

    // Confirmed: a new URL, and a new UUID for the key.
    let mark = h.press(&ivan, &subscription, "Новая ссылка").await;
    let confirm = h.expect(&ivan, mark, "Сделать новую ссылку").await;
    let mark = h.press(&ivan, &confirm, "Да, новая ссылка").await;
    h.expect(&ivan, mark, "у подписки новая ссылка").await;
    let renewed = h.expect(&ivan, mark, "Ваша подписка").await;
    let new_url = check_subscription_message(&renewed);
    assert_ne!(new_url, old_url);
    assert_eq!(new_url, subscription_url(&ivan, 2));
    assert_eq!(h.subscription_generation(&ivan).await, 2);
    let urls = common::subscription_urls();
    let id = SubscriptionId::for_user(UserId::new(ivan.id).unwrap());
    assert_ne!(urls.token(id, 1), urls.token(id, 2));
    assert!(!new_url.contains(&urls.token(id, 1)));
    let refreshed = h.expect(&ivan, mark, "обновлён").await;
    let new_uuid = h.only_panel_client(&ivan, "ams");
    assert_ne!(new_uuid, old_uuid, "the key was replaced too");
    check_key_message(&refreshed, new_uuid);

    // The old subscription's buttons are out of date now: nothing more changes.
    let mark = h.press(&ivan, &subscription, "Новая ссылка").await;
    h.telegram
        .wait_for("the stale answer", mark, |s| {
            s.method == "answerCallbackQuery" && s.text.contains("устарела")
        })
        .await;
    let mark = h.press(&ivan, &confirm, "Да, новая ссылка").await;
    h.telegram
        .wait_for("the stale answer", mark, |s| {
            s.method == "answerCallbackQuery" && s.text.contains("устарела")
        })
        .await;
    assert_eq!(h.subscription_generation(&ivan).await, 2);
    let key = Harness::key_id(&ivan, "ams");
    assert_eq!(h.count(key, EventType::RotationRequested.as_str()).await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_subscriptions_the_bot_hands_out_links_only() {
    let h = Harness::start().await;
    let dora = TestUser::new(6301, "Dora", Some("en"));
    let mark = h.say(&dora, "/key").await;
    let ready = h.expect(&dora, mark, "is ready").await;
    check_key_message(&ready, h.only_panel_client(&dora, "ams"));
    let mark = h.say(&dora, "/key").await;
    let card = h.expect(&dora, mark, "Your key for Amsterdam").await;
    check_key_message(&card, h.only_panel_client(&dora, "ams"));
    assert!(
        h.telegram
            .sent_to(dora.id, 0)
            .iter()
            .all(|s| !s.text.contains("subscription") && s.url_buttons.is_empty()),
        "no subscription anywhere"
    );
    assert_eq!(h.subscription_generation(&dora).await, 0);
    h.stop().await;
}
