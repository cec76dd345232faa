//! The whole path behind the bot, against real services: PostgreSQL (a database per test),
//! RabbitMQ (a vhost per test), the relay, the projector, the worker with a simulated
//! panel per location, the bot itself, and the fake Telegram Bot API in front of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bot::BotConfig;
use domain::{KeyId, KeyState, LocationId, SubscriptionId, SubscriptionUrls, UserId};
use domain::{Location, Secret};
use eventstore::KeyLedger;
use serde_json::{Map, Value};
use service::Role;
use service::pipeline::{Pipeline, RunningRoles};
use telegram_fake::{FakeTelegram, Sent, TestUser};
use testkit::TestBroker;
use testkit::TestDatabase;
pub use testkit::init_logs;
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};
use x3ui_worker::{Panel, PanelLocation, Panels, ResiliencePolicy};

pub struct Harness {
    pub db: TestDatabase,
    pub broker: TestBroker,
    pub telegram: FakeTelegram,
    /// One simulated panel per location, in the order of `locations`.
    pub sims: Vec<(String, PanelSimulator)>,
    pub ledger: KeyLedger,
    running: RunningRoles,
}

impl Harness {
    /// One location, `ams` ("Amsterdam").
    pub async fn start() -> Self {
        Self::with(&[("ams", "Amsterdam")], |_| {}).await
    }

    /// One location, `ams`, with subscriptions served at [`subscription_urls`].
    pub async fn with_subscriptions() -> Self {
        Self::with(&[("ams", "Amsterdam")], |config| {
            config.subscription_urls = Some(subscription_urls());
        })
        .await
    }

    pub async fn with(locations: &[(&str, &str)], tune: impl FnOnce(&mut BotConfig)) -> Self {
        init_logs();
        let db = TestDatabase::create().await;
        let broker = TestBroker::create().await;
        let telegram = FakeTelegram::start().await.unwrap();
        let mut panels = Panels::default();
        let mut sims = Vec::new();
        for (id, _) in locations {
            let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
            let policy = ResiliencePolicy {
                backoff_base: Duration::from_millis(20),
                backoff_cap: Duration::from_millis(200),
                open_for: Duration::from_millis(300),
                ..ResiliencePolicy::default()
            };
            let panel = Panel::connect(sim.panel_config(id, 1), policy).unwrap();
            panels.insert(
                PanelLocation::new(*id, panel, 1).with_public_host(format!("{id}.example.com")),
            );
            sims.push(((*id).to_owned(), sim));
        }
        let mut config = BotConfig::new(
            Secret::new(telegram.token()),
            telegram.api_url(),
            locations
                .iter()
                .map(|(id, name)| Location {
                    id: LocationId::new(*id).unwrap(),
                    name: (*name).to_owned(),
                })
                .collect(),
        );
        config.poll_timeout = Duration::from_secs(5);
        config.send_poll_every = Duration::from_millis(100);
        tune(&mut config);
        let running = Pipeline::new(db.store.clone(), broker.amqp_url.clone())
            .with_panels(Arc::new(panels))
            .with_bot(config)
            .start(&[Role::Relay, Role::Projector, Role::Worker, Role::Bot])
            .await
            .expect("start the pipeline");
        Self {
            ledger: KeyLedger::new(db.store.clone()),
            db,
            broker,
            telegram,
            sims,
            running,
        }
    }

    pub fn sim(&self, location: &str) -> &PanelSimulator {
        &self.sims.iter().find(|(id, _)| id == location).unwrap().1
    }

    pub fn key_id(user: &TestUser, location: &str) -> KeyId {
        KeyId::for_user_at(
            UserId::new(user.id).unwrap(),
            &LocationId::new(location).unwrap(),
        )
    }

    pub async fn state(&self, key: KeyId) -> KeyState {
        self.ledger.load(key).await.unwrap().0
    }

    pub async fn count(&self, key: KeyId, event_type: &str) -> usize {
        let events = self.db.store.read_stream(key.as_uuid()).await.unwrap();
        events.iter().filter(|e| e.event_type == event_type).count()
    }

    /// The panel's clients for the user at `location` (by the email the key uses).
    pub fn panel_clients(&self, user: &TestUser, location: &str) -> Vec<Map<String, Value>> {
        let email = format!("tg{}-{location}", user.id);
        self.sim(location)
            .handle()
            .clients(1)
            .into_iter()
            .filter(|c| c["email"] == email)
            .collect()
    }

    /// The panel's clients for the user that are switched on. (3x-ui cannot delete an
    /// inbound's last client, so a revoked key's client may stay, disabled.)
    pub fn enabled_panel_clients(
        &self,
        user: &TestUser,
        location: &str,
    ) -> Vec<Map<String, Value>> {
        self.panel_clients(user, location)
            .into_iter()
            .filter(|c| c.get("enable") != Some(&Value::Bool(false)))
            .collect()
    }

    /// The panel's only client for the user at `location`: its UUID.
    pub fn only_panel_client(&self, user: &TestUser, location: &str) -> Uuid {
        let clients = self.panel_clients(user, location);
        assert_eq!(
            clients.len(),
            1,
            "exactly one panel client for the user: {clients:?}"
        );
        Uuid::parse_str(clients[0]["id"].as_str().unwrap()).unwrap()
    }

    /// Sends `text` from `user` and waits until the bot handled it.
    pub async fn say(&self, user: &TestUser, text: &str) -> usize {
        let mark = self.telegram.mark();
        let update = self.telegram.send_text(user, text);
        self.handled(update).await;
        mark
    }

