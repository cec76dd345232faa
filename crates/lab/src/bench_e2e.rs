//! `keyledger bench e2e`: simulated users against the whole pipeline (relay, worker,
//! projector, bot) with a simulated panel of a given latency, and the panel's own capacity
//! at that latency measured in the same run as the baseline.
//!
//! Latencies are read from the log afterwards, not from timers in this process: a command
//! is accepted when its event is recorded, confirmed when the worker's acknowledgement is,
//! and the user is notified when the bot's notification for that acknowledgement was sent.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::{EventType, KeyCommand, KeyId, LocationId, RequestKey, RevokeKey, RotateKey, UserId};
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, KeyLedger};
use futures::StreamExt;
use serde::Serialize;
use telegram_fake::FakeTelegram;
use time::OffsetDateTime;
use tokio::sync::Notify;
use url::Url;
use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};

use crate::E2eBenchArgs;
use crate::scratch::Scratch;
use service::Role;
use service::config::{Config, Secret};
use service::serve::start_roles;

const LOCATION: &str = "bench";
const INBOUND_ID: i64 = 1;
/// How long one user's step may take before the benchmark fails, naming it.
const STEP_DEADLINE: Duration = Duration::from_secs(120);
/// How long the baseline measures the simulator alone.
const BASELINE_SECONDS: f64 = 3.0;

