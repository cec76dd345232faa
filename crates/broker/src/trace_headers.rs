//! The trace context in AMQP headers: the relay writes the context of its publish span
//! into each message's headers, and the consumer runtime opens its handling span as that
//! span's child, so a trace crosses the broker (docs/operations.md, "Traces"). A message
//! without the headers (one moved back from a dead-letter queue by hand, say) falls back
//! to the context in the event's own metadata.

use eventstore::RecordedEvent;
use eventstore::trace_context::{TRACE_FIELDS, TraceCarrier};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// `properties` with the carrier's fields added to its headers.
pub fn with_trace(properties: BasicProperties, carrier: &TraceCarrier) -> BasicProperties {
    if carrier.is_empty() {
        return properties;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in &carrier.0 {
        headers.insert(
            name.as_str().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    properties.with_headers(headers)
}

/// The trace context a delivered message carries: its headers', else its event's.
pub fn carried(properties: &BasicProperties, event: &RecordedEvent) -> TraceCarrier {
    let from_headers = properties
        .headers()
        .as_ref()
        .map(from_table)
        .unwrap_or_default();
    if from_headers.is_empty() {
        TraceCarrier::from_metadata(&event.metadata)
    } else {
        from_headers
    }
}

fn from_table(headers: &FieldTable) -> TraceCarrier {
    let inner = headers.inner();
    let texts: Vec<(&str, String)> = TRACE_FIELDS
        .iter()
        .filter_map(|name| {
            let text = match inner.get(*name)? {
                AMQPValue::LongString(text) => {
                    String::from_utf8_lossy(text.as_bytes()).into_owned()
                }
                AMQPValue::ShortString(text) => text.as_str().to_owned(),
                _ => return None,
            };
            Some((*name, text))
        })
        .collect();
    TraceCarrier::from_pairs(texts.iter().map(|(name, text)| (*name, text.as_str())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn headers_written_are_read_back() {
        let carrier = TraceCarrier::from_pairs([
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("other", "dropped"),
        ]);
        let properties = with_trace(BasicProperties::default(), &carrier);
        let headers = properties.headers().clone().expect("headers");
        assert_eq!(from_table(&headers), carrier);
        assert_eq!(carrier.0.len(), 1);
    }
}
