//! Prometheus metrics: the process-wide recorder every crate's `metrics::counter!` and
//! friends write to, the HTTP request metrics, and a sampler for the flow's backlog
//! (relay lag, queue depths, dead letters) that no single event can count.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use broker::Queue;
use eventstore::EventStore;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric: from a cached read to a slow panel.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often [`sample_backlog`] looks at the log and the queues.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's metrics recorder, installed on first use. Every crate records through
/// the `metrics` facade, so one recorder sees the whole process.
pub fn recorder() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
    };
    let handle = match builder().install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            // Another recorder owns the process; /metrics then shows only an empty page,
            // and says why in the log.
            tracing::warn!(%error, "cannot install the Prometheus recorder");
            builder().build_recorder().handle()
        }
    };
    describe();
    handle
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "keyledger_http_requests_total",
        "HTTP requests by route, method and status"
    );
    describe_histogram!(
        "keyledger_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route and method"
    );
    describe_counter!(
        "keyledger_events_appended_total",
        "events appended to the log"
    );
    describe_counter!(
        "keyledger_events_published_total",
        "events the broker confirmed to the relay"
    );
    describe_gauge!("keyledger_log_position", "the last position in the log");
    describe_gauge!(
        "keyledger_relay_lag_events",
        "events in the log the relay has not published yet"
    );
    describe_gauge!(
        "keyledger_consumer_lag_messages",
        "messages waiting in each consumer queue"
    );
    describe_gauge!(
        "keyledger_dead_letters",
        "messages in each dead-letter queue, waiting for an operator"
    );
}

/// Counts and times every request by its route pattern (never the raw path, whose key ids
/// would make one series per key).
pub(crate) async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "keyledger_http_requests_total",
        "route" => route.clone(), "method" => method, "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "keyledger_http_request_duration_seconds",
        "route" => route, "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// A request's method as a metric label, from a closed set: a method is the client's to
/// make up, and each new label value is a new series kept for the life of the process.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, label)| label)
}

/// Every [`SAMPLE_INTERVAL`] until `stop`: the relay's lag behind the log and the depth of
/// every queue and dead-letter queue, as gauges.
pub async fn sample_backlog(store: EventStore, amqp_url: Option<String>, stop: CancellationToken) {
    let mut connection: Option<lapin::Connection> = None;
    loop {
        if let Err(error) = sample_log(&store).await {
            tracing::warn!(%error, "cannot sample the relay's lag");
        }
        if let Some(url) = &amqp_url {
            // Bounded like every broker operation: a broker that stopped answering must
            // not stop the other samples.
            let sampled = tokio::time::timeout(
                broker::OPERATION_TIMEOUT,
                sample_queues(url, &mut connection),
            )
            .await
            .unwrap_or(Err(broker::BrokerError::Timeout("sampling queue depths")));
            if let Err(error) = sampled {
                tracing::warn!(%error, "cannot sample queue depths");
                connection = None;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
        }
    }
    if let Some(connection) = connection {
        broker::connection_close(&connection, "metrics sampler stopping").await;
    }
}

async fn sample_log(store: &EventStore) -> Result<(), sqlx::Error> {
    let (last, published): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(max(position), 0) FROM events),
                (SELECT coalesce(max(position), 0) FROM relay_checkpoints)",
    )
    .fetch_one(store.pool())
    .await?;
    metrics::gauge!("keyledger_log_position").set(last as f64);
    metrics::gauge!("keyledger_relay_lag_events").set((last - published).max(0) as f64);
    Ok(())
}

async fn sample_queues(
    url: &str,
    connection: &mut Option<lapin::Connection>,
) -> Result<(), broker::BrokerError> {
    let alive = connection.as_ref().is_some_and(|c| c.status().connected());
    if !alive {
        *connection = Some(broker::connect(url).await?);
    }
    let Some(connection) = connection.as_ref() else {
        return Ok(());
    };
    let channel = connection.create_channel().await?;
    // The roles that use a queue declare it when they start, which may be after this
    // sampler's first pass (or in another process that has not started yet); declaring the
    // same topology here is idempotent and means a missing queue is never a failure.
    broker::topology::declare(&channel).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for queue in Queue::ALL {
        let main = channel
            .queue_declare(queue.name().into(), passive, FieldTable::default())
            .await?;
        metrics::gauge!("keyledger_consumer_lag_messages", "queue" => queue.name())
            .set(f64::from(main.message_count()));
        let dead = channel
            .queue_declare(
                queue.dead_letter_queue().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        metrics::gauge!("keyledger_dead_letters", "queue" => queue.dead_letter_queue())
            .set(f64::from(dead.message_count()));
    }
    let _ = channel.close(200, "sampled".into()).await;
    Ok(())
}
