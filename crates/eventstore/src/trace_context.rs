//! The W3C trace context (`traceparent`, `tracestate`) as it travels with keyledger's work:
//! in each event's metadata, in the AMQP headers the relay sets, and beside an owed
//! notification. One trace then follows a command from the HTTP request or bot update that
//! made it, through the log and the broker, to the panel and back to the user
//! (docs/operations.md, "Traces").
//!
//! The context is written and read through OpenTelemetry's global propagator, which the
//! service sets to the W3C one only when traces are exported; until then nothing is
//! written, and what is read is ignored, so a process without tracing carries no trace
//! fields and pays for none.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata fields (and header names) the trace context is carried in.
pub const TRACE_FIELDS: [&str; 2] = ["traceparent", "tracestate"];

/// The trace context of the current span as header name and value pairs; empty when the
/// span is not traced.
pub fn current() -> TraceCarrier {
    let mut carrier = TraceCarrier::default();
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut carrier);
        });
    }
    carrier
}

/// Name and value pairs holding a trace context, in the propagator's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceCarrier(pub HashMap<String, String>);

impl TraceCarrier {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `traceparent` value, if there is one.
    pub fn traceparent(&self) -> Option<&str> {
        self.0.get(TRACE_FIELDS[0]).map(String::as_str)
    }

    /// A carrier from whatever pairs a message or a row holds; only the trace fields are kept.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .filter(|(name, _)| TRACE_FIELDS.contains(name))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        )
    }

    /// The trace fields of an event's metadata.
    pub fn from_metadata(metadata: &Value) -> Self {
        Self::from_pairs(
            TRACE_FIELDS
                .iter()
                .filter_map(|name| Some((*name, metadata.get(name)?.as_str()?))),
        )
    }

    /// Writes the trace fields into a metadata object (nothing when empty).
    pub fn write_into_metadata(&self, metadata: &mut Value) {
        if let Some(object) = metadata.as_object_mut() {
            for (name, value) in &self.0 {
                object.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }

    /// Makes `span` a child of the context carried here, when there is a valid one; an
    /// absent or malformed context leaves it where it was (a root or the current span's
    /// child). Call it before the span is first entered.
    pub fn adopt_as_parent(&self, span: &tracing::Span) {
        if self.is_empty() {
            return;
        }
        let parent =
            opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(self));
        if parent.span().span_context().is_valid() {
            // Only fails once the span was entered, which callers do not do before this.
            let _ = span.set_parent(parent);
        }
    }
}

impl Injector for TraceCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for TraceCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_trace_fields_are_taken_from_metadata_and_written_back() {
        let metadata = json!({
            "correlation_id": "x",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "a=b",
        });
        let carrier = TraceCarrier::from_metadata(&metadata);
        assert_eq!(carrier.0.len(), 2);
        assert_eq!(
            carrier.traceparent(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let mut other = json!({"actor": {}});
        carrier.write_into_metadata(&mut other);
        assert_eq!(other["tracestate"], "a=b");
        assert!(other.get("correlation_id").is_none());
    }

    #[test]
    fn an_untraced_span_carries_nothing() {
        assert!(current().is_empty());
    }
}
