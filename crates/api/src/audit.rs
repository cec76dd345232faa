//! The audit routes, for auditors and admins: a key's history, the whole log paged in
//! order, and verification of the log's hash chain.

use axum::Json;
use axum::extract::{Path, Query, State};
use eventstore::{ChainReport, RecordedEvent};
use projector::ViewReport;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Auditors, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::params::{KeyIdPath, parse_integer, parse_key_id};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyHistory {
    pub key_id: Uuid,
    /// Oldest first, each with its hash.
    pub events: Vec<RecordedEvent>,
}

/// Every event of a key, oldest first, with the hashes that chain them.
#[utoipa::path(
    get, path = "/v1/keys/{key_id}/history", tag = "audit",
    params(KeyIdPath),
    responses(
        (status = 200, body = KeyHistory),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn key_history(
    _caller: Caller<Auditors>,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyHistory>, ApiError> {
    let key_id = parse_key_id(&key_id)?.as_uuid();
    let events = state.store.read_stream(key_id).await?;
    if events.is_empty() {
        return Err(ApiError::KeyNotFound(key_id));
    }
    Ok(Json(KeyHistory { key_id, events }))
}

/// A page of something kept in log order: the events, the notary's checkpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Items after this log position (0 = from the start).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9223372036854775807_i64)]
    after: Option<String>,
    /// At most this many items, 1 to 1000 (default 100).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

impl PageQuery {
    /// `after` and `limit`, checked, or a 400 naming the bad one.
    pub(crate) fn bounds(
        query: Result<Query<Self>, axum::extract::rejection::QueryRejection>,
    ) -> Result<(i64, i64), ApiError> {
        let Query(query) =
            query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
        let after = number(query.after.as_deref(), "after", 0, 0..=i64::MAX)?;
        let limit = number(query.limit.as_deref(), "limit", DEFAULT_PAGE, 1..=MAX_PAGE)?;
        Ok((after, limit))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// In log order, without gaps: a position missing here never commits later.
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` to get the next page; equals `after` when there is nothing new.
    pub next_after: i64,
}

/// The log in order, a page at a time.
#[utoipa::path(
    get, path = "/v1/events", tag = "audit",
    params(PageQuery),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    _caller: Caller<Auditors>,
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let (after, limit) = PageQuery::bounds(query)?;
    // Only what had committed when the page was asked for, and never past an event that
    // may still commit below it: the store's gap-free read.
    let target = state.store.last_position().await?;
    let events = state.store.read_page_until(after, target, limit).await?;
    let next_after = events.last().map_or(after, |event| event.position);
    Ok(Json(EventPage { events, next_after }))
}

fn number(
    raw: Option<&str>,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    let Some(raw) = raw else {
        return Ok(default);
    };
    parse_integer(raw)
        .and_then(|value| i64::try_from(value).ok())
        .filter(|value| range.contains(value))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{name} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    /// True only if every chain holds, the append-only guards are in place and every
    /// view equals a replay.
    pub ok: bool,
    #[schema(value_type = Object)]
    pub chains: ChainReport,
    #[schema(value_type = Object)]
    pub views: ViewReport,
    /// The subscription views against a replay of the subscription streams.
    #[schema(value_type = Object)]
    pub subscriptions: projector::SubscriptionViewReport,
}

/// The same checks as `keyledger audit verify`: hash chains, append-only guards, key and
/// subscription views.
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The report; `ok` says whether everything holds", body = VerifyReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn verify(
    _caller: Caller<Auditors>,
    State(state): State<AppState>,
) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(verify_report(&state.store).await?))
}

/// What `audit verify` reports, for `/v1/audit/verify` and the console.
pub async fn verify_report(store: &eventstore::EventStore) -> Result<VerifyReport, ApiError> {
    let chains = eventstore::verify_chains(store.pool()).await?;
    let views = projector::verify_views(store).await?;
    let subscriptions = projector::verify_subscription_views(store).await?;
    let ok = chains.holds() && views.holds() && subscriptions.holds();
    if !ok {
        tracing::warn!(
            chain_breaks = chains.breaks.len(),
            view_differences = views.differences.len(),
            subscription_differences = subscriptions.differences.len(),
            "audit verify found differences"
        );
    }
    Ok(VerifyReport {
        ok,
        chains,
        views,
        subscriptions,
    })
}
