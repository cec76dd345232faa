//! The operations routes: liveness and readiness probes, the Prometheus scrape, and
//! `/v1/locations` with each location's panel health and drift record. What is known
//! about panels comes through the injected [`PanelStatus`](crate::PanelStatus).

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use domain::EventType;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Caller, Readers};
use crate::error::{ApiError, ErrorBody};
use crate::panels::Breaker;

/// How long one readiness check may take: a probe must answer before its caller gives up.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a readiness verdict is reused. `/readyz` needs no token, and each fresh verdict
/// opens a broker connection and calls every panel: reused, a flood of probes costs the
/// dependencies one check per this interval however many arrive.
pub(crate) const READINESS_CACHE: Duration = Duration::from_secs(5);
/// Said of a failing check to callers without a token; the details name hosts and quote
/// upstream errors, which are for operators.
const FAILING: &str = "failing";

/// A readiness verdict: when it was reached, whether ready, and each check's verdict.
type Verdict = (std::time::Instant, bool, HashMap<String, String>);

/// The last readiness verdict.
#[derive(Default)]
pub(crate) struct ReadinessCache {
    last: tokio::sync::Mutex<Option<Verdict>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every check passed, else `not_ready`.
    pub status: &'static str,
    /// Each dependency: `ok`, or why not.
    pub checks: HashMap<String, String>,
}

/// Readiness: the database, the broker and every panel this process serves. The verdict
/// is reused for a few seconds; without a valid token a failing check says only `failing`,
/// with one it says why.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "A dependency is failing; `checks` says which", body = Readiness)
    ))]
pub(crate) async fn readyz(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> (StatusCode, Json<Readiness>) {
    let (ready, mut checks) = cached_verdict(&state).await;
    if crate::auth::role_from_headers(&headers, &state.config.tokens).is_none() {
        for verdict in checks.values_mut() {
            if verdict != "ok" {
                FAILING.clone_into(verdict);
            }
        }
    }
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (
        status,
        Json(Readiness {
            status: word,
            checks,
        }),
    )
}

/// The verdict of the last [`READINESS_CACHE`], or a fresh one. Callers arriving while a
/// check runs wait for it rather than starting their own.
async fn cached_verdict(state: &AppState) -> (bool, HashMap<String, String>) {
    let mut last = state.readiness.last.lock().await;
    if let Some((at, ready, checks)) = last.as_ref()
        && at.elapsed() < READINESS_CACHE
    {
        return (*ready, checks.clone());
    }
    let checks = run_checks(state).await;
    let ready = checks.values().all(|verdict| verdict == "ok");
    *last = Some((std::time::Instant::now(), ready, checks.clone()));
    (ready, checks)
}

async fn run_checks(state: &AppState) -> HashMap<String, String> {
    let mut checks = HashMap::new();
    checks.insert("database".to_owned(), database_check(state).await);
    if let Some(url) = &state.config.amqp_url {
        checks.insert("broker".to_owned(), broker_check(url).await);
    }
    if let Some(panels) = &state.config.panels {
        for probe in panels.probe(CHECK_TIMEOUT).await {
            let verdict = match probe.outcome {
                Ok(_) => "ok".to_owned(),
                // Panel errors name the location and the call, never the password.
                Err(error) => format!("error: {error}"),
            };
            checks.insert(format!("panel:{}", probe.location), verdict);
        }
    }
    checks
}

async fn database_check(state: &AppState) -> String {
    let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(state.store.pool());
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "timed out".to_owned(),
    }
}

async fn broker_check(url: &str) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, broker::connect(url)).await {
        Ok(Ok(connection)) => {
            broker::connection_close(&connection, "readiness check").await;
            "ok".to_owned()
        }
        // The error of a failed AMQP connect names the host, never the password.
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "timed out".to_owned(),
    }
}

/// The metrics of this process, in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LocationHealth {
    pub id: String,
    pub name: String,
    /// Whether this process's panel client can reach the panel (its breaker is not open);
    /// null when the worker runs in another process.
    pub panel_reachable: Option<bool>,
    /// `closed`, `open` or `half_open`; null when the worker runs in another process.
    pub breaker: Option<&'static str>,
    /// When the panel last answered this process; null if never (or no worker here).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<OffsetDateTime>,
    /// When this process's reconciler last finished a pass over the location.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_reconcile_at: Option<OffsetDateTime>,
    /// Drift found by that pass.
    pub drift_found_last_pass: Option<usize>,
    /// Why the last pass failed, if it did.
    pub last_reconcile_error: Option<String>,
    /// When the log last recorded drift found or repaired at this location.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_drift_at: Option<OffsetDateTime>,
    /// Drift findings the log holds for this location, all time.
    pub drift_detected: i64,
    /// Drift repairs the log holds for this location, all time.
    pub drift_repaired: i64,
}

/// Every location with its panel's health and its drift record.
#[utoipa::path(get, path = "/v1/locations", tag = "operations",
    responses(
        (status = 200, body = Vec<LocationHealth>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = [])))]
pub(crate) async fn locations(
    _caller: Caller<Readers>,
    State(state): State<AppState>,
) -> Result<Json<Vec<LocationHealth>>, ApiError> {
    Ok(Json(location_health(&state.store, &state.config).await?))
}

/// Every location with its panel's health and its drift record, as `/v1/locations` and the
/// console show it.
pub async fn location_health(
    store: &eventstore::EventStore,
    config: &crate::ApiConfig,
) -> Result<Vec<LocationHealth>, ApiError> {
    let drift = drift_by_location(store).await?;
    let shown = config
        .locations
        .iter()
        .map(|location| {
            let id = location.id.as_str();
            let health = config.panels.as_ref().and_then(|panels| panels.health(id));
            let breaker = health.as_ref().map(|h| h.breaker);
            let (detected, repaired, last) = drift.get(id).copied().unwrap_or((0, 0, None));
            LocationHealth {
                id: id.to_owned(),
                name: location.name.clone(),
                panel_reachable: breaker.map(|b| b != Breaker::Open),
                breaker: breaker.map(Breaker::as_str),
                last_success_at: health.as_ref().and_then(|h| h.last_success_at),
                last_reconcile_at: health.as_ref().and_then(|h| h.last_reconcile_at),
                drift_found_last_pass: health.as_ref().and_then(|h| h.drift_found_last_pass),
                last_reconcile_error: health.and_then(|h| h.last_reconcile_error),
                last_drift_at: last,
                drift_detected: detected,
                drift_repaired: repaired,
            }
        })
        .collect();
    Ok(shown)
}

type DriftRecord = (i64, i64, Option<OffsetDateTime>);

/// Drift events per location; a key's location is in its first event, `key.requested`.
async fn drift_by_location(
    store: &eventstore::EventStore,
) -> Result<HashMap<String, DriftRecord>, ApiError> {
    let rows: Vec<(String, i64, i64, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT r.data->>'location',
                count(*) FILTER (WHERE d.type = $1),
                count(*) FILTER (WHERE d.type = $2),
                max(d.recorded_at)
         FROM events d
         JOIN events r ON r.stream_id = d.stream_id AND r.version = 1
         WHERE d.type IN ($1, $2)
         GROUP BY 1",
    )
    .bind(EventType::DriftDetected.as_str())
    .bind(EventType::DriftRepaired.as_str())
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(location, detected, repaired, last)| (location, (detected, repaired, last)))
        .collect())
}
