//! Group commit: appends that arrive while others are being written share one transaction.
//!
//! An append costs little CPU but waits for its commit to reach the disk, and it takes the
//! position lock once per transaction. So appends are queued and a few writer tasks each
//! take whatever has queued up since their last write and write it in one call of
//! `keyledger_append_batch`. A lone append is written at once with `keyledger_append`;
//! under load, batches grow by themselves. Every append still gets its own answer: a stale
//! expected version skips only that append, and a batch-wide error (a race with another
//! transaction on the same stream, a reused event id) makes the writer retry the appends
//! one by one.
//!
//! When nothing else is being appended, an append skips the queue and is written on the
//! caller's own task: handing it to a writer would only add two task switches. So do
//! large appends, which gain little from sharing a commit.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::EventStore;
use crate::append::{AppendOutcome, AppendRequest, write_batch};
use crate::error::{AppendError, StoreError};

/// Writer tasks, so this many batches can wait for their commits at the same time.
const WRITERS: usize = 4;
/// An append this large already spreads its commit over many events; it is written on
/// the caller's task, in parallel with the writers.
const WRITE_ALONE_FROM_EVENTS: usize = 32;
/// Bounds on one batch, so one transaction stays short.
const MAX_APPENDS_PER_BATCH: usize = 64;
const MAX_EVENTS_PER_BATCH: usize = 2_000;

type Answer = Result<AppendOutcome, AppendError>;

struct Queued {
    request: AppendRequest<'static>,
    reply: oneshot::Sender<Answer>,
}

/// The queue in front of the writer tasks, started by the first append.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: OnceLock<mpsc::UnboundedSender<Queued>>,
    /// Appends of this store under way, queued or being written.
    in_flight: AtomicUsize,
}

/// Counts one append as under way until dropped, even if the caller's future is.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Counts an append; says whether it is the only one.
    fn enter(counter: &'a AtomicUsize) -> (Self, bool) {
        let alone = counter.fetch_add(1, Ordering::AcqRel) == 0;
        (Self(counter), alone)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("started", &self.queue.get().is_some())
            .finish()
    }
}

impl GroupCommit {
    pub(crate) async fn append(&self, store: &EventStore, request: AppendRequest<'_>) -> Answer {
        let (_in_flight, alone) = InFlight::enter(&self.in_flight);
        if alone || request.events.len() >= WRITE_ALONE_FROM_EVENTS {
            return store.append_alone(&request).await;
        }
        let queue = self.queue.get_or_init(|| start_writers(store));
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(queued)) = queue.send(Queued {
            request: request.into_owned(),
            reply,
        }) {
            // The writers are gone with the runtime that started them; write directly.
            return store.append_alone(&queued.request).await;
        }
        answer
            .await
            .unwrap_or(Err(AppendError::Store(StoreError::Database(
                sqlx::Error::WorkerCrashed,
            ))))
    }
}

fn start_writers(store: &EventStore) -> mpsc::UnboundedSender<Queued> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let receiver = Arc::new(Mutex::new(receiver));
    // The writers hold the pool but not this queue, so they end when the last handle of
    // the store is dropped.
    let writer_store = EventStore::new(store.pool().clone());
    for _ in 0..WRITERS {
        tokio::spawn(run_writer(writer_store.clone(), receiver.clone()));
    }
    sender
}

async fn run_writer(store: EventStore, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            take_batch(first, &mut receiver)
        };
        for round in rounds(batch) {
            write_round(&store, round).await;
        }
    }
}

/// `first` and whatever else is already queued, within the batch bounds.
fn take_batch(first: Queued, receiver: &mut mpsc::UnboundedReceiver<Queued>) -> Vec<Queued> {
    let mut events = first.request.events.len();
    let mut batch = vec![first];
    while batch.len() < MAX_APPENDS_PER_BATCH && events < MAX_EVENTS_PER_BATCH {
        let Ok(next) = receiver.try_recv() else {
            break;
        };
        events += next.request.events.len();
        batch.push(next);
    }
    batch
}

/// Splits a batch so no round holds two appends to one stream: both would be checked
/// against the same head, and the loser would fail the whole round.
fn rounds(batch: Vec<Queued>) -> Vec<Vec<Queued>> {
    let mut rounds: Vec<(HashSet<uuid::Uuid>, Vec<Queued>)> = Vec::new();
    for queued in batch {
        let stream = queued.request.stream_id;
        match rounds
            .iter_mut()
            .find(|(streams, _)| !streams.contains(&stream))
        {
            Some((streams, round)) => {
                streams.insert(stream);
                round.push(queued);
            }
            None => rounds.push((HashSet::from([stream]), vec![queued])),
        }
    }
    rounds.into_iter().map(|(_, round)| round).collect()
}

async fn write_round(store: &EventStore, round: Vec<Queued>) {
    if round.len() == 1 {
        for queued in round {
            let answer = store.append_alone(&queued.request).await;
            let _ = queued.reply.send(answer);
        }
        return;
    }
    let requests: Vec<&AppendRequest<'_>> = round.iter().map(|q| &q.request).collect();
    let written = write_together(store, &requests).await;
    drop(requests);
    match written {
        Some(ranges) => {
            for (queued, range) in round.into_iter().zip(ranges) {
                let answer = match range {
                    Some(range) => Ok(AppendOutcome::Appended(range)),
                    None => store.explain_refusal("version", &queued.request).await,
                };
                let _ = queued.reply.send(answer);
            }
        }
        None => {
            for queued in round {
                let answer = store.append_alone(&queued.request).await;
                let _ = queued.reply.send(answer);
            }
        }
    }
}

/// One transaction for the whole round, or `None` if it failed and wrote nothing.
async fn write_together(
    store: &EventStore,
    requests: &[&AppendRequest<'_>],
) -> Option<Vec<Option<crate::AppendedRange>>> {
    let mut conn = store.pool().acquire().await.ok()?;
    match write_batch(&mut conn, requests).await {
        Ok(ranges) => Some(ranges),
        Err(error) => {
            tracing::debug!(%error, appends = requests.len(), "batch append failed; appending one by one");
            // See EventStore::append_alone on why the session is not reused.
            conn.close_on_drop();
            None
        }
    }
}
