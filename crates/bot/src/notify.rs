//! Notifications: the consumer of `keyledger.bot-notify` decides what each user is owed
//! and records it in the consumer's own transaction (so an event delivered twice owes one
//! message), and the sender delivers what is owed, waiting out Telegram's rate limits
//! without losing anything. A key's traffic running out (`key.depleted`) and a new limit
//! bringing a paused key back (`key.quota_changed`) are told too.

use std::sync::Arc;
use std::time::Duration;

use domain::{EventType, KeyId, KeyState, Phase, SubscriptionId, UserId, evolve};
use eventstore::{EventStore, RecordedEvent};
use serde_json::json;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use broker::{EventHandler, HandlerError};

use crate::card::{card_keyboard, current_link};
use crate::conversation::Context;
use crate::error::BotError;
use crate::store::{self, Owed};
use crate::telegram::SendError;
use crate::texts::KeyNotice;

/// How long a sender holds claimed notifications before another may take them.
const LEASE: time::Duration = time::Duration::minutes(2);
/// Notifications claimed at once.
const BATCH: i64 = 20;
/// Failed sends (other than rate limits) before a notification is given up.
const MAX_ATTEMPTS: i32 = 10;

/// The consumer of `keyledger.bot-notify`.
#[derive(Clone)]
pub struct NotifyHandler {
    store: EventStore,
    wake: Arc<Notify>,
}

impl NotifyHandler {
    pub fn new(store: EventStore, wake: Arc<Notify>) -> Self {
        Self { store, wake }
    }
}

/// The notification an event calls for.
fn kind_of(event_type: &str) -> Option<&'static str> {
    Some(match EventType::parse(event_type)? {
        EventType::Provisioned => "ready",
        EventType::Rotated => "refreshed",
        EventType::Revoked => "revoked",
        EventType::Expired => "expired",
        EventType::Renewed => "renewed",
        EventType::ProvisioningFailed => "failed",
        EventType::Depleted => "depleted",
        EventType::QuotaChanged => "restored",
        _ => return None,
    })
}

impl EventHandler for NotifyHandler {
    async fn handle(
        &self,
        event: &RecordedEvent,
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        // The runtime hands over every event of the stream in order, not only the ones
        // bound to this queue.
        let Some(kind) = kind_of(&event.event_type) else {
            return Ok(());
        };
        let events = self
            .store
            .read_stream_after_on(tx, event.stream_id, 0, event.version.max(0) as u32)
            .await
            .map_err(|e| HandlerError::Retry(format!("reading key {}: {e}", event.stream_id)))?;
        let Some((last, earlier)) = events.split_last() else {
            return Err(HandlerError::Reject(format!(
                "key {} has no version {}",
                event.stream_id, event.version
            )));
        };
        let mut before = KeyState::default();
        for recorded in earlier {
            before = evolve(before, &decode(recorded)?);
        }
        let after = evolve(before.clone(), &decode(last)?);
        let Some(details) = after.details.as_ref() else {
            return Ok(());
        };
        // One message per failure episode: the worker records a failure again when its
        // error changes, which is news to operators, not to the user.
        if kind == "failed" && before.failure.is_some() {
            return Ok(());
        }
        // A new limit on a key that still works changes nothing the user must know now;
        // it is news only when it brings a paused key back.
        if kind == "restored" && before.phase != Phase::Depleted {
            return Ok(());
        }
        let user_id = details.user_id.get();
        let Some((chat_id, lang)) = store::user_contact(tx, user_id).await? else {
            tracing::debug!(user_id, key_id = %event.stream_id, kind, "user never talked to the bot; nothing to send");
            return Ok(());
        };
        let mut payload = json!({
            "location": details.location.as_str(),
            "client_uuid": details.client_uuid,
            "link": crate::card::link_for(&last.data, details.client_uuid),
            "expires_at": details.expires_at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()),
            "after_failure": before.failure.is_some(),
        });
        // The counters as the event recorded them: the message tells what the panel saw.
        match kind {
            "depleted" => {
                payload["used_bytes"] = last.data["used_bytes"].clone();
                payload["limit_bytes"] = last.data["limit_bytes"].clone();
            }
            "restored" => payload["limit_bytes"] = last.data["traffic_limit_bytes"].clone(),
            _ => {}
        }
        let id = format!("{}/{:010}", event.stream_id, last.version);
        let new = store::owe(
            tx,
            &id,
            event.stream_id,
            user_id,
            chat_id,
            lang,
            kind,
            &payload,
        )
        .await?;
        if new {
            tracing::debug!(user_id, key_id = %event.stream_id, kind, "notification owed");
        }
        // The row is visible once the runtime commits; the sender also polls, so an early
        // wake-up costs nothing.
        self.wake.notify_one();
        Ok(())
    }
}

fn decode(event: &RecordedEvent) -> Result<domain::KeyEvent, HandlerError> {
    event.key_event().map_err(|e| {
        HandlerError::Reject(format!(
            "event {} of key {} cannot be read: {e}",
            event.event_id, event.stream_id
        ))
    })
}

