//! keyledger on a PostgreSQL server other services share. A long write transaction in
//! another database must not hold keys back (readers wait only for keyledger's own
//! appends). And when somebody else asks for a strong lock on `events` while keys flow —
//! an operator's `TRUNCATE` (refused by the trigger, but only once it holds the lock), an
//! `ALTER TABLE`, a `LOCK TABLE … ACCESS EXCLUSIVE` — each gets its turn within seconds
//! (keyledger's sessions give up their lock waits and retry instead of queueing behind it
//! for ever) and no key is lost on the way.

use std::time::{Duration, Instant};

use domain::{EventType, KeyId};
use eventstore::{Actor, ActorKind, EventMetadata, KeyLedger};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::common::stack::{Stack, request_command};

/// How long an outside statement may wait for its lock.
const OUTSIDE_TURN: Duration = Duration::from_secs(10);

/// Requests a key as a client would: an attempt that fails (its lock wait ran out while
/// the outside statement queued) is sent again under the same command id, so it counts
/// once however often it is tried.
async fn request_until_recorded(ledger: KeyLedger, user: i64) -> KeyId {
    let (key, _, command) = request_command(user, "ams");
    let metadata = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "t"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ledger.execute(key, &command, &metadata).await {
            Ok(_) => return key,
            Err(error) => assert!(Instant::now() < deadline, "{key}: {error}"),
        }
    }
}

/// Runs `statement` from an outside session, holding what it took for a moment before
/// rolling back; returns how long it waited and its outcome.
async fn outside(url: &str, statement: &str) -> (Duration, Result<(), String>) {
    let mut session = PgConnection::connect(url).await.expect("outside session");
    let started = Instant::now();
    let mut transaction = session.begin().await.expect("begin");
    let outcome = sqlx::raw_sql(statement)
        .execute(&mut *transaction)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let waited = started.elapsed();
    if outcome.is_ok() {
        // Hold the lock as an operator would while they work, then undo the change.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = transaction.rollback().await;
    (waited, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outside_lock_requests_get_their_turn_and_no_key_is_lost() {
    let stack = Stack::start().await;
    let mut keys = Vec::new();
    let statements = [
        ("TRUNCATE events", false),
        ("ALTER TABLE events ADD COLUMN x int", true),
        ("LOCK TABLE events IN ACCESS EXCLUSIVE MODE", true),
    ];
    for (round, (statement, succeeds)) in statements.into_iter().enumerate() {
        // Keys keep flowing while the outside statement waits for its turn.
        let mut requests = JoinSet::new();
        for n in 0..40 {
            let user = 1_000 + (round as i64) * 100 + n;
            requests.spawn(request_until_recorded(stack.ledger.clone(), user));
        }
        let (waited, outcome) = tokio::time::timeout(
            OUTSIDE_TURN + Duration::from_secs(5),
            outside(&stack.db.url, statement),
        )
        .await
        .unwrap_or_else(|_| panic!("{statement:?} still waiting for its lock"));
        assert!(
            waited < OUTSIDE_TURN,
            "{statement:?} waited {waited:?} for its lock"
        );
        match (succeeds, outcome) {
            (true, Ok(())) => {}
            (false, Err(error)) => assert!(error.contains("append-only"), "{error}"),
            (expected, outcome) => {
                panic!("{statement:?}: {outcome:?}, expected success {expected}")
            }
        }
        while let Some(key) = requests.join_next().await {
            keys.push(key.expect("request task"));
        }
    }
    assert_eq!(keys.len(), 120);
    for key in keys {
        stack
            .wait_for(key, EventType::Provisioned.as_str(), 1)
            .await;
    }
    let clients = stack.clients();
    assert_eq!(clients.len(), 120, "one client per key on the panel");
    stack.stop().await;
}

/// How long the whole batch of keys may take while another database's transaction is open
/// (about 1.5 s on this machine when nothing else runs).
const KEYS_WHILE_ELSEWHERE_BUSY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_transaction_in_another_database_holds_no_key_back() {
    let stack = Stack::start().await;
    let neighbour = testkit::TestDatabase::create().await;
    let mut other = PgConnection::connect(&neighbour.url)
        .await
        .expect("neighbour session");
    let mut long = other.begin().await.expect("begin");
    sqlx::raw_sql("CREATE TABLE etl (n int); INSERT INTO etl VALUES (1)")
        .execute(&mut *long)
        .await
        .expect("a write elsewhere");
    let started = Instant::now();
    let mut requests = JoinSet::new();
    for user in 1..=200 {
        requests.spawn(request_until_recorded(stack.ledger.clone(), user));
    }
    let mut keys = Vec::new();
    while let Some(key) = requests.join_next().await {
        keys.push(key.expect("request task"));
    }
    for key in &keys {
        stack
            .wait_for(*key, EventType::Provisioned.as_str(), 1)
            .await;
    }
    let took = started.elapsed();
    assert!(
        took < KEYS_WHILE_ELSEWHERE_BUSY,
        "200 keys took {took:?} while another database's transaction was open"
    );
    // The other transaction was open throughout: it still runs now.
    let still_open: bool =
        sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
            .fetch_one(&mut *long)
            .await
            .expect("the long transaction answers");
    assert!(still_open);
    long.rollback().await.expect("rollback");
    stack.stop().await;
}
