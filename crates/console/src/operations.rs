//! The operators' pages. Locations: each panel's breaker, last reconcile, drift found and
//! repaired (from the log), and the panel's latency measured by a probe as the page is
//! drawn; the relay's lag behind the log; subscription fetch counts. Queues: each queue's
//! depth and consumers, each dead-letter queue's messages with the reason the consumer
//! gave, and the admin's "move back" (the runbook's shovel, through RabbitMQ's management
//! API), behind a confirmation page.

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use broker::Queue;
use broker::management::{Management, PeekedMessage, QueueInfo};
use broker::message::REASON_HEADER;
use maud::{Markup, html};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{Actor, ConsoleError, Viewer};
use crate::page::{self, csrf_field, when};
use crate::signin::CsrfForm;
use crate::{ConsoleState, may_act};

/// How long the page waits for a panel's probe: a slow panel is itself the news.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Dead letters shown per queue; the depth says how many there are in all.
const DEAD_LETTERS_SHOWN: u32 = 20;

/// `GET /console/locations`.
pub(crate) async fn locations_page(
    Viewer(session): Viewer,
    State(state): State<ConsoleState>,
) -> Result<Markup, ConsoleError> {
    let locations = api::location_health(&state.store, &state.api).await?;
    let probes = match &state.api.panels {
        Some(panels) => panels.probe(PROBE_TIMEOUT).await,
        None => Vec::new(),
    };
    let relay = relay_lag(&state).await?;
    let fetches = fetch_counts(&state).await?;
    Ok(page::signed_in(
        &session,
        "Locations",
        html! {
            h1 { "Locations" }
            @if state.api.panels.is_none() {
                p.muted { "The worker runs in another process: breakers and reconcile passes are its to show." }
            }
            table #locations {
                tr { th { "location" } th { "breaker" } th { "panel latency" } th { "last success" } th { "last reconcile" } th { "drift last pass" } th { "drift found (log)" } th { "drift repaired (log)" } th { "last drift" } }
                @for location in &locations {
                    @let probe = probes.iter().find(|p| p.location == location.id);
                    tr.location data-location=(location.id) {
                        td { strong { (location.id) } " " span.muted { (location.name) } }
                        td.breaker { (location.breaker.unwrap_or("—")) }
                        td.latency {
                            @match probe.map(|p| &p.outcome) {
                                Some(Ok(took)) => { (took.as_millis()) " ms" }
                                Some(Err(error)) => { span.bad { (error) } }
                                None => { "—" }
                            }
                        }
                        td { (when(location.last_success_at)) }
                        td { (when(location.last_reconcile_at))
                            @if let Some(error) = &location.last_reconcile_error { br; span.bad { (error) } } }
                        td { (location.drift_found_last_pass.map_or_else(|| "—".to_owned(), |n| n.to_string())) }
                        td.drift-detected { (location.drift_detected) }
                        td.drift-repaired { (location.drift_repaired) }
                        td { (when(location.last_drift_at)) }
                    }
                }
            }
            h2 { "Relay" }
            table #relay {
                tr { th { "last position in the log" } td { (relay.last) } }
                tr { th { "published up to" } td { (relay.published) } }
                tr { th { "lag" } td #relay-lag { (relay.last - relay.published) " events" } }
                tr { th { "oldest unpublished event" } td { (when(relay.oldest_unpublished)) } }
            }
            h2 { "Subscription fetches" }
            table #fetches {
                tr { th { "" } th { "answered" } th { "refused or unknown" } }
                tr { th { "last hour" } td { (fetches.hour_ok) } td { (fetches.hour_other) } }
                tr { th { "last 24 hours" } td { (fetches.day_ok) } td { (fetches.day_other) } }
            }
        },
    ))
}

struct RelayLag {
    last: i64,
    published: i64,
    oldest_unpublished: Option<OffsetDateTime>,
}

/// The newest position against the relay's checkpoint, and how long the oldest event not
/// yet published has waited: both through the primary keys.
async fn relay_lag(state: &ConsoleState) -> Result<RelayLag, ConsoleError> {
    let (last, published): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(max(position), 0) FROM events),
                (SELECT coalesce(max(position), 0) FROM relay_checkpoints)",
    )
    .fetch_one(state.store.pool())
    .await?;
    let oldest_unpublished: Option<OffsetDateTime> = sqlx::query_scalar(
        "SELECT recorded_at FROM events WHERE position > $1 ORDER BY position LIMIT 1",
    )
    .bind(published)
    .fetch_optional(state.store.pool())
    .await?;
    Ok(RelayLag {
        last,
        published,
        oldest_unpublished,
    })
}

struct FetchCounts {
    hour_ok: i64,
    hour_other: i64,
    day_ok: i64,
    day_other: i64,
}

/// Fetches in the last day, through `subscription_fetches_by_time`.
async fn fetch_counts(state: &ConsoleState) -> Result<FetchCounts, ConsoleError> {
    let (hour_ok, hour_other, day_ok, day_other): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 200 AND fetched_at > now() - interval '1 hour'),
                count(*) FILTER (WHERE status <> 200 AND fetched_at > now() - interval '1 hour'),
                count(*) FILTER (WHERE status = 200),
                count(*) FILTER (WHERE status <> 200)
         FROM subscription_fetches WHERE fetched_at > now() - interval '24 hours'",
    )
    .fetch_one(state.store.pool())
    .await?;
    Ok(FetchCounts {
        hour_ok,
        hour_other,
        day_ok,
        day_other,
    })
}

