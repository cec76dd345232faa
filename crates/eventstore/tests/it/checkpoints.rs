//! Signed checkpoints catch what the per-stream chains cannot: a superuser who rewrites an
//! event and recomputes its stream's hashes, deletes a stream's tail, or swaps positions.
//! Each case shows the old check still passing and the checkpoint failing.

use base64::Engine;
use domain::{EventType, Secret};
use eventstore::{
    Checkpoint, CheckpointVerdict, LogHash, NotaryKey, log_hash_up_to, verify_chains,
};
use serde_json::json;
use sqlx::Row;
use testkit::TestDatabase;
use uuid::Uuid;

const CHECKPOINT_SCRIPT: &str = include_str!("../../../../sql/checkpoint_hash.sql");

/// Two streams of three events each, interleaved in the log, and a checkpoint over all.
async fn checkpointed() -> (TestDatabase, Vec<Uuid>, Checkpoint) {
    let db = TestDatabase::create().await;
    let streams = vec![Uuid::new_v4(), Uuid::new_v4()];
    for version in 0..3 {
        for stream in &streams {
            let event = eventstore::NewEvent::new(
                EventType::RevocationRequested.as_str(),
                json!({"reason": format!("reason {version}")}),
            );
            db.store
                .append(*stream, version, &[event], &testkit::metadata())
                .await
                .expect("append");
        }
    }
    let last = db.store.last_position().await.expect("last");
    let log = log_hash_up_to(db.pool(), LogHash::start(), last)
        .await
        .expect("hash");
    assert_eq!(log.position, last);
    let checkpoint = testkit::notary_key().sign_now(&log).expect("sign");
    assert!(
        db.store
            .insert_checkpoint(&checkpoint)
            .await
            .expect("insert")
    );
    (db, streams, checkpoint)
}

async fn verdict(db: &TestDatabase, checkpoint: &Checkpoint) -> CheckpointVerdict {
    db.store
        .verify_checkpoint(
            checkpoint,
            &testkit::notary_key().public_key(),
            LogHash::start(),
        )
        .await
        .expect("verify")
        .0
}

async fn tamper(db: &TestDatabase, sql: &str) {
    testkit::rewrite_history(db.pool(), sql).await;
}

async fn chains_hold(db: &TestDatabase) -> bool {
    let report = verify_chains(db.pool()).await.expect("verify chains");
    report.holds()
}

async fn script_hash(db: &TestDatabase, position: i64) -> (i64, String) {
    let sql = CHECKPOINT_SCRIPT.replace("<= :position", &format!("<= {position}"));
    let row = sqlx::query(&sql)
        .fetch_one(db.pool())
        .await
        .expect("script runs");
    (row.get("position"), row.get("log_hash"))
}

#[tokio::test]
async fn an_untouched_log_holds_its_checkpoint_and_the_sql_script_agrees() {
    let (db, _, checkpoint) = checkpointed().await;
    assert!(chains_hold(&db).await);
    assert_eq!(verdict(&db, &checkpoint).await, CheckpointVerdict::Holds);
    assert_eq!(
        script_hash(&db, checkpoint.position).await,
        (checkpoint.position, checkpoint.log_hash.clone())
    );
    // Continuing from an earlier point gives the same hash as from scratch.
    let middle = log_hash_up_to(db.pool(), LogHash::start(), 3)
        .await
        .expect("middle");
    let continued = log_hash_up_to(db.pool(), middle, checkpoint.position)
        .await
        .expect("continued");
    assert_eq!(continued, checkpoint.log());
    // A checkpoint signed by another key is refused.
    let other = db
        .store
        .verify_checkpoint(
            &checkpoint,
            &NotaryKey::from_base64(&Secret::new(
                base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
            ))
            .expect("key")
            .public_key(),
            LogHash::start(),
        )
        .await
        .expect("verify")
        .0;
    assert!(
        matches!(other, CheckpointVerdict::BadSignature(_)),
        "{other:?}"
    );
}

#[tokio::test]
async fn a_rewritten_and_rechained_event_passes_the_chains_but_not_the_checkpoint() {
    let (db, streams, checkpoint) = checkpointed().await;
    tamper(
        &db,
        &format!(
            "UPDATE events SET data = '{{\"reason\": \"nothing happened\"}}'
             WHERE stream_id = '{}' AND version = 1;",
            streams[0]
        ),
    )
    .await;
    assert!(chains_hold(&db).await, "the per-stream check is fooled");
    assert!(matches!(
        verdict(&db, &checkpoint).await,
        CheckpointVerdict::LogDiffers { .. }
    ));
    assert_ne!(
        script_hash(&db, checkpoint.position).await.1,
        checkpoint.log_hash
    );
}

#[tokio::test]
async fn a_deleted_stream_tail_passes_the_chains_but_not_the_checkpoint() {
    let (db, streams, checkpoint) = checkpointed().await;
    tamper(
        &db,
        &format!(
            "DELETE FROM events WHERE stream_id = '{}' AND version = 3;",
            streams[1]
        ),
    )
    .await;
    assert!(chains_hold(&db).await, "the per-stream check is fooled");
    assert!(matches!(
        verdict(&db, &checkpoint).await,
        CheckpointVerdict::LogDiffers { .. }
    ));
}

#[tokio::test]
async fn swapped_positions_pass_the_chains_but_not_the_checkpoint() {
    let (db, _, checkpoint) = checkpointed().await;
    // The first two events belong to different streams: swapping their positions keeps
    // each stream's order, so once rechained every stream still holds.
    let positions: Vec<i64> = sqlx::query_scalar("SELECT position FROM events ORDER BY position")
        .fetch_all(db.pool())
        .await
        .expect("positions");
    let (a, b) = (positions[0], positions[1]);
    tamper(
        &db,
        &format!(
            "UPDATE events SET position = -1 WHERE position = {a};
             UPDATE events SET position = {a} WHERE position = {b};
             UPDATE events SET position = {b} WHERE position = -1;"
        ),
    )
    .await;
    assert!(chains_hold(&db).await, "the per-stream check is fooled");
    assert!(matches!(
        verdict(&db, &checkpoint).await,
        CheckpointVerdict::LogDiffers { .. }
    ));
}

#[tokio::test]
async fn checkpoints_are_append_only_and_listed_oldest_first() {
    let (db, _, checkpoint) = checkpointed().await;
    for sql in [
        "UPDATE checkpoints SET log_hash = 'x'",
        "DELETE FROM checkpoints",
        "TRUNCATE checkpoints",
    ] {
        let error = sqlx::query(sql)
            .execute(db.pool())
            .await
            .expect_err("refused");
        assert!(error.to_string().contains("append-only"), "{error}");
    }
    // The same position again (a second notary) is not an error and changes nothing.
    assert!(
        !db.store
            .insert_checkpoint(&checkpoint)
            .await
            .expect("insert")
    );
    let listed = db.store.checkpoints_after(0, 10).await.expect("list");
    assert_eq!(listed, vec![checkpoint.clone()]);
    assert!(
        db.store
            .checkpoints_after(checkpoint.position, 10)
            .await
            .expect("list")
            .is_empty()
    );
}
