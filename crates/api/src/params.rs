//! The inputs many routes share: a key id, a Telegram user id, the `Idempotency-Key`
//! header and a reason. The handlers take path parameters as text and check them here, so a
//! bad one gets our own 400; the types below state the same bounds in the OpenAPI document
//! (as the bodies' `#[schema]` attributes do for reasons), so a request the document calls
//! valid is never refused for its shape and one it calls invalid always is.

use domain::{KeyId, UserId};
use utoipa::IntoParams;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
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

/// The integer a number spelled as JSON spells numbers stands for: `5`, and also `5.0`,
/// `50e-1` or `0.5e1`, which JSON Schema's `integer` (a number without a fractional part)
/// allows as well. `None` for a fraction, for anything but a JSON number, and beyond
/// `i128`. Read from the digits, not through `f64`, which would round large values.
pub(crate) fn parse_integer(raw: &str) -> Option<i128> {
    // The JSON grammar (no `+5`, `05`, `.5` or spaces); then the digits are all ours.
    if raw.trim() != raw || serde_json::from_str::<serde_json::Number>(raw).is_err() {
        return None;
    }
    let (negative, unsigned) = match raw.strip_prefix('-') {
        Some(unsigned) => (true, unsigned),
        None => (false, raw),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits = format!("{whole}{fraction}");
    let mut exponent = exponent.checked_sub(i32::try_from(fraction.len()).ok()?)?;
    while exponent < 0 && digits.ends_with('0') {
        digits.pop();
        exponent += 1;
    }
    if exponent < 0 {
        return None; // a fraction is left
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    let magnitude = significant
        .parse::<i128>()
        .ok()?
        .checked_mul(10_i128.checked_pow(u32::try_from(exponent).ok()?)?)?;
    Some(if negative { -magnitude } else { magnitude })
}

/// What [`check_reason`] takes, as a pattern: no NUL, and one character that is not white
/// space as `str::trim` knows it (Rust's `char::is_whitespace`, named one by one, since
/// `\s` means other sets in other regular expression engines).
const REASON_PATTERN: &str = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$";

/// The schema of a reason field, for `#[schema(schema_with = reason_schema)]`.
pub(crate) fn reason_schema() -> Object {
    reason_object(Type::String.into())
}

/// The schema of an optional reason field (absent or null: a default reason).
pub(crate) fn optional_reason_schema() -> Object {
    reason_object([Type::String, Type::Null].into_iter().collect())
}

fn reason_object(schema_type: SchemaType) -> Object {
    ObjectBuilder::new()
        .schema_type(schema_type)
        .description(Some(format!(
            "Why; 1 to {} characters, not all white space, no NUL; kept in the log.",
            domain::MAX_REASON_CHARS
        )))
        .min_length(Some(1))
        .max_length(Some(domain::MAX_REASON_CHARS))
        .pattern(Some(REASON_PATTERN))
        .build()
}

/// A reason kept in the log: 1 to [`domain::MAX_REASON_CHARS`] characters, not all white
/// space. The body has been checked for NUL already.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integer_is_read_from_any_json_spelling_without_a_fraction() {
        for (raw, expected) in [
            ("5", 5),
            ("5.0", 5),
            ("50e-1", 5),
            ("0.5e1", 5),
            ("5E+0", 5),
            ("-3", -3),
            ("1e2", 100),
            ("0", 0),
            ("-0.0", 0),
            // Above 2^52 an f64 has no room for the halves: the digits decide, not a float.
            ("4412934730017974.0", 4_412_934_730_017_974),
            ("9223372036854775807", i128::from(i64::MAX)),
        ] {
            assert_eq!(parse_integer(raw), Some(expected), "{raw}");
        }
        for raw in [
            "5.5", "0.1e0", "+5", "05", " 5", "5 ", ".5", "5.", "abc", "", "1e400", "0x10",
        ] {
            assert_eq!(parse_integer(raw), None, "{raw}");
        }
    }
}
