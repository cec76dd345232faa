//! The `http.request` span around every API request: method, route template and status
//! (docs/operations.md, "Traces"). A caller that sends a W3C `traceparent` header gets the
//! request in its own trace; otherwise the request starts one, which the command, its
//! append and everything downstream of the log then join.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use eventstore::trace_context::{TRACE_FIELDS, TraceCarrier};
use tracing::Instrument;
use tracing::field::Empty;

pub(crate) async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let span = tracing::info_span!(
        parent: None,
        "http.request",
        http.request.method = crate::metrics::method_label(request.method()),
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    TraceCarrier::from_pairs(TRACE_FIELDS.iter().filter_map(|name| {
        let value = request.headers().get(*name)?.to_str().ok()?;
        Some((*name, value))
    }))
    .adopt_as_parent(&span);
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}
