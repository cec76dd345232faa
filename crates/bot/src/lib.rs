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
mod limits;
mod notify;
mod qr;
mod store;
mod telegram;
pub mod texts;

use std::sync::Arc;
use std::time::Duration;

use broker::{Consumer, ConsumerConfig, Queue};
use eventstore::{EventStore, KeyLedger, Subscriptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use callback::{Action, KeyRef};
pub use config::BotConfig;
pub use error::BotError;
pub use limits::{Costly, Limit, UserLimits};
pub use notify::NotifyHandler;
pub use qr::{QrError, png as qr_png};

use conversation::Context;
use telegram::Telegram;

/// Runs the bot until `stop` is cancelled: long polling for updates, the consumer of
/// `keyledger.bot-notify`, the notification sender and the expiry warnings. Fails only at
/// start (the HTTP client cannot be built); after that every failure is logged and retried.
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
    let wake = Arc::new(Notify::new());
    let context = Arc::new(Context {
        ledger: KeyLedger::new(store.clone()),
        subscriptions: Subscriptions::new(store.clone()),
        telegram,
        config,
        wake_sender: wake.clone(),
    });
    let consumer = Consumer::new(
        store.clone(),
        ConsumerConfig::new(amqp_url, Queue::BotNotify),
        NotifyHandler::new(store, wake),
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(consumer.run(stop.clone()));
    tasks.spawn(notify::run_sender(context.clone(), stop.clone()));
    tasks.spawn(notify::run_expiry_warnings(context.clone(), stop.clone()));
    tasks.spawn(run_updates(context, stop));
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

/// Long polling: asks for updates, handles each once, confirms them with the next offset.
async fn run_updates(context: Arc<Context>, stop: CancellationToken) {
    register_commands(&context).await;
    tracing::info!("bot polling for updates");
    let mut offset: i32 = 0;
    let mut backoff = Duration::from_millis(500);
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = context.telegram.updates(offset, context.config.poll_timeout) => polled,
        };
        let wait = match polled {
            Ok(updates) => {
                backoff = Duration::from_millis(500);
                for update in updates {
                    let id = update.id.0;
                    if let Err(error) = context.handle_update(update).await {
                        tracing::error!(update_id = id, %error, "update not handled");
                    }
                    offset = offset.max(i32::try_from(id).unwrap_or(i32::MAX).saturating_add(1));
                }
                continue;
            }
            Err(telegram::SendError::RetryAfter(wait)) => wait,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "cannot get updates from Telegram");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                wait
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("bot stopped polling");
}
