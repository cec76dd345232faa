//! The HTTP API of docs/http-api.md: commands, queries and the audit trail in front of the
//! event log, plus the probes and metrics operators scrape.
//!
//! Commands go through [`eventstore::KeyLedger`] (load, decide, append) and answer once
//! their events are in the log, with the key view replayed from that log, so an answer
//! never depends on how far the projector has got. Queries read the projector's views (a
//! single key the projector has not reached yet is replayed from the log instead).
//! Every route, its role and its schemas come from one table of handlers
//! ([`router`]), which also generates `/openapi.json`, so the document cannot drift from
//! what is served; [`document`] adds what annotations cannot say (links, the configured
//! locations). Bearer tokens map to roles and are compared in constant time. The API
//! knows the 3x-ui panels only through the [`PanelStatus`] the binary injects.

mod audit;
mod auth;
mod body;
mod checkpoints;
mod document;
mod error;
mod idempotency;
mod keys;
pub mod metrics;
mod panels;
mod params;
mod probes;
mod role;
mod subscriptions;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use domain::Location;
use eventstore::{EventStore, KeyLedger};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use audit::{VerifyReport, verify_report};
use auth::BearerScheme;
pub use auth::Tokens;
pub use domain::Secret;
pub use error::ApiError;
pub use http_listener::{ServeLimits, serve_with};
pub use keys::{KeyUsage, KeyViewBody, with_usage};
pub use panels::{BoxFuture, Breaker, PanelHealth, PanelProbe, PanelStatus};
pub use probes::{LocationHealth, location_health};
pub use role::Role;
pub use users::user_key_ids;

/// Largest request body accepted; every body of this API is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What the API needs to serve.
#[derive(Clone)]
pub struct ApiConfig {
    pub tokens: Tokens,
    pub locations: Vec<Location>,
    /// The broker `/readyz` checks; `None` when this process does not use one.
    pub amqp_url: Option<String>,
    /// The panels of this process, for `/readyz` and `/v1/locations`, as the binary
    /// injects them; `None` when the worker runs elsewhere.
    pub panels: Option<Arc<dyn PanelStatus>>,
    /// How users' subscription URLs are made; `None` when subscriptions are not configured
    /// (the subscription routes then answer 409).
    pub subscription_urls: Option<domain::SubscriptionUrls>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The AMQP URL may carry a password.
        f.debug_struct("ApiConfig")
            .field("tokens", &self.tokens)
            .field("locations", &self.locations)
            .field("panels", &self.panels.is_some())
            .field("subscriptions", &self.subscription_urls.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything a handler can reach.
pub(crate) struct ApiState {
    pub(crate) store: EventStore,
    pub(crate) ledger: KeyLedger,
    pub(crate) config: ApiConfig,
    pub(crate) metrics: PrometheusHandle,
    pub(crate) readiness: probes::ReadinessCache,
}

impl ApiState {
    pub(crate) fn location(&self, id: &str) -> Option<&Location> {
        self.config.locations.iter().find(|l| l.id.as_str() == id)
    }
}

pub(crate) type AppState = Arc<ApiState>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keyledger",
        description = "VPN access keys as an event log: commands, views and the audit trail."
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "keys", description = "Request, rotate, revoke and renew keys; read their views"),
        (name = "subscriptions", description = "Users' subscription URLs and new links"),
        (name = "users", description = "Block and unblock users; read whether one is blocked"),
        (name = "audit", description = "The log itself: histories, paging, verification"),
        (name = "operations", description = "Probes, metrics and locations")
    )
)]
struct ApiDoc;

/// Every route with its handler; the one place routes are listed.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(keys::request_key))
        .routes(routes!(keys::get_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::renew_key))
        .routes(routes!(keys::change_quota))
        .routes(routes!(keys::user_keys))
        .routes(routes!(subscriptions::get_subscription))
        .routes(routes!(subscriptions::rotate_subscription))
        .routes(routes!(users::block_user))
        .routes(routes!(users::unblock_user))
        .routes(routes!(users::user_access))
        .routes(routes!(audit::key_history))
        .routes(routes!(audit::events))
        .routes(routes!(audit::verify))
        .routes(routes!(checkpoints::checkpoints))
        .routes(routes!(probes::locations))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::metrics))
}

/// The OpenAPI document of every route [`router`] serves, as served by a process configured
/// with `locations`.
pub fn openapi(locations: &[Location]) -> serde_json::Value {
    document::served(&routes().split_for_parts().1, locations)
}

/// The API's router, ready to serve.
pub fn router(store: EventStore, config: ApiConfig, metrics: PrometheusHandle) -> Router {
    let state = Arc::new(ApiState {
        ledger: KeyLedger::new(store.clone()),
        store,
        config,
        metrics,
        readiness: probes::ReadinessCache::default(),
    });
    let (router, document) = routes().split_for_parts();
    let document = Arc::new(document::served(&document, &state.config.locations));
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move { axum::Json(document.as_ref().clone()) }
            }),
        )
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(metrics::track_requests))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
}

/// Serves `router` on `listener` until `stop`, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP API listening");
    serve_with(listener, router, stop, ServeLimits::default()).await
}
