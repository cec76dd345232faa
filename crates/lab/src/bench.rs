//! Benchmarks as programs: each prints JSON with its own figures and the baseline it is
//! compared with, measured in the same run on the same machine.

use std::io::Write;
use std::time::{Duration, Instant};

use domain::EventType;
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, NewEvent};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

use crate::AppendBenchArgs;
use crate::scratch::{Scratch, ScratchDatabase, scratch_name};
use service::config::Config;

/// The store must reach this fraction of a bare INSERT's throughput (issue "event store").
const APPEND_TARGET_RATIO: f64 = 0.7;

/// The cases of `bench append`: (concurrency, events per append).
const APPEND_CASES: [(usize, usize); 4] = [(1, 1), (16, 1), (1, 100), (16, 100)];

#[derive(Debug, Serialize)]
struct AppendCase {
    case: String,
    concurrency: usize,
    events_per_append: usize,
    store_events_per_s: f64,
    baseline_rows_per_s: f64,
    ratio: f64,
    target_ratio: f64,
    meets_target: bool,
}

/// `keyledger bench append`.
pub async fn append(
    config: &Config,
    args: &AppendBenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let scratch = ScratchDatabase::create(config, &scratch_name("bench"), 20).await?;
    let result = run_append_cases(&scratch.pool, args).await;
    let elsewhere = match &result {
        Ok(_) => Some(long_transaction_elsewhere(config, &scratch.pool, args).await),
        Err(_) => None,
    };
    scratch.drop().await?;
    let cases = result?;
    let elsewhere = elsewhere.transpose()?;
    let report = json!({
        "benchmark": "append",
        "seconds_per_measurement": args.seconds,
        "rounds": args.rounds,
        "baseline": "bare INSERT of rows of the same shape and indexes, same pool and concurrency",
        "cases": cases,
        "long_transaction_elsewhere": elsewhere,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

async fn run_append_cases(
    pool: &PgPool,
    args: &AppendBenchArgs,
) -> anyhow::Result<Vec<AppendCase>> {
    let store = EventStore::new(pool.clone());
    store.migrate().await?;
    sqlx::raw_sql(
        "CREATE TABLE bench_baseline (
             position bigserial PRIMARY KEY, stream_id uuid NOT NULL, version integer NOT NULL,
             type text NOT NULL, data jsonb NOT NULL, metadata jsonb NOT NULL,
             event_id uuid NOT NULL UNIQUE, recorded_at timestamptz NOT NULL, hash text NOT NULL,
             UNIQUE (stream_id, version))",
    )
    .execute(pool)
    .await?;

    let measurement = Duration::from_secs_f64(args.seconds.max(0.1));
    let mut cases = Vec::new();
    for (concurrency, batch) in APPEND_CASES {
        let (mut store_events, mut store_time) = (0u64, Duration::ZERO);
        let (mut base_rows, mut base_time) = (0u64, Duration::ZERO);
        // Alternate the two so that a noisy spell on the machine hits both alike.
        for _ in 0..args.rounds.max(1) {
            let (n, t) = drive(concurrency, measurement, |_| {
                let store = store.clone();
                StoreAppender::new(store, batch)
            })
            .await?;
            store_events += n;
            store_time += t;
            let (n, t) = drive(concurrency, measurement, |_| {
                BareInserter::new(pool.clone(), batch)
            })
            .await?;
            base_rows += n;
            base_time += t;
        }
        let store_rate = store_events as f64 / store_time.as_secs_f64();
        let base_rate = base_rows as f64 / base_time.as_secs_f64();
        let ratio = store_rate / base_rate;
        cases.push(AppendCase {
            case: format!(
                "{}_c{concurrency}",
                if batch == 1 {
                    "single".to_owned()
                } else {
                    format!("batch{batch}")
                }
            ),
            concurrency,
            events_per_append: batch,
            store_events_per_s: store_rate.round(),
            baseline_rows_per_s: base_rate.round(),
            ratio: (ratio * 1000.0).round() / 1000.0,
            target_ratio: APPEND_TARGET_RATIO,
            meets_target: ratio >= APPEND_TARGET_RATIO,
        });
    }
    Ok(cases)
}

/// With a long transaction open elsewhere the store must keep this fraction of its rate.
const ELSEWHERE_TARGET_RATIO: f64 = 0.9;

#[derive(Debug, Serialize)]
struct ElsewhereCase {
    case: &'static str,
    /// The same store and case with nothing else running: the baseline.
    quiet_events_per_s: f64,
    /// While another database of the server holds a write transaction open.
    with_long_transaction_events_per_s: f64,
    ratio: f64,
    target_ratio: f64,
    meets_target: bool,
    /// How long a follower took to see an event appended during that transaction, worst of
    /// the samples; before readers ignored other databases it waited for the transaction.
    follower_sees_new_event_ms_max: f64,
}

/// `single_c16` with and without a write transaction held open in another database of the
/// same server (an ETL job, a session left idle in transaction), alternating; and how soon
/// a follower of the log sees what was appended meanwhile.
async fn long_transaction_elsewhere(
    config: &Config,
    pool: &PgPool,
    args: &AppendBenchArgs,
) -> anyhow::Result<ElsewhereCase> {
    let store = EventStore::new(pool.clone());
    let measurement = Duration::from_secs_f64(args.seconds.max(0.1));
    let other_url = eventstore::with_database(config.database_url.as_str(), "postgres")?;
    let (mut quiet, mut quiet_time, mut busy, mut busy_time) =
        (0u64, Duration::ZERO, 0u64, Duration::ZERO);
    let mut worst_follow = Duration::ZERO;
    for _ in 0..args.rounds.max(1) {
        let (n, t) = drive(16, measurement, |_| StoreAppender::new(store.clone(), 1)).await?;
        quiet += n;
        quiet_time += t;
        let mut other = sqlx::PgConnection::connect(&other_url).await?;
        let mut long = other.begin().await?;
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *long)
            .await?;
        let (n, t) = drive(16, measurement, |_| StoreAppender::new(store.clone(), 1)).await?;
        busy += n;
        busy_time += t;
        worst_follow = worst_follow.max(follow_once(&store).await?);
        long.rollback().await?;
    }
    let quiet_rate = quiet as f64 / quiet_time.as_secs_f64();
    let busy_rate = busy as f64 / busy_time.as_secs_f64();
    let ratio = busy_rate / quiet_rate;
    Ok(ElsewhereCase {
        case: "single_c16",
        quiet_events_per_s: quiet_rate.round(),
        with_long_transaction_events_per_s: busy_rate.round(),
        ratio: (ratio * 1000.0).round() / 1000.0,
        target_ratio: ELSEWHERE_TARGET_RATIO,
        meets_target: ratio >= ELSEWHERE_TARGET_RATIO,
        follower_sees_new_event_ms_max: (worst_follow.as_secs_f64() * 1e5).round() / 100.0,
    })
}

/// Appends one event and returns how long the gap-free reader took to return it (at most
/// 10 s, the bound of this measurement).
async fn follow_once(store: &EventStore) -> anyhow::Result<Duration> {
    let appended = store
        .append(
            Uuid::new_v4(),
            0,
            &[NewEvent::new(
                EventType::DriftDetected.as_str(),
                sample_data(0),
            )],
            &sample_metadata(),
        )
        .await?
        .range();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let page = store.read_all(appended.first_position - 1, 1).await?;
        if page
            .first()
            .is_some_and(|e| e.position == appended.first_position)
        {
            return Ok(started.elapsed());
        }
        tokio::task::yield_now().await;
    }
    Ok(started.elapsed())
}

