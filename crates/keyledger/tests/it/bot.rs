//! `keyledger serve` with the bot role, against the fake Telegram Bot API: the whole
//! conversation of issue 7 through the real binary, PostgreSQL, RabbitMQ and a simulated
//! panel.

use crate::common;

use common::{Serving, ams_config_file};
use telegram_fake::{FakeTelegram, Sent, TestUser};
use testkit::TestDatabase;
use x3ui_sim::{PanelSimulator, SimConfig};

/// The UUID inside a `vless://` link.
fn link_uuid(link: &str) -> uuid::Uuid {
    link.strip_prefix("vless://")
        .and_then(|rest| rest.split('@').next())
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .expect("a UUID in the link")
}

async fn press(telegram: &FakeTelegram, user: &TestUser, message: &Sent, label: &str) -> usize {
    let data = message
        .button(label)
        .unwrap_or_else(|| panic!("no button {label:?} under {message:#?}"))
        .to_owned();
    let mark = telegram.mark();
    let update = telegram.press(user, message, &data);
    telegram.wait_handled(update).await;
    mark
}

async fn expect(telegram: &FakeTelegram, user: &TestUser, mark: usize, needle: &str) -> Sent {
    let chat = user.id;
    telegram
        .wait_for(needle, mark, |s| {
            s.chat_id == chat && s.method != "answerCallbackQuery" && s.text.contains(needle)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_bot_conversation_end_to_end() {
    let db = TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("simulator");
    let telegram = FakeTelegram::start().await.expect("fake Bot API");
    let config = ams_config_file(&panel.base_url());
    let api_url = telegram.api_url().to_string();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", broker.amqp_url.as_str()),
        ("KEYLEDGER_CONFIG", config.as_str()),
        ("X3UI_AMS_PASSWORD", "sim-password"),
        ("TELEGRAM_BOT_TOKEN", telegram.token()),
        ("TELEGRAM_API_URL", api_url.as_str()),
    ];
    let serving = Serving::start("relay,projector,worker,bot", &env).await;
    let user = TestUser::new(777_001, "Alice", Some("en"));
    let panel_uuid = || {
        let client = panel
            .handle()
            .client("tg777001-ams")
            .expect("the panel client");
        uuid::Uuid::parse_str(client["id"].as_str().expect("id")).expect("uuid")
    };

    let mark = telegram.mark();
    let start = telegram.send_text(&user, "/start");
    telegram.wait_handled(start).await;
    let menu = expect(&telegram, &user, mark, "Hello, Alice").await;

    let mark = press(&telegram, &user, &menu, "My key").await;
    let ready = expect(&telegram, &user, mark, "Amsterdam is ready").await;
    let first = ready.link().expect("a link");
    assert!(ready.photo.is_some(), "with its QR code");
    assert_eq!(link_uuid(&first), panel_uuid());

    let mark = press(&telegram, &user, &ready, "Refresh").await;
    let confirm = expect(&telegram, &user, mark, "Refresh your key").await;
    let mark = press(&telegram, &user, &confirm, "Yes, refresh").await;
    expect(&telegram, &user, mark, "Refreshing your key").await;
    let refreshed = expect(&telegram, &user, mark, "was refreshed").await;
    let second = refreshed.link().expect("a new link");
    assert_ne!(link_uuid(&second), link_uuid(&first));
    assert_eq!(link_uuid(&second), panel_uuid());

    let mark = press(&telegram, &user, &refreshed, "Revoke").await;
    let confirm = expect(&telegram, &user, mark, "Revoke your key").await;
    let mark = press(&telegram, &user, &confirm, "Yes, revoke").await;
    expect(&telegram, &user, mark, "is revoked").await;

    let mark = telegram.mark();
    let history = telegram.send_text(&user, "/history");
    telegram.wait_handled(history).await;
    let history = expect(&telegram, &user, mark, "Your key for Amsterdam").await;
    for milestone in ["— issued", "— refreshed", "— revoked"] {
        assert!(history.text.contains(milestone), "{}", history.text);
    }

    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(logs.iter().any(|l| l.contains("bot stopped")), "{logs:#?}");
    for line in &logs {
        assert!(!line.contains(telegram.token()), "the token leaked: {line}");
        assert!(!line.contains("AAFakeToken"), "the token leaked: {line}");
    }
    assert_eq!(telegram.unauthorized(), 0);
}

#[tokio::test]
async fn serve_without_a_token_says_the_bot_is_off() {
    let db = TestDatabase::create().await;
    let serving = Serving::start("bot", &[("DATABASE_URL", &db.url)]).await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("bot role off: TELEGRAM_BOT_TOKEN not set")),
        "{logs:#?}"
    );
}
