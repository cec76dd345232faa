//! The log refuses changes, and tampering behind its back is caught by both checks.

use domain::EventType;
use eventstore::{Actor, ActorKind, EventMetadata, NewEvent, verify_chains};
use serde_json::json;
use sqlx::Row;
use testkit::TestDatabase;
use uuid::Uuid;

const VERIFY_SCRIPT: &str = include_str!("../../../../sql/verify_chain.sql");

async fn seeded() -> (TestDatabase, Uuid) {
    let db = TestDatabase::create().await;
    let stream = Uuid::new_v4();
    let meta = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "a"));
    // Data chosen to exercise JSON text rendering: unicode, escapes, nesting, numbers.
    let batch = vec![
        NewEvent::new(
            EventType::RevocationRequested.as_str(),
            json!({"reason": "ключ утерян \"phone\"\n\t🙂"}),
        ),
        NewEvent::new(
            EventType::DriftDetected.as_str(),
            json!({"kind": "settings_differ", "expected": {"b": 1, "a": [1.5, null, true]}, "observed": {}}),
        ),
        NewEvent::new(EventType::Revoked.as_str(), json!({})),
    ];
    db.store
        .append(stream, 0, &batch, &meta)
        .await
        .expect("append");
    let other = NewEvent::new(EventType::Expired.as_str(), json!({}));
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
    let err = sqlx::query("UPDATE events SET type = $1")
        .bind(EventType::Rotated.as_str())
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

/// A database migrated only as far as `last_version`, as a log written before the later
/// migrations existed.
async fn database_migrated_to(last_version: i64) -> (String, sqlx::PgPool, std::path::PathBuf) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let older = std::env::temp_dir().join(format!("keyledger-migrations-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&older).expect("temp dir");
    for entry in std::fs::read_dir(&source).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let version: i64 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        if version <= last_version {
            std::fs::copy(&path, older.join(&name)).expect("copy migration");
        }
    }
    let url = eventstore::with_database(
        &testkit::database_server_url(),
        &format!("keyledger_test_{}", Uuid::new_v4().simple()),
    )
    .expect("url");
    eventstore::create_database(&url)
        .await
        .expect("create database");
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(older.as_path())
        .await
        .expect("older migrations")
        .run(&pool)
        .await
        .expect("migrate to the older version");
    (url, pool, older)
}

/// A log written with the first chain formula stays verifiable after migration 0007, and
/// streams chain on across the change of formula.
#[tokio::test]
async fn events_chained_by_the_first_formula_still_verify_after_the_second_arrives() {
    let (url, pool, older) = database_migrated_to(6).await;
    let stream = Uuid::new_v4();
    let metadata = json!({"actor": {"id": "a", "kind": "admin"}, "causation_id": stream, "correlation_id": stream});
    sqlx::query(
        "SELECT * FROM keyledger_append_batch(ARRAY[$1::uuid], ARRAY[0], ARRAY[$2::jsonb],
             ARRAY[NULL::uuid], ARRAY[2], ARRAY[$3::uuid, $4::uuid],
             ARRAY[$6, $7], ARRAY[$5::jsonb, '{}'::jsonb])",
    )
    .bind(stream)
    .bind(&metadata)
    .bind(Uuid::new_v4())
    .bind(Uuid::new_v4())
    .bind(json!({"kind": "missing", "n": 1.5, "note": "старый формат"}))
    .bind(EventType::DriftDetected.as_str())
    .bind(EventType::Revoked.as_str())
    .execute(&pool)
    .await
    .expect("append with the first formula");

    let store = eventstore::EventStore::new(pool.clone());
    store
        .migrate()
        .await
        .expect("migrate to the newest version");
    let first_of_second: i64 =
        sqlx::query_scalar("SELECT first_position FROM chain_formulas WHERE formula = 2")
            .fetch_one(&pool)
            .await
            .expect("boundary");
    assert_eq!(
        first_of_second, 3,
        "the two first-formula events lie below it"
    );
    let meta = EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::Admin, "a"));
    let more = [NewEvent::new(
        EventType::Requested.as_str(),
        json!({"user_id": 7, "location": "ams"}),
    )];
    store
        .append(stream, 2, &more, &meta)
        .await
        .expect("chain on");
    let other = [NewEvent::new(EventType::Expired.as_str(), json!({}))];
    store
        .append(Uuid::new_v4(), 0, &other, &meta_for_other())
        .await
        .expect("new stream");

    let report = verify_chains(&pool).await.expect("verify");
    assert!(report.holds(), "{report:?}");
    assert_eq!((report.streams, report.events), (2, 4));
    let findings = sqlx::query(VERIFY_SCRIPT)
        .fetch_all(&pool)
        .await
        .expect("script");
    assert!(
        findings.is_empty(),
        "script found {} breaks",
        findings.len()
    );

    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER events_append_only;
         UPDATE events SET data = '{{\"kind\": \"missing\"}}' WHERE stream_id = '{stream}' AND version = 1;
         ALTER TABLE events ENABLE TRIGGER events_append_only;"
    ))
    .execute(&pool)
    .await
    .expect("superuser tampers with a first-formula event");
    let report = verify_chains(&pool).await.expect("verify");
    let broken: Vec<i32> = report.breaks.iter().map(|b| b.version).collect();
    assert_eq!(broken, vec![1], "{report:?}");
    let findings: Vec<i32> = sqlx::query(VERIFY_SCRIPT)
        .fetch_all(&pool)
        .await
        .expect("script")
        .iter()
        .map(|r| r.get("version"))
        .collect();
    assert_eq!(findings, vec![1]);

    pool.close().await;
    eventstore::drop_database(&url)
        .await
        .expect("drop database");
    std::fs::remove_dir_all(older).expect("remove temp migrations");
}
