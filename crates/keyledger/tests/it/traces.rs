//! OpenTelemetry traces across the whole path (docs/operations.md, "Traces"): two
//! `keyledger serve` processes export their spans over OTLP/HTTP to a receiver inside the
//! test, and one rotation requested over HTTP must come back as one trace, parented from the
//! request through the log, the broker, the worker and its panel calls, the acknowledgement
//! event and the consumers that read it, to the message the user is sent. A reconcile pass
//! is a trace of its own, with one span per location.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};
use telegram_fake::{FakeTelegram, TestUser};
use x3ui_sim::{PanelSimulator, SimConfig};

use crate::common::{self, Serving, ams_config_file, eventually};

const ADMIN: &str = "admin-token-for-the-trace-test";

/// One span as the receiver got it, with its resource's attributes beside its own.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
    /// `keyledger.component` of the process that sent it: its roles.
    component: String,
    pid: String,
    start_ns: u64,
    end_ns: u64,
}

impl ReceivedSpan {
    fn attribute(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }

    fn is(&self, name: &str, attributes: &[(&str, &str)]) -> bool {
        self.name == name && attributes.iter().all(|(k, v)| self.attribute(k) == *v)
    }
}

/// Every span received so far.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ReceivedSpan>>>);

impl Received {
    fn spans(&self) -> Vec<ReceivedSpan> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn text(value: &KeyValue) -> String {
    match value.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(values: &[KeyValue]) -> HashMap<String, String> {
    values.iter().map(|kv| (kv.key.clone(), text(kv))).collect()
}

/// `POST /v1/traces` as an OTLP/HTTP collector answers it (protobuf in, protobuf out).
async fn receive(
    State(received): State<Received>,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    attributes: attributes(&span.attributes),
                    component: resource
                        .get("keyledger.component")
                        .cloned()
                        .unwrap_or_default(),
                    pid: resource.get("process.pid").cloned().unwrap_or_default(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
            }
        }
    }
    received
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .extend(spans);
    (
        axum::http::StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// An OTLP/HTTP receiver on a free port: its endpoint and what it received.
async fn start_receiver() -> (String, Received) {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), received)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The spans of one trace, found by what they are.
struct Trace<'a> {
    spans: Vec<&'a ReceivedSpan>,
}

impl<'a> Trace<'a> {
    fn of(all: &'a [ReceivedSpan], trace_id: &str) -> Self {
        Self {
            spans: all.iter().filter(|s| s.trace_id == trace_id).collect(),
        }
    }

    fn find(&self, name: &str, attributes: &[(&str, &str)]) -> Option<&'a ReceivedSpan> {
        self.spans.iter().copied().find(|s| s.is(name, attributes))
    }

    fn get(&self, name: &str, attributes: &[(&str, &str)]) -> &'a ReceivedSpan {
        self.find(name, attributes).unwrap_or_else(|| {
            panic!(
                "no {name} {attributes:?} in the trace: {:#?}",
                self.spans
                    .iter()
                    .map(|s| (&s.name, &s.component, &s.attributes))
                    .collect::<Vec<_>>()
            )
        })
    }

    fn parent(&self, span: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
        self.spans
            .iter()
            .copied()
            .find(|s| s.span_id == span.parent_span_id)
    }

    /// Whether `ancestor` is above `span` on its parent chain.
    fn descends(&self, span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
        let mut current = self.parent(span);
        while let Some(parent) = current {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = self.parent(parent);
        }
        false
    }
}