/// One writer of a benchmark: performs one unit of work and says how many rows it wrote.
trait Writer: Send + 'static {
    fn write(&mut self) -> impl std::future::Future<Output = anyhow::Result<u64>> + Send;
}

/// Runs `concurrency` writers for `duration`; returns rows written and the time taken.
async fn drive<W: Writer>(
    concurrency: usize,
    duration: Duration,
    make: impl Fn(usize) -> W,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut writer = make(i);
            tokio::spawn(async move {
                let mut rows = 0;
                while Instant::now() < deadline {
                    rows += writer.write().await?;
                }
                anyhow::Ok(rows)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((total, start.elapsed()))
}

fn sample_data(i: usize) -> Value {
    json!({"kind": "settings_differ", "expected": {"enable": true, "n": i}, "observed": {"enable": false}})
}

/// Bench appends carry no command id: the baseline has no command table to match.
pub(crate) fn sample_metadata() -> EventMetadata {
    let id = Uuid::new_v4();
    EventMetadata {
        correlation_id: id,
        causation_id: id,
        actor: Actor::new(ActorKind::Service, "bench"),
        command_id: None,
    }
}

struct StoreAppender {
    store: EventStore,
    stream: Uuid,
    version: u32,
    batch: usize,
}

impl StoreAppender {
    fn new(store: EventStore, batch: usize) -> Self {
        Self {
            store,
            stream: Uuid::new_v4(),
            version: 0,
            batch,
        }
    }
}

impl Writer for StoreAppender {
    async fn write(&mut self) -> anyhow::Result<u64> {
        let events: Vec<NewEvent> = (0..self.batch)
            .map(|i| NewEvent::new(EventType::DriftDetected.as_str(), sample_data(i)))
            .collect();
        self.store
            .append(self.stream, self.version, &events, &sample_metadata())
            .await?;
        self.version += self.batch as u32;
        Ok(self.batch as u64)
    }
}

struct BareInserter {
    pool: PgPool,
    stream: Uuid,
    version: i32,
    batch: usize,
}

impl BareInserter {
    fn new(pool: PgPool, batch: usize) -> Self {
        Self {
            pool,
            stream: Uuid::new_v4(),
            version: 0,
            batch,
        }
    }
}

const BASELINE_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Writer for BareInserter {
    async fn write(&mut self) -> anyhow::Result<u64> {
        let metadata = serde_json::to_value(sample_metadata())?;
        let ids: Vec<Uuid> = (0..self.batch).map(|_| Uuid::new_v4()).collect();
        let data: Vec<Value> = (0..self.batch).map(sample_data).collect();
        sqlx::query(
            "INSERT INTO bench_baseline (stream_id, version, type, data, metadata, event_id, recorded_at, hash)
             SELECT $1, $2 + i.ord::int, $7, i.data, $3, i.event_id, now(), $5
             FROM unnest($4::uuid[], $6::jsonb[]) WITH ORDINALITY AS i(event_id, data, ord)",
        )
        .bind(self.stream)
        .bind(self.version)
        .bind(&metadata)
        .bind(&ids)
        .bind(BASELINE_HASH)
        .bind(&data)
        .bind(EventType::DriftDetected.as_str())
        .execute(&self.pool)
        .await?;
        self.version += self.batch as i32;
        Ok(self.batch as u64)
    }
}

/// The relay must reach this fraction of raw confirmed publishing (issue "RabbitMQ").
const RELAY_TARGET_RATIO: f64 = 0.7;
const RELAY_BASELINE_QUEUE: &str = "bench.baseline";

/// `keyledger bench relay`.
pub async fn relay(
    config: &Config,
    args: &crate::RelayBenchArgs,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let scratch = Scratch::create(config, "bench", 10).await?;
    let result = run_relay_rounds(&scratch.database.pool, &scratch.vhost.amqp_url, args).await;
    let cleanup = scratch.remove().await;
    let (relay_rate, baseline_rate) = result?;
    cleanup?;
    let ratio = relay_rate / baseline_rate;
    let report = json!({
        "benchmark": "relay",
        "events": args.events,
        "window": args.window,
        "rounds": args.rounds,
        "relay_events_per_s": relay_rate.round(),
        "baseline_msgs_per_s": baseline_rate.round(),
        "baseline": "raw lapin publishing of the same bodies to a quorum queue, confirms, same window",
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "target_ratio": RELAY_TARGET_RATIO,
        "meets_target": ratio >= RELAY_TARGET_RATIO,
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

async fn run_relay_rounds(
    pool: &PgPool,
    amqp_url: &str,
    args: &crate::RelayBenchArgs,
) -> anyhow::Result<(f64, f64)> {
    let store = EventStore::new(pool.clone());
    store.migrate().await?;
    let last_position = fill_log(&store, args.events.max(1)).await?;
    let bodies: Vec<Vec<u8>> = store
        .read_committed(0)
        .await?
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()?;

    let connection = broker::connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    broker::topology::declare(&channel).await?;
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            RELAY_BASELINE_QUEUE.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;

    let (mut relayed, mut relay_time) = (0usize, Duration::ZERO);
    let (mut published, mut baseline_time) = (0usize, Duration::ZERO);
    for round in 0..args.rounds.max(1) {
        relay_time += relay_once(&store, amqp_url, args.window, round, last_position).await?;
        relayed += bodies.len();
        purge(&channel, broker::Queue::Projector.name()).await?;
        baseline_time += publish_raw(&channel, &bodies, args.window).await?;
        published += bodies.len();
        purge(&channel, RELAY_BASELINE_QUEUE).await?;
    }
    broker::connection_close(&connection, "benchmark done").await;
    Ok((
        relayed as f64 / relay_time.as_secs_f64(),
        published as f64 / baseline_time.as_secs_f64(),
    ))
}

/// Appends `events` events across streams of ten, in appends of ten.
async fn fill_log(store: &EventStore, events: usize) -> anyhow::Result<i64> {
    let mut last = 0;
    let mut written = 0;
    while written < events {
        let batch: Vec<NewEvent> = (0..(events - written).min(10))
            .map(|i| NewEvent::new(EventType::DriftDetected.as_str(), sample_data(i)))
            .collect();
        let range = store
            .append(Uuid::new_v4(), 0, &batch, &sample_metadata())
            .await?
            .range();
        last = range.last_position;
        written += batch.len();
    }
    Ok(last)
}

/// Runs a relay with a fresh checkpoint until it has had the whole log confirmed.
async fn relay_once(
    store: &EventStore,
    amqp_url: &str,
    window: usize,
    round: u32,
    last_position: i64,
) -> anyhow::Result<Duration> {
    let config = broker::RelayConfig {
        name: format!("bench-{round}"),
        window,
        idle_poll: Duration::from_millis(1),
        ..broker::RelayConfig::new(amqp_url)
    };
    let relay = broker::Relay::new(store.clone(), config);
    let stats = relay.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(relay.run(stop.clone()));
    let deadline = start + Duration::from_secs(600);
    while stats.checkpoint.load(std::sync::atomic::Ordering::SeqCst) < last_position {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    stop.cancel();
    task.await?;
    Ok(elapsed)
}

/// The baseline: publish every body to a quorum queue with up to `window` unconfirmed.
async fn publish_raw(
    channel: &lapin::Channel,
    bodies: &[Vec<u8>],
    window: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for body in bodies {
        if in_flight.len() >= window.max(1)
            && let Some(confirm) = in_flight.pop_front()
        {
            confirmed(confirm).await?;
        }
        let properties = lapin::BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let confirm = channel
            .basic_publish(
                "".into(),
                RELAY_BASELINE_QUEUE.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?;
        in_flight.push_back(confirm);
    }
    while let Some(confirm) = in_flight.pop_front() {
        confirmed(confirm).await?;
    }
    Ok(start.elapsed())
}

async fn confirmed(confirm: lapin::PublisherConfirm) -> anyhow::Result<()> {
    match confirm.await? {
        lapin::Confirmation::Ack(None) => Ok(()),
        other => anyhow::bail!("baseline publish not confirmed: {other:?}"),
    }
}

async fn purge(channel: &lapin::Channel, queue: &str) -> anyhow::Result<()> {
    channel
        .queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default())
        .await?;
    Ok(())
}
