//! `/v1/keys…` and `/v1/users/{user_id}/keys`: commands on keys and their views. A view is
//! the projector's, replayed from the log, with the panel's traffic counters beside it
//! (`usage`, from the worker's usage view `key_usage`, which is observation, not log).

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use domain::{
    ChangeQuota, DomainError, KeyCommand, KeyId, LocationId, RenewKey, RequestKey, RevokeKey,
    RotateKey, UserId,
};
use eventstore::{Actor, ActorKind, EventMetadata};
use projector::KeyView;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::Instrument;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, Readers, Writers};
use crate::body::{JsonBody, integer};
use crate::error::{ApiError, ErrorBody};
use crate::idempotency::{self, Answer, IdempotencyKey};
use crate::params::{
    IdempotencyHeader, KeyIdPath, UserIdPath, check_reason, parse_key_id, parse_user_id,
    reason_schema,
};
use crate::role::Role;

/// The largest traffic limit accepted: 1 PiB, far beyond any plan, well inside the panel's
/// integer range.
const MAX_TRAFFIC_LIMIT_BYTES: u64 = 1 << 50;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestKeyBody {
    /// The Telegram user id, 1 to 2^52.
    #[schema(minimum = 1, maximum = 4503599627370496_i64)]
    #[serde(deserialize_with = "integer")]
    pub user_id: i64,
    /// A configured location id (the served document lists them).
    #[schema(min_length = 1, max_length = 32, pattern = "^[a-z0-9][a-z0-9_-]*$")]
    pub location: String,
    /// RFC 3339; absent or null for a key that does not expire. A time not in the future
    /// is refused with 422 `expiry_not_in_future`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    /// 0 = no limit; at most 2^50 (1 PiB).
    #[serde(default, deserialize_with = "integer")]
    #[schema(minimum = 0, maximum = 1125899906842624_i64)]
    pub traffic_limit_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyBody {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyBody {
    #[schema(schema_with = reason_schema)]
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewKeyBody {
    /// The new expiry, RFC 3339. A time not in the future is refused with 422
    /// `expiry_not_in_future`.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuotaBody {
    /// The new traffic limit in bytes; 0 = no limit; at most 2^50 (1 PiB).
    #[schema(minimum = 0, maximum = 1125899906842624_i64)]
    #[serde(deserialize_with = "integer")]
    pub traffic_limit_bytes: u64,
    /// Also set the panel's counters back to zero.
    #[serde(default)]
    pub reset_usage: bool,
}

/// A key's traffic as its panel last reported it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct KeyUsage {
    pub up_bytes: i64,
    pub down_bytes: i64,
    /// The panel's quota in bytes; 0 = no limit.
    pub limit_bytes: i64,
    /// When the client last moved traffic; null if never.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_online: Option<OffsetDateTime>,
}

/// The key view (docs/http-api.md "Key view"): the projector's view and the usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyViewBody {
    #[serde(flatten)]
    pub view: KeyView,
    /// Null before the panel's first report.
    pub usage: Option<KeyUsage>,
}

/// The usage of each of `key_ids` that has one.
async fn usages(
    pool: &sqlx::PgPool,
    key_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, KeyUsage>, ApiError> {
    let rows: Vec<(Uuid, i64, i64, i64, Option<OffsetDateTime>)> = sqlx::query_as(
        "SELECT key_id, up_bytes, down_bytes, limit_bytes, last_online
         FROM key_usage WHERE key_id = ANY($1)",
    )
    .bind(key_ids)
    .fetch_all(pool)
    .await
    .map_err(|e| ApiError::Internal(format!("reading key usage: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|(key_id, up_bytes, down_bytes, limit_bytes, last_online)| {
            let usage = KeyUsage {
                up_bytes,
                down_bytes,
                limit_bytes,
                last_online,
            };
            (key_id, usage)
        })
        .collect())
}

/// `views` with their usage.
pub async fn with_usage(
    pool: &sqlx::PgPool,
    views: Vec<KeyView>,
) -> Result<Vec<KeyViewBody>, ApiError> {
    let ids: Vec<Uuid> = views.iter().map(|v| v.key_id).collect();
    let mut usage = usages(pool, &ids).await?;
    Ok(views
        .into_iter()
        .map(|view| KeyViewBody {
            usage: usage.remove(&view.key_id),
            view,
        })
        .collect())
}

/// Request a key for a user at a location.
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = RequestKeyBody,
    params(IdempotencyHeader),
    responses(
        (status = 202, description = "Recorded; the view shows `provisioning` until the panel confirms", body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, description = "Refused, e.g. `expiry_not_in_future`", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn request_key(
    command_context: CommandContext,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RequestKeyBody>,
) -> Result<Response, ApiError> {
    let user = UserId::new(body.user_id)
        .map_err(|e| ApiError::bad_request("invalid_user_id", e.to_string()))?;
    let location = LocationId::new(body.location.clone())
        .ok()
        .filter(|id| state.location(id.as_str()).is_some())
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_location",
                format!("no location {:?} is configured", body.location),
            )
        })?;
    if body.traffic_limit_bytes > MAX_TRAFFIC_LIMIT_BYTES {
        return Err(ApiError::bad_request(
            "invalid_traffic_limit",
            format!("traffic_limit_bytes must be at most {MAX_TRAFFIC_LIMIT_BYTES}"),
        ));
    }
    let now = OffsetDateTime::now_utc();
    future_expiry(body.expires_at, now)?;
    let key_id = KeyId::for_user_at(user, &location);
    crate::users::refuse_blocked(&state, user).await?;
    ensure_subscription(&state, command_context.role, user).await?;
    let command = KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: body.expires_at,
        traffic_limit_bytes: body.traffic_limit_bytes,
        now,
    });
    command_context
        .record(&state, "POST /v1/keys", &body, key_id, command)
        .await
}