/// The trace as a waterfall in SVG, one row per span in parent order, for a person to look
/// at (the README shows one): no trace UI runs on the build machine.
fn render_svg(trace: &Trace<'_>) -> String {
    let mut rows: Vec<(usize, &ReceivedSpan)> = Vec::new();
    fn walk<'a>(
        trace: &Trace<'a>,
        span: &'a ReceivedSpan,
        depth: usize,
        rows: &mut Vec<(usize, &'a ReceivedSpan)>,
    ) {
        rows.push((depth, span));
        let mut children: Vec<_> = trace
            .spans
            .iter()
            .copied()
            .filter(|s| s.parent_span_id == span.span_id)
            .collect();
        children.sort_by_key(|s| s.start_ns);
        for child in children {
            walk(trace, child, depth + 1, rows);
        }
    }
    for root in trace.spans.iter().filter(|s| trace.parent(s).is_none()) {
        walk(trace, root, 0, &mut rows);
    }
    let start = rows
        .iter()
        .map(|(_, s)| s.start_ns)
        .min()
        .unwrap_or_default();
    let end = rows
        .iter()
        .map(|(_, s)| s.end_ns)
        .max()
        .unwrap_or(start + 1);
    let (label_width, bar_width, row_height) = (560.0, 640.0, 22.0);
    let scale = bar_width / (end - start).max(1) as f64;
    let height = row_height * (rows.len() as f64 + 2.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"monospace\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"8\" y=\"16\">trace {} — {:.1} ms, {} spans; \
         <tspan fill=\"#4e79a7\">■ serve --roles api</tspan> \
         <tspan fill=\"#f28e2b\">■ serve --roles relay,projector,worker,bot</tspan></text>\n",
        label_width + bar_width + 120.0,
        rows.first().map_or("", |(_, s)| s.trace_id.as_str()),
        (end - start) as f64 / 1e6,
        rows.len()
    );
    for (i, (depth, span)) in rows.iter().enumerate() {
        let y = row_height * (i as f64 + 1.5);
        let detail = [
            "queue",
            "event_type",
            "command",
            "operation",
            "http.route",
            "location",
        ]
        .iter()
        .find_map(|k| span.attributes.get(*k))
        .map_or(String::new(), |v| format!(" {v}"));
        let color = if span.component == "api" {
            "#4e79a7"
        } else {
            "#f28e2b"
        };
        let x = label_width + (span.start_ns - start) as f64 * scale;
        let width = ((span.end_ns.saturating_sub(span.start_ns)) as f64 * scale).max(1.0);
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\">{}{}</text>\n<rect x=\"{x:.1}\" y=\"{}\" width=\"{width:.1}\" height=\"14\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{}\" fill=\"#555\">{:.1} ms</text>\n",
            8 + depth * 14,
            y + 11.0,
            span.name,
            detail.replace('&', "&amp;").replace('<', "&lt;"),
            y,
            x + width + 4.0,
            y + 11.0,
            span.end_ns.saturating_sub(span.start_ns) as f64 / 1e6,
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn assert_child(trace: &Trace<'_>, child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.parent_span_id,
        parent.span_id,
        "{} ({}) should be a child of {} ({}); its parent is {:?}",
        child.name,
        child.component,
        parent.name,
        parent.component,
        trace.parent(child).map(|p| &p.name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rotation_is_one_trace_across_both_processes() {
    let (endpoint, received) = start_receiver().await;
    let db = testkit::TestDatabase::create().await;
    let broker = testkit::TestBroker::create().await;
    let panel = PanelSimulator::start(SimConfig::v2_9())
        .await
        .expect("simulator");
    let telegram = FakeTelegram::start().await.expect("fake Bot API");
    let config = ams_config_file(&panel.base_url());
    let address = common::free_address();
    let api_url = telegram.api_url().to_string();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("AMQP_URL", broker.amqp_url.as_str()),
        ("KEYLEDGER_CONFIG", config.as_str()),
        ("X3UI_AMS_PASSWORD", "sim-password"),
        ("KEYLEDGER_HTTP_ADDR", address.as_str()),
        ("KEYLEDGER_ADMIN_TOKEN", ADMIN),
        ("TELEGRAM_BOT_TOKEN", telegram.token()),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let api = Serving::start("api", &env).await;
    let pipeline = Serving::start("relay,projector,worker,bot", &env).await;
    let http = reqwest::Client::new();
    let base = format!("http://{address}");

    // The user talks to the bot first, so the rotation owes them a message.
    let user = TestUser::new(777_002, "Bea", Some("en"));
    // Telegram counts an update handled once the bot took it into its queue; the user is
    // known once the conversation recorded them.
    let start = telegram.send_text(&user, "/start");
    telegram.wait_handled(start).await;
    eventually("the bot to know the user", || async {
        sqlx::query_scalar::<_, i64>("SELECT chat_id FROM bot_users WHERE user_id = $1")
            .bind(user.id)
            .fetch_optional(db.store.pool())
            .await
            .is_ok_and(|chat| chat.is_some())
    })
    .await;
    let (status, requested) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/keys"),
        Some(json!({"user_id": user.id, "location": "ams"})),
    )
    .await;
    assert_eq!(status, 202, "{requested}");
    let key = requested["key_id"].as_str().expect("key id").to_owned();
    let view = || async {
        call(
            &http,
            reqwest::Method::GET,
            format!("{base}/v1/keys/{key}"),
            None,
        )
        .await
        .1
    };
    eventually("the key to be active", || async {
        view().await["status"] == json!("active")
    })
    .await;

    let mark = telegram.mark();
    let (status, rotating) = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/keys/{key}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{rotating}");
    let chat = user.id;
    telegram
        .wait_for("the refreshed key's message", mark, |s| {
            s.chat_id == chat && s.text.contains("was refreshed")
        })
        .await;

    // The rotation's trace is the one whose root is the rotate request; it is complete
    // once the message to the user is in it.
    let rotation_trace = || {
        let spans = received.spans();
        let root = spans
            .iter()
            .find(|s| {
                s.is(
                    "http.request",
                    &[("http.route", "/v1/keys/{key_id}/rotate")],
                )
            })?
            .clone();
        let trace = Trace::of(&spans, &root.trace_id);
        trace
            .find("bot.send", &[("key_id", key.as_str())])
            .is_some()
            .then(|| root.trace_id.clone())
    };
    eventually("the rotation's trace to reach the message sent", || async {
        rotation_trace().is_some()
    })
    .await;
    let trace_id = rotation_trace().expect("the trace");
    let spans = received.spans();
    let trace = Trace::of(&spans, &trace_id);
    let worker_queue = ("queue", "keyledger.x3ui-worker");
    let requested_type = ("event_type", "key.rotation_requested");
    let rotated_type = ("event_type", "key.rotated");

    let request = trace.get("http.request", &[("http.response.status_code", "202")]);
    assert_eq!(request.parent_span_id, "", "the request starts the trace");
    let command = trace.get("command", &[("key_id", &key), ("command", "Rotate")]);
    assert!(
        trace.descends(command, request),
        "the command under the request"
    );
    let append = trace.get("eventstore.append", &[requested_type]);
    assert_child(&trace, append, command);
    let publish = trace.get("relay.publish", &[requested_type]);
    assert_child(&trace, publish, append);
    let consume = trace.get("consume", &[worker_queue, requested_type]);
    assert_child(&trace, consume, publish);
    let panel_calls: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.name == "panel.call")
        .collect();
    assert!(!panel_calls.is_empty(), "the worker called the panel");
    for call in &panel_calls {
        assert!(trace.descends(call, consume), "{call:?} under the worker");
        assert_eq!(call.attribute("location"), "ams");
        assert_eq!(call.attribute("outcome"), "ok");
        assert_eq!(call.attribute("attempt"), "1");
        assert!(
            call.attribute("url.template").starts_with("panel/"),
            "{call:?}"
        );
    }
    let ack = trace.get("eventstore.append", &[rotated_type]);
    assert!(
        trace.descends(ack, consume),
        "the acknowledgement under the worker"
    );
    let ack_publish = trace.get("relay.publish", &[rotated_type]);
    assert_child(&trace, ack_publish, ack);
    let projected = trace.get("consume", &[("queue", "keyledger.projector"), rotated_type]);
    assert_child(&trace, projected, ack_publish);
    let notified = trace.get(
        "consume",
        &[("queue", "keyledger.bot-notify"), rotated_type],
    );
    assert_child(&trace, notified, ack_publish);
    let sent = trace.get("bot.send", &[("key_id", &key)]);
    assert_child(&trace, sent, notified);

    // Across processes: the request and its command in the API's, the rest in the other.
    for span in [request, command, append] {
        assert_eq!(span.component, "api", "{span:?}");
    }
    for span in [
        publish,
        consume,
        ack,
        ack_publish,
        projected,
        notified,
        sent,
    ] {
        assert_eq!(span.component, "relay,projector,worker,bot", "{span:?}");
    }
    assert_ne!(request.pid, consume.pid, "two processes");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "bot.update" && s.parent_span_id.is_empty()),
        "the user's /start is a trace of its own"
    );

    // The context is in the log too, and the hash chains, which cover the metadata, hold
    // by the binary's check and by the plain SQL one.
    let logged: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata FROM events WHERE stream_id = $1 AND type = 'key.rotation_requested'",
    )
    .bind(uuid::Uuid::parse_str(&key).expect("key id"))
    .fetch_all(db.store.pool())
    .await
    .expect("events");
    let traceparent = logged[0]["traceparent"].as_str().expect("a traceparent");
    assert!(
        traceparent.contains(&trace_id) && traceparent.contains(&append.span_id),
        "{traceparent} names the append's span"
    );
    let report = eventstore::verify_chains(db.store.pool())
        .await
        .expect("verify");
    assert!(report.holds(), "{report:?}");
    let breaks = sqlx::query(include_str!("../../../../sql/verify_chain.sql"))
        .fetch_all(db.store.pool())
        .await
        .expect("the SQL check runs");
    assert!(
        breaks.is_empty(),
        "the SQL check found {} breaks",
        breaks.len()
    );
    let rendering = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rotation-trace.svg");
    std::fs::write(&rendering, render_svg(&trace)).expect("write the rendering");

    // The log line of a span names its trace.
    let (code, logs) = pipeline.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        logs.iter()
            .any(|line| line.contains(&format!("\"trace_id\":\"{trace_id}\""))),
        "no log line of the pipeline names the rotation's trace"
    );
    let (code, _) = api.terminate().await;
    assert_eq!(code, Some(0));

    // A reconcile pass is its own trace, one span per location under its root.
    let output = common::keyledger_with(
        &db.url,
        &["reconcile"],
        &[
            ("KEYLEDGER_CONFIG", config.as_str()),
            ("X3UI_AMS_PASSWORD", "sim-password"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let spans = received.spans();
    let pass = spans
        .iter()
        .find(|s| s.name == "reconcile.pass")
        .expect("the pass's spans were sent before the command exited");
    assert_eq!(pass.parent_span_id, "", "a pass starts its own trace");
    assert_ne!(pass.trace_id, trace_id);
    let pass_trace = Trace::of(&spans, &pass.trace_id);
    let locations: Vec<_> = pass_trace
        .spans
        .iter()
        .filter(|s| s.name == "reconcile.location")
        .collect();
    assert_eq!(locations.len(), 1, "one span per location: {locations:?}");
    assert_child(&pass_trace, locations[0], pass);
    assert_eq!(locations[0].attribute("location"), "ams");
    assert!(
        pass_trace
            .spans
            .iter()
            .any(|s| s.name == "panel.call" && pass_trace.descends(s, locations[0])),
        "the location's panel listing is in its span"
    );
}
