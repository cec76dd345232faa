//! The `sub` role: the public door `GET`/`HEAD /s/<token>[/<format>]` that users' VPN apps
//! poll for their links (docs/subscriptions.md).
//!
//! A request is answered from the read models only — the user's subscription view, their key
//! views (the links the panels confirmed) and the usage the worker observed — and never by
//! asking a panel. The token in the path is checked for shape, mapped to its subscription and
//! generation through an in-memory index derived from `subscription_views` with the secret
//! ([`index`]), rate-limited per address and per token ([`limits`]), rendered in the format
//! the path or the app's User-Agent asks for ([`format`], [`render`]), and recorded in
//! `subscription_fetches` by a background writer ([`fetches`]). A database that does not
//! answer gives 503 with `Retry-After`, never an empty or partial 200: an app such as v2rayN
//! deletes its servers before parsing what it got.

pub mod entries;
pub mod fetches;
pub mod format;
pub mod index;
pub mod limits;
pub mod page;
pub mod render;
mod routes;
pub mod vless;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use domain::{Location, SubscriptionUrls};
use eventstore::EventStore;
use tokio_util::sync::CancellationToken;

pub use format::Format;
pub use limits::LimitSettings;

/// Everything the `sub` role needs besides the store.
#[derive(Debug, Clone)]
pub struct SubSettings {
    /// The public base URL and the secret tokens derive from.
    pub urls: SubscriptionUrls,
    /// The configured locations, in the order the body lists them.
    pub locations: Vec<Location>,
    /// `Profile-Title`, and the name apps give the profile.
    pub title: String,
    /// `Profile-Update-Interval`, in whole hours.
    pub update_interval_hours: u32,
    /// `Profile-Web-Page-Url`: the bot's t.me link, when configured.
    pub web_page_url: Option<url::Url>,
    /// `Support-Url`, when configured.
    pub support_url: Option<url::Url>,
    pub limits: LimitSettings,
    /// How long a rendered answer is reused for the same subscription and format. Apps poll
    /// every few hours, so a second of staleness is invisible to them, and it keeps a burst
    /// of fetches of one URL from turning into a burst of queries.
    pub cache_ttl: Duration,
    /// How long a database query may take before the answer is 503.
    pub query_timeout: Duration,
    /// Reverse proxies in front of the listener (`KEYLEDGER_SUB_TRUSTED_PROXIES`): for a
    /// connection from one of them, the client is the last address of `X-Forwarded-For`.
    /// Without this, every user behind the proxy shares its address, and one user's misses
    /// would block them all.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl SubSettings {
    /// The production defaults around the given URLs and locations.
    pub fn new(urls: SubscriptionUrls, locations: Vec<Location>) -> Self {
        Self {
            urls,
            locations,
            title: "keyledger".to_owned(),
            update_interval_hours: 12,
            web_page_url: None,
            support_url: None,
            limits: LimitSettings::default(),
            cache_ttl: Duration::from_secs(1),
            query_timeout: Duration::from_secs(3),
            trusted_proxies: Vec::new(),
        }
    }
}

/// The router of the `sub` role, with its background fetch-log writer tied to `stop`.
pub fn router(store: EventStore, settings: SubSettings, stop: CancellationToken) -> Router {
    let fetch_log = fetches::FetchLog::start(store.clone(), stop);
    let state = Arc::new(routes::SubState::new(store, settings, fetch_log));
    routes::router(state)
}

/// Serves `router` on `listener` until `stop`, within the bounds of [`http_listener`]
/// (header and request timeouts, a connection cap, a bounded shutdown). The peer address
/// is handed to handlers (`ConnectInfo`) for the per-address limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "subscription server listening");
    http_listener::serve_with(
        listener,
        router,
        stop,
        http_listener::ServeLimits::default(),
    )
    .await
}

/// A short, non-reversible name of a token for logs: the first 8 hex digits of its SHA-256.
/// Logs must never carry a working URL.
pub fn token_tag(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(token.as_bytes())[..4])
}
