//! `/v1/users/{user_id}/subscription…`: a user's subscription URL, and a new one.
//!
//! The URL is derived from the subscription's id and generation with the configured secret
//! (docs/subscriptions.md), so these routes answer only when the subscription settings are
//! configured (409 `conflict` otherwise). Reading a subscription issues it if the user has
//! none yet: every user the API is asked about can be handed a URL. A new link records
//! `subscription.link_rotated` and rotates every active key of the user, so whatever was
//! pulled from the old URL stops working too.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use domain::{LocationId, SubscriptionId, UserId};
use eventstore::{EventMetadata, Subscriptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, Writers};
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{self, IdempotencyKey};
use crate::keys::actor;
use crate::params::{
    IdempotencyHeader, UserIdPath, check_reason, optional_reason_schema, parse_user_id,
};

/// The reason recorded when a caller gives none.
const DEFAULT_REASON: &str = "new link requested through the API";

/// A user's subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionBody {
    /// The URL the user's VPN app follows.
    pub url: String,
    /// Which link of the subscription this is: 1, then one more for every new link.
    #[schema(minimum = 1)]
    pub generation: u32,
    /// `active` (at least one key is working), `pending` (keys are being set up, none works
    /// yet), `inactive` (keys exist, none works: expired, depleted, revoked or failed) or
    /// `no_keys`.
    #[schema(pattern = "^(active|pending|inactive|no_keys)$")]
    pub status: String,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSubscriptionBody {
    #[schema(schema_with = optional_reason_schema)]
    pub reason: Option<String>,
}

/// What a new link did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotatedSubscriptionBody {
    /// The new URL; the old one now serves only a "link replaced" placeholder.
    pub url: String,
    #[schema(minimum = 1)]
    pub generation: u32,
    /// Keys that got a new client UUID.
    pub rotated_keys: Vec<Uuid>,
    /// Keys that could not be rotated now (still provisioning, expired, depleted, …).
    pub skipped_keys: Vec<Uuid>,
}

fn urls(state: &AppState) -> Result<&domain::SubscriptionUrls, ApiError> {
    state.config.subscription_urls.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "subscriptions are not configured (KEYLEDGER_SUB_PUBLIC_URL, KEYLEDGER_SUB_SECRET)"
                .into(),
        )
    })
}

/// The summary of a user's key views.
async fn status(state: &AppState, user: UserId) -> Result<&'static str, ApiError> {
    let views = projector::user_views(state.store.pool(), user.get()).await?;
    let has = |statuses: &[&str]| views.iter().any(|v| statuses.contains(&v.status.as_str()));
    Ok(if views.is_empty() {
        "no_keys"
    } else if has(&["active"]) {
        "active"
    } else if has(&["provisioning", "rotating"]) {
        "pending"
    } else {
        "inactive"
    })
}

/// A user's subscription URL, issuing the subscription if they have none.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/subscription", tag = "subscriptions",
    params(UserIdPath),
    responses(
        (status = 200, body = SubscriptionBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "Subscriptions are not configured", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_subscription(
    caller: Caller<Writers>,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<SubscriptionBody>, ApiError> {
    let user = parse_user_id(&user_id)?;
    let urls = urls(&state)?;
    let command_id = Uuid::new_v4();
    let metadata = EventMetadata::for_command(command_id, actor(caller.role));
    let subscription = Subscriptions::new(state.store.clone())
        .ensure_issued(user, &metadata)
        .await?;
    Ok(Json(SubscriptionBody {
        url: urls.url(SubscriptionId::for_user(user), subscription.generation),
        generation: subscription.generation,
        status: status(&state, user).await?.to_owned(),
    }))
}

/// A new subscription link: the old URL stops working and every active key of the user gets
/// a new client UUID.
#[utoipa::path(
    post, path = "/v1/users/{user_id}/subscription/rotate", tag = "subscriptions",
    params(UserIdPath, IdempotencyHeader),
    request_body(content = Option<RotateSubscriptionBody>, description = "Empty, {} or a reason"),
    responses(
        (status = 202, description = "Recorded; the keys show `rotating` until the panels confirm", body = RotatedSubscriptionBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "Subscriptions are not configured", body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_subscription(
    caller: Caller<Writers>,
    idempotency_key: IdempotencyKey,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<RotateSubscriptionBody>,
) -> Result<Response, ApiError> {
    let user = parse_user_id(&user_id)?;
    let urls = urls(&state)?.clone();
    let reason = body.reason.clone().unwrap_or_else(|| DEFAULT_REASON.into());
    check_reason(&reason)?;
    let locations: Vec<LocationId> = state
        .config
        .locations
        .iter()
        .map(|l| l.id.clone())
        .collect();
    let route = format!("POST /v1/users/{}/subscription/rotate", user.get());
    let role = caller.role;
    let store = state.store.clone();
    idempotency::once(
        state.store.pool(),
        role,
        idempotency_key,
        &route,
        &body,
        |command_id| async move {
            let replaced = Subscriptions::new(store)
                .replace_link(user, &reason, &locations, command_id, actor(role))
                .await?;
            tracing::info!(
                user_id = user.get(),
                generation = replaced.subscription.generation,
                rotated = replaced.rotated.len(),
                "subscription link replaced"
            );
            let generation = replaced.subscription.generation;
            let answer = RotatedSubscriptionBody {
                url: urls.url(SubscriptionId::for_user(user), generation),
                generation,
                rotated_keys: replaced.rotated.iter().map(|k| k.as_uuid()).collect(),
                skipped_keys: replaced.skipped.iter().map(|(k, _)| k.as_uuid()).collect(),
            };
            let body =
                serde_json::to_value(answer).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok((StatusCode::ACCEPTED, body))
        },
    )
    .await
}
