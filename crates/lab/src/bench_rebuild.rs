//! `keyledger bench rebuild`: how fast the key views are rebuilt from the log, against a
//! raw ordered scan of the same rows (`COPY … TO STDOUT`, read and discarded) measured in
//! the same run.

use std::io::Write;
use std::time::{Duration, Instant};

use domain::{
    DriftKind, KeyDriftDetected, KeyDriftRepaired, KeyEvent, KeyId, KeyProvisioned, KeyRenewed,
    KeyRequested, KeyRevocationRequested, KeyRotated, KeyRotationRequested, LocationId, UserId,
    client_email,
};
use eventstore::{EventStore, NewEvent};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RebuildBenchArgs;
use crate::bench::sample_metadata;
use crate::scratch::{ScratchDatabase, scratch_name};
use service::config::Config;

/// The rebuild must reach this fraction of the raw scan's rate (issue "Projector…").
const REBUILD_TARGET_RATIO: f64 = 0.25;

/// Events per key in the generated log: a full life with rotations, renewal and drift.
const EVENTS_PER_KEY: usize = 10;

#[derive(Debug, Serialize)]
struct RebuildReport {
    events: u64,
    keys: u64,
    rounds: u32,
    rebuild_events_per_s: f64,
    baseline_scan_events_per_s: f64,
    ratio: f64,
    target_ratio: f64,
    meets_target: bool,
    fill_seconds: f64,
}

/// `keyledger bench rebuild`.
pub async fn rebuild(
    config: &Config,
    args: &RebuildBenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let scratch = ScratchDatabase::create(config, &scratch_name("bench"), 20).await?;
    let result = run(&scratch, args).await;
    scratch.drop().await?;
    let report = result?;
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

async fn run(scratch: &ScratchDatabase, args: &RebuildBenchArgs) -> anyhow::Result<RebuildReport> {
    let store = EventStore::new(scratch.pool.clone());
    store.migrate().await?;
    let keys = args.events.div_ceil(EVENTS_PER_KEY).max(1);
    let started = Instant::now();
    fill(&store, keys).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let events = store.last_position().await? as u64;
    sqlx::query("VACUUM ANALYZE events")
        .execute(store.pool())
        .await?;

    // Alternate the two, best of each, so a noisy neighbour hurts both alike.
    let (mut best_rebuild, mut best_scan) = (Duration::MAX, Duration::MAX);
    for _ in 0..args.rounds.max(1) {
        best_scan = best_scan.min(raw_scan(&store).await?);
        let started = Instant::now();
        let report = projector::rebuild(&store).await?;
        best_rebuild = best_rebuild.min(started.elapsed());
        anyhow::ensure!(
            report.views == keys,
            "rebuild made {} views for {keys} keys",
            report.views
        );
    }
    let rebuild_rate = events as f64 / best_rebuild.as_secs_f64();
    let scan_rate = events as f64 / best_scan.as_secs_f64();
    let ratio = rebuild_rate / scan_rate;
    Ok(RebuildReport {
        events,
        keys: keys as u64,
        rounds: args.rounds.max(1),
        rebuild_events_per_s: rebuild_rate.round(),
        baseline_scan_events_per_s: scan_rate.round(),
        ratio: (ratio * 1000.0).round() / 1000.0,
        target_ratio: REBUILD_TARGET_RATIO,
        meets_target: ratio >= REBUILD_TARGET_RATIO,
        fill_seconds: (fill_seconds * 10.0).round() / 10.0,
    })
}

/// The baseline: every row of the log in position order, as COPY streams it, discarded.
async fn raw_scan(store: &EventStore) -> anyhow::Result<Duration> {
    let mut conn = store.pool().acquire().await?;
    let started = Instant::now();
    let mut stream = conn
        .copy_out_raw(
            "COPY (SELECT position, stream_id, version, type, data, metadata, event_id,
                          recorded_at, hash
                   FROM events ORDER BY position) TO STDOUT",
        )
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.try_next().await? {
        bytes += chunk.len();
    }
    anyhow::ensure!(bytes > 0, "the scan read nothing");
    Ok(started.elapsed())
}

/// Writes `keys` keys' lives, one append per key, sixteen appends at a time.
async fn fill(store: &EventStore, keys: usize) -> anyhow::Result<()> {
    futures::stream::iter(0..keys)
        .map(|n| {
            let store = store.clone();
            async move {
                let (key_id, events) = key_life(n)?;
                store
                    .append(key_id.as_uuid(), 0, &events, &sample_metadata())
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}

fn key_life(n: usize) -> anyhow::Result<(KeyId, Vec<NewEvent>)> {
    let user = UserId::new(1_000_000 + n as i64)?;
    let location = LocationId::new(if n.is_multiple_of(2) { "ams" } else { "fra" })?;
    let key_id = KeyId::for_user_at(user, &location);
    let email = client_email(user, &location);
    let uuids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    let link = |id: Uuid| {
        Some(format!(
            "vless://{id}@{}.example.com:443?type=tcp&security=reality#{email}",
            location.as_str()
        ))
    };
    let later = OffsetDateTime::now_utc() + time::Duration::days(60);
    let events = [
        KeyEvent::Requested(KeyRequested {
            user_id: user,
            location: location.clone(),
            client_uuid: uuids[0],
            email: email.clone(),
            expires_at: Some(later - time::Duration::days(30)),
            traffic_limit_bytes: 0,
        }),
        KeyEvent::Provisioned(KeyProvisioned {
            client_uuid: uuids[0],
            inbound_id: 1,
            link: link(uuids[0]),
        }),
        KeyEvent::RotationRequested(KeyRotationRequested {
            old_client_uuid: uuids[0],
            new_client_uuid: uuids[1],
        }),
        KeyEvent::Rotated(KeyRotated {
            client_uuid: uuids[1],
            link: link(uuids[1]),
        }),
        KeyEvent::RotationRequested(KeyRotationRequested {
            old_client_uuid: uuids[1],
            new_client_uuid: uuids[2],
        }),
        KeyEvent::Rotated(KeyRotated {
            client_uuid: uuids[2],
            link: link(uuids[2]),
        }),
        KeyEvent::Renewed(KeyRenewed { expires_at: later }),
        KeyEvent::DriftDetected(KeyDriftDetected {
            kind: DriftKind::SettingsDiffer,
            expected: json!({"enable": true}),
            observed: json!({"enable": false}),
        }),
        KeyEvent::DriftRepaired(KeyDriftRepaired {
            kind: DriftKind::SettingsDiffer,
        }),
        KeyEvent::RevocationRequested(KeyRevocationRequested {
            reason: "bench".into(),
        }),
    ];
    Ok((
        key_id,
        events.iter().map(NewEvent::from_key_event).collect(),
    ))
}
