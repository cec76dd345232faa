//! The consumer runtime against the real PostgreSQL and RabbitMQ: exactly-once effects in
//! stream order, whatever the broker delivers, restarts and kills included.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::message::{self, REASON_HEADER};
use broker::{Consumer, ConsumerConfig, Queue, Relay, RelayConfig};
use common::{Env, Hold, Recorder, assert_exactly_once_in_order, wait_until};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

fn consumer_config(env: &Env, name: &str) -> ConsumerConfig {
    ConsumerConfig {
        name: name.to_owned(),
        retry_base: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        max_deliveries: 3,
        ..ConsumerConfig::new(&env.broker.amqp_url, Queue::Projector)
    }
}

fn start_relay(env: &Env, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url)).run(stop.clone()))
}

/// Publishes raw messages straight into a queue, as a misbehaving publisher (or an
/// operator) could.
async fn inject(env: &Env, queue: &str, messages: &[(Vec<u8>, BasicProperties)]) {
    let connection = Connection::connect(&env.broker.amqp_url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    for (body, properties) in messages {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn each_event_is_applied_once_in_stream_order_despite_duplicates_and_reordering() {
    let env = Env::new().await;
    let streams: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for stream in &streams {
        env.append(*stream, 0, 5).await;
    }
    // Before the relay runs, the queue already holds every event of one stream newest
    // first, twice: ahead-of-order arrivals and duplicates.
    let reordered: Vec<_> = env
        .store()
        .read_stream(streams[0])
        .await
        .expect("read")
        .iter()
        .rev()
        .map(|event| message::encode(event).expect("encode"))
        .collect();
    let stop = CancellationToken::new();
    let recorder = Recorder::new("projector-test");
    // Declares the topology, so the injected messages have a queue to land in.
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "projector-test"),
        recorder,
    );
    let stats = consumer.stats();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    wait_until("the consumer to connect", DEADLINE, || async {
        stats.sessions.load(Ordering::SeqCst) >= 1
    })
    .await;
    inject(&env, Queue::Projector.name(), &reordered).await;
    inject(&env, Queue::Projector.name(), &reordered).await;
    let relay = start_relay(&env, &stop);

    wait_until("20 events applied", DEADLINE, || async {
        env.applied_count("projector-test").await >= 20
    })
    .await;
    // Everything delivered is settled: 10 injected + 20 relayed.
    wait_until("every delivery settled", DEADLINE, || async {
        stats.applied.load(Ordering::SeqCst) + stats.duplicates.load(Ordering::SeqCst) >= 30
            && env.queue_depth(Queue::Projector.name()).await == 0
    })
    .await;
    let expected: Vec<(Uuid, i32)> = streams.iter().map(|s| (*s, 5)).collect();
    assert_exactly_once_in_order(&env.applied("projector-test").await, &expected);
    assert!(stats.duplicates.load(Ordering::SeqCst) >= 10);
    assert_eq!(stats.dead_lettered.load(Ordering::SeqCst), 0);
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay.await.expect("relay");
}

/// Restarts the RabbitMQ application on this machine (`rabbitmqctl stop_app` and
/// `start_app`): the port closes, every connection drops, reconnects are refused until it
/// is back. Run alone (see .config/nextest.toml), since every test shares the broker.
async fn restart_rabbitmq() {
    let steps: [&[&str]; 3] = [
        &["stop_app"],
        &["start_app"],
        &["await_startup", "--timeout", "60"],
    ];
    for step in steps {
        let args: Vec<String> = step.iter().map(|s| s.to_string()).collect();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("rabbitmqctl")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await
        .expect("join")
        .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl {step:?} failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarted_for_real_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "real-restart-test"),
        Recorder::new("real-restart-test"),
    );
    let stats = consumer.stats();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    let relay = Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url));
    let relay_stats = relay.stats();
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let streams: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let restarted = CancellationToken::new();
    let writer = common::spawn_writer(env.store(), streams.clone(), restarted.clone());
    wait_until("events flowing", DEADLINE, || async {
        relay_stats.published.load(Ordering::SeqCst) >= 20
    })
    .await;
    restart_rabbitmq().await;
    restarted.cancel();
    let per_stream = writer.await.expect("writer");
    let total = streams.len() * per_stream as usize;
    wait_until("every event applied", Duration::from_secs(90), || async {
        env.applied_count("real-restart-test").await >= total
    })
    .await;
    let expected: Vec<(Uuid, i32)> = streams.iter().map(|s| (*s, per_stream as i32)).collect();
    assert_exactly_once_in_order(&env.applied("real-restart-test").await, &expected);
    assert!(
        stats.sessions.load(Ordering::SeqCst) >= 2,
        "the consumer reconnected"
    );
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay_task.await.expect("relay");
}

