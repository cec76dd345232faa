//! The operators' and auditors' console (docs/console.md): server-rendered HTML pages at
//! `/console`, served by the `api` role beside the JSON API, and the API's Swagger UI at
//! `/docs`.
//!
//! Pages are rendered with `maud`, which escapes every value it interpolates, so nothing
//! read from the log, the panels or the queues can become markup. There is no JavaScript:
//! actions are plain forms, each answered first with a confirmation page, and every POST
//! carries the session's CSRF token. Signing in takes one of the API's role tokens and
//! answers with a signed session cookie ([`session`]); the data comes from the same
//! functions the API uses (`api::location_health`, `api::verify_report`, the projector's
//! views) and from RabbitMQ's management API for queues and dead letters.

mod audit;
mod error;
mod keys;
mod operations;
mod page;
pub mod session;
mod signin;

use std::sync::Arc;

use api::{ApiConfig, Role};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use broker::Management;
use eventstore::EventStore;
use subscription::limits::{LimitSettings, Limits};
use utoipa_swagger_ui::{Config, SwaggerUi};

pub use error::ConsoleError;

/// Where the interactive OpenAPI page is served.
pub const DOCS_PATH: &str = "/docs";

/// Everything a console handler can reach.
pub(crate) struct Console {
    pub(crate) store: EventStore,
    pub(crate) api: ApiConfig,
    /// RabbitMQ's management API and the vhost of this process's broker; `None` when the
    /// AMQP URL cannot be turned into one.
    pub(crate) management: Option<(Management, String)>,
    /// Failed sign-ins per address, limited like guessed subscription tokens.
    pub(crate) signin_limits: Limits,
}

pub(crate) type ConsoleState = Arc<Console>;

/// Failed sign-ins an address may make in ten minutes before it waits ten minutes.
const SIGNIN_MISSES: u32 = 10;

/// The console's routes and the Swagger UI, to merge into the API's router.
pub fn router(store: EventStore, api: ApiConfig) -> Router {
    let management = api.amqp_url.as_deref().and_then(|url| {
        let management = Management::for_amqp_url(url).ok()?;
        let vhost = broker::management::vhost_of(url).ok()?;
        Some((management, vhost))
    });
    let state = Arc::new(Console {
        store,
        api,
        management,
        signin_limits: Limits::new(LimitSettings {
            misses: SIGNIN_MISSES,
            ..LimitSettings::default()
        }),
    });
    let pages = Router::new()
        .route("/console", get(keys::home))
        .route("/console/style.css", get(page::stylesheet))
        .route("/console/signin", get(signin::form).post(signin::sign_in))
        .route("/console/signout", post(signin::sign_out))
        .route("/console/keys", get(keys::search))
        .route("/console/keys/{key_id}", get(keys::key_page))
        .route(
            "/console/keys/{key_id}/{action}",
            get(keys::confirm_action).post(keys::run_action),
        )
        .route(
            "/console/users/{user_id}/block",
            get(keys::confirm_block).post(keys::run_block),
        )
        .route("/console/audit", get(audit::audit_page))
        .route("/console/locations", get(operations::locations_page))
        .route("/console/queues", get(operations::queues_page))
        .route(
            "/console/queues/{queue}/move-back",
            get(operations::confirm_move_back).post(operations::move_back),
        )
        .layer(axum::middleware::from_fn(console_headers))
        // Every form is a few hundred bytes, like every body of the API.
        .layer(axum::extract::DefaultBodyLimit::max(api::BODY_LIMIT_BYTES))
        .with_state(state);
    let swagger: Router = SwaggerUi::new(DOCS_PATH)
        .config(Config::from("/openapi.json"))
        .into();
    pages.merge(swagger.layer(axum::middleware::from_fn(docs_headers)))
}

/// No script, no frame, no referrer, nothing cached: the pages show audit data and carry
/// CSRF tokens.
async fn console_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    strict_headers(
        &mut response,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    );
    response
}

/// Swagger UI is a script bundle served from this binary; it may run scripts and styles
/// from here, and call the API here, nothing else.
async fn docs_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    strict_headers(
        &mut response,
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    response
}

fn strict_headers(response: &mut Response, policy: &'static str) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// What each role may do in the console (docs/console.md, "Roles").
pub(crate) fn may_act(role: Role) -> bool {
    role == Role::Admin
}
