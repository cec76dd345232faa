//! The inputs many routes share: a key id, a Telegram user id, the `Idempotency-Key`
//! header and a reason. The handlers take path parameters as text and check them here, so a
//! bad one gets our own 400; the types below state the same bounds in the OpenAPI document
//! (as the bodies' `#[schema]` attributes do for reasons), so a request the document calls
//! valid is never refused for its shape and one it calls invalid always is.

use domain::{KeyId, UserId};
use utoipa::IntoParams;
use uuid::Uuid;

use crate::error::ApiError;

/// The length of a UUID's hyphenated form, the only form the document's `uuid` format
/// allows (`Uuid::parse_str` would also take the simple, braced and URN forms).
const HYPHENATED_UUID_LEN: usize = 36;

/// A `{key_id}` path parameter.
pub(crate) fn parse_key_id(raw: &str) -> Result<KeyId, ApiError> {
    Some(raw)
        .filter(|raw| raw.len() == HYPHENATED_UUID_LEN)
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .map(KeyId::from_uuid)
        .ok_or_else(|| ApiError::bad_request("invalid_key_id", format!("{raw:?} is not a UUID")))
}

/// A `{user_id}` path parameter.
pub(crate) fn parse_user_id(raw: &str) -> Result<UserId, ApiError> {
    parse_integer(raw)
        .and_then(|id| i64::try_from(id).ok())
        .and_then(|id| UserId::new(id).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_user_id",
                format!("{raw:?} is not a Telegram user id (an integer from 1 to 2^52)"),
            )
        })
}

/// The integer a JSON number stands for: `5`, and also `5.0` or `5e0`, which JSON Schema's
/// `integer` (a number without a fractional part) allows as well. `None` for a fraction.
pub(crate) fn whole_number(number: &serde_json::Number) -> Option<i128> {
    if let Some(value) = number.as_i64() {
        return Some(i128::from(value));
    }
    if let Some(value) = number.as_u64() {
        return Some(i128::from(value));
    }
    // Beyond 2^63 a float names a range of integers, not one, and no bound of this API
    // comes near it.
    number
        .as_f64()
        .filter(|value| value.fract() == 0.0 && value.abs() < 9.2e18)
        .map(|value| value as i128)
}

/// A path or query integer, spelled as JSON spells numbers: what a client that serialises
/// the document's `integer` may send.
pub(crate) fn parse_integer(raw: &str) -> Option<i128> {
    if raw.trim() != raw {
        return None;
    }
    serde_json::from_str::<serde_json::Number>(raw)
        .ok()
        .as_ref()
        .and_then(whole_number)
}

/// A reason kept in the log: 1 to [`domain::MAX_REASON_CHARS`] characters, not all white
/// space (the document's `pattern` names Rust's white space one by one).
pub(crate) fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() || reason.chars().count() > domain::MAX_REASON_CHARS {
        return Err(ApiError::bad_request(
            "invalid_reason",
            format!(
                "reason must be 1 to {} characters, not all white space",
                domain::MAX_REASON_CHARS
            ),
        ));
    }
    Ok(())
}

/// `{key_id}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(
    dead_code,
    reason = "describes the parameter for the document; never built"
)]
pub(crate) struct KeyIdPath {
    /// The key's id: a UUID in its hyphenated form (36 characters).
    key_id: Uuid,
}

/// `{user_id}` in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(
    dead_code,
    reason = "describes the parameter for the document; never built"
)]
pub(crate) struct UserIdPath {
    /// The Telegram user id, 1 to 2^52.
    #[param(minimum = 1, maximum = 4503599627370496_i64)]
    user_id: i64,
}

/// The `Idempotency-Key` header of a command (docs/http-api.md "Idempotency").
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(
    dead_code,
    reason = "describes the parameter for the document; never built"
)]
pub(crate) struct IdempotencyHeader {
    /// Same key from the same role, same request: the stored answer. 1 to 255 visible
    /// ASCII characters.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: Option<String>,
}
