//! The fault suite (issue 6): a stream of user commands runs while a fault happens, then
//! the whole system must converge within a deadline — every panel equals the log, every
//! command's outcome is in the log exactly once, every key view equals a replay, and
//! `keyledger audit verify` passes. `assert_converged` checks all four for every scenario.
//!
//! keyledger runs as separate OS processes (`serve --roles relay,projector` and
//! `serve --roles worker`) against this test's own database and RabbitMQ vhost; the panel
//! simulator runs inside the test process. Commands go straight through `KeyLedger`, each
//! with its own command id, retried with that same id when the store is unreachable.
//!
//! The two scenarios that restart a shared service (RabbitMQ, PostgreSQL) are named
//! `*restarted_for_real*`, so `.config/nextest.toml` runs them alone.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Serving, tempfile_with};
use domain::{
    DomainError, EventType, KeyCommand, KeyId, KeyState, LocationId, Phase, RequestKey, RevokeKey,
    RotateKey, UserId, evolve,
};
use eventstore::{Actor, ActorKind, EventMetadata, ExecuteError, KeyLedger, RecordedEvent};
use serde_json::{Map, Value, json};
use testkit::TestBroker;
use testkit::TestDatabase;
use uuid::Uuid;
use x3ui_sim::{DownMode, PanelSimulator, SimConfig};

/// How long the system may take to converge once the stream has ended.
const CONVERGENCE: Duration = Duration::from_secs(90);
/// How long one user waits for the panel to confirm a step before giving up.
const STEP_DEADLINE: Duration = Duration::from_secs(120);
const INBOUND: i64 = 1;
const LOCATION: &str = "ams";

// ---------------------------------------------------------------------------------------
// The rig: database, vhost, panel, configuration, keyledger processes.

struct Rig {
    db: TestDatabase,
    broker: TestBroker,
    panel: PanelSimulator,
    config: String,
    ledger: KeyLedger,
    journal: Journal,
}

impl Rig {
    async fn new(sim: SimConfig) -> Self {
        let db = TestDatabase::create().await;
        let broker = TestBroker::create().await;
        let panel = PanelSimulator::start(sim).await.expect("simulator");
        let config = tempfile_with(&format!(
            "[[locations]]\nid = \"{LOCATION}\"\nname = \"Amsterdam\"\npanel_url = \"{}\"\n\
             username = \"admin\"\npassword_env = \"X3UI_AMS_PASSWORD\"\ninbound_id = {INBOUND}\n\
             public_host = \"ams.example.com\"\n\
         allow_plain_http = true\n",
            panel.base_url()
        ));
        let ledger = KeyLedger::new(db.store.clone());
        Self {
            db,
            broker,
            panel,
            config,
            ledger,
            journal: Journal::default(),
        }
    }

    /// The processes' environment; `FAULTS_RUST_LOG` overrides their log filter.
    fn env(&self) -> [(&'static str, &str); 5] {
        [
            ("DATABASE_URL", self.db.url.as_str()),
            ("AMQP_URL", self.broker.amqp_url.as_str()),
            ("KEYLEDGER_CONFIG", self.config.as_str()),
            ("X3UI_AMS_PASSWORD", "sim-password"),
            ("RUST_LOG", log_filter()),
        ]
    }

    /// `keyledger serve --roles <roles>` as its own OS process.
    async fn serve(&self, roles: &str) -> Serving {
        Serving::start(roles, &self.env()).await
    }

    /// A keyledger CLI command with this rig's environment; (exit code, stdout, stderr).
    async fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let env: Vec<(String, String)> = self
            .env()
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_keyledger"))
                .args(&args)
                .env_clear()
                .envs(env)
                .env("KEYLEDGER_LOG_FORMAT", "json")
                .output()
        })
        .await
        .expect("join")
        .expect("keyledger runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Every committed event, by stream, in version order. Retries while the store is
    /// unreachable (a restart).
    async fn streams(&self) -> Result<BTreeMap<Uuid, Vec<RecordedEvent>>, String> {
        let events = self
            .db
            .store
            .read_committed(0)
            .await
            .map_err(|e| format!("reading the log: {e}"))?;
        let mut streams: BTreeMap<Uuid, Vec<RecordedEvent>> = BTreeMap::new();
        for event in events {
            streams.entry(event.stream_id).or_default().push(event);
        }
        Ok(streams)
    }

    /// How many panel acknowledgements the log holds (`key.provisioned`, `key.rotated`,
    /// `key.revoked`): how far the stream has come.
    async fn acknowledgements(&self) -> usize {
        let Ok(streams) = self.streams().await else {
            return 0;
        };
        streams
            .values()
            .flatten()
            .filter(|e| is_ack(&e.event_type))
            .count()
    }

    /// Keys whose latest phase still waits for the panel.
    async fn keys_awaiting_panel(&self) -> usize {
        let Ok(streams) = self.streams().await else {
            return 0;
        };
        streams
            .values()
            .filter(|events| replay(events).phase.awaits_panel())
            .count()
    }
}

