//! The fetch log (`subscription_fetches`): who fetched which subscription, when, with what
//! app, in which format, and what they got — for operators and support, outside the event
//! log, which records decisions, not reads. The address is kept only as a keyed hash.
//!
//! Records go through a bounded channel to one writer that inserts whatever has queued up
//! while it wrote the last batch, so a
//! fetch never waits for the insert; when the database is slow and the channel is full,
//! records are dropped and counted in a log line rather than slowing the answers. A crash
//! loses at most the batch in hand.

use eventstore::EventStore;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One fetch.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub subscription_id: Option<Uuid>,
    pub generation: Option<u32>,
    pub fetched_at: OffsetDateTime,
    pub address_hash: String,
    pub user_agent: Option<String>,
    pub hwid: Option<String>,
    pub format: &'static str,
    pub status: u16,
}

const CHANNEL: usize = 10_000;
const BATCH: usize = 500;

/// The sending side of the writer.
#[derive(Clone)]
pub struct FetchLog {
    sender: mpsc::Sender<Fetch>,
}

impl FetchLog {
    /// Starts the writer; it drains what it has and stops when `stop` is cancelled.
    pub fn start(store: EventStore, stop: CancellationToken) -> Self {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        tokio::spawn(write(store, receiver, stop));
        Self { sender }
    }

    /// Queues `fetch`; never waits.
    pub fn record(&self, fetch: Fetch) {
        if self.sender.try_send(fetch).is_err() {
            tracing::warn!("fetch log full: a subscription fetch was not recorded");
        }
    }
}

async fn write(store: EventStore, mut receiver: mpsc::Receiver<Fetch>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let more = tokio::select! {
            _ = stop.cancelled() => false,
            received = receiver.recv_many(&mut batch, BATCH) => received > 0,
        };
        if !batch.is_empty() {
            if let Err(error) = insert(&store, &batch).await {
                tracing::warn!(%error, dropped = batch.len(), "cannot record subscription fetches");
            }
            batch.clear();
        }
        if !more {
            // Whatever is still queued goes in one last batch.
            while let Ok(fetch) = receiver.try_recv() {
                batch.push(fetch);
            }
            if !batch.is_empty() {
                let _ = insert(&store, &batch).await;
            }
            return;
        }
    }
}

async fn insert(store: &EventStore, batch: &[Fetch]) -> Result<(), sqlx::Error> {
    let ids: Vec<Option<Uuid>> = batch.iter().map(|f| f.subscription_id).collect();
    let generations: Vec<Option<i32>> = batch
        .iter()
        .map(|f| f.generation.and_then(|g| i32::try_from(g).ok()))
        .collect();
    let at: Vec<OffsetDateTime> = batch.iter().map(|f| f.fetched_at).collect();
    let addresses: Vec<&str> = batch.iter().map(|f| f.address_hash.as_str()).collect();
    let agents: Vec<Option<&str>> = batch.iter().map(|f| f.user_agent.as_deref()).collect();
    let hwids: Vec<Option<&str>> = batch.iter().map(|f| f.hwid.as_deref()).collect();
    let formats: Vec<&str> = batch.iter().map(|f| f.format).collect();
    let statuses: Vec<i16> = batch
        .iter()
        .map(|f| i16::try_from(f.status).unwrap_or(0))
        .collect();
    sqlx::query(
        "INSERT INTO subscription_fetches
             (subscription_id, generation, fetched_at, address_hash, user_agent, hwid, format, status)
         SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::smallint[])",
    )
    .bind(ids)
    .bind(generations)
    .bind(at)
    .bind(addresses)
    .bind(agents)
    .bind(hwids)
    .bind(formats)
    .bind(statuses)
    .execute(store.pool())
    .await?;
    Ok(())
}
