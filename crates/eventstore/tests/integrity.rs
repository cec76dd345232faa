//! The log refuses changes, and tampering behind its back is caught by both checks.

use eventstore::testing::TestDatabase;
use eventstore::{Actor, ActorKind, EventMetadata, NewEvent, verify_chains};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

const VERIFY_SCRIPT: &str = include_str!("../../../sql/verify_chain.sql");

async fn seeded() -> (TestDatabase, Uuid) {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let meta = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "a"));
    // Data chosen to exercise JSON text rendering: unicode, escapes, nesting, numbers.
    let batch = vec![
        NewEvent::new(
            "key.revocation_requested",
            json!({"reason": "ключ утерян \"phone\"\n\t🙂"}),
        ),
        NewEvent::new(
            "key.drift_detected",
            json!({"kind": "settings_differ", "expected": {"b": 1, "a": [1.5, null, true]}, "observed": {}}),
        ),
        NewEvent::new("key.revoked", json!({})),
    ];
    db.store
        .append(stream, 0, &batch, &meta)
        .await
        .expect("append");
    let other = NewEvent::new("key.expired", json!({}));
    db.store
        .append(Uuid::new_v4(), 0, &[other], &meta_for_other())
        .await
        .expect("append");
    (db, stream)
}

fn meta_for_other() -> EventMetadata {
    EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Scheduler, "s"))
}

async fn script_findings(db: &TestDatabase) -> Vec<(Uuid, i32, String)> {
    sqlx::query(VERIFY_SCRIPT)
        .fetch_all(db.pool())
        .await
        .expect("script runs")
        .iter()
        .map(|r| (r.get("stream_id"), r.get("version"), r.get("problem")))
        .collect()
}

#[tokio::test]
async fn an_untouched_log_passes_both_checks() {
    let (db, _) = seeded().await;
    let report = verify_chains(db.pool()).await.expect("verify");
    assert!(report.holds(), "{report:?}");
    assert_eq!((report.streams, report.events), (2, 4));
    assert!(script_findings(&db).await.is_empty());
}

#[tokio::test]
async fn update_is_refused_by_the_database() {
    let (db, _) = seeded().await;
    let err = sqlx::query("UPDATE events SET type = 'key.rotated'")
        .execute(db.pool())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn delete_is_refused_by_the_database() {
    let (db, _) = seeded().await;
    let err = sqlx::query("DELETE FROM events")
        .execute(db.pool())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn truncate_is_refused_by_the_database() {
    let (db, _) = seeded().await;
    let err = sqlx::query("TRUNCATE events")
        .execute(db.pool())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(db.pool())
        .await
        .expect("count");
    assert_eq!(count, 4);
}

#[tokio::test]
async fn tampering_as_superuser_is_caught_by_the_script_and_by_verify() {
    let (db, stream) = seeded().await;
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER events_append_only;
         UPDATE events SET data = '{{\"reason\": \"nothing happened\"}}' WHERE stream_id = '{stream}' AND version = 1;
         ALTER TABLE events ENABLE TRIGGER events_append_only;"
    ))
    .execute(db.pool())
    .await
    .expect("superuser tampers");

    let report = verify_chains(db.pool()).await.expect("verify");
    assert!(!report.holds());
    assert_eq!(report.breaks.len(), 1, "{report:?}");
    assert_eq!(
        (report.breaks[0].stream_id, report.breaks[0].version),
        (stream, 1)
    );
    assert_eq!(
        script_findings(&db).await,
        vec![(stream, 1, "hash differs".to_owned())]
    );
}

#[tokio::test]
async fn a_removed_event_breaks_the_chain_and_a_disabled_guard_is_reported() {
    let (db, stream) = seeded().await;
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER events_append_only;
         DELETE FROM events WHERE stream_id = '{stream}' AND version = 2;"
    ))
    .execute(db.pool())
    .await
    .expect("superuser deletes");

    let report = verify_chains(db.pool()).await.expect("verify");
    assert_eq!(report.breaks.len(), 1, "{report:?}");
    assert_eq!(report.breaks[0].version, 3);
    assert_eq!(
        report.disabled_guards,
        vec!["trigger events_append_only is disabled"]
    );
    let findings = script_findings(&db).await;
    assert_eq!(
        findings,
        vec![(stream, 3, "version does not follow".to_owned())]
    );
}