/// Rotate a key: a new client UUID replaces the old one on the panel.
#[utoipa::path(
    post, path = "/v1/keys/{key_id}/rotate", tag = "keys",
    params(KeyIdPath, IdempotencyHeader),
    request_body(content = Option<RotateKeyBody>, description = "Empty or {}"),
    responses(
        (status = 202, description = "Recorded; the view shows `rotating` until the panel confirms", body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn rotate_key(
    command_context: CommandContext,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<RotateKeyBody>,
) -> Result<Response, ApiError> {
    let key_id = parse_key_id(&key_id)?;
    let command = KeyCommand::Rotate(RotateKey {
        fresh_client_uuid: Uuid::new_v4(),
    });
    let route = format!("POST /v1/keys/{key_id}/rotate");
    command_context
        .record(&state, &route, &body, key_id, command)
        .await
}

/// Revoke a key: its client is removed from the panel.
#[utoipa::path(
    post, path = "/v1/keys/{key_id}/revoke", tag = "keys",
    params(KeyIdPath, IdempotencyHeader),
    request_body = RevokeKeyBody,
    responses(
        (status = 202, description = "Recorded; the view shows `revoking` until the panel confirms", body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_key(
    command_context: CommandContext,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<RevokeKeyBody>,
) -> Result<Response, ApiError> {
    let key_id = parse_key_id(&key_id)?;
    check_reason(&body.reason)?;
    let command = KeyCommand::Revoke(RevokeKey {
        reason: body.reason.clone(),
    });
    let route = format!("POST /v1/keys/{key_id}/revoke");
    command_context
        .record(&state, &route, &body, key_id, command)
        .await
}

/// Extend a key's expiry.
#[utoipa::path(
    post, path = "/v1/keys/{key_id}/renew", tag = "keys",
    params(KeyIdPath, IdempotencyHeader),
    request_body = RenewKeyBody,
    responses(
        (status = 202, description = "Recorded", body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "Refused, e.g. `expiry_not_in_future` or `key_revoked`", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn renew_key(
    command_context: CommandContext,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<RenewKeyBody>,
) -> Result<Response, ApiError> {
    let key_id = parse_key_id(&key_id)?;
    let now = OffsetDateTime::now_utc();
    future_expiry(Some(body.expires_at), now)?;
    let command = KeyCommand::Renew(RenewKey {
        expires_at: body.expires_at,
        now,
    });
    let route = format!("POST /v1/keys/{key_id}/renew");
    command_context
        .record(&state, &route, &body, key_id, command)
        .await
}

/// Set a key's traffic limit, optionally resetting its usage: brings a depleted key back.
#[utoipa::path(
    post, path = "/v1/keys/{key_id}/quota", tag = "keys",
    params(KeyIdPath, IdempotencyHeader),
    request_body = ChangeQuotaBody,
    responses(
        (status = 202, description = "Recorded; the worker applies it to the panel", body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 422, description = "Refused, e.g. `quota_still_used_up`: the new limit is not above the usage", body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn change_quota(
    command_context: CommandContext,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    JsonBody(body): JsonBody<ChangeQuotaBody>,
) -> Result<Response, ApiError> {
    let key_id = parse_key_id(&key_id)?;
    if body.traffic_limit_bytes > MAX_TRAFFIC_LIMIT_BYTES {
        return Err(ApiError::bad_request(
            "invalid_traffic_limit",
            format!("traffic_limit_bytes must be at most {MAX_TRAFFIC_LIMIT_BYTES}"),
        ));
    }
    // What the panel last reported: a depleted key is not brought back under a limit it
    // has already used up (0 when nothing was reported yet).
    let used_bytes = usages(state.store.pool(), &[key_id.as_uuid()])
        .await?
        .remove(&key_id.as_uuid())
        .map_or(0, |u| {
            u64::try_from(u.up_bytes.saturating_add(u.down_bytes)).unwrap_or(0)
        });
    let command = KeyCommand::ChangeQuota(ChangeQuota {
        traffic_limit_bytes: body.traffic_limit_bytes,
        reset_usage: body.reset_usage,
        used_bytes,
    });
    let route = format!("POST /v1/keys/{key_id}/quota");
    command_context
        .record(&state, &route, &body, key_id, command)
        .await
}

/// A key's view.
#[utoipa::path(
    get, path = "/v1/keys/{key_id}", tag = "keys",
    params(KeyIdPath),
    responses(
        (status = 200, body = KeyViewBody),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_key(
    _caller: Caller<Readers>,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyViewBody>, ApiError> {
    let key_id = parse_key_id(&key_id)?;
    let view = match projector::load_view(state.store.pool(), key_id.as_uuid()).await? {
        Some(view) => view,
        // Recorded but not projected yet: the log is the truth, so a key is never 404
        // right after the 202 that recorded it.
        None => replayed_view(&state, key_id).await?,
    };
    with_usage(state.store.pool(), vec![view])
        .await?
        .pop()
        .map(Json)
        .ok_or(ApiError::KeyNotFound(key_id.as_uuid()))
}

/// The key's view replayed from its events in the log, whatever the projector's progress.
async fn replayed_view(state: &AppState, key_id: KeyId) -> Result<KeyView, ApiError> {
    let events = state.store.read_stream(key_id.as_uuid()).await?;
    projector::view_of(key_id.as_uuid(), &events)?.ok_or(ApiError::KeyNotFound(key_id.as_uuid()))
}

/// A user's key views, one per location they ever had a key at.
#[utoipa::path(
    get, path = "/v1/users/{user_id}/keys", tag = "keys",
    params(UserIdPath),
    responses(
        (status = 200, body = Vec<KeyViewBody>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn user_keys(
    _caller: Caller<Readers>,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Vec<KeyViewBody>>, ApiError> {
    let user = parse_user_id(&user_id)?;
    let views = projector::user_views(state.store.pool(), user.get()).await?;
    Ok(Json(with_usage(state.store.pool(), views).await?))
}

/// Issues the user's subscription with their first key, when subscriptions are configured,
/// so the URL exists by the time anyone shows it; later requests find it and record nothing.
async fn ensure_subscription(state: &AppState, role: Role, user: UserId) -> Result<(), ApiError> {
    if state.config.subscription_urls.is_none() {
        return Ok(());
    }
    let metadata = EventMetadata::for_command(Uuid::new_v4(), actor(role));
    eventstore::Subscriptions::new(state.store.clone())
        .ensure_issued(user, &metadata)
        .await?;
    Ok(())
}

/// An expiry not after `now` is refused as the domain refuses it (422
/// `expiry_not_in_future`), before anything is recorded: "in the future" is no bound a
/// schema can state, so the document declares the refusal instead.
fn future_expiry(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Result<(), ApiError> {
    match expires_at {
        Some(expires_at) if expires_at <= now => {
            Err(ApiError::Refused(DomainError::ExpiryNotInFuture {
                expires_at,
                now,
            }))
        }
        _ => Ok(()),
    }
}

/// What every command request carries besides its body: an admin or service caller, its
/// `Idempotency-Key` and `X-Correlation-Id`. As an extractor it refuses a wrong caller
/// (401/403) or a bad key (400) before the body is read.
pub(crate) struct CommandContext {
    role: Role,
    idempotency_key: IdempotencyKey,
    correlation_id: Option<Uuid>,
}

impl FromRequestParts<AppState> for CommandContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::<Writers>::from_request_parts(parts, state).await?;
        let idempotency_key = IdempotencyKey::from_request_parts(parts, state).await?;
        Ok(Self {
            role: caller.role,
            idempotency_key,
            correlation_id: correlation_id(&parts.headers),
        })
    }
}

impl CommandContext {
    /// Records `command` on the key once per idempotency key, and answers 202 with the
    /// view replayed from the log, so the answer shows the command's effect whatever the
    /// projector's progress.
    async fn record(
        self,
        state: &AppState,
        route: &str,
        body: &impl Serialize,
        key_id: KeyId,
        command: KeyCommand,
    ) -> Result<Response, ApiError> {
        let (role, correlation_id) = (self.role, self.correlation_id);
        idempotency::once(
            state.store.pool(),
            role,
            self.idempotency_key,
            route,
            body,
            |id| run_command(state, role, correlation_id, key_id, command, id),
        )
        .await
    }
}

async fn run_command(
    state: &AppState,
    role: Role,
    correlation_id: Option<Uuid>,
    key_id: KeyId,
    command: KeyCommand,
    command_id: Uuid,
) -> Result<Answer, ApiError> {
    let metadata = EventMetadata {
        correlation_id: correlation_id.unwrap_or(command_id),
        causation_id: command_id,
        actor: actor(role),
        command_id: Some(command_id),
    };
    let span = tracing::info_span!(
        "api.command",
        key_id = %key_id.as_uuid(),
        correlation_id = %metadata.correlation_id,
        actor = role.as_str(),
    );
    async {
        let outcome = match &command {
            // A new key passes its user's access check, before and after it is recorded.
            KeyCommand::Request(request) => {
                let access = eventstore::AccessControl::new(state.store.clone());
                access.request_key(key_id, request, &metadata).await
            }
            _ => state.ledger.execute(key_id, &command, &metadata).await,
        };
        if let Err(error) = &outcome {
            tracing::info!(%error, "command not recorded");
        }
        let outcome = outcome?;
        tracing::info!(recorded = outcome.recorded.len(), "command recorded");
        let view = replayed_view(state, key_id).await?;
        let view = with_usage(state.store.pool(), vec![view])
            .await?
            .pop()
            .ok_or(ApiError::KeyNotFound(key_id.as_uuid()))?;
        let body = serde_json::to_value(view).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((StatusCode::ACCEPTED, body))
    }
    .instrument(span)
    .await
}

pub(crate) fn actor(role: Role) -> Actor {
    let kind = match role {
        Role::Admin => ActorKind::Admin,
        Role::Service | Role::Auditor => ActorKind::Service,
    };
    Actor::new(kind, role.as_str())
}

/// The caller's `X-Correlation-Id`, when it is a UUID: a flow that began elsewhere keeps
/// its id through our log.
fn correlation_id(headers: &HeaderMap) -> Option<Uuid> {
    headers
        .get("x-correlation-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::parse_str(value.trim()).ok())
}
