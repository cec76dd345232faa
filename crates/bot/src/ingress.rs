//! The doors updates come in by, both ending in the broker: long polling (`getUpdates`)
//! and a webhook Telegram POSTs to. Neither handles an update; each publishes it to its
//! chat's partition (`broker::bot_updates`) with the broker's confirm before telling
//! Telegram it was taken (the next offset, or a 200), so an update is never lost between
//! Telegram and the queue.
//!
//! Long polling admits one poller per bot token (Telegram answers a second with 409), so
//! the replicas elect one through a PostgreSQL advisory lock held by a session of its own:
//! when the poller dies its session ends, the lock is free, and another replica polls.
//! With a webhook every replica serves the route behind a load balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use broker::{Backoff, BrokerError, UpdatePublisher};
use domain::Secret;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::conversation::Context;
use crate::telegram::SendError;
use crate::updates::{MAX_UPDATE_BYTES, UpdateRejected, chat_of, route_update};

/// The path Telegram POSTs updates to.
pub const WEBHOOK_PATH: &str = "/telegram/webhook";
/// The header Telegram sends the webhook's secret in.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";
/// The advisory lock whose holder polls (any fixed number; it is per database).
pub const POLLER_LOCK: i64 = 0x6b65_796c_6267_0001;
/// How often a replica that does not poll asks again whether it may.
const POLLER_RETRY: Duration = Duration::from_secs(3);

/// How updates reach the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingress {
    /// `getUpdates`, by one replica at a time.
    Polling,
    /// Telegram POSTs each update to `url`, which reaches `listen` on every replica.
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where this replica listens for Telegram's POSTs.
    pub listen: SocketAddr,
    /// The public `https` URL Telegram is given (the load balancer's), ending in
    /// [`WEBHOOK_PATH`] by convention.
    pub url: Url,
    /// Telegram sends it back in every POST; requests without it are refused.
    pub secret: Secret,
}

/// The update publisher, connected on first use and again after a failure.
pub struct Publisher {
    amqp_url: String,
    current: Mutex<Option<Arc<UpdatePublisher>>>,
}

impl Publisher {
    pub fn new(amqp_url: &str) -> Self {
        Self {
            amqp_url: amqp_url.to_owned(),
            current: Mutex::new(None),
        }
    }

    async fn connected(&self) -> Result<Arc<UpdatePublisher>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(publisher) = current.as_ref().filter(|p| p.is_connected()) {
            return Ok(publisher.clone());
        }
        let fresh = Arc::new(UpdatePublisher::connect(&self.amqp_url).await?);
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// Publishes one update to its chat's partition, confirmed.
    pub async fn publish(&self, update_id: i64, chat: i64, body: &[u8]) -> Result<(), BrokerError> {
        let publisher = self.connected().await?;
        let published = publisher.publish(update_id, chat, body).await;
        if published.is_err() {
            self.current.lock().await.take();
        }
        published
    }
}

/// Long polling, by whichever replica holds the poller lock, until `stop`.
pub async fn run_polling(
    context: Arc<Context>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    loop {
        let Some(lock) = become_poller(context.pool(), &stop).await else {
            break;
        };
        tracing::info!("this replica polls Telegram for updates");
        if let Err(error) = context.telegram.delete_webhook().await {
            tracing::warn!(%error, "cannot turn off a webhook before polling");
        }
        poll(&context, &publisher, lock, &stop).await;
        if stop.is_cancelled() {
            break;
        }
    }
    tracing::info!("bot stopped polling");
}

/// Waits until this replica holds the poller lock, on a session of its own (not one of
/// the pool's, which would carry the lock back into the pool). `None` at `stop`.
async fn become_poller(pool: &PgPool, stop: &CancellationToken) -> Option<PgConnection> {
    loop {
        let attempt = async {
            let mut session = pool.connect_options().connect().await?;
            let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(POLLER_LOCK)
                .fetch_one(&mut session)
                .await?;
            if won {
                return Ok::<_, sqlx::Error>(Some(session));
            }
            let _ = session.close().await;
            Ok(None)
        };
        match attempt.await {
            Ok(Some(session)) => return Some(session),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot ask for the poller lock"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(POLLER_RETRY) => {}
        }
    }
}

