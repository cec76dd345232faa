//! Handling updates from the broker: the replicas of the bot share the update partitions,
//! and within a partition each chat has its own lane.
//!
//! Why partitions and leases: RabbitMQ keeps a queue in order, but competing consumers on
//! one queue would handle one chat's updates out of order, and the broker this service
//! targets has no partition rebalancing for AMQP consumers. So updates are spread over a
//! fixed number of partitions by chat (see `broker::bot_updates`), each partition is read
//! by one replica at a time, and the replicas divide the partitions fairly among
//! themselves through leases in PostgreSQL: every replica announces itself, counts the
//! live ones, holds at most its fair share, gives back what is over it and takes what is
//! free. A replica that dies stops renewing; its leases run out and the others take its
//! partitions, and the broker hands its unacknowledged updates to them. The broker's
//! exclusive consumer is the last word: even with a lease mistaken, two replicas never
//! read one partition at once.
//!
//! Why lanes: one chat that Telegram rate-limits (or a user that floods) must not hold
//! back the other chats of its partition. Each chat gets a lane, a task handling that
//! chat's updates in order; lanes of different chats run side by side. A lane holds at
//! most [`LANE_BACKLOG`] updates: a user sending more while their earlier ones are still
//! unanswered is flooding, and the excess is dropped (logged and counted) rather than
//! allowed to fill the partition's prefetch window.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use broker::bot_updates::{BOT_UPDATE_PARTITIONS, consume_partition};
use futures::StreamExt;
use lapin::Acker;
use lapin::Connection;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions};
use sqlx::PgPool;
use teloxide::types::Update;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::conversation::Context;
use crate::error::BotError;
use crate::updates::{chat_of, parse_update};

/// How long a lease lasts without renewal.
const LEASE_SECONDS: f64 = 10.0;
/// How often leases are renewed and the share of partitions rechecked.
const TICK: Duration = Duration::from_secs(2);
/// Unacknowledged updates one partition holds at once.
const PREFETCH: u16 = 64;
/// Updates one chat may have waiting in its lane.
pub const LANE_BACKLOG: usize = 8;
/// How long a partition given up may take to finish the updates it holds.
const RELEASE_GRACE: Duration = Duration::from_secs(20);
/// Attempts at an update whose handling failed on our side (the database) before it goes
/// back to the queue.
const HANDLE_ATTEMPTS: u32 = 3;

/// Runs this replica's share of the partitions until `stop`.
pub async fn run_partitions(context: Arc<Context>, amqp_url: String, stop: CancellationToken) {
    let pool = context.pool().clone();
    let replica = context.replica;
    let mut prepared = false;
    let mut held: HashMap<u16, RunningPartition> = HashMap::new();
    let mut connection: Option<Arc<Connection>> = None;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        held.retain(|partition, running| {
            let alive = !running.task.is_finished();
            if !alive {
                tracing::info!(partition, "partition consumer ended; starting it again");
            }
            alive
        });
        if !prepared {
            match prepare(&pool).await {
                Ok(()) => prepared = true,
                Err(error) => {
                    tracing::warn!(%error, "cannot prepare the update partitions");
                    continue;
                }
            }
        }
        let share = match rebalance(&pool, replica).await {
            Ok(share) => share,
            Err(error) => {
                tracing::warn!(%error, "cannot renew the update partition leases");
                continue;
            }
        };
        for partition in share.give_back {
            if let Some(running) = held.remove(&partition) {
                running.finish().await;
            }
            if let Err(error) = release(&pool, replica, partition).await {
                tracing::warn!(partition, %error, "cannot give back an update partition");
            }
            tracing::info!(partition, "gave back an update partition to share the load");
        }
        // Partitions whose lease another replica took while ours could not be renewed
        // (the database was out of reach): stop reading them, so the holder can.
        let lost: Vec<u16> = held
            .keys()
            .copied()
            .filter(|partition| !share.hold.contains(partition))
            .collect();
        for partition in lost {
            if let Some(running) = held.remove(&partition) {
                tracing::warn!(partition, "lost an update partition's lease; stopping it");
                running.finish().await;
            }
        }
        let missing: Vec<u16> = share
            .hold
            .iter()
            .copied()
            .filter(|partition| !held.contains_key(partition))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let Some(live) = live_connection(&mut connection, &amqp_url).await else {
            continue;
        };
        for partition in missing {
            let stop = stop.child_token();
            let task = tokio::spawn(consume(
                context.clone(),
                live.clone(),
                partition,
                stop.clone(),
            ));
            held.insert(partition, RunningPartition { stop, task });
        }
    }
    for (_, running) in held.drain() {
        running.finish().await;
    }
    if let Err(error) = leave(&pool, replica).await {
        tracing::warn!(%error, "cannot give back the update partitions at stop");
    }
    if let Some(connection) = connection {
        broker::connection_close(&connection, "bot stopping").await;
    }
}

