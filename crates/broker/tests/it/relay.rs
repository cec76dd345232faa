//! The relay against the real PostgreSQL and RabbitMQ.

use crate::common;

use std::time::Duration;

use broker::{Queue, Relay, RelayConfig, message};
use common::{Env, wait_until};
use domain::EventType;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn take_all(url: &str, queue: &str) -> Vec<lapin::message::Delivery> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
    {
        taken.push(message.delivery);
    }
    taken
}

#[tokio::test]
async fn every_event_reaches_its_bound_queues_with_the_contract_properties() {
    let env = Env::new().await;
    let stream = Uuid::new_v4();
    env.append(stream, 0, 3).await;
    let stop = CancellationToken::new();
    let relay = tokio::spawn(
        Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url)).run(stop.clone()),
    );
    wait_until(
        "3 events on the projector queue",
        Duration::from_secs(20),
        || async { env.queue_depth(Queue::Projector.name()).await == 3 },
    )
    .await;
    wait_until(
        "1 event on the worker queue",
        Duration::from_secs(20),
        || async { env.queue_depth(Queue::X3uiWorker.name()).await == 1 },
    )
    .await;

    let log = env.store().read_stream(stream).await.expect("read");
    let delivered = take_all(&env.broker.amqp_url, Queue::Projector.name()).await;
    assert_eq!(delivered.len(), 3);
    for (event, delivery) in log.iter().zip(&delivered) {
        let p = &delivery.properties;
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(event.event_id.to_string())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.to_string()),
            Some(event.event_type.clone())
        );
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("keyledger"));
        assert_eq!(
            *p.timestamp(),
            Some(event.recorded_at.unix_timestamp() as u64)
        );
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            event.metadata["correlation_id"].as_str().map(str::to_owned)
        );
        let headers = p.headers().as_ref().expect("headers").inner();
        assert_eq!(
            headers.get("stream_id"),
            Some(&AMQPValue::LongString(stream.to_string().into()))
        );
        assert_eq!(
            headers.get("version"),
            Some(&AMQPValue::LongInt(event.version))
        );
        assert_eq!(
            headers.get("position"),
            Some(&AMQPValue::LongLongInt(event.position))
        );
        assert_eq!(delivery.routing_key.as_str(), event.event_type);
        let body = message::decode(&delivery.data, p).expect("body is the event");
        assert_eq!(&body, event);
    }
    let worker = take_all(&env.broker.amqp_url, Queue::X3uiWorker.name()).await;
    assert_eq!(worker.len(), 1);
    assert_eq!(
        worker[0].routing_key.as_str(),
        EventType::Requested.as_str()
    );
    stop.cancel();
    relay.await.expect("relay task");
}

#[tokio::test]
async fn two_relays_publish_each_event_once_and_the_survivor_takes_over() {
    let env = Env::new().await;
    let config = RelayConfig {
        election_poll: Duration::from_millis(100),
        ..RelayConfig::new(&env.broker.amqp_url)
    };
    let first = Relay::new(env.separate_store().await, config.clone());
    let second = Relay::new(env.separate_store().await, config);
    let (first_stats, second_stats) = (first.stats(), second.stats());
    let stop = CancellationToken::new();
    let first_task = tokio::spawn(first.run(stop.clone()));
    let second_task = tokio::spawn(second.run(stop.clone()));
    let leading =
        |stats: &broker::RelayStats| stats.is_leader.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("one relay to lead", Duration::from_secs(10), || async {
        leading(&first_stats) || leading(&second_stats)
    })
    .await;

    let streams: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for stream in &streams {
        env.append(*stream, 0, 10).await;
    }
    let published = |s: &broker::RelayStats| s.published.load(std::sync::atomic::Ordering::SeqCst);
    // The counters move once the broker confirmed and the checkpoint was written.
    wait_until("50 events published", Duration::from_secs(20), || async {
        published(&first_stats) + published(&second_stats) >= 50
    })
    .await;
    assert!(
        leading(&first_stats) != leading(&second_stats),
        "exactly one leader"
    );
    assert_eq!(published(&first_stats) + published(&second_stats), 50);
    assert_eq!(env.queue_depth(Queue::Projector.name()).await, 50);

    // Kill the leader (its task is dropped mid-flight, as a crash would end it).
    let (leader_task, survivor_stats) = if leading(&first_stats) {
        (first_task, second_stats.clone())
    } else {
        (second_task, first_stats.clone())
    };
    leader_task.abort();
    let _ = leader_task.await;
    for stream in &streams {
        env.append(*stream, 10, 4).await;
    }
    wait_until("the survivor to lead", Duration::from_secs(20), || async {
        leading(&survivor_stats)
    })
    .await;
    wait_until("70 events published", Duration::from_secs(20), || async {
        env.queue_depth(Queue::Projector.name()).await >= 70
    })
    .await;
    // No event was published by both: the queue holds each exactly once.
    let delivered = take_all(&env.broker.amqp_url, Queue::Projector.name()).await;
    let mut ids: Vec<String> = delivered
        .iter()
        .filter_map(|d| d.properties.message_id().as_ref().map(|s| s.to_string()))
        .collect();
    assert_eq!(ids.len(), 70);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 70, "an event was published twice");
    stop.cancel();
}

/// A user's access events go out like every other event: routed (to the projector's queue,
/// which binds `user.#`), so the relay's "unroutable" check never stops it on one, and the
/// checkpoint moves past them to the key event that follows.
#[tokio::test]
async fn a_users_access_events_are_routed_and_the_relay_moves_past_them() {
    let env = Env::new().await;
    let access_stream = Uuid::new_v4();
    let data = serde_json::json!({"user_id": 7, "reason": "abuse report"});
    for (version, kind) in [EventType::UserBlocked, EventType::UserUnblocked]
        .into_iter()
        .enumerate()
    {
        let event = eventstore::NewEvent::new(kind.as_str(), data.clone());
        env.store()
            .append(access_stream, version as u32, &[event], &common::metadata())
            .await
            .expect("append");
    }
    let key_stream = Uuid::new_v4();
    env.append(key_stream, 0, 1).await;
    let relay = Relay::new(env.store(), RelayConfig::new(&env.broker.amqp_url));
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let last = env.store().last_position().await.expect("position");
    wait_until(
        "the checkpoint past every event",
        Duration::from_secs(20),
        || async { stats.checkpoint.load(std::sync::atomic::Ordering::SeqCst) >= last },
    )
    .await;
    let delivered = take_all(&env.broker.amqp_url, Queue::Projector.name()).await;
    let kinds: Vec<&str> = delivered.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(
        kinds,
        [
            EventType::UserBlocked.as_str(),
            EventType::UserUnblocked.as_str(),
            EventType::Requested.as_str()
        ]
    );
    assert_eq!(env.queue_depth(Queue::BotNotify.name()).await, 0);
    stop.cancel();
    task.await.expect("relay task");
}