#[tokio::test]
async fn a_broker_restart_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "restart-test"),
        Recorder::new("restart-test"),
    );
    let stats = consumer.stats();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    let relay = Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url));
    let relay_stats = relay.stats();
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    // Appends keep coming until both restarts are over, and a little after.
    let streams: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let restarts_done = CancellationToken::new();
    let writer = common::spawn_writer(env.store(), streams.clone(), restarts_done.clone());
    // Twice while events flow, the broker drops every connection of the vhost.
    let mut published_before = 0;
    for _ in 0..2 {
        wait_until("events flowing", DEADLINE, || async {
            relay_stats.published.load(Ordering::SeqCst) >= published_before + 30
        })
        .await;
        let closed = env.broker.close_all_connections(2).await;
        assert!(
            closed >= 2,
            "the relay and the consumer were connected ({closed})"
        );
        published_before = relay_stats.published.load(Ordering::SeqCst);
    }
    restarts_done.cancel();
    let per_stream = writer.await.expect("writer");
    let total = streams.len() * per_stream as usize;
    wait_until("every event applied", DEADLINE, || async {
        env.applied_count("restart-test").await >= total
    })
    .await;
    let expected: Vec<(Uuid, i32)> = streams.iter().map(|s| (*s, per_stream as i32)).collect();
    assert_exactly_once_in_order(&env.applied("restart-test").await, &expected);
    assert!(
        stats.sessions.load(Ordering::SeqCst) >= 3,
        "the consumer reconnected"
    );
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay_task.await.expect("relay");
}

#[tokio::test]
async fn poison_goes_to_the_dlq_operators_see_it_and_moving_it_back_gets_it_processed() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let recorder = Recorder::new("poison-test");
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "poison-test"),
        recorder.clone(),
    );
    let stats = consumer.stats();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    let relay = start_relay(&env, &stop);
    wait_until("the consumer to connect", DEADLINE, || async {
        stats.sessions.load(Ordering::SeqCst) >= 1
    })
    .await;

    // A handler that keeps failing for one key (say its panel is misconfigured).
    let poisoned = Uuid::new_v4();
    recorder.fail_stream(Some(poisoned));
    env.append(poisoned, 0, 1).await;
    // And a message that is not an event at all.
    let garbage = BasicProperties::default().with_message_id("not-an-event".into());
    inject(
        &env,
        Queue::Projector.name(),
        &[(b"{\"hello\": 1}".to_vec(), garbage)],
    )
    .await;
    let dlq = Queue::Projector.dead_letter_queue();
    wait_until("both dead-lettered", DEADLINE, || async {
        stats.dead_lettered.load(Ordering::SeqCst) == 2
    })
    .await;

    // The consumer kept going: a healthy key is still served.
    let healthy = Uuid::new_v4();
    env.append(healthy, 0, 2).await;
    wait_until("the healthy key applied", DEADLINE, || async {
        env.applied_count("poison-test").await == 2
    })
    .await;

    // What an operator sees in the management UI: two messages in the DLQ, with reasons.
    let management = &env.broker.management;
    let seen = management
        .peek_messages(&env.broker.vhost, &dlq, 10)
        .await
        .expect("peek");
    assert_eq!(seen.len(), 2, "{seen:?}");
    let reasons: Vec<String> = seen
        .iter()
        .map(|m| {
            m.properties["headers"][REASON_HEADER]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("gave up after 3 deliveries") && r.contains("panel for")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("malformed message")),
        "{reasons:?}"
    );
    wait_until("the management API to count the DLQ", DEADLINE, || async {
        management
            .queue(&env.broker.vhost, &dlq)
            .await
            .map(|q| q.messages == 2)
            .unwrap_or(false)
    })
    .await;

    // The operator fixes the cause and moves the dead letters back.
    recorder.fail_stream(None);
    management
        .move_messages(&env.broker.vhost, &dlq, Queue::Projector.name())
        .await
        .expect("move messages");
    wait_until("the poisoned key applied", DEADLINE, || async {
        env.applied("poison-test").await.contains(&(poisoned, 1))
    })
    .await;
    // The garbage is still garbage: back in the DLQ, and nothing else was applied.
    wait_until("the garbage dead-lettered again", DEADLINE, || async {
        stats.dead_lettered.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_exactly_once_in_order(
        &env.applied("poison-test").await,
        &[(poisoned, 1), (healthy, 2)],
    );
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay.await.expect("relay");
}

#[tokio::test]
async fn a_consumer_killed_mid_message_gets_it_again_and_applies_it_once() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let relay = start_relay(&env, &stop);
    let hold = Arc::new(Hold::default());
    let stuck = Recorder {
        hold: Some(hold.clone()),
        ..Recorder::new("kill-test")
    };
    let doomed = tokio::spawn(
        Consumer::new(env.store(), consumer_config(&env, "kill-test"), stuck).run(stop.clone()),
    );
    let stream = Uuid::new_v4();
    env.append(stream, 0, 1).await;
    wait_until(
        "the handler to be in the middle of the event",
        DEADLINE,
        || async { hold.entered_flag.load(Ordering::SeqCst) },
    )
    .await;
    doomed.abort();
    let _ = doomed.await;
    assert_eq!(
        env.applied_count("kill-test").await,
        0,
        "nothing committed by the killed one"
    );

    let healthy = Consumer::new(
        env.store(),
        consumer_config(&env, "kill-test"),
        Recorder::new("kill-test"),
    );
    let stats = healthy.stats();
    let consumer_task = tokio::spawn(healthy.run(stop.clone()));
    wait_until("the event applied after redelivery", DEADLINE, || async {
        env.applied_count("kill-test").await == 1
    })
    .await;
    env.append(stream, 1, 1).await;
    wait_until("the next one too", DEADLINE, || async {
        env.applied_count("kill-test").await == 2
    })
    .await;
    assert_exactly_once_in_order(&env.applied("kill-test").await, &[(stream, 2)]);
    assert_eq!(stats.dead_lettered.load(Ordering::SeqCst), 0);
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay.await.expect("relay");
}