/// A connection to the broker, opened again when the last one was lost.
async fn live_connection(
    connection: &mut Option<Arc<Connection>>,
    amqp_url: &str,
) -> Option<Arc<Connection>> {
    if let Some(live) = connection.as_ref().filter(|c| c.status().connected()) {
        return Some(live.clone());
    }
    match broker::connect(amqp_url).await {
        Ok(fresh) => {
            let fresh = Arc::new(fresh);
            *connection = Some(fresh.clone());
            Some(fresh)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot reach the broker for updates");
            None
        }
    }
}

struct RunningPartition {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningPartition {
    /// Stops taking updates and lets the lanes finish what they hold, within a bound;
    /// whatever is left unacknowledged goes back to the queue when the channel closes.
    async fn finish(self) {
        self.stop.cancel();
        let mut task = self.task;
        // The task bounds its own wait for the lanes; this is the backstop.
        if tokio::time::timeout(RELEASE_GRACE + Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// This replica's share after one round: the partitions to hold, and those to give back.
#[derive(Debug, Default)]
struct Share {
    hold: Vec<u16>,
    give_back: Vec<u16>,
}

/// The most partitions one of `live` replicas holds.
fn fair_share(live: i64) -> usize {
    let live = usize::try_from(live.max(1)).unwrap_or(1);
    usize::from(BOT_UPDATE_PARTITIONS).div_ceil(live)
}

/// Once per replica start: the partitions' rows exist, and replicas that died without
/// leaving long ago are forgotten (only a restart after a crash leaves one behind).
async fn prepare(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bot_update_partitions (partition)
         SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
    )
    .bind(i32::from(BOT_UPDATE_PARTITIONS))
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM bot_replicas WHERE alive_until < now() - interval '1 hour'")
        .execute(pool)
        .await?;
    Ok(())
}

/// Announces the replica, renews its leases, and takes or gives back partitions so that
/// it holds its fair share. Each statement is its own short transaction.
async fn rebalance(pool: &PgPool, replica: Uuid) -> Result<Share, sqlx::Error> {
    let live: i64 = sqlx::query_scalar(
        "WITH me AS (
             INSERT INTO bot_replicas (replica_id, alive_until)
             VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (replica_id) DO UPDATE SET alive_until = excluded.alive_until
         )
         SELECT 1 + count(*) FROM bot_replicas WHERE replica_id <> $1 AND alive_until > now()",
    )
    .bind(replica)
    .bind(LEASE_SECONDS)
    .fetch_one(pool)
    .await?;
    let mut hold: Vec<i32> = sqlx::query_scalar(
        "UPDATE bot_update_partitions SET lease_until = now() + make_interval(secs => $2)
         WHERE holder = $1 AND lease_until > now() RETURNING partition",
    )
    .bind(replica)
    .bind(LEASE_SECONDS)
    .fetch_all(pool)
    .await?;
    hold.sort_unstable();
    let fair = fair_share(live);
    let mut give_back = Vec::new();
    while hold.len() > fair {
        give_back.extend(hold.pop());
    }
    if hold.len() < fair {
        let wanted = i64::try_from(fair - hold.len()).unwrap_or(0);
        let taken: Vec<i32> = sqlx::query_scalar(
            "UPDATE bot_update_partitions SET holder = $1,
                 lease_until = now() + make_interval(secs => $2)
             WHERE partition IN (
                 SELECT partition FROM bot_update_partitions
                 WHERE holder IS NULL OR lease_until IS NULL OR lease_until <= now()
                 ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING partition",
        )
        .bind(replica)
        .bind(LEASE_SECONDS)
        .bind(wanted)
        .fetch_all(pool)
        .await?;
        hold.extend(taken);
    }
    let as_partition = |p: i32| u16::try_from(p).ok();
    Ok(Share {
        hold: hold.into_iter().filter_map(as_partition).collect(),
        give_back: give_back.into_iter().filter_map(as_partition).collect(),
    })
}

async fn release(pool: &PgPool, replica: Uuid, partition: u16) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bot_update_partitions SET holder = NULL, lease_until = NULL
         WHERE partition = $1 AND holder = $2",
    )
    .bind(i32::from(partition))
    .bind(replica)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives back every lease at once, so the others need not wait for them to run out.
async fn leave(pool: &PgPool, replica: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE bot_update_partitions SET holder = NULL, lease_until = NULL WHERE holder = $1",
    )
    .bind(replica)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM bot_replicas WHERE replica_id = $1")
        .bind(replica)
        .execute(pool)
        .await?;
    Ok(())
}

/// One update on its way through a lane, with what acknowledges it to the broker.
struct Pending {
    update: Update,
    acker: Acker,
}

/// A chat's lane: where its updates wait, and how many are waiting or being handled.
struct Lane {
    updates: mpsc::Sender<Pending>,
    load: Arc<AtomicUsize>,
}

/// Reads one partition until `stop` or until the broker ends the consumer, handing each
/// update to its chat's lane.
async fn consume(
    context: Arc<Context>,
    connection: Arc<Connection>,
    partition: u16,
    stop: CancellationToken,
) {
    let tag = format!("bot-{}-{partition}", context.replica.simple());
    let (channel, mut deliveries) =
        match consume_partition(&connection, partition, PREFETCH, &tag).await {
            Ok(consuming) => consuming,
            Err(error) => {
                // Most often another replica still reads it (its lease just moved here).
                tracing::info!(partition, %error, "cannot read an update partition yet");
                return;
            }
        };
    tracing::info!(partition, "reading an update partition");
    let mut lanes: HashMap<i64, Lane> = HashMap::new();
    let mut lane_tasks = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = lane_tasks.join_next(), if !lane_tasks.is_empty() => continue,
            delivery = deliveries.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                tracing::warn!(partition, %error, "update partition consumer failed");
                break;
            }
            None => break,
        };
        // Lanes with nothing waiting or in hand are closed, so idle chats cost nothing. At
        // most `PREFETCH` lanes can be busy (each holds an unacknowledged delivery), so
        // pruning once the map is past that keeps it small without a scan per delivery.
        if lanes.len() > usize::from(PREFETCH) {
            lanes.retain(|_, lane| lane.load.load(Ordering::Acquire) > 0);
        }
        let update = match parse_update(&delivery.data) {
            Ok(update) => update,
            Err(error) => {
                tracing::error!(partition, %error, "an update in the queue is not one; dead-lettered");
                metrics::counter!("keyledger_bot_updates_rejected_total").increment(1);
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                continue;
            }
        };
        let Some(chat) = chat_of(&update) else {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            continue;
        };
        let lane = lanes.entry(chat).or_insert_with(|| {
            let (updates, waiting) = mpsc::channel(LANE_BACKLOG);
            let load = Arc::new(AtomicUsize::new(0));
            lane_tasks.spawn(run_lane(context.clone(), waiting, load.clone()));
            Lane { updates, load }
        });
        if lane.load.load(Ordering::Acquire) >= LANE_BACKLOG {
            let update_id = update.id.0;
            tracing::warn!(
                partition,
                chat_id = chat,
                update_id,
                "a chat has too many updates waiting; this one is dropped"
            );
            metrics::counter!("keyledger_bot_updates_dropped_total").increment(1);
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            continue;
        }
        let pending = Pending {
            update,
            acker: delivery.acker,
        };
        lane.load.fetch_add(1, Ordering::AcqRel);
        let refused = match lane.updates.try_send(pending) {
            Ok(()) => None,
            // Cannot happen while the load counter is below the channel's capacity.
            Err(mpsc::error::TrySendError::Full(pending)) => Some(pending),
            // The lane's task ended without being told to (a panic in a handler): the chat
            // gets a fresh lane rather than staying stuck behind the dead one.
            Err(mpsc::error::TrySendError::Closed(pending)) => {
                tracing::error!(
                    partition,
                    chat_id = chat,
                    "a chat's lane ended unexpectedly; opening a new one"
                );
                let (updates, waiting) = mpsc::channel(LANE_BACKLOG);
                let load = Arc::new(AtomicUsize::new(1));
                lane_tasks.spawn(run_lane(context.clone(), waiting, load.clone()));
                let fresh = Lane { updates, load };
                let refused = fresh
                    .updates
                    .try_send(pending)
                    .err()
                    .map(|e| e.into_inner());
                lanes.insert(chat, fresh);
                refused
            }
        };
        if let Some(pending) = refused {
            // Back to the queue rather than lost.
            let _ = pending
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        }
    }
    // No new deliveries; the lanes finish what they hold.
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    drop(lanes);
    let drained = tokio::time::timeout(RELEASE_GRACE, async {
        while lane_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            partition,
            "lanes still busy at the end of the grace; their updates go back to the queue"
        );
        lane_tasks.abort_all();
    }
    // Closing the channel hands every unacknowledged update back to the queue.
    let _ = channel.close(200, "partition given back".into()).await;
    tracing::info!(partition, "stopped reading an update partition");
}