#[derive(Debug, Serialize)]
struct Report {
    users: usize,
    panel_latency_ms: u64,
    concurrency: usize,
    commands: usize,
    seconds: f64,
    commands_per_s: f64,
    accepted_to_panel_confirmed_ms: Percentiles,
    accepted_to_user_notified_ms: Percentiles,
    panel_calls: u64,
    panel_calls_per_key_operation: f64,
    panel_calls_per_s: f64,
    baseline_panel_capacity_calls_per_s: f64,
    fraction_of_panel_capacity: f64,
    /// The panel's capacity for calls made one at a time: the bound for its writes, which
    /// we serialise per panel (its read-modify-write loses concurrent ones).
    baseline_panel_serial_calls_per_s: f64,
    fraction_of_serial_capacity: f64,
    peak_memory_mib: f64,
    final_drift: usize,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    samples: usize,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((samples.len() - 1) as f64 * q).round() as usize;
        (samples[index] * 10.0).round() / 10.0
    };
    Percentiles {
        samples: samples.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// `keyledger bench e2e`.
pub async fn e2e(config: &Config, args: &E2eBenchArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let scratch = Scratch::create(config, "bench", 16).await?;
    let result = run(config, &scratch, args).await;
    let cleanup = scratch.remove().await;
    let report = result?;
    cleanup?;
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    if report.final_drift > 0 {
        bail!(
            "the panel differs from the log after the run: {} findings",
            report.final_drift
        );
    }
    Ok(())
}

async fn run(config: &Config, scratch: &Scratch, args: &E2eBenchArgs) -> anyhow::Result<Report> {
    let latency = Duration::from_millis(args.panel_latency_ms);
    let baseline = panel_capacity(latency, args.concurrency).await?;
    let serial = panel_capacity(latency, 1).await?;

    let panel = PanelSimulator::start(SimConfig::v2_9()).await?;
    panel
        .handle()
        .update_faults(|faults| faults.latency = latency);
    let telegram = FakeTelegram::start().await?;
    let bench = bench_config(config, scratch, panel.base_url(), &telegram)?;
    let store = EventStore::new(scratch.database.pool.clone());
    store.migrate().await?;
    register_users(&store, args.users).await?;
    let roles = [Role::Relay, Role::Projector, Role::Worker, Role::Bot];
    let running = start_roles(&bench, &store, &roles)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let progress = Arc::new(Progress::default());
    let follower = tokio::spawn(follow(store.clone(), progress.clone()));
    let calls_before = panel.handle().requests();
    let started = Instant::now();
    let played = futures::stream::iter(0..args.users)
        .map(|n| play_user(&store, &progress, n))
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let panel_calls = panel.handle().requests() - calls_before;
    follower.abort();
    played.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    let panels = service::panels::panels(&bench)?;
    let pass = x3ui_worker::Reconciler::new(store.clone(), panels)
        .reconcile(None, true)
        .await?;
    let final_drift =
        pass.reports.iter().map(|r| r.findings.len()).sum::<usize>() + pass.failures.len();
    let (confirmed, notified) = latencies(&store).await?;
    running.stop().await;

    let commands = args.users * COMMANDS_PER_USER;
    let panel_calls_per_s = panel_calls as f64 / seconds;
    Ok(Report {
        users: args.users,
        panel_latency_ms: args.panel_latency_ms,
        concurrency: args.concurrency,
        commands,
        seconds: (seconds * 10.0).round() / 10.0,
        commands_per_s: (commands as f64 / seconds * 10.0).round() / 10.0,
        accepted_to_panel_confirmed_ms: percentiles(confirmed),
        accepted_to_user_notified_ms: percentiles(notified),
        panel_calls,
        panel_calls_per_key_operation: (panel_calls as f64 / commands as f64 * 100.0).round()
            / 100.0,
        panel_calls_per_s: panel_calls_per_s.round(),
        baseline_panel_capacity_calls_per_s: baseline.round(),
        fraction_of_panel_capacity: (panel_calls_per_s / baseline * 1000.0).round() / 1000.0,
        baseline_panel_serial_calls_per_s: serial.round(),
        fraction_of_serial_capacity: (panel_calls_per_s / serial * 1000.0).round() / 1000.0,
        peak_memory_mib: peak_memory_mib(),
        final_drift,
    })
}

/// Request, refresh three times, revoke.
const COMMANDS_PER_USER: usize = 5;

fn bench_config(
    config: &Config,
    scratch: &Scratch,
    panel_url: Url,
    telegram: &FakeTelegram,
) -> anyhow::Result<Config> {
    let mut bench = scratch.config_with_simulator(config, LOCATION, panel_url)?;
    bench.telegram_bot_token = Some(Secret::new(telegram.token()));
    bench.telegram_api_url = telegram.api_url();
    Ok(bench)
}

fn user_id(n: usize) -> i64 {
    5_000_000 + n as i64
}

/// The users have talked to the bot before (`/start`), so it knows their chats.
async fn register_users(store: &EventStore, users: usize) -> anyhow::Result<()> {
    let ids: Vec<i64> = (0..users).map(user_id).collect();
    sqlx::query(
        "INSERT INTO bot_users (user_id, chat_id, language)
         SELECT id, id, 'en' FROM UNNEST($1::bigint[]) AS id",
    )
    .bind(&ids)
    .execute(store.pool())
    .await?;
    Ok(())
}

/// What the users wait for: acknowledgements in the log and notifications sent.
#[derive(Default)]
struct Progress {
    /// Per key, the acknowledgements seen: (version, type).
    acks: Mutex<HashMap<Uuid, Vec<(i32, String)>>>,
    /// Notification ids (`key/version`) sent.
    notified: Mutex<HashSet<String>>,
    changed: Notify,
}

impl Progress {
    fn ack_after(&self, key: Uuid, version: i32, kind: &str) -> Option<i32> {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        acks.get(&key)?
            .iter()
            .find(|(v, t)| *v > version && t == kind)
            .map(|(v, _)| *v)
    }

    fn was_notified(&self, id: &str) -> bool {
        self.notified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    async fn until<T>(&self, what: &str, check: impl Fn() -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
        loop {
            // Registered before the check, so a change between the two still wakes us.
            let changed = self.changed.notified();
            if let Some(found) = check() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                bail!("gave up waiting for {what}");
            }
        }
    }
}

/// Follows the log and the bot's sent notifications, waking the users on every change.
async fn follow(store: EventStore, progress: Arc<Progress>) -> anyhow::Result<()> {
    let mut after = 0;
    // Notifications are read again from a little before the newest one seen: sends that
    // commit out of order are still found, and the set drops the repeats.
    let mut newest_sent = OffsetDateTime::UNIX_EPOCH;
    loop {
        let events = store.read_all(after, 1000).await?;
        let sent: Vec<(String, OffsetDateTime)> = sqlx::query_as(
            "SELECT id, done_at FROM bot_notifications
             WHERE outcome = 'sent' AND done_at >= $1",
        )
        .bind(newest_sent - time::Duration::seconds(5))
        .fetch_all(store.pool())
        .await?;
        let mut new_sent = false;
        {
            let mut notified = progress
                .notified
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (id, done_at) in sent {
                newest_sent = newest_sent.max(done_at);
                new_sent |= notified.insert(id);
            }
        }
        if events.is_empty() && !new_sent {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        {
            let mut acks = progress.acks.lock().unwrap_or_else(PoisonError::into_inner);
            for event in &events {
                after = event.position;
                if matches!(
                    EventType::parse(&event.event_type),
                    Some(EventType::Provisioned | EventType::Rotated | EventType::Revoked)
                ) {
                    acks.entry(event.stream_id)
                        .or_default()
                        .push((event.version, event.event_type.clone()));
                }
            }
        }
        progress.changed.notify_waiters();
    }
}

/// One user's life: each step waits until the panel confirmed it and the user was told.
async fn play_user(store: &EventStore, progress: &Progress, n: usize) -> anyhow::Result<()> {
    let ledger = KeyLedger::new(store.clone());
    let user = UserId::new(user_id(n))?;
    let location = LocationId::new(LOCATION)?;
    let key = KeyId::for_user_at(user, &location);
    let metadata = || {
        EventMetadata::for_command(
            Uuid::new_v4(),
            Actor::new(ActorKind::TelegramUser, user.get().to_string()),
        )
    };
    let mut commands = vec![KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    })];
    for _ in 0..3 {
        commands.push(KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: Uuid::new_v4(),
        }));
    }
    commands.push(KeyCommand::Revoke(RevokeKey {
        reason: "bench".into(),
    }));
    for command in commands {
        let ack = match command {
            KeyCommand::Request(_) => EventType::Provisioned.as_str(),
            KeyCommand::Rotate(_) => EventType::Rotated.as_str(),
            _ => EventType::Revoked.as_str(),
        };
        let outcome = ledger.execute(key, &command, &metadata()).await?;
        let version = outcome.state.version as i32;
        let what = format!("{ack} of key {} after version {version}", key.as_uuid());
        let acked = progress
            .until(&what, || progress.ack_after(key.as_uuid(), version, ack))
            .await?;
        let id = format!("{}/{acked:010}", key.as_uuid());
        progress
            .until(&format!("the notification {id}"), || {
                progress.was_notified(&id).then_some(())
            })
            .await?;
    }
    Ok(())
}

