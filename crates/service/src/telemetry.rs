//! Logging and tracing for every role. Logs: `tracing` to stderr, filtered by `RUST_LOG`,
//! as JSON unless stderr is a terminal or `log_format` says otherwise
//! (docs/configuration.md). JSON is the default because in a deployment logs are read by
//! machines; the pretty format is for a person running the binary by hand.
//!
//! Traces: when OpenTelemetry's standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the same spans also go to that OTLP/HTTP
//! endpoint in batches, the W3C trace context propagator is installed (so the trace
//! context is written into event metadata and AMQP headers, see
//! `eventstore::trace_context`), and each JSON log line made inside a span names its
//! `trace_id` and `span_id`. Without the variable nothing is exported and nothing
//! propagated (docs/operations.md, "Traces").

use std::io::IsTerminal;

use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceId, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OtelData;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Config, LogFormat};

/// The service name traces carry unless `OTEL_SERVICE_NAME` says otherwise.
const DEFAULT_SERVICE_NAME: &str = "keyledger";

/// Keeps the trace exporter alive; dropping it sends what is still batched and stops it,
/// so a process that stops gracefully loses none of its last spans.
#[must_use = "dropping the guard stops the trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("keyledger: the last spans could not be exported: {error}");
        }
    }
}

/// Structured logs to stderr: JSON unless a person is watching a terminal; and traces
/// exported over OTLP when the environment asks for it. `component` names what this
/// process runs (its roles, or the command) in the traces' resource.
pub fn init(config: &Config, component: &str) -> Telemetry {
    let filter =
        || EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let provider = match tracer_provider(component) {
        Ok(provider) => provider,
        Err(error) => {
            eprintln!("keyledger: traces are not exported: {error}");
            None
        }
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(DEFAULT_SERVICE_NAME))
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format().json().flatten_event(true);
            logs.json().event_format(WithTraceIds(json)).boxed()
        }
        LogFormat::Pretty => logs.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(logs)
        .with(traces)
        .try_init();
    Telemetry { provider }
}

/// Why the trace exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The tracer provider the environment asks for, or `None` when no OTLP endpoint is set
/// (or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
fn tracer_provider(component: &str) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let wanted = (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        && !std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    if !wanted {
        return Ok(None);
    }
    // The exporter reads the endpoint, headers, timeout and protocol from the standard
    // variables; the batch processor its delay and sizes (`OTEL_BSP_*`).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = Resource::builder().with_attributes([
        KeyValue::new("keyledger.component", component.to_owned()),
        KeyValue::new("process.pid", i64::from(std::process::id())),
        KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
    ]);
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// The JSON line of an event with the `trace_id` and `span_id` of the span it was made in,
/// so a log line leads to its trace and back.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            let extensions = span.extensions();
            let data = extensions.get::<OtelData>()?;
            Some((data.trace_id()?, data.span_id()?))
        });
        let body = line.trim_end().strip_suffix('}');
        match (ids, body) {
            (Some((trace_id, span_id)), Some(body)) if trace_id != TraceId::INVALID => {
                let separator = if body.ends_with('{') { "" } else { "," };
                writeln!(
                    writer,
                    "{body}{separator}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
                )
            }
            _ => writer.write_str(&line),
        }
    }
}
