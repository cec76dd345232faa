//! `/v1/users/{user_id}/block`, `…/unblock` and `…/access`: an administrator blocks a user
//! (every key of theirs not revoked yet is revoked, and no new key is given to them, whoever
//! asks) or lets them ask again; admins, services and auditors read whether a user is
//! blocked. The answer is the user's access as their access stream says, read from the log:
//! there is no view of it to wait for.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use domain::{KeyId, UserId};
use eventstore::{AccessControl, AccessStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Allowed, Caller, Readers};
use crate::body::JsonBody;
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{self, IdempotencyKey};
use crate::keys::actor;
use crate::params::{IdempotencyHeader, UserIdPath, check_reason, parse_user_id, reason_schema};
use crate::role::Role;

/// Only administrators block and unblock: it is a decision about a person, not a
/// service's routine.
pub(crate) struct Admins;
impl Allowed for Admins {
    const ROLES: &'static [Role] = &[Role::Admin];
}

/// Why a user is blocked or unblocked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessChangeBody {
    #[schema(schema_with = reason_schema)]
    pub reason: String,
}

/// A user's access as the log holds it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessBody {
    /// The Telegram user id.
    #[schema(minimum = 1, maximum = 4503599627370496_i64)]
    pub user_id: i64,
    /// Blocked users get no new key, from the bot or the API.
    pub blocked: bool,
    /// The reason of the latest block or unblock; null for a user never blocked.
    #[schema(min_length = 1, max_length = 500)]
    pub reason: Option<String>,
    /// When the latest block or unblock was recorded; null for a user never blocked.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<OffsetDateTime>,
}

impl From<AccessStatus> for AccessBody {
    fn from(status: AccessStatus) -> Self {
        Self {
            user_id: status.user_id.get(),
            blocked: status.state.blocked,
            reason: status.state.reason,
            since: status.since,
        }
    }
}

/// Refuses a new key for a blocked user: 422 `user_blocked`.
pub(crate) async fn refuse_blocked(state: &AppState, user: UserId) -> Result<(), ApiError> {
    let status = AccessControl::new(state.store.clone()).status(user).await?;
    Ok(status.state.ensure_may_request()?)
}

/// Every key the user may hold: one per configured location, and any the views know at a
/// location no longer configured.
/// Every key `user` may have: one per configured location (their ids are derived, so a
/// key the projector has not shown yet is found too), and any other the views know of.
pub async fn user_key_ids(
    store: &eventstore::EventStore,
    locations: &[domain::Location],
    user: UserId,
) -> Result<Vec<KeyId>, sqlx::Error> {
    let mut keys: Vec<KeyId> = locations
        .iter()
        .map(|l| KeyId::for_user_at(user, &l.id))
        .collect();
    for view in projector::user_views(store.pool(), user.get()).await? {
        let key_id = KeyId::from_uuid(view.key_id);
        if !keys.contains(&key_id) {
            keys.push(key_id);
        }
    }
    Ok(keys)
}

/// Block a user: every key of theirs not revoked yet is revoked (reason `user blocked: …`),
/// and no new key is given to them until they are unblocked.
#[utoipa::path(
    post, path = "/v1/users/{user_id}/block", tag = "users",
    params(UserIdPath, IdempotencyHeader),
    request_body = AccessChangeBody,
    responses(
        (status = 202, description = "Recorded; the user's keys show `revoking` until the panels confirm", body = AccessBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Only the admin role blocks users", body = ErrorBody),
        (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn block_user(
    State(state): State<AppState>,
    request: AccessRequest,
) -> Result<Response, ApiError> {
    change_access(state, request, Change::Block).await
}

/// Unblock a user: they may ask for keys again; nothing revoked comes back by itself.
#[utoipa::path(
    post, path = "/v1/users/{user_id}/unblock", tag = "users",
    params(UserIdPath, IdempotencyHeader),
    request_body = AccessChangeBody,
    responses(
        (status = 202, description = "Recorded", body = AccessBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Only the admin role unblocks users", body = ErrorBody),
        (status = 409, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn unblock_user(
    State(state): State<AppState>,
    request: AccessRequest,
) -> Result<Response, ApiError> {
    change_access(state, request, Change::Unblock).await
}

/// A block or an unblock as it arrived. As an extractor it refuses a caller who is not an
/// admin (401/403) and a bad idempotency key (400) before the body is read.
pub(crate) struct AccessRequest {
    role: Role,
    idempotency_key: IdempotencyKey,
    user_id: String,
    body: AccessChangeBody,
}

impl FromRequest<AppState> for AccessRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let caller = Caller::<Admins>::from_request_parts(&mut parts, state).await?;
        let idempotency_key = IdempotencyKey::from_request_parts(&mut parts, state).await?;
        let Path(user_id) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_user_id", e.body_text()))?;
        let request = Request::from_parts(parts, body);
        let JsonBody(body) = JsonBody::from_request(request, state).await?;
        Ok(Self {
            role: caller.role,
            idempotency_key,
            user_id,
            body,
        })
    }
}

#[derive(Clone, Copy)]
enum Change {
    Block,
    Unblock,
}

/// Records a block or an unblock once per idempotency key, and answers 202 with the
/// user's access after it.
async fn change_access(
    state: AppState,
    request: AccessRequest,
    change: Change,
) -> Result<Response, ApiError> {
    let AccessRequest {
        role,
        idempotency_key,
        user_id,
        body,
    } = request;
    let user = parse_user_id(&user_id)?;
    check_reason(&body.reason)?;
    let (name, keys) = match change {
        Change::Block => (
            "block",
            user_key_ids(&state.store, &state.config.locations, user).await?,
        ),
        Change::Unblock => ("unblock", vec![]),
    };
    let route = format!("POST /v1/users/{}/{name}", user.get());
    let reason = body.reason.clone();
    let access = AccessControl::new(state.store.clone());
    idempotency::once(
        state.store.pool(),
        role,
        idempotency_key,
        &route,
        &body,
        |command_id| async move {
            let status = match change {
                Change::Block => {
                    let blocked = access
                        .block(user, &reason, &keys, command_id, actor(role))
                        .await?;
                    tracing::info!(
                        user_id = user.get(),
                        revoked = blocked.revoked.len(),
                        "user blocked"
                    );
                    blocked.status
                }
                Change::Unblock => {
                    let status = access
                        .unblock(user, &reason, command_id, actor(role))
                        .await?;
                    tracing::info!(user_id = user.get(), "user unblocked");
                    status
                }
            };
            answer(status)
        },
    )
    .await
}

fn answer(status: AccessStatus) -> Result<idempotency::Answer, ApiError> {
    let body = serde_json::to_value(AccessBody::from(status))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, body))
}

/// Whether a user is blocked, and since when.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/access", tag = "users",
    params(UserIdPath),
    responses(
        (status = 200, body = AccessBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn user_access(
    _caller: Caller<Readers>,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<AccessBody>, ApiError> {
    let user = parse_user_id(&user_id)?;
    let status = AccessControl::new(state.store.clone()).status(user).await?;
    Ok(Json(status.into()))
}