/// Milliseconds from each command's event to its acknowledgement, and to the sent
/// notification of that acknowledgement.
async fn latencies(store: &EventStore) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let rows: Vec<(f64, Option<f64>)> = sqlx::query_as(
        "SELECT extract(epoch FROM a.recorded_at - c.recorded_at)::float8 * 1000,
                extract(epoch FROM n.done_at - c.recorded_at)::float8 * 1000
         FROM events c
         JOIN LATERAL (
             SELECT a.recorded_at, a.version FROM events a
             WHERE a.stream_id = c.stream_id AND a.version > c.version
               AND a.type = CASE c.type WHEN $1 THEN $2
                                        WHEN $3 THEN $4
                                        ELSE $5 END
             ORDER BY a.version LIMIT 1) a ON true
         LEFT JOIN bot_notifications n
             ON n.id = c.stream_id::text || '/' || lpad(a.version::text, 10, '0')
            AND n.outcome = 'sent'
         WHERE c.type IN ($1, $3, $6)",
    )
    .bind(EventType::Requested.as_str())
    .bind(EventType::Provisioned.as_str())
    .bind(EventType::RotationRequested.as_str())
    .bind(EventType::Rotated.as_str())
    .bind(EventType::Revoked.as_str())
    .bind(EventType::RevocationRequested.as_str())
    .fetch_all(store.pool())
    .await?;
    let confirmed = rows.iter().map(|(c, _)| *c).collect();
    let notified = rows.iter().filter_map(|(_, n)| *n).collect();
    Ok((confirmed, notified))
}

/// The baseline: the simulator alone, at the same latency and concurrency, answering
/// list calls from our panel client as fast as it can.
async fn panel_capacity(latency: Duration, concurrency: usize) -> anyhow::Result<f64> {
    let panel = PanelSimulator::start(SimConfig::v2_9()).await?;
    panel
        .handle()
        .update_faults(|faults| faults.latency = latency);
    let client = Arc::new(
        x3ui_worker::Panel::connect(
            panel.panel_config(LOCATION, INBOUND_ID),
            x3ui_worker::ResiliencePolicy::default(),
        )
        .context("panel client for the baseline")?,
    );
    client.list_clients().await?;
    let before = panel.handle().requests();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(BASELINE_SECONDS);
    let workers = (0..concurrency.max(1)).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                client.list_clients().await?;
            }
            anyhow::Ok(())
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    let calls = panel.handle().requests() - before;
    Ok(calls as f64 / started.elapsed().as_secs_f64())
}

/// The process's peak resident memory (the service runs in this process).
fn peak_memory_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| (kib / 1024.0 * 10.0).round() / 10.0)
}
