//! Request bodies: JSON only, strictly typed (unknown fields refused by each type's
//! `deny_unknown_fields`), size-limited, and every failure a 400 in our error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::BODY_LIMIT_BYTES;
use crate::error::ApiError;

/// A JSON body of type `T`. An empty body reads as `{}`, so commands without parameters
/// (rotate) can be sent bare, while a body that is there must be right.
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
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
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
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_error(&mut deserializer)?;
        deserializer
            .end()
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON: {e}")))?;
        Ok(Self(value))
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
