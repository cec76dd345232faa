//! Every way a request can fail, and the one error shape of docs/http-api.md they are
//! answered with: `{"error": {"code", "message"}}` with a fitting status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use eventstore::{AppendError, ExecuteError, StoreError};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::role::Role;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("this route needs an Authorization: Bearer token")]
    MissingToken,
    #[error("the bearer token is not valid")]
    InvalidToken,
    #[error("role {} may not use this route (allowed: {})", role.as_str(), roles(allowed))]
    Forbidden {
        role: Role,
        allowed: &'static [Role],
    },
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("no key {0}")]
    KeyNotFound(Uuid),
    #[error("no route {0}")]
    RouteNotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    Refused(#[from] DomainError),
    #[error("{0}")]
    Conflict(String),
    #[error("Idempotency-Key {0:?} was already used for a different request")]
    IdempotencyKeyReused(String),
    #[error("{what} is not available right now")]
    Unavailable { what: String },
    /// Details go to the log, not to the caller.
    #[error("internal error")]
    Internal(String),
}

fn roles(allowed: &[Role]) -> String {
    allowed
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// For people; may change.
    pub message: String,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::KeyNotFound(_) | ApiError::RouteNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Refused(DomainError::KeyNotFound) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) | ApiError::IdempotencyKeyReused(_) => StatusCode::CONFLICT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "missing_token",
            ApiError::InvalidToken => "invalid_token",
            ApiError::Forbidden { .. } => "forbidden",
            ApiError::BadRequest { code, .. } => code,
            ApiError::KeyNotFound(_) => "key_not_found",
            ApiError::RouteNotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Refused(refusal) => refusal_code(refusal),
            ApiError::Conflict(_) => "conflict",
            ApiError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

fn refusal_code(refusal: &DomainError) -> &'static str {
    match refusal {
        DomainError::KeyNotFound => "key_not_found",
        DomainError::KeyRevoked => "key_revoked",
        DomainError::KeyExpired => "key_expired",
        DomainError::NotYetProvisioned => "not_yet_provisioned",
        DomainError::RotationInProgress => "rotation_in_progress",
        DomainError::ClientUuidReused(_) => "client_uuid_reused",
        DomainError::ExpiryNotInFuture { .. } => "expiry_not_in_future",
        DomainError::NotYetDue { .. } => "not_yet_due",
        DomainError::IdentityMismatch => "identity_mismatch",
        DomainError::InvalidReason { .. } => "invalid_reason",
        DomainError::InvalidFailure => "invalid_failure",
        DomainError::WrongPhase(_) => "wrong_phase",
        DomainError::KeyDepleted => "key_depleted",
        DomainError::QuotaStillUsedUp { .. } => "quota_still_used_up",
        DomainError::SubscriptionNotFound => "subscription_not_found",
        DomainError::UserBlocked => "user_blocked",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        if matches!(self, ApiError::MissingToken | ApiError::InvalidToken) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<projector::ViewError> for ApiError {
    fn from(error: projector::ViewError) -> Self {
        ApiError::Internal(error.to_string())
    }
}

impl From<ExecuteError> for ApiError {
    fn from(error: ExecuteError) -> Self {
        match error {
            ExecuteError::Refused(refusal) => ApiError::Refused(refusal),
            ExecuteError::Contention { .. } => ApiError::Conflict(error.to_string()),
            ExecuteError::Append(AppendError::Store(store)) => store.into(),
            ExecuteError::Append(append) => ApiError::Conflict(append.to_string()),
            ExecuteError::Store(store) => store.into(),
        }
    }
}

pub(crate) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
