//! The event log against the real PostgreSQL: appends, concurrency, idempotency, reading.

use std::collections::HashSet;
use std::time::Duration;

use domain::EventType;
use eventstore::{
    Actor, ActorKind, AppendError, AppendOutcome, EventMetadata, NewEvent, verify_chains,
};
use serde_json::json;
use testkit::TestDatabase;
use uuid::Uuid;

fn metadata(command_id: Option<Uuid>) -> EventMetadata {
    let id = command_id.unwrap_or_else(Uuid::new_v4);
    EventMetadata {
        correlation_id: id,
        causation_id: id,
        actor: Actor::new(ActorKind::Admin, "test"),
        command_id,
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                EventType::DriftRepaired.as_str(),
                json!({"kind": "missing_on_panel", "n": i}),
            )
        })
        .collect()
}

#[tokio::test]
async fn appended_events_read_back_in_order_with_versions_positions_and_hashes() {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let first = db
        .store
        .append(stream, 0, &events(3), &metadata(None))
        .await
        .expect("append");
    let AppendOutcome::Appended(range) = first else {
        panic!("expected a fresh append")
    };
    assert_eq!((range.first_version, range.last_version), (1, 3));
    assert_eq!(range.last_position - range.first_position, 2);
    db.store
        .append(stream, 3, &events(1), &metadata(None))
        .await
        .expect("second append");

    let read = db.store.read_stream(stream).await.expect("read");
    let versions: Vec<i32> = read.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert!(read.iter().all(|e| e.hash.len() == 64));
    assert_eq!(read[1].data["n"], 1);
    let all = db.store.read_committed(0).await.expect("read all");
    assert_eq!(all, read);
    assert_eq!(
        db.store
            .read_stream_after(stream, 2)
            .await
            .expect("read")
            .len(),
        2
    );
}

#[tokio::test]
async fn a_wrong_expected_version_is_a_typed_conflict_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    db.store
        .append(stream, 0, &events(2), &metadata(None))
        .await
        .expect("append");
    for expected in [0, 1, 5] {
        let err = db
            .store
            .append(stream, expected, &events(1), &metadata(None))
            .await
            .expect_err("conflict");
        assert!(
            matches!(err, AppendError::VersionConflict { actual: 2, expected: e, .. } if e == expected),
            "{err:?}"
        );
    }
    assert_eq!(db.store.read_stream(stream).await.expect("read").len(), 2);
    assert!(matches!(
        db.store.append(stream, 2, &[], &metadata(None)).await,
        Err(AppendError::NoEvents)
    ));
}

#[tokio::test]
async fn concurrent_appends_at_one_version_let_exactly_one_win() {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let attempts = (0..8).map(|_| {
        let store = db.store.clone();
        tokio::spawn(async move { store.append(stream, 0, &events(2), &metadata(None)).await })
    });
    let results = futures::future::join_all(attempts).await;
    let wins = results
        .iter()
        .filter(|r| matches!(r, Ok(Ok(AppendOutcome::Appended(_)))))
        .count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(AppendError::VersionConflict { .. }))))
        .count();
    assert_eq!((wins, conflicts), (1, 7));
    assert_eq!(db.store.read_stream(stream).await.expect("read").len(), 2);
}

#[tokio::test]
async fn a_repeated_command_id_is_answered_with_the_first_outcome() {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let command = Some(Uuid::new_v4());
    let first = db
        .store
        .append(stream, 0, &events(2), &metadata(command))
        .await
        .expect("first");
    // The retry carries the same command and the version it saw before the first landed.
    let retry = db
        .store
        .append(stream, 0, &events(2), &metadata(command))
        .await
        .expect("retry");
    assert!(matches!(first, AppendOutcome::Appended(_)));
    assert_eq!(retry, AppendOutcome::AlreadyAppended(first.range()));
    // Even at the right version, the same command is not applied twice.
    let again = db
        .store
        .append(stream, 2, &events(1), &metadata(command))
        .await
        .expect("again");
    assert_eq!(again, AppendOutcome::AlreadyAppended(first.range()));
    assert_eq!(db.store.read_stream(stream).await.expect("read").len(), 2);

    let elsewhere = db
        .store
        .append(Uuid::new_v4(), 0, &events(1), &metadata(command))
        .await;
    assert!(matches!(elsewhere, Err(AppendError::CommandIdTaken { .. })));
}

