//! Request bodies: JSON only, strictly typed (unknown fields refused by each type's
//! `deny_unknown_fields`), size-limited, and every failure a 400 in our error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::BODY_LIMIT_BYTES;
use crate::error::ApiError;
use crate::params::parse_integer;

/// A JSON body of type `T`. An empty body, or JSON `null`, reads as `{}`, so commands
/// whose body is optional (rotate) can be sent bare, while a body that is there must be
/// right. (The document declares an optional body as "the object or null", which is how
/// OpenAPI 3.1 spells it; for a required body, `{}` still lacks its required fields.)
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| {
                let essence = value.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
            });
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    return ApiError::bad_request(
                        "body_too_large",
                        format!("the request body is larger than {BODY_LIMIT_BYTES} bytes"),
                    );
                }
                ApiError::bad_request("unreadable_body", rejection.body_text())
            })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) || is_null(&bytes) {
            b"{}"
        } else {
            if declared_json == Some(false) {
                return Err(ApiError::bad_request(
                    "unsupported_content_type",
                    "the request body must be JSON (Content-Type: application/json)",
                ));
            }
            &bytes
        };
        refuse_nul(bytes)?;
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_error(&mut deserializer)?;
        deserializer
            .end()
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON: {e}")))?;
        Ok(Self(value))
    }
}

fn is_null(bytes: &[u8]) -> bool {
    bytes.trim_ascii() == b"null"
}

/// PostgreSQL keeps neither text nor jsonb with a NUL character (`\u0000`) in it: such a
/// body is the client's mistake, answered 400 here rather than a 500 from the database.
fn refuse_nul(bytes: &[u8]) -> Result<(), ApiError> {
    // Only an escape can put a NUL into a JSON string; look closer only when one is there.
    if !bytes.windows(2).any(|pair| pair == b"\\u") {
        return Ok(());
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Ok(()); // the typed parse below reports the syntax error
    };
    if holds_nul(&value) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "text in the request body may not contain the NUL character (\\u0000)",
        ));
    }
    Ok(())
}

fn holds_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(fields) => fields
            .iter()
            .any(|(name, value)| name.contains('\0') || holds_nul(value)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn serde_path_error<'de, T: DeserializeOwned>(
    deserializer: &mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
) -> Result<T, ApiError> {
    T::deserialize(deserializer).map_err(|e| {
        let code = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "invalid_json"
            }
            _ => "invalid_body",
        };
        ApiError::bad_request(code, format!("invalid request body: {e}"))
    })
}

/// A JSON integer however it is written ([`parse_integer`]), where serde's integers take
/// only `5`. For `#[serde(deserialize_with = "integer")]` in bodies read by [`JsonBody`].
pub(crate) fn integer<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::de::Error;
    // The number's own text: serde_json would hand over a large `5.0` as an `f64` already
    // rounded.
    let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
    parse_integer(raw.get())
        .and_then(|value| T::try_from(value).ok())
        .ok_or_else(|| D::Error::custom(format!("{} is not an integer in range", raw.get())))
}
