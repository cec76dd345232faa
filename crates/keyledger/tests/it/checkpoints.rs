//! The notary role and the checkpoint commands end to end: the role, started through the
//! pipeline, signs a checkpoint covering the log and writes it to its file; the binary lists
//! it, shows the public key, and `audit verify --checkpoint` holds on the untouched log and
//! fails once a superuser rewrites an event and recomputes its stream's hashes.

use crate::common;

use std::time::Duration;

use common::{eventually, keyledger, keyledger_with, seeded_key, stdout};
use domain::{EventType, Secret};
use eventstore::{NewEvent, NotaryKey};
use serde_json::json;
use service::Role;
use service::pipeline::Pipeline;
use testkit::TestDatabase;
use uuid::Uuid;

#[tokio::test]
async fn the_notary_role_signs_a_checkpoint_that_verify_checks_against_the_log() {
    let db = TestDatabase::create().await;
    let key = seeded_key(&db).await;
    let last = db.store.last_position().await.expect("last");
    let file = std::env::temp_dir().join(format!("keyledger-checkpoints-{}", Uuid::new_v4()));
    let running = Pipeline::new(db.store.clone(), "amqp://127.0.0.1:1/unused")
        .with_notary(
            testkit::notary_key(),
            Duration::from_secs(5),
            Some(file.clone()),
        )
        .start(&[Role::Notary])
        .await
        .expect("start the notary");
    eventually("the notary signs a checkpoint covering the log", || async {
        matches!(db.store.last_checkpoint().await, Ok(Some(c)) if c.position == last)
    })
    .await;
    running.stop().await;

    let written = std::fs::read_to_string(&file).expect("checkpoint file");
    assert_eq!(written.lines().count(), 1, "{written}");
    let listed = keyledger(&db.url, &["audit", "checkpoints"]);
    assert_eq!(listed.status.code(), Some(0));
    assert_eq!(stdout(&listed), written);
    let stored: eventstore::Checkpoint =
        serde_json::from_str(written.trim()).expect("a checkpoint line");
    assert_eq!(stored.position, last);

    let public = keyledger_with(
        &db.url,
        &["audit", "checkpoints", "public-key"],
        &[("KEYLEDGER_NOTARY_KEY", testkit::NOTARY_SEED)],
    );
    assert_eq!(public.status.code(), Some(0));
    let public = stdout(&public).trim().to_owned();
    assert_eq!(public, testkit::notary_key().public_key().to_base64());
    assert_eq!(stored.public_key, public);

    let path = file.to_str().expect("utf-8 path");
    let clean = keyledger(
        &db.url,
        &[
            "audit",
            "verify",
            "--checkpoint",
            path,
            "--public-key",
            &public,
        ],
    );
    let text = stdout(&clean);
    assert_eq!(clean.status.code(), Some(0), "{text}");
    assert!(text.contains("every checkpoint holds"), "{text}");

    // A key not pinned is refused, whatever the file says.
    let unpinned = keyledger(&db.url, &["audit", "verify", "--checkpoint", path]);
    assert_eq!(unpinned.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unpinned.stderr).contains("must be pinned"));
    // Another key does not vouch for it.
    let other =
        NotaryKey::from_base64(&Secret::new("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="))
            .expect("key")
            .public_key()
            .to_base64();
    let foreign = keyledger(
        &db.url,
        &[
            "audit",
            "verify",
            "--checkpoint",
            path,
            "--public-key",
            &other,
        ],
    );
    assert_eq!(foreign.status.code(), Some(1), "{}", stdout(&foreign));
    assert!(stdout(&foreign).contains("bad signature"));

    testkit::rewrite_history(
        db.pool(),
        &format!(
            "UPDATE events SET data = jsonb_set(data, '{{reason}}', '\"nothing\"')
             WHERE stream_id = '{key}' AND version = 2;"
        ),
    )
    .await;
    let tampered = keyledger_with(
        &db.url,
        &["audit", "verify", "--checkpoint", path],
        &[("KEYLEDGER_NOTARY_PUBLIC_KEY", public.as_str())],
    );
    let text = stdout(&tampered);
    assert_eq!(tampered.status.code(), Some(1), "{text}");
    assert!(text.contains("all hash chains hold"), "{text}");
    assert!(text.contains("the log was altered"), "{text}");
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn checkpoint_commands_without_a_key_exit_with_2() {
    let db = TestDatabase::create().await;
    let missing = keyledger(&db.url, &["audit", "checkpoints", "public-key"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("KEYLEDGER_NOTARY_KEY"));
    let bad = keyledger_with(
        &db.url,
        &["audit", "checkpoints", "public-key"],
        &[("KEYLEDGER_NOTARY_KEY", "c2hvcnQ=")],
    );
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("KEYLEDGER_NOTARY_KEY"), "{stderr}");
    assert!(
        !stderr.contains("c2hvcnQ="),
        "the key is never printed: {stderr}"
    );
    let listed = keyledger(&db.url, &["audit", "checkpoints"]);
    assert_eq!(listed.status.code(), Some(0));
    assert!(stdout(&listed).is_empty());
}

#[tokio::test]
async fn the_notary_continues_its_checkpoints_as_from_scratch_and_refuses_an_altered_log() {
    use service::notary::{Notary, NotaryError};
    let db = TestDatabase::create().await;
    let key = seeded_key(&db).await;
    let notary = Notary::new(
        db.store.clone(),
        testkit::notary_key(),
        Duration::from_secs(60),
        None,
    );
    let from_scratch = |position: i64| {
        let pool = db.pool().clone();
        async move {
            eventstore::log_hash_up_to(&pool, eventstore::LogHash::start(), position)
                .await
                .expect("hash")
        }
    };
    let mut running = None;
    let first = notary
        .pass(&mut running)
        .await
        .expect("pass")
        .expect("a first checkpoint");
    assert_eq!(first.log(), from_scratch(first.position).await);
    assert!(
        notary.pass(&mut running).await.expect("pass").is_none(),
        "nothing new, nothing signed"
    );

    let more = NewEvent::new(EventType::Expired.as_str(), json!({}));
    db.store
        .append(Uuid::new_v4(), 0, &[more], &testkit::metadata())
        .await
        .expect("append");
    let second = notary
        .pass(&mut running)
        .await
        .expect("pass")
        .expect("a second checkpoint");
    assert!(second.position > first.position);
    assert_eq!(second.log(), from_scratch(second.position).await);
    // A restarted notary resumes from the stored checkpoint and agrees.
    let more = NewEvent::new(EventType::Expired.as_str(), json!({}));
    db.store
        .append(Uuid::new_v4(), 0, &[more], &testkit::metadata())
        .await
        .expect("append");
    let third = notary
        .pass(&mut None)
        .await
        .expect("pass")
        .expect("a third checkpoint");
    assert_eq!(third.log(), from_scratch(third.position).await);
    assert_eq!(
        db.store.checkpoints_after(0, 10).await.expect("list"),
        vec![first, second, third]
    );

    testkit::rewrite_history(
        db.pool(),
        &format!(
            "UPDATE events SET data = jsonb_set(data, '{{reason}}', '\"nothing\"')
             WHERE stream_id = '{key}' AND version = 2;"
        ),
    )
    .await;
    let refused = notary.pass(&mut None).await;
    assert!(
        matches!(refused, Err(NotaryError::Altered { .. })),
        "{refused:?}"
    );
}