/// Polls while the lock's session lives: asks for updates, publishes each, and confirms
/// them to Telegram (the next offset) only once all are in the broker.
async fn poll(
    context: &Context,
    publisher: &Publisher,
    mut lock: PgConnection,
    stop: &CancellationToken,
) {
    let mut offset: i32 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        // A lost session means a lost lock: another replica may be polling already.
        if lock.ping().await.is_err() {
            tracing::warn!("lost the poller lock's session; another replica may poll now");
            return;
        }
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            polled = context.telegram.updates(offset, context.config.poll_timeout) => polled,
        };
        let wait = match polled {
            Ok(updates) => match publish_all(publisher, &updates).await {
                Ok(next) => {
                    backoff.reset();
                    offset = offset.max(next);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot put updates into the broker; asking Telegram again");
                    backoff.next_delay()
                }
            },
            Err(SendError::RetryAfter(wait)) => wait,
            Err(error) => {
                tracing::warn!(%error, "cannot get updates from Telegram");
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = lock.close().await;
}

/// Publishes `updates` in order; the offset that confirms them all.
async fn publish_all(
    publisher: &Publisher,
    updates: &[teloxide::types::Update],
) -> Result<i32, BrokerError> {
    let mut next = 0;
    for update in updates {
        let id = update.id.0;
        next = next.max(i32::try_from(id).unwrap_or(i32::MAX).saturating_add(1));
        let Some(chat) = chat_of(update) else {
            continue;
        };
        let body = serde_json::to_vec(update)?;
        publisher.publish(i64::from(id), chat, &body).await?;
    }
    Ok(next)
}

struct WebhookState {
    publisher: Arc<Publisher>,
    secret: Secret,
}

/// Registers the webhook with Telegram (again until it takes) and serves it until `stop`.
pub async fn run_webhook(
    context: Arc<Context>,
    publisher: Arc<Publisher>,
    webhook: WebhookConfig,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    let registering = {
        let context = context.clone();
        let webhook = webhook.clone();
        let stop = stop.clone();
        tokio::spawn(async move { register_webhook(&context, &webhook, &stop).await })
    };
    let router = webhook_router(publisher, webhook.secret.clone());
    tracing::info!(listen = %webhook.listen, "bot webhook listening");
    if let Err(error) = http_listener::serve_with(
        listener,
        router,
        stop,
        http_listener::ServeLimits::default(),
    )
    .await
    {
        tracing::error!(%error, "the bot webhook stopped serving");
    }
    registering.abort();
}

async fn register_webhook(context: &Context, webhook: &WebhookConfig, stop: &CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match context
            .telegram
            .set_webhook(&webhook.url, &webhook.secret)
            .await
        {
            Ok(()) => {
                tracing::info!(url = %webhook.url, "webhook registered with Telegram");
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot register the webhook with Telegram"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// The webhook's one route, with its body bounded before it is read.
pub fn webhook_router(publisher: Arc<Publisher>, secret: Secret) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_UPDATE_BYTES))
        .with_state(Arc::new(WebhookState { publisher, secret }))
}

async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let presented = headers
        .get(SECRET_HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(state.secret.expose().as_bytes())) {
        return StatusCode::UNAUTHORIZED;
    }
    match route_update(&body) {
        Ok((update, chat)) => match state
            .publisher
            .publish(i64::from(update.id.0), chat, &body)
            .await
        {
            Ok(()) => StatusCode::OK,
            Err(error) => {
                // Telegram sends it again later; nothing is lost.
                tracing::warn!(update_id = update.id.0, %error, "cannot put an update into the broker");
                StatusCode::SERVICE_UNAVAILABLE
            }
        },
        // A kind the bot does not handle: taken, so Telegram does not send it again.
        Err(UpdateRejected::NoChat(_)) => StatusCode::OK,
        Err(error) => {
            tracing::warn!(%error, "refused a webhook body");
            StatusCode::BAD_REQUEST
        }
    }
}