/// Handles one chat's updates in order, acknowledging each once handled.
async fn run_lane(
    context: Arc<Context>,
    mut waiting: mpsc::Receiver<Pending>,
    load: Arc<AtomicUsize>,
) {
    while let Some(Pending { update, acker }) = waiting.recv().await {
        let update_id = update.id.0;
        let span = tracing::info_span!(parent: None, "bot.update", update_id);
        let outcome = handle_with_retries(&context, update).instrument(span).await;
        let acked = match outcome {
            Ok(()) => acker.ack(BasicAckOptions::default()).await,
            Err(error) if error.is_ours() => {
                tracing::error!(update_id, %error, "update not handled; back to the queue");
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Err(error) => {
                // Telegram refused the answer: the user can ask again; retrying would
                // repeat what did reach them.
                tracing::warn!(update_id, %error, "update handled, but its answer failed");
                acker.ack(BasicAckOptions::default()).await
            }
        };
        if let Err(error) = acked {
            tracing::warn!(update_id, %error, "cannot acknowledge an update; it will come again");
        }
        load.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn handle_with_retries(context: &Context, update: Update) -> Result<(), BotError> {
    let mut attempt = 1;
    loop {
        match context.handle_update(update.clone()).await {
            Err(error) if error.is_ours() && attempt < HANDLE_ATTEMPTS => {
                let wait = Duration::from_millis(250 * 2u64.pow(attempt));
                tracing::warn!(update_id = update.id.0, %error, retry_in_ms = wait.as_millis() as u64, "retrying an update");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_share_covers_every_partition() {
        for live in 1..=20i64 {
            let share = fair_share(live);
            assert!(share * usize::try_from(live).unwrap() >= usize::from(BOT_UPDATE_PARTITIONS));
            assert!(share >= 1);
        }
        assert_eq!(fair_share(1), 8);
        assert_eq!(fair_share(2), 4);
        assert_eq!(fair_share(3), 3);
        assert_eq!(fair_share(0), 8, "a replica always counts itself");
    }
}