    /// Waits until the bot took the update from Telegram and a replica handled it (it
    /// comes through the broker, so Telegram's confirmation alone says it was queued).
    pub async fn handled(&self, update: i64) {
        self.telegram.wait_handled(update).await;
        let pool = self.db.pool().clone();
        testkit::wait_until(
            &format!("update {update} handled"),
            telegram_fake::DEADLINE,
            || {
                let pool = pool.clone();
                async move { handled_by(&pool, update).await.is_some() }
            },
        )
        .await;
    }

    /// Presses the button labelled `label` under `message`, and waits until it is handled.
    pub async fn press(&self, user: &TestUser, message: &Sent, label: &str) -> usize {
        let data = message
            .button(label)
            .unwrap_or_else(|| panic!("no button {label:?} under {message:#?}"))
            .to_owned();
        let mark = self.telegram.mark();
        let update = self.telegram.press(user, message, &data);
        self.handled(update).await;
        mark
    }

    /// `stranger` replays button `data` from their own chat; waits until the bot answered
    /// the press with a refusal containing `needle`.
    pub async fn replay_refused(&self, stranger: &TestUser, data: &str, needle: &str) {
        let mark = self.telegram.mark();
        let update = self.telegram.press_in(stranger, stranger.id, 1, data);
        self.handled(update).await;
        self.telegram
            .wait_for("the refusal", mark, |s| {
                s.chat_id == stranger.id
                    && s.method == "answerCallbackQuery"
                    && s.text.contains(needle)
            })
            .await;
    }

    /// Waits for a message to `user` at or after `mark` whose text contains `needle`.
    pub async fn expect(&self, user: &TestUser, mark: usize, needle: &str) -> Sent {
        let chat = user.id;
        self.telegram
            .wait_for(&format!("{needle:?} to {}", user.id), mark, |s| {
                s.chat_id == chat && s.method != "answerCallbackQuery" && s.text.contains(needle)
            })
            .await
    }

    /// Waits until `condition` holds, failing after the fake Bot API's deadline.
    pub async fn until<F, Fut>(&self, what: &str, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        testkit::wait_until(what, telegram_fake::DEADLINE, condition).await;
    }

    /// The generation of the user's subscription as the log holds it (0: none issued).
    pub async fn subscription_generation(&self, user: &TestUser) -> u32 {
        eventstore::Subscriptions::new(self.db.store.clone())
            .load(UserId::new(user.id).unwrap())
            .await
            .unwrap()
            .generation
    }

    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(30), self.running.stop())
            .await
            .expect("every role stops");
    }
}

/// Checks that a key message carries the key the panel holds: a photo whose QR code reads
/// back as exactly the link in the caption, and the link names the panel's client UUID.
/// Returns the link.
pub fn check_key_message(message: &Sent, panel_uuid: Uuid) -> String {
    assert_eq!(
        message.method, "sendPhoto",
        "a key comes with its QR code: {message:#?}"
    );
    let link = message.link().expect("the link, copyable in <code>");
    let png = message.photo.as_ref().expect("the QR code");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let image = image::load_from_memory(png).expect("a PNG").to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the picture");
    let (_, content) = grids[0].decode().expect("the QR code reads");
    assert_eq!(content, link, "the QR code is the link");
    let uuid = link
        .strip_prefix("vless://")
        .and_then(|rest| rest.split('@').next())
        .and_then(|id| Uuid::parse_str(id).ok())
        .expect("a UUID in the link");
    assert_eq!(uuid, panel_uuid, "the link is the panel's client");
    link
}

/// The subscription settings of [`Harness::with_subscriptions`].
pub fn subscription_urls() -> SubscriptionUrls {
    SubscriptionUrls::new(
        url::Url::parse("https://sub.example.com/").unwrap(),
        Secret::new("a test secret of more than thirty-two bytes"),
    )
    .unwrap()
}

/// The user's subscription URL at `generation`, as the bot must show it.
pub fn subscription_url(user: &TestUser, generation: u32) -> String {
    let id = SubscriptionId::for_user(UserId::new(user.id).unwrap());
    subscription_urls().url(id, generation)
}

/// The text a QR code in a photo reads as.
pub fn qr_content(message: &Sent) -> String {
    let png = message.photo.as_ref().expect("a photo");
    let image = image::load_from_memory(png).expect("a PNG").to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the picture");
    grids[0].decode().expect("the QR code reads").1
}

/// Checks that a message is the subscription: a photo whose QR code is the URL in its
/// caption, with a button opening that same URL. Returns the URL.
pub fn check_subscription_message(message: &Sent) -> String {
    assert_eq!(message.method, "sendPhoto", "{message:#?}");
    let start = message
        .text
        .find("<code>https://")
        .expect("the URL, copyable")
        + "<code>".len();
    let end = start + message.text[start..].find("</code>").unwrap();
    let url = message.text[start..end].to_owned();
    assert_eq!(qr_content(message), url, "the QR code is the URL");
    let opens: Vec<&str> = message
        .url_buttons
        .iter()
        .map(|(_, u)| u.as_str())
        .collect();
    assert_eq!(
        opens,
        [url.as_str()],
        "one button, opening the subscription page: {message:#?}"
    );
    url
}

/// The replica that handled `update`, once one has.
pub async fn handled_by(pool: &sqlx::PgPool, update: i64) -> Option<Option<Uuid>> {
    sqlx::query_scalar("SELECT handled_by FROM bot_updates WHERE update_id = $1")
        .bind(update)
        .fetch_optional(pool)
        .await
        .expect("read bot_updates")
}
