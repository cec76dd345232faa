//! `keyledger audit …` and `keyledger projections rebuild`: the auditor's view of the log
//! and the repair of read models from it.

use std::io::Write;

use anyhow::bail;
use domain::EventType;
use eventstore::{EventStore, RecordedEvent, verify_chains};
use uuid::Uuid;

const EXPORT_PAGE: i64 = 1000;

/// Prints a key's history, oldest first. Returns false when the key has no events.
pub async fn history(
    store: &EventStore,
    key_id: Uuid,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let events = store.read_stream(key_id).await?;
    if events.is_empty() {
        bail!("no events recorded for key {key_id}");
    }
    if json {
        for event in &events {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        }
        return Ok(true);
    }
    writeln!(out, "key {key_id}: {} events", events.len())?;
    for event in &events {
        writeln!(out, "{}", describe(event))?;
    }
    Ok(true)
}

/// One human-readable line for an event.
fn describe(event: &RecordedEvent) -> String {
    let when = event
        .recorded_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| event.recorded_at.to_string());
    let actor = &event.metadata["actor"];
    let by = format!(
        "{}:{}",
        actor["kind"].as_str().unwrap_or("?"),
        actor["id"].as_str().unwrap_or("?")
    );
    let detail = summarize(event);
    format!(
        "  v{:<3} {when}  #{:<8} {:<26} by {by:<24} {detail}",
        event.version, event.position, event.event_type
    )
}

fn summarize(event: &RecordedEvent) -> String {
    let data = &event.data;
    let field = |name: &str| data[name].as_str().unwrap_or_default().to_owned();
    match EventType::parse(&event.event_type) {
        Some(EventType::Requested) => format!(
            "client {} for user {} at {}, expires {}",
            field("client_uuid"),
            data["user_id"],
            field("location"),
            data["expires_at"].as_str().unwrap_or("never")
        ),
        Some(EventType::Provisioned) => format!(
            "client {} in inbound {}",
            field("client_uuid"),
            data["inbound_id"]
        ),
        Some(EventType::RotationRequested) => {
            format!(
                "{} -> {}",
                field("old_client_uuid"),
                field("new_client_uuid")
            )
        }
        Some(EventType::Rotated) => format!("now {}", field("client_uuid")),
        Some(EventType::RevocationRequested) => format!("reason: {}", field("reason")),
        Some(EventType::Renewed) => format!("until {}", field("expires_at")),
        Some(EventType::ProvisioningFailed) => format!(
            "attempt {}: {} (retry at {})",
            data["attempt"],
            field("error"),
            field("retry_at")
        ),
        Some(EventType::DriftDetected | EventType::DriftRepaired) => {
            format!("kind {}", field("kind"))
        }
        _ => String::new(),
    }
}

/// Checks every hash chain and the append-only guards; returns whether all hold.
pub async fn verify(store: &EventStore, out: &mut impl Write) -> anyhow::Result<bool> {
    let report = verify_chains(store.pool()).await?;
    for guard in &report.disabled_guards {
        writeln!(out, "GUARD  {guard}")?;
    }
    for broken in &report.breaks {
        writeln!(
            out,
            "BREAK  stream {} version {} (position {}): {}",
            broken.stream_id, broken.version, broken.position, broken.problem
        )?;
    }
    let verdict = if report.holds() {
        "all hash chains hold"
    } else {
        "the log was altered"
    };
    writeln!(
        out,
        "checked {} events in {} streams: {verdict}",
        report.events, report.streams
    )?;
    let views = projector::verify_views(store).await?;
    for difference in &views.differences {
        writeln!(
            out,
            "VIEW   key {}: stored {} but the log replays to {}",
            difference.key_id,
            serde_json::to_string(&difference.stored)?,
            serde_json::to_string(&difference.replayed)?
        )?;
    }
    let verdict = if views.holds() {
        "every key view equals a replay"
    } else {
        "key views differ from the log"
    };
    writeln!(
        out,
        "checked the views of {} keys: {verdict} ({} still catching up)",
        views.keys,
        views.lagging.len()
    )?;
    let subscriptions = projector::verify_subscription_views(store).await?;
    for difference in &subscriptions.differences {
        writeln!(
            out,
            "VIEW   subscription {}: stored {} but the log replays to {}",
            difference.subscription_id,
            serde_json::to_string(&difference.stored)?,
            serde_json::to_string(&difference.replayed)?
        )?;
    }
    let verdict = if subscriptions.holds() {
        "every subscription view equals a replay"
    } else {
        "subscription views differ from the log"
    };
    writeln!(
        out,
        "checked the views of {} subscriptions: {verdict} ({} still catching up)",
        subscriptions.subscriptions,
        subscriptions.lagging.len()
    )?;
    Ok(report.holds() && views.holds() && subscriptions.holds())
}

/// `keyledger projections rebuild`.
pub async fn rebuild_projections(store: &EventStore, out: &mut impl Write) -> anyhow::Result<()> {
    let report = projector::rebuild(store).await?;
    writeln!(
        out,
        "rebuilt {} key views from {} events ({} keys caught up during the rebuild) and {} subscription views",
        report.views, report.events, report.caught_up, report.subscriptions
    )?;
    Ok(())
}

/// Every event after `after` that had committed when the export began, as JSON lines in
/// log order.
pub async fn export(store: &EventStore, after: i64, out: &mut impl Write) -> anyhow::Result<bool> {
    let target = store.last_position().await?;
    let mut position = after;
    loop {
        let page = store.read_page_until(position, target, EXPORT_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(true);
        };
        position = last.position;
        for event in &page {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        }
    }
}