#[tokio::test]
async fn a_repeated_event_id_is_idempotent_in_its_stream_and_refused_elsewhere() {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let batch = events(2);
    let first = db
        .store
        .append(stream, 0, &batch, &metadata(None))
        .await
        .expect("first");
    let again = db
        .store
        .append(stream, 2, &batch, &metadata(None))
        .await
        .expect("again");
    assert_eq!(again, AppendOutcome::AlreadyAppended(first.range()));
    let other = db
        .store
        .append(Uuid::new_v4(), 0, &batch, &metadata(None))
        .await;
    assert!(
        matches!(other, Err(AppendError::EventIdTaken { .. })),
        "{other:?}"
    );
    assert_eq!(db.store.read_committed(0).await.expect("read").len(), 2);
}

/// docs/architecture.md, rule 3: the first append takes the lower position but commits last; a
/// follower must not pass it.
#[tokio::test]
async fn a_follower_never_skips_an_event_that_commits_late() {
    let db = TestDatabase::create().await;
    let (early, late) = (Uuid::new_v4(), Uuid::new_v4());

    let mut slow = db.pool().begin().await.expect("begin");
    let slow_range = db
        .store
        .append_on(&mut slow, early, 0, &events(1), &metadata(None))
        .await
        .expect("slow append")
        .range();
    let fast_range = db
        .store
        .append(late, 0, &events(1), &metadata(None))
        .await
        .expect("fast append")
        .range();
    assert!(slow_range.first_position < fast_range.first_position);

    // The fast append is committed, but passing it now would skip the slow one for good.
    let seen = db.store.read_all(0, 100).await.expect("read");
    assert!(
        seen.is_empty(),
        "follower passed an uncommitted lower position: {seen:?}"
    );

    slow.commit().await.expect("commit");
    let seen = db.store.read_committed(0).await.expect("read");
    let streams: Vec<Uuid> = seen.iter().map(|e| e.stream_id).collect();
    assert_eq!(streams, vec![early, late]);
}

/// Only keyledger's own appends hold readers back: a writing transaction left open in
/// another database on the same server, and one in this database that writes something
/// else, change nothing for a follower (on a shared server they once held every key for as
/// long as they lived).
#[tokio::test]
async fn transactions_that_are_not_appends_do_not_hold_readers_back() {
    let db = TestDatabase::create().await;
    let neighbour = TestDatabase::create().await;
    // A write transaction in another database, held open across the whole test.
    let mut elsewhere = neighbour.pool().begin().await.expect("begin elsewhere");
    sqlx::raw_sql("CREATE TABLE etl_batch (n int); INSERT INTO etl_batch VALUES (1)")
        .execute(&mut *elsewhere)
        .await
        .expect("write elsewhere");
    // A transaction in this database that wrote to another table and sits idle.
    let mut idle = db.pool().begin().await.expect("begin idle");
    sqlx::query("CREATE TABLE idle_note (n int)")
        .execute(&mut *idle)
        .await
        .expect("write here");

    let stream = Uuid::new_v4();
    db.store
        .append(stream, 0, &events(2), &metadata(None))
        .await
        .expect("append");
    let seen = db.store.read_all(0, 100).await.expect("read");
    assert_eq!(
        seen.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2],
        "a follower was held back by transactions that do not append"
    );
    let exported = tokio::time::timeout(Duration::from_secs(5), db.store.read_committed(0))
        .await
        .expect("read_committed does not wait for the other transactions")
        .expect("read");
    assert_eq!(exported.len(), 2);

    // An append still running does hold readers back, and only until it ends.
    let mut appending = db.pool().begin().await.expect("begin append");
    db.store
        .append_on(
            &mut appending,
            Uuid::new_v4(),
            0,
            &events(1),
            &metadata(None),
        )
        .await
        .expect("append in flight");
    db.store
        .append(stream, 2, &events(1), &metadata(None))
        .await
        .expect("append after it");
    assert_eq!(db.store.read_all(0, 100).await.expect("read").len(), 2);
    appending.commit().await.expect("commit");
    assert_eq!(db.store.read_all(0, 100).await.expect("read").len(), 4);

    idle.rollback().await.expect("rollback idle");
    elsewhere.rollback().await.expect("rollback elsewhere");
}