/// What became of one owed notification.
enum Delivery {
    Sent,
    /// The key moved on (a newer client, revoked, renewed): the message would mislead.
    Superseded,
}

/// Sends what is owed until `stop`.
pub async fn run_sender(context: Arc<Context>, stop: CancellationToken) {
    let every = context.config.send_poll_every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = context.wake_sender.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(error) = send_due(&context, &stop).await {
            tracing::warn!(%error, "could not send notifications; trying again shortly");
        }
    }
    tracing::info!("notification sender stopped");
}

/// Sends every due notification, in batches.
async fn send_due(context: &Context, stop: &CancellationToken) -> Result<(), BotError> {
    let pool = context.ledger.store().pool();
    loop {
        let batch = store::claim_due(pool, BATCH, LEASE).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut rest = batch.iter();
        while let Some(owed) = rest.next() {
            if stop.is_cancelled() {
                // Claimed but unsent: back to the queue for whoever runs next.
                for left in std::iter::once(owed).chain(rest) {
                    store::postpone(
                        pool,
                        &left.id,
                        OffsetDateTime::now_utc(),
                        "sender stopped",
                        false,
                    )
                    .await?;
                }
                return Ok(());
            }
            let span = send_span(owed);
            let delivered = deliver(context, owed).instrument(span.clone()).await;
            span.record(
                "outcome",
                match &delivered {
                    Ok(Delivery::Sent) => "sent",
                    Ok(Delivery::Superseded) => "superseded",
                    Err(_) => "not_sent",
                },
            );
            match delivered {
                Ok(Delivery::Sent) => store::settle(pool, &owed.id, "sent", None).await?,
                Ok(Delivery::Superseded) => {
                    tracing::debug!(id = %owed.id, "notification superseded by a newer state of the key");
                    store::settle(pool, &owed.id, "superseded", None).await?
                }
                Err(SendError::RetryAfter(wait)) => {
                    // Telegram's flood control is for the whole bot: this and every other
                    // claimed message wait, none is dropped.
                    tracing::info!(
                        wait_ms = wait.as_millis() as u64,
                        "Telegram asked us to slow down; notifications wait"
                    );
                    let at = OffsetDateTime::now_utc() + wait;
                    for left in std::iter::once(owed).chain(rest) {
                        store::postpone(pool, &left.id, at, "rate limited", false).await?;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    break;
                }
                Err(SendError::Unreachable(error)) => {
                    tracing::info!(user_id = owed.user_id, %error, "user cannot be reached; notification dropped");
                    store::settle(pool, &owed.id, "undeliverable", Some(&error)).await?
                }
                Err(error) => {
                    let error = error.to_string();
                    if owed.attempts + 1 >= MAX_ATTEMPTS {
                        tracing::error!(id = %owed.id, user_id = owed.user_id, %error, "notification given up");
                        store::settle(pool, &owed.id, "undeliverable", Some(&error)).await?;
                    } else {
                        let wait = Duration::from_secs(1 << owed.attempts.clamp(0, 8));
                        tracing::warn!(id = %owed.id, %error, retry_in_s = wait.as_secs(), "notification not sent; will retry");
                        store::postpone(
                            pool,
                            &owed.id,
                            OffsetDateTime::now_utc() + wait,
                            &error,
                            true,
                        )
                        .await?;
                    }
                }
            }
        }
    }
}

/// The `bot.send` span of one notification, a child of the handling that owed it.
fn send_span(owed: &Owed) -> tracing::Span {
    let span = tracing::info_span!(
        "bot.send",
        key_id = %owed.key_id,
        kind = %owed.kind,
        outcome = tracing::field::Empty,
    );
    eventstore::trace_context::TraceCarrier::from_pairs(
        owed.traceparent
            .as_deref()
            .map(|traceparent| ("traceparent", traceparent)),
    )
    .adopt_as_parent(&span);
    span
}

/// Sends one notification, after checking it still says the truth about the key.
async fn deliver(context: &Context, owed: &Owed) -> Result<Delivery, SendError> {
    let texts = owed.lang.texts();
    let key_id = KeyId::from_uuid(owed.key_id);
    let (state, events) = context
        .ledger
        .load(key_id)
        .await
        .map_err(|e| SendError::Other(format!("loading key {key_id}: {e}")))?;
    let Some(details) = state.details.as_ref() else {
        return Ok(Delivery::Superseded);
    };
    let payload = &owed.payload;
    let location = payload["location"]
        .as_str()
        .unwrap_or(details.location.as_str());
    let name = context.config.location_name(location);
    let after_failure = payload["after_failure"].as_bool().unwrap_or(false);
    let client = payload["client_uuid"]
        .as_str()
        .and_then(|u| Uuid::try_parse(u).ok());
    let expires_at = |key: &str| {
        payload[key].as_str().and_then(|at| {
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let chat = owed.chat_id;
    let telegram = &context.telegram;
    let text = match owed.kind.as_str() {
        "ready" | "refreshed" => {
            // Never hand out a key the user no longer holds.
            if state.phase != Phase::Active || client != Some(details.client_uuid) {
                return Ok(Delivery::Superseded);
            }
            let view = projector::load_view(context.ledger.store().pool(), owed.key_id)
                .await
                .map_err(|e| SendError::Other(format!("loading the view of {key_id}: {e}")))?;
            let link = payload["link"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| current_link(&state, &events, view.as_ref()));
            let subscription_url = subscription_url(context, details.user_id).await?;
            let notice = KeyNotice {
                location: &name,
                link: link.as_deref(),
                expires_at: details.expires_at,
                after_failure,
                subscription_url: subscription_url.as_deref(),
            };
            let html = if owed.kind == "ready" {
                texts.notify_ready(&notice)
            } else {
                texts.notify_refreshed(&notice)
            };
            let keyboard = card_keyboard(texts, key_id, &state, location);
            return match link {
                Some(link) => {
                    let png = crate::qr::png(&link).map_err(|e| SendError::Other(e.to_string()))?;
                    telegram
                        .send_photo(chat, png, &html, Some(&keyboard))
                        .await?;
                    Ok(Delivery::Sent)
                }
                None => {
                    telegram.send_text(chat, &html, Some(&keyboard)).await?;
                    Ok(Delivery::Sent)
                }
            };
        }
        "depleted" => {
            // Already back (or gone) by the time we got to it: nothing is paused now.
            if state.phase != Phase::Depleted {
                return Ok(Delivery::Superseded);
            }
            let bytes = |key: &str| payload[key].as_u64().unwrap_or(0);
            texts.notify_depleted(&name, bytes("used_bytes"), bytes("limit_bytes"))
        }
        "restored" => {
            if !state.phase.is_live() || state.phase == Phase::Depleted {
                return Ok(Delivery::Superseded);
            }
            texts.notify_restored(&name, payload["limit_bytes"].as_u64().unwrap_or(0))
        }
        "revoked" => texts.notify_revoked(&name),
        "expired" => texts.notify_expired(&name),
        "renewed" => match details.expires_at {
            Some(at) => texts.notify_renewed(&name, at),
            None => return Ok(Delivery::Superseded),
        },
        "failed" => {
            // Already resolved by the time we got to it: the "ready" message says it all.
            if state.failure.is_none() {
                return Ok(Delivery::Superseded);
            }
            texts.notify_failed(&name)
        }
        "expiry_warning" => {
            // The view keeps microseconds, the log nanoseconds: the same expiry is the
            // same to the millisecond.
            let same_expiry = match (expires_at("expires_at"), details.expires_at) {
                (Some(warned), Some(current)) => {
                    (warned - current).abs() < time::Duration::MILLISECOND
                }
                _ => false,
            };
            match details.expires_at {
                Some(at) if state.phase == Phase::Active && same_expiry => {
                    texts.expiry_warning(&name, at)
                }
                _ => return Ok(Delivery::Superseded),
            }
        }
        other => {
            tracing::warn!(kind = other, id = %owed.id, "unknown notification kind; dropped");
            return Ok(Delivery::Superseded);
        }
    };
    telegram.send_text(chat, &text, None).await?;
    Ok(Delivery::Sent)
}

/// The user's subscription URL, when subscriptions are served and the user has one.
async fn subscription_url(context: &Context, user: UserId) -> Result<Option<String>, SendError> {
    let Some(urls) = context.config.subscription_urls.as_ref() else {
        return Ok(None);
    };
    let state = context
        .subscriptions
        .load(user)
        .await
        .map_err(|e| SendError::Other(format!("loading the subscription of {user}: {e}")))?;
    if state.user_id.is_none() {
        return Ok(None);
    }
    Ok(Some(
        urls.url(SubscriptionId::for_user(user), state.generation),
    ))
}

/// Owes expiry warnings every `every`, and prunes the handled-update table and old
/// per-user limit counts.
pub async fn run_expiry_warnings(context: Arc<Context>, stop: CancellationToken) {
    let pool = context.ledger.store().pool().clone();
    let within =
        time::Duration::try_from(context.config.expiry_warning).unwrap_or(time::Duration::DAY);
    loop {
        match store::owe_expiry_warnings(&pool, within).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(warnings = n, "expiry warnings owed");
                context.wake_sender.notify_one();
            }
            Err(error) => tracing::warn!(%error, "could not look for expiring keys"),
        }
        if let Err(error) = store::prune_updates(&pool).await {
            tracing::warn!(%error, "could not prune handled updates");
        }
        if let Err(error) = crate::limits::prune(&pool, time::OffsetDateTime::now_utc()).await {
            tracing::warn!(%error, "could not prune per-user limit counts");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(context.config.expiry_check_every) => {}
        }
    }
}