fn management(state: &ConsoleState) -> Result<(&Management, &str), ConsoleError> {
    state
        .management
        .as_ref()
        .map(|(management, vhost)| (management, vhost.as_str()))
        .ok_or(ConsoleError::NoManagement)
}

/// `GET /console/queues`.
pub(crate) async fn queues_page(
    Viewer(session): Viewer,
    State(state): State<ConsoleState>,
) -> Result<Markup, ConsoleError> {
    let (management, vhost) = management(&state)?;
    let mut queues: Vec<(Queue, QueueInfo, QueueInfo, Vec<PeekedMessage>)> = Vec::new();
    for queue in Queue::ALL {
        let main = management.queue(vhost, queue.name()).await?;
        let dead_letter_queue = queue.dead_letter_queue();
        let dead = management.queue(vhost, &dead_letter_queue).await?;
        let peeked = if dead.messages > 0 {
            management
                .peek_messages(vhost, &dead_letter_queue, DEAD_LETTERS_SHOWN)
                .await?
        } else {
            Vec::new()
        };
        queues.push((queue, main, dead, peeked));
    }
    let can_move = may_act(session.role);
    Ok(page::signed_in(
        &session,
        "Queues",
        html! {
            h1 { "Queues" }
            table #queues {
                tr { th { "queue" } th { "messages waiting (lag)" } th { "ready" } th { "unacknowledged" } th { "consumers" } th { "dead letters" } }
                @for (queue, main, dead, _) in &queues {
                    tr { td { (queue.name()) } td { (main.messages) } td { (main.messages_ready) } td { (main.messages_unacknowledged) } td { (main.consumers) }
                         td { @if dead.messages > 0 { span.bad { (dead.messages) } } @else { "0" } } }
                }
            }
            @for (queue, _, dead, peeked) in &queues {
                @if dead.messages > 0 {
                    section.dead-letters data-queue=(queue.name()) {
                        h2 { (dead.name) ": " (dead.messages) " dead letters" }
                        table {
                            tr { th { "event" } th { "key" } th { "routing key" } th { "reason" } }
                            @for message in peeked {
                                @let (event_type, key) = event_of(message);
                                tr.dead-letter {
                                    td { (event_type) }
                                    td.mono { @if let Some(key) = &key { a href={ "/console/keys/" (key) } { (key) } } }
                                    td { (message.routing_key) }
                                    td.reason { (reason_of(message)) }
                                }
                            }
                        }
                        @if can_move {
                            a.move-back href={ "/console/queues/" (queue.name()) "/move-back" } { "Move back to " (queue.name()) "…" }
                        }
                    }
                }
            }
        },
    ))
}

/// The event a dead letter carries (its body is the recorded event), as far as it parses.
fn event_of(message: &PeekedMessage) -> (String, Option<String>) {
    let body: Value = serde_json::from_str(&message.payload).unwrap_or(Value::Null);
    let event_type = body["type"].as_str().unwrap_or("(not an event)").to_owned();
    let key = body["stream_id"].as_str().map(str::to_owned);
    (event_type, key)
}

fn reason_of(message: &PeekedMessage) -> String {
    message.properties["headers"][REASON_HEADER]
        .as_str()
        .unwrap_or("(no reason recorded)")
        .to_owned()
}

fn queue_named(name: &str) -> Result<Queue, ConsoleError> {
    Queue::from_name(name).ok_or_else(|| ConsoleError::NotFound(format!("queue {name:?}")))
}

/// `GET /console/queues/{queue}/move-back`.
pub(crate) async fn confirm_move_back(
    Actor(session): Actor,
    State(state): State<ConsoleState>,
    Path(queue): Path<String>,
) -> Result<Markup, ConsoleError> {
    let queue = queue_named(&queue)?;
    let (management, vhost) = management(&state)?;
    let dead = management.queue(vhost, &queue.dead_letter_queue()).await?;
    Ok(page::signed_in(
        &session,
        "Confirm",
        html! {
            h1 { "Move " (dead.messages) " dead letters back?" }
            div.card {
                p { "Every message of " code { (dead.name) } " goes back to " code { (queue.name()) }
                    " with a fresh delivery count, through a shovel that deletes itself once the "
                    "dead-letter queue is empty (docs/operations.md, \"Runbook: dead letters\"). "
                    "Fix the cause first: a message that still fails comes back here." }
                form #confirm method="post" action={ "/console/queues/" (queue.name()) "/move-back" } {
                    (csrf_field(&session))
                    button.danger type="submit" { "Yes, move them back" }
                    " " a href="/console/queues" { "Cancel" }
                }
            }
        },
    ))
}

/// `POST /console/queues/{queue}/move-back`.
pub(crate) async fn move_back(
    Actor(session): Actor,
    State(state): State<ConsoleState>,
    Path(queue): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    if !session.csrf_matches(&form.csrf) {
        return Err(ConsoleError::BadCsrf);
    }
    let queue = queue_named(&queue)?;
    let (management, vhost) = management(&state)?;
    management
        .move_messages(vhost, &queue.dead_letter_queue(), queue.name())
        .await?;
    tracing::info!(queue = queue.name(), "console moved dead letters back");
    Ok(Redirect::to("/console/queues").into_response())
}