#[tokio::test]
async fn a_follower_sees_every_event_once_in_order_under_concurrent_writers() {
    let db = TestDatabase::create().await;
    let writers = 8;
    let per_writer = 40;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move {
                let stream = Uuid::new_v4();
                for version in 0..per_writer {
                    let batch = events(1 + version as usize % 3);
                    let v = store.stream_version(stream).await.expect("version");
                    store
                        .append(stream, v, &batch, &metadata(None))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();

    let expected_total: usize =
        (0..per_writer).map(|v| 1 + v as usize % 3).sum::<usize>() * writers;
    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < expected_total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "follower stalled at {}",
            seen.len()
        );
        let page = db.store.read_all(after, 7).await.expect("read");
        if let Some(last) = page.last() {
            after = last.position;
        } else {
            tokio::task::yield_now().await;
        }
        seen.extend(page);
    }
    for task in tasks {
        task.await.expect("writer");
    }
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), expected_total);
    assert_eq!(db.store.read_all(after, 100).await.expect("read").len(), 0);
    assert!(verify_chains(db.pool()).await.expect("verify").holds());
}

#[tokio::test]
async fn events_must_be_the_first_write_of_their_transaction() {
    let db = TestDatabase::create().await;
    let mut tx = db.pool().begin().await.expect("begin");
    sqlx::raw_sql("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("earlier write");
    let err = db
        .store
        .append_on(&mut tx, Uuid::new_v4(), 0, &events(1), &metadata(None))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("first write"), "{err}");
}

/// Group commit: appends that arrive together share transactions, yet each is judged on
/// its own — a stale one is refused without failing its neighbours, a retried command is
/// answered idempotently, and two appends racing for one stream leave exactly one winner.
#[tokio::test]
async fn concurrent_appends_share_transactions_and_each_gets_its_own_answer() {
    let db = TestDatabase::create().await;
    let stale = Uuid::new_v4();
    db.store
        .append(stale, 0, &events(1), &metadata(None))
        .await
        .expect("seed");
    let retried = Uuid::new_v4();
    let retried_command = Uuid::new_v4();
    let first = db
        .store
        .append(retried, 0, &events(2), &metadata(Some(retried_command)))
        .await
        .expect("first attempt")
        .range();
    let contested = Uuid::new_v4();

    let fresh: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    let mut tasks = Vec::new();
    for &stream in &fresh {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            (
                stream,
                store.append(stream, 0, &events(2), &metadata(None)).await,
            )
        }));
    }
    let store = db.store.clone();
    let stale_attempt =
        tokio::spawn(async move { store.append(stale, 0, &events(1), &metadata(None)).await });
    let store = db.store.clone();
    let retry = tokio::spawn(async move {
        store
            .append(retried, 0, &events(2), &metadata(Some(retried_command)))
            .await
    });
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .append(contested, 0, &events(1), &metadata(None))
                    .await
            })
        })
        .collect();

    for task in tasks {
        let (stream, result) = task.await.expect("task");
        let range = result.expect("fresh stream appends").range();
        assert_eq!(
            (range.stream_id, range.first_version, range.last_version),
            (stream, 1, 2)
        );
        assert_eq!(
            range.last_position,
            range.first_position + 1,
            "consecutive positions"
        );
    }
    assert!(matches!(
        stale_attempt.await.expect("task"),
        Err(AppendError::VersionConflict {
            expected: 0,
            actual: 1,
            ..
        })
    ));
    assert_eq!(
        retry.await.expect("task").expect("retry"),
        AppendOutcome::AlreadyAppended(first)
    );
    let race: Vec<_> = futures::future::join_all(racers).await;
    let wins = race
        .iter()
        .filter(|r| matches!(r, Ok(Ok(AppendOutcome::Appended(_)))))
        .count();
    assert_eq!(wins, 1, "exactly one of two racers wins: {race:?}");

    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tx) FROM events WHERE stream_id = ANY($1)")
            .bind(&fresh)
            .fetch_one(db.store.pool())
            .await
            .expect("count transactions");
    assert!(
        transactions < fresh.len() as i64,
        "40 concurrent appends took {transactions} transactions: no group commit"
    );
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(db.store.pool())
        .await
        .expect("positions");
    let distinct: HashSet<_> = positions.iter().collect();
    assert_eq!(distinct.len(), positions.len());
    assert_eq!(positions.len(), 1 + 2 + 40 * 2 + 1);
    assert!(
        verify_chains(db.store.pool())
            .await
            .expect("verify")
            .holds()
    );
    // Batches link their writers' content digests in the database too: the plain SQL
    // check must agree with the chains that group commit wrote.
    let script_breaks = sqlx::query(include_str!("../../../../sql/verify_chain.sql"))
        .fetch_all(db.store.pool())
        .await
        .expect("verify script");
    assert!(script_breaks.is_empty(), "{} breaks", script_breaks.len());
}