fn log_filter() -> &'static str {
    static FILTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILTER.get_or_init(|| std::env::var("FAULTS_RUST_LOG").unwrap_or_else(|_| "info".into()))
}

// ---------------------------------------------------------------------------------------
// The stream of user commands.

/// A command the log accepted (it recorded events), to be found there exactly once.
#[derive(Debug, Clone)]
struct Accepted {
    key_id: Uuid,
    command_id: Uuid,
    event_type: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Journal(Arc<Mutex<Vec<Accepted>>>);

impl Journal {
    fn push(&self, accepted: Accepted) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(accepted);
    }

    fn entries(&self) -> Vec<Accepted> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Revoke {
    Never,
    /// Right after the last rotate command, while the rotation is still in flight.
    WhileRotating,
    /// Once the last rotation is confirmed.
    WhenActive,
}

#[derive(Debug, Clone, Copy)]
struct UserPlan {
    user_id: i64,
    rotations: u32,
    revoke: Revoke,
}

/// `count` users from `first`: each requests a key and rotates it 2 or 3 times; every
/// fourth revokes mid-rotation, every other fourth once active.
fn plans(first: i64, count: i64) -> Vec<UserPlan> {
    (0..count)
        .map(|i| UserPlan {
            user_id: first + i,
            rotations: 2 + (i % 2) as u32,
            revoke: match i % 4 {
                1 => Revoke::WhileRotating,
                3 => Revoke::WhenActive,
                _ => Revoke::Never,
            },
        })
        .collect()
}

fn key_of(user_id: i64) -> KeyId {
    let user = UserId::new(user_id).expect("user id");
    KeyId::for_user_at(user, &LocationId::new(LOCATION).expect("location"))
}

/// Runs `command` once under a fresh command id, retrying with that same id while the
/// store fails (a restart, contention): a retried command must not be recorded twice.
async fn execute(
    ledger: &KeyLedger,
    journal: &Journal,
    key: KeyId,
    command: KeyCommand,
    event_type: &'static str,
) -> Result<(), DomainError> {
    let command_id = Uuid::new_v4();
    let metadata =
        EventMetadata::for_command(command_id, Actor::new(ActorKind::Admin, "fault-suite"));
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        match ledger.execute(key, &command, &metadata).await {
            Ok(outcome) => {
                if !outcome.recorded.is_empty() {
                    journal.push(Accepted {
                        key_id: key.as_uuid(),
                        command_id,
                        event_type,
                    });
                }
                return Ok(());
            }
            Err(ExecuteError::Refused(refusal)) => return Err(refusal),
            Err(other) => {
                assert!(
                    Instant::now() < deadline,
                    "key {key}: {event_type} kept failing: {other}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits until the key is active (the panel confirmed its last step).
async fn wait_active(ledger: &KeyLedger, key: KeyId) {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Ok((state, _)) = ledger.load(key).await
            && state.phase == Phase::Active
        {
            return;
        }
        if Instant::now() >= deadline {
            let history: Vec<String> = match ledger.load(key).await {
                Ok((_, events)) => events
                    .iter()
                    .map(|e| format!("v{} {} {}", e.version, e.event_type, e.data))
                    .collect(),
                Err(e) => vec![e.to_string()],
            };
            panic!("key {key} did not become active within {STEP_DEADLINE:?}: {history:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_user(ledger: KeyLedger, journal: Journal, plan: UserPlan) {
    let user = UserId::new(plan.user_id).expect("user id");
    let location = LocationId::new(LOCATION).expect("location");
    let key = KeyId::for_user_at(user, &location);
    let request = KeyCommand::Request(RequestKey {
        user_id: user,
        location,
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: time::OffsetDateTime::now_utc(),
    });
    execute(
        &ledger,
        &journal,
        key,
        request,
        EventType::Requested.as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("key {key}: request refused: {e}"));
    for _ in 0..plan.rotations {
        wait_active(&ledger, key).await;
        let rotate = KeyCommand::Rotate(RotateKey {
            fresh_client_uuid: Uuid::new_v4(),
        });
        execute(
            &ledger,
            &journal,
            key,
            rotate,
            EventType::RotationRequested.as_str(),
        )
        .await
        .unwrap_or_else(|e| panic!("key {key}: rotation of an active key refused: {e}"));
    }
    if plan.revoke == Revoke::Never {
        return;
    }
    if plan.revoke == Revoke::WhenActive {
        wait_active(&ledger, key).await;
    }
    let revoke = KeyCommand::Revoke(RevokeKey {
        reason: "fault suite".into(),
    });
    execute(
        &ledger,
        &journal,
        key,
        revoke,
        EventType::RevocationRequested.as_str(),
    )
    .await
    .unwrap_or_else(|e| panic!("key {key}: revocation refused: {e}"));
}

/// Starts every user's script, one every `pace`, so that the stream spans the fault.
fn start_users(rig: &Rig, plans: &[UserPlan], pace: Duration) -> tokio::task::JoinSet<()> {
    let mut users = tokio::task::JoinSet::new();
    for (i, plan) in plans.iter().copied().enumerate() {
        let (ledger, journal) = (rig.ledger.clone(), rig.journal.clone());
        users.spawn(async move {
            tokio::time::sleep(pace * i as u32).await;
            run_user(ledger, journal, plan).await;
        });
    }
    users
}

/// Waits for every user's script to end; returns the first script's failure.
async fn finish_users(mut users: tokio::task::JoinSet<()>) -> Result<(), String> {
    let mut failure = Ok(());
    while let Some(joined) = users.join_next().await {
        if let Err(error) = joined
            && failure.is_ok()
        {
            let panic = error.into_panic();
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a user script panicked".to_owned());
            failure = Err(text);
        }
    }
    failure
}

/// Scripts that already ended with `result`, for [`assert_converged`].
fn done(result: Result<(), String>) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(async move {
        if let Err(failure) = result {
            panic!("{failure}");
        }
    });
    set
}

/// Waits until the log holds at least `count` acknowledgements: the stream is under way.
async fn wait_for_acknowledgements(rig: &Rig, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.acknowledgements().await < count {
        assert!(
            Instant::now() < deadline,
            "the stream did not reach {count} acknowledgements"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Convergence.

fn ack_for_start(event_type: &str) -> Option<&'static str> {
    match EventType::parse(event_type)? {
        EventType::Requested => Some(EventType::Provisioned.as_str()),
        EventType::RotationRequested => Some(EventType::Rotated.as_str()),
        EventType::RevocationRequested => Some(EventType::Revoked.as_str()),
        _ => None,
    }
}

fn is_ack(event_type: &str) -> bool {
    matches!(
        EventType::parse(event_type),
        Some(EventType::Provisioned | EventType::Rotated | EventType::Revoked)
    )
}

fn replay(events: &[RecordedEvent]) -> KeyState {
    events.iter().fold(KeyState::default(), |state, event| {
        evolve(state, &event.key_event().expect("a key event"))
    })
}

/// `tg<digits>-ams`: an email keyledger gives this location's clients.
fn is_our_email(email: &str) -> bool {
    email
        .strip_prefix("tg")
        .and_then(|rest| rest.strip_suffix(&format!("-{LOCATION}")))
        .is_some_and(|user| !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()))
}

/// (1) every panel equals the log: a live key has exactly one client, with its email, its
/// current UUID, enabled; a revoked key has no enabled client; no other enabled client
/// carries one of our emails.
fn check_panel(
    streams: &BTreeMap<Uuid, Vec<RecordedEvent>>,
    clients: &[Map<String, Value>],
) -> Result<(), String> {
    let mut by_email: HashMap<String, Vec<&Map<String, Value>>> = HashMap::new();
    for client in clients {
        let email = client
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        by_email.entry(email).or_default().push(client);
    }
    for (key_id, events) in streams {
        let state = replay(events);
        let details = state
            .details
            .as_ref()
            .ok_or(format!("key {key_id}: no request"))?;
        let on_panel = by_email
            .remove(&details.email.to_ascii_lowercase())
            .unwrap_or_default();
        match state.phase {
            Phase::Active => {
                let [client] = on_panel.as_slice() else {
                    return Err(format!(
                        "key {key_id} ({}) is active; the panel holds {} clients with its email: {on_panel:?}",
                        details.email,
                        on_panel.len()
                    ));
                };
                if client.get("id") != Some(&json!(details.client_uuid.to_string()))
                    || client.get("enable") != Some(&json!(true))
                {
                    return Err(format!(
                        "key {key_id} is active with {}; the panel holds {client:?}",
                        details.client_uuid
                    ));
                }
            }
            Phase::Revoked | Phase::Expired => {
                if on_panel.len() > 1
                    || on_panel
                        .iter()
                        .any(|c| c.get("enable") != Some(&json!(false)))
                {
                    return Err(format!(
                        "key {key_id} is {:?}; the panel still holds {on_panel:?}",
                        state.phase
                    ));
                }
            }
            other => {
                return Err(format!(
                    "key {key_id} still waits for the panel ({other:?}); last event {}",
                    events.last().map_or("none", |e| e.event_type.as_str())
                ));
            }
        }
    }
    for (email, left) in by_email {
        if is_our_email(&email) && left.iter().any(|c| c.get("enable") != Some(&json!(false))) {
            return Err(format!(
                "the panel holds enabled clients with our email {email} that no key of the log has: {left:?}"
            ));
        }
    }
    Ok(())
}

/// (2) every accepted command's events are in the log exactly once, and every phase a
/// command started was acknowledged exactly once (or, for a rotation or request cut short
/// by a revocation, at most once).
fn check_outcomes(
    streams: &BTreeMap<Uuid, Vec<RecordedEvent>>,
    journal: &[Accepted],
) -> Result<(), String> {
    let mut by_command: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    for event in streams.values().flatten() {
        if let Some(id) = event
            .metadata
            .get("command_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
        {
            by_command.entry(id).or_default().push(event);
        }
    }
    for accepted in journal {
        let found = by_command
            .get(&accepted.command_id)
            .cloned()
            .unwrap_or_default();
        let types: Vec<&str> = found.iter().map(|e| e.event_type.as_str()).collect();
        if types != [accepted.event_type] || found[0].stream_id != accepted.key_id {
            return Err(format!(
                "command {} on key {} should have recorded one {}; the log has {types:?}",
                accepted.command_id, accepted.key_id, accepted.event_type
            ));
        }
    }
    let accepted_starts = journal.len();
    let mut logged_starts = 0;
    for (key_id, events) in streams {
        // (phase start, its acknowledgements so far)
        let mut open: Option<(&str, usize)> = None;
        for event in events {
            let kind = event.event_type.as_str();
            if ack_for_start(kind).is_some() {
                logged_starts += 1;
                if let Some((start, acks)) = open {
                    let needed = if kind == EventType::RotationRequested.as_str() {
                        1..=1
                    } else {
                        0..=1
                    };
                    if !needed.contains(&acks) {
                        return Err(format!(
                            "key {key_id}: {start} was acknowledged {acks} times before {kind} (v{})",
                            event.version
                        ));
                    }
                }
                open = Some((kind, 0));
            } else if is_ack(kind) {
                match &mut open {
                    Some((start, acks)) if ack_for_start(start) == Some(kind) => *acks += 1,
                    _ => {
                        return Err(format!(
                            "key {key_id}: {kind} (v{}) acknowledges no open phase",
                            event.version
                        ));
                    }
                }
            }
        }
        match open {
            Some((_, 1)) => {}
            Some((start, acks)) => {
                return Err(format!(
                    "key {key_id}: its last {start} was acknowledged {acks} times"
                ));
            }
            None => return Err(format!("key {key_id}: no command in its stream")),
        }
    }
    if logged_starts != accepted_starts {
        return Err(format!(
            "{accepted_starts} commands were accepted, the log holds {logged_starts} of their events"
        ));
    }
    Ok(())
}

/// (1)–(3) once; `Err` says what does not hold yet.
async fn check(rig: &Rig) -> Result<(), String> {
    let streams = rig.streams().await?;
    check_panel(&streams, &rig.panel.handle().clients(INBOUND))?;
    check_outcomes(&streams, &rig.journal.entries())?;
    let report = projector::verify_views(&rig.db.store)
        .await
        .map_err(|e| format!("verifying views: {e}"))?;
    if !report.holds() || !report.lagging.is_empty() {
        return Err(format!(
            "views: {} differ, {} lag: {:?} / {:?}",
            report.differences.len(),
            report.lagging.len(),
            report.differences.first(),
            report.lagging.first()
        ));
    }
    Ok(())
}

/// Waits (up to [`CONVERGENCE`]) until the panel equals the log, every command's outcome
/// is in the log exactly once and every view equals a replay, then runs `keyledger audit
/// verify`. Stops the processes (SIGTERM; each must exit 0) and returns how long
/// convergence took. On failure the processes' warnings and errors are in the message.
async fn assert_converged(
    rig: &Rig,
    processes: Vec<Serving>,
    users: tokio::task::JoinSet<()>,
) -> Duration {
    let users_failed = finish_users(users).await.err();
    let started = Instant::now();
    let mut last = Err("not checked".to_owned());
    while users_failed.is_none() && started.elapsed() < CONVERGENCE {
        last = check(rig).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();
    let mut logs = Vec::new();
    let mut exits = Vec::new();
    let mut all = Vec::new();
    for (i, process) in processes.into_iter().enumerate() {
        let (code, lines) = process.terminate().await;
        exits.push(code);
        all.extend(lines.iter().map(|l| format!("[process {i}] {l}")));
        logs.extend(
            lines
                .into_iter()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .map(|l| l.chars().take(400).collect::<String>()),
        );
    }
    // Every line the processes logged, for whoever investigates a failure.
    let saved = std::env::temp_dir().join(format!("keyledger-faults-{}.log", rig.broker.vhost));
    let _ = std::fs::write(&saved, all.join("\n"));
    let tail = format!(
        "{}\n(all {} log lines in {})",
        logs[logs.len().saturating_sub(12)..].join("\n"),
        all.len(),
        saved.display()
    );
    if let Some(reason) = users_failed {
        panic!("a user's script failed: {reason}\nlast warnings:\n{tail}");
    }
    if let Err(reason) = last {
        panic!("no convergence within {CONVERGENCE:?}: {reason}\nlast warnings:\n{tail}");
    }
    let (code, stdout, stderr) = rig.cli(&["audit", "verify"]).await;
    assert_eq!(code, Some(0), "audit verify failed:\n{stdout}\n{stderr}");
    assert!(
        exits.iter().all(|c| *c == Some(0)),
        "a process did not exit 0 on SIGTERM: {exits:?}\n{tail}"
    );
    let keys = rig.streams().await.map(|s| s.len()).unwrap_or(0);
    eprintln!(
        "converged in {took:?}: {keys} keys, {} accepted commands",
        rig.journal.entries().len()
    );
    took
}

// ---------------------------------------------------------------------------------------
// Scenarios.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_panel_calls_then_restarted_converges() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel
        .handle()
        .update_faults(|f| f.latency = Duration::from_millis(150));
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    let plans = plans(1000, 30);
    let users = start_users(&rig, &plans, Duration::from_millis(100));

    wait_for_acknowledgements(&rig, 10).await;
    let requests_before = rig.panel.handle().requests();
    let waiting = rig.keys_awaiting_panel().await;
    drop(worker); // SIGKILL: no shutdown, calls in flight are cut off
    assert!(waiting > 0, "the worker was killed with nothing in flight");
    // The panel keeps answering the calls the dead worker left; the new worker must
    // neither lose those keys nor acknowledge anything twice.
    let worker = rig.serve("worker").await;
    assert_converged(&rig, vec![front, worker], users).await;
    assert!(rig.panel.handle().requests() > requests_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_for_real_mid_stream_converges() {
    converges_across_a_restart("RabbitMQ", 2000, restart_rabbitmq()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarted_for_real_mid_stream_converges() {
    converges_across_a_restart("PostgreSQL", 3000, restart_postgresql()).await;
}

/// Users stream commands while `restart` restarts a shared service with panel calls in
/// flight; everything converges afterwards.
async fn converges_across_a_restart(
    service: &str,
    first_user: i64,
    restart: impl std::future::Future<Output = ()>,
) {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel
        .handle()
        .update_faults(|f| f.latency = Duration::from_millis(50));
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    let users = start_users(&rig, &plans(first_user, 30), Duration::from_millis(100));
    wait_for_acknowledgements(&rig, 10).await;
    let waiting = rig.keys_awaiting_panel().await;
    restart.await;
    assert!(waiting > 0, "{service} restarted with nothing in flight");
    assert_converged(&rig, vec![front, worker], users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_down_for_30_seconds_then_back_converges() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    // Users keep arriving through the outage.
    let users = start_users(&rig, &plans(4000, 40), Duration::from_millis(600));
    wait_for_acknowledgements(&rig, 10).await;
    rig.panel.go_down(DownMode::Refused).await.expect("down");
    let down_at = Instant::now();
    // The fault's stated length, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let waiting = rig.keys_awaiting_panel().await;
    assert!(waiting > 0, "no key waited for the panel during the outage");
    rig.panel.come_up().await.expect("up");
    eprintln!(
        "panel was down for {:?}; {waiting} keys waited",
        down_at.elapsed()
    );
    assert_converged(&rig, vec![front, worker], users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_answering_500_for_a_fifth_of_calls_converges() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel.handle().update_faults(|f| f.error_rate = 0.2);
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    let users = start_users(&rig, &plans(5000, 30), Duration::from_millis(50));
    assert_converged(&rig, vec![front, worker], users).await;
    let stats = rig.panel.handle().stats();
    assert!(stats.injected_errors > 0, "no 500 was answered: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_sessions_expiring_every_few_seconds_converges() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel.handle().update_faults(|f| {
        f.session_max_age = Some(Duration::from_secs(2));
        f.latency = Duration::from_millis(20);
    });
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    let users = start_users(&rig, &plans(6000, 30), Duration::from_millis(150));
    assert_converged(&rig, vec![front, worker], users).await;
    let stats = rig.panel.handle().stats();
    assert!(stats.logins > 1, "the session never expired: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_losing_concurrent_writes_converges() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel
        .handle()
        .update_faults(|f| f.lost_write_window = Some(Duration::from_millis(100)));
    // Two workers (competing consumers, so both get work) would write at once, which the
    // panel's lock-free read-modify-write loses; they take turns through PostgreSQL.
    let front = rig.serve("relay,projector").await;
    let worker_a = rig.serve("worker").await;
    let worker_b = rig.serve("worker").await;
    let users = start_users(&rig, &plans(7000, 30), Duration::from_millis(50));
    assert_converged(&rig, vec![front, worker_a, worker_b], users).await;
    // Any two writes overlapping inside the window would have lost one: none did.
    let stats = rig.panel.handle().stats();
    assert_eq!(stats.lost_writes, 0, "writes overlapped: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_deleted_and_altered_behind_our_back_are_repaired_by_reconcile() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    let front = rig.serve("relay,projector").await;
    let worker = rig.serve("worker").await;
    // A first group of users settles; a second one streams while the panel is tampered with.
    let settled: Vec<UserPlan> = plans(8000, 16)
        .into_iter()
        .filter(|p| p.revoke == Revoke::Never)
        .collect();
    finish_users(start_users(&rig, &settled, Duration::from_millis(20)))
        .await
        .expect("the first group settles");
    for plan in &settled {
        wait_active(&rig.ledger, key_of(plan.user_id)).await;
    }
    let users = start_users(&rig, &plans(8100, 20), Duration::from_millis(100));

    let handle = rig.panel.handle();
    let mut tampered: HashMap<Uuid, &'static str> = HashMap::new();
    for (i, plan) in settled.iter().enumerate() {
        let email = format!("tg{}-{LOCATION}", plan.user_id);
        let key = key_of(plan.user_id).as_uuid();
        let (done, kind) = match i % 4 {
            0 => (handle.remove_client(&email), "missing_on_panel"),
            1 => (
                handle.modify_client(&email, |c| {
                    c.insert("id".into(), json!(Uuid::new_v4().to_string()));
                }),
                "settings_differ",
            ),
            2 => (
                handle.modify_client(&email, |c| {
                    c.insert("enable".into(), json!(false));
                }),
                "settings_differ",
            ),
            _ => continue,
        };
        assert!(done, "{email} was not on the panel");
        tampered.insert(key, kind);
    }
    // One of our emails with no key behind it, and somebody else's client.
    let mut unknown = Map::new();
    for (field, value) in [
        ("id", json!(Uuid::new_v4().to_string())),
        ("email", json!("tg987654321-ams")),
        ("enable", json!(true)),
        ("flow", json!("xtls-rprx-vision")),
    ] {
        unknown.insert(field.into(), value);
    }
    let mut foreign = unknown.clone();
    foreign.insert("email".into(), json!("alice@example.com"));
    foreign.insert("id".into(), json!(Uuid::new_v4().to_string()));
    handle.insert_clients(INBOUND, vec![unknown, foreign.clone()]);

    let users_done = finish_users(users).await;
    // Keys still in flight are the worker's; the reconcile pass repairs the rest.
    let deadline = Instant::now() + CONVERGENCE;
    while rig.keys_awaiting_panel().await > 0 {
        assert!(Instant::now() < deadline, "keys kept waiting for the panel");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, stdout, stderr) = rig.cli(&["reconcile"]).await;
    assert_eq!(code, Some(0), "reconcile failed:\n{stdout}\n{stderr}");
    assert!(
        handle
            .client("tg987654321-ams")
            .is_none_or(|c| c.get("enable") == Some(&json!(false))),
        "our email with no key stays usable: {stdout}"
    );
    assert_eq!(
        handle.client("alice@example.com"),
        Some(foreign),
        "a client that is not ours was touched"
    );
    let streams = rig.streams().await.expect("log");
    for (key, kind) in &tampered {
        let events = &streams[key];
        let detected: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| e.event_type == EventType::DriftDetected.as_str())
            .collect();
        let repaired: Vec<&RecordedEvent> = events
            .iter()
            .filter(|e| e.event_type == EventType::DriftRepaired.as_str())
            .collect();
        assert!(
            detected.len() == 1 && repaired.len() == 1,
            "key {key}: one drift detected and repaired expected: {events:#?}"
        );
        assert_eq!(detected[0].data["kind"], json!(kind), "{:#?}", detected[0]);
        assert_eq!(repaired[0].data["kind"], json!(kind), "{:#?}", repaired[0]);
        assert_eq!(detected[0].metadata["actor"]["kind"], json!("reconciler"));
    }
    assert_converged(&rig, vec![front, worker], done(users_done)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_out_of_order_deliveries_change_nothing() {
    let rig = Rig::new(SimConfig::v2_9()).await;
    rig.panel
        .handle()
        .update_faults(|f| f.latency = Duration::from_millis(20));
    // No relay: this test publishes the log itself, each batch backwards (higher versions
    // before lower ones), every message twice, plus copies of earlier messages.
    let front = rig.serve("projector").await;
    let worker = rig.serve("worker").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let injector = tokio::spawn(inject_deliveries(
        rig.db.store.clone(),
        rig.broker.amqp_url.clone(),
        stop.clone(),
    ));
    let users = start_users(&rig, &plans(9000, 30), Duration::from_millis(50));
    // The injector keeps publishing (copies included) while convergence is checked.
    let took = assert_converged(&rig, vec![front, worker], users).await;
    stop.cancel();
    let published = injector.await.expect("injector");
    assert!(
        published.out_of_order > 0 && published.copies > 0,
        "{published:?}"
    );
    eprintln!("{published:?}, converged in {took:?}");
}

#[derive(Debug, Default)]
struct Injected {
    messages: u64,
    /// Messages published ahead of a lower version of the same key.
    out_of_order: u64,
    /// Extra copies of messages published before.
    copies: u64,
}

/// Publishes every committed event to `keyledger.x3ui-worker` and `keyledger.projector`
/// straight through the default exchange: each batch backwards, each message twice, and
/// every round a copy of some earlier message.
async fn inject_deliveries(
    store: eventstore::EventStore,
    amqp_url: String,
    stop: tokio_util::sync::CancellationToken,
) -> Injected {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    broker::topology::declare(&channel).await.expect("topology");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let queues = [
        broker::Queue::X3uiWorker.name(),
        broker::Queue::Projector.name(),
    ];
    let mut injected = Injected::default();
    let mut history: Vec<RecordedEvent> = Vec::new();
    let mut position = 0;
    let mut round: usize = 0;
    while !stop.is_cancelled() {
        let batch = store.read_all(position, 1000).await.expect("read log");
        if let Some(last) = batch.last() {
            position = last.position;
        }
        let mut outgoing: Vec<RecordedEvent> = batch.iter().rev().cloned().collect();
        // Backwards: within a key, a higher version goes out before a lower one.
        let mut seen: HashMap<Uuid, i32> = HashMap::new();
        for event in &outgoing {
            if seen
                .get(&event.stream_id)
                .is_some_and(|v| *v > event.version)
            {
                injected.out_of_order += 1;
            }
            seen.entry(event.stream_id).or_insert(event.version);
        }
        let copies = outgoing.len();
        outgoing.extend_from_within(..copies);
        if !history.is_empty() {
            round += 1;
            let earlier = history[(round * 7919) % history.len()].clone();
            outgoing.push(earlier);
            injected.copies += 1;
        }
        injected.copies += copies as u64;
        for event in &outgoing {
            let (body, properties) = broker::message::encode(event).expect("encode");
            for queue in queues {
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await
                    .expect("publish")
                    .await
                    .expect("confirm");
                injected.messages += 1;
            }
        }
        history.extend(batch);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = connection.close(200, "done".into()).await;
    injected
}

// ---------------------------------------------------------------------------------------
// Restarting the machine's shared services (run alone: see .config/nextest.toml).

async fn run(program: &str, args: &[&str]) {
    let (program, args): (String, Vec<String>) = (
        program.to_owned(),
        args.iter().map(|a| (*a).to_owned()).collect(),
    );
    let shown = format!("{program} {args:?}");
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&program)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .status()
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{shown} does not run: {e}"));
    assert!(status.success(), "{shown} failed: {status}");
}

/// `rabbitmqctl stop_app` / `start_app`: every connection drops, reconnects are refused
/// until it is back.
async fn restart_rabbitmq() {
    run("rabbitmqctl", &["stop_app"]).await;
    run("rabbitmqctl", &["start_app"]).await;
    run("rabbitmqctl", &["await_startup", "--timeout", "60"]).await;
}

/// Restarts the machine's PostgreSQL cluster (fast shutdown: every session is cut), and
/// waits until it accepts connections again.
async fn restart_postgresql() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a PostgreSQL cluster");
    run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = tokio::task::spawn_blocking(|| {
            std::process::Command::new("pg_isready")
                .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
        .expect("join");
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