/// Ends every session of the test database, as a PostgreSQL restart does to its clients.
async fn drop_database_sessions(env: &Env) -> u64 {
    let admin = sqlx::PgPool::connect(&testkit::database_server_url())
        .await
        .expect("admin connection");
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&env.db.name)
    .fetch_all(&admin)
    .await
    .expect("terminate sessions");
    admin.close().await;
    ended.into_iter().filter(|ended| *ended).count() as u64
}

#[tokio::test]
async fn a_database_restart_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "pg-restart-test"),
        Recorder::new("pg-restart-test"),
    );
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    let relay = Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url));
    let relay_stats = relay.stats();
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    let streams: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let restarts_done = CancellationToken::new();
    let writer = common::spawn_writer(env.store(), streams.clone(), restarts_done.clone());
    let mut published_before = 0;
    for _ in 0..2 {
        wait_until("events flowing", DEADLINE, || async {
            relay_stats.published.load(Ordering::SeqCst) >= published_before + 20
        })
        .await;
        assert!(
            drop_database_sessions(&env).await >= 1,
            "sessions were open"
        );
        published_before = relay_stats.published.load(Ordering::SeqCst);
    }
    restarts_done.cancel();
    let per_stream = writer.await.expect("writer");
    let total = streams.len() * per_stream as usize;
    wait_until("every event applied", DEADLINE, || async {
        env.applied_count("pg-restart-test").await >= total
    })
    .await;
    let expected: Vec<(Uuid, i32)> = streams.iter().map(|s| (*s, per_stream as i32)).collect();
    assert_exactly_once_in_order(&env.applied("pg-restart-test").await, &expected);
    stop.cancel();
    consumer_task.await.expect("consumer");
    relay_task.await.expect("relay");
}

#[tokio::test]
async fn an_oversized_message_is_dead_lettered_unparsed_with_the_reason() {
    let env = Env::new().await;
    let stop = CancellationToken::new();
    let recorder = Recorder::new("oversize-test");
    let consumer = Consumer::new(
        env.store(),
        consumer_config(&env, "oversize-test"),
        recorder.clone(),
    );
    let stats = consumer.stats();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    wait_until("the consumer to connect", DEADLINE, || async {
        stats.sessions.load(Ordering::SeqCst) >= 1
    })
    .await;
    // Valid JSON, so only its size can be the reason.
    let mut body = b"{\"padding\": \"".to_vec();
    body.resize(message::MAX_MESSAGE_BYTES + 1024, b'x');
    body.extend_from_slice(b"\"}");
    let properties = BasicProperties::default().with_message_id("oversized".into());
    inject(&env, Queue::Projector.name(), &[(body, properties)]).await;
    wait_until("dead-lettered", DEADLINE, || async {
        stats.dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    let dlq = Queue::Projector.dead_letter_queue();
    let seen = env
        .broker
        .management
        .peek_messages(&env.broker.vhost, &dlq, 1)
        .await
        .expect("peek");
    let reason = seen[0].properties["headers"][REASON_HEADER]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("larger than"), "{reason}");
    assert_eq!(env.applied_count("oversize-test").await, 0);
    stop.cancel();
    consumer_task.await.expect("consumer");
}
