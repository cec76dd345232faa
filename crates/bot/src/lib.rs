//! The Telegram bot: the door most users ever see.
//!
//! It talks to each user in their Telegram language (Russian or English), hands out their
//! VPN key as a copyable `vless://` link and a QR code, refreshes (rotates) and revokes it
//! after a confirmation, and shows its history from the log. When the `sub` role serves
//! subscriptions, `/key` leads with the user's subscription URL (one link every VPN app
//! follows, so a refresh reaches the app by itself) and offers a new link on request;
//! the per-location link follows for manual set-up. Commands and button presses
//! become domain commands run through the event store, with command ids derived from what
//! makes them unique (the update, or the key version a button was shown for), so a
//! retried update or a double press acts once. Every press is checked against the log:
//! a key that is not the presser's, or a button for an earlier state of the key, changes
//! nothing. Notifications (key ready, refreshed, revoked, expired, about to expire, a
//! server problem and its end, traffic used up and restored) come from the
//! `keyledger.bot-notify` queue: what a user is owed is recorded in the consumer's
//! transaction and sent by a sender that honours Telegram's rate limits, so each is sent
//! once and none is lost. [`run_bot`] runs it all.

mod callback;
mod card;
mod config;
mod conversation;
mod error;
mod ingress;
mod limits;
mod notify;
mod partitions;
mod qr;
mod store;
mod telegram;
pub mod texts;
mod updates;

use std::sync::Arc;
use std::time::Duration;

use broker::{Consumer, ConsumerConfig, Queue};
use eventstore::{EventStore, KeyLedger, Subscriptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use callback::{Action, KeyRef};
pub use config::{BotConfig, RequestPolicy};
pub use error::BotError;
pub use ingress::{Ingress, POLLER_LOCK, WEBHOOK_PATH, WebhookConfig};
pub use limits::{Costly, Limit, UserLimits};
pub use notify::NotifyHandler;
pub use partitions::LANE_BACKLOG;
pub use qr::{QrError, png as qr_png};
pub use updates::{MAX_UPDATE_BYTES, UpdateRejected, chat_of, parse_update, route_update};

use conversation::Context;
use ingress::Publisher;
use telegram::Telegram;

/// Runs one replica of the bot until `stop` is cancelled: its door for updates (long
/// polling, by one replica at a time, or a webhook), its share of the update partitions,
/// the consumer of `keyledger.bot-notify`, the notification sender and the expiry
/// warnings. Fails only at start (the HTTP client cannot be built, the webhook address
/// cannot be bound); after that every failure is logged and retried.
pub async fn run_bot(
    store: EventStore,
    amqp_url: &str,
    config: BotConfig,
    stop: CancellationToken,
) -> Result<(), BotError> {
    let telegram = Telegram::new(
        &config.token,
        &config.api_url,
        config.poll_timeout + Duration::from_secs(15),
    )
    .map_err(BotError::HttpClient)?;
    let webhook_listener = match &config.ingress {
        Ingress::Webhook(webhook) => Some(
            tokio::net::TcpListener::bind(webhook.listen)
                .await
                .map_err(|source| BotError::Listen {
                    address: webhook.listen,
                    source,
                })?,
        ),
        Ingress::Polling => None,
    };
    let wake = Arc::new(Notify::new());
    let replica = Uuid::new_v4();
    tracing::info!(%replica, "bot replica starting");
    let context = Arc::new(Context {
        ledger: KeyLedger::new(store.clone()),
        subscriptions: Subscriptions::new(store.clone()),
        telegram,
        config,
        wake_sender: wake.clone(),
        replica,
    });
    let consumer = Consumer::new(
        store.clone(),
        ConsumerConfig::new(amqp_url, Queue::BotNotify),
        NotifyHandler::new(store, wake),
    );
    let publisher = Arc::new(Publisher::new(amqp_url));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consumer.run(stop.clone()));
    tasks.spawn(notify::run_sender(context.clone(), stop.clone()));
    tasks.spawn(notify::run_expiry_warnings(context.clone(), stop.clone()));
    tasks.spawn(partitions::run_partitions(
        context.clone(),
        amqp_url.to_owned(),
        stop.clone(),
    ));
    tasks.spawn({
        let context = context.clone();
        async move { register_commands(&context).await }
    });
    match (context.config.ingress.clone(), webhook_listener) {
        (Ingress::Webhook(webhook), Some(listener)) => {
            tasks.spawn(ingress::run_webhook(
                context, publisher, webhook, listener, stop,
            ));
        }
        _ => {
            tasks.spawn(ingress::run_polling(context, publisher, stop));
        }
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!("bot stopped");
    Ok(())
}

/// Registers the command menu in every language (English as the default for all others).
async fn register_commands(context: &Context) {
    for lang in texts::Lang::all() {
        let code = (lang != texts::Lang::ENGLISH).then(|| lang.code());
        let t = lang.texts();
        let commands = vec![
            ("start", t.command_start()),
            ("key", t.command_key()),
            ("history", t.command_history()),
            ("help", t.command_help()),
        ];
        if let Err(error) = context.telegram.set_commands(commands, code).await {
            tracing::warn!(%error, language = lang.code(), "could not register the command menu");
        }
    }
}
