//! `Idempotency-Key` on POST: the same key from the same caller gets the same answer.
//!
//! Two layers make this hold even for concurrent retries. The command id is derived from
//! the caller and the key, so the log itself records the command once (the store answers
//! a repeated command id with the first append). And the answer is stored, so a retry
//! after the key moved on still gets the answer of its first attempt, not a fresh one.

use std::future::Future;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::role::Role;

pub(crate) const HEADER: &str = "idempotency-key";
const MAX_KEY_CHARS: usize = 255;

/// Names the UUIDs derived from idempotency keys, apart from every other v5 UUID.
const NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_7269_6465_6d70_6f74);

/// The `Idempotency-Key` header, when sent.
pub(crate) struct IdempotencyKey(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(Self(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| (1..=MAX_KEY_CHARS).contains(&key.len()))
            .filter(|key| key.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    format!(
                        "Idempotency-Key must be 1 to {MAX_KEY_CHARS} visible ASCII characters"
                    ),
                )
            })?;
        Ok(Self(Some(key.to_owned())))
    }
}

/// One POST's answer: status and JSON body.
pub(crate) type Answer = (StatusCode, Value);

/// Runs `command` once per (caller, idempotency key): a repeat with the same request gets
/// the stored answer; a repeat with another request is refused. `command` gets the command
/// id to record its events under.
pub(crate) async fn once<R, F, Fut>(
    pool: &PgPool,
    caller: Role,
    key: IdempotencyKey,
    route: &str,
    request: &R,
    command: F,
) -> Result<Response, ApiError>
where
    R: Serialize,
    F: FnOnce(Uuid) -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
{
    let Some(key) = key.0 else {
        let (status, body) = command(Uuid::new_v4()).await?;
        return Ok((status, Json(body)).into_response());
    };
    let fingerprint = fingerprint(route, request)?;
    if let Some(stored) = stored_answer(pool, caller, &key, &fingerprint).await? {
        return Ok(replayed(stored));
    }
    let command_id = Uuid::new_v5(&NAMESPACE, format!("{}:{key}", caller.as_str()).as_bytes());
    let answer = match command(command_id).await {
        Ok(answer) => answer,
        // A refusal is an answer too: the same request would be refused again.
        Err(error @ ApiError::Refused(_)) => (error.status(), error_json(&error)),
        Err(error) => return Err(error),
    };
    let kept = remember(pool, caller, &key, &fingerprint, &answer).await?;
    if kept {
        return Ok((answer.0, Json(answer.1)).into_response());
    }
    // A concurrent twin stored its answer first; both say the same, but the stored one
    // is the answer of record.
    let stored = stored_answer(pool, caller, &key, &fingerprint)
        .await?
        .ok_or_else(|| ApiError::Internal("idempotent answer vanished".into()))?;
    Ok(replayed(stored))
}

fn fingerprint(route: &str, request: &impl Serialize) -> Result<String, ApiError> {
    let body = serde_json::to_string(request).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(format!("{route}\n{body}"))))
}

fn error_json(error: &ApiError) -> Value {
    serde_json::to_value(ErrorBody {
        error: ErrorDetail {
            code: error.code().to_owned(),
            message: error.to_string(),
        },
    })
    .unwrap_or(Value::Null)
}

async fn stored_answer(
    pool: &PgPool,
    caller: Role,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Answer>, ApiError> {
    let row: Option<(String, i16, Value)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM api_idempotency WHERE caller = $1 AND key = $2",
    )
    .bind(caller.as_str())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((stored_fingerprint, status, body)) = row else {
        return Ok(None);
    };
    if stored_fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused(key.to_owned()));
    }
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| ApiError::Internal(format!("stored status {status} is not HTTP")))?;
    Ok(Some((status, body)))
}

/// Stores the answer; false when another request with the same key stored one first.
async fn remember(
    pool: &PgPool,
    caller: Role,
    key: &str,
    fingerprint: &str,
    (status, body): &Answer,
) -> Result<bool, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO api_idempotency (caller, key, request_hash, status, body)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (caller, key) DO NOTHING",
    )
    .bind(caller.as_str())
    .bind(key)
    .bind(fingerprint)
    .bind(i16::try_from(status.as_u16()).unwrap_or(i16::MAX))
    .bind(body)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

fn replayed((status, body): Answer) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
