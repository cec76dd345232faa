//! `keyledger demo` end to end: the story it prints, and that it leaves nothing behind.

use std::collections::BTreeSet;
use std::process::Command;

use domain::EventType;

#[tokio::test]
async fn the_demo_tells_the_whole_story_and_cleans_up() {
    let output = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .arg("demo")
        .env_clear()
        .env("DATABASE_URL", testkit::database_server_url())
        .env("AMQP_URL", testkit::broker_server_url())
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // The story is told without a warning or an error in it (the demo logs warnings and
    // errors only, so any log line at all is one).
    for level in ["WARN", "ERROR", "\"level\":\"WARN", "\"level\":\"ERROR"] {
        assert!(
            !stdout.contains(level) && !stderr.contains(level),
            "the demo logged {level}:\n{stderr}"
        );
    }

    for step in [
        "1. user 123456789 asks for a key",
        "2. the user presses 🔄 refresh (1 of 2)",
        "3. the user presses 🔄 refresh (2 of 2)",
        "4. the user revokes the key",
        "every hash chain holds",
        "each equals a replay of the log",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    for event in [
        EventType::Requested.as_str(),
        EventType::Provisioned.as_str(),
        EventType::RotationRequested.as_str(),
        EventType::Rotated.as_str(),
        EventType::Revoked.as_str(),
    ] {
        assert!(stdout.contains(event), "missing {event} in:\n{stdout}");
    }
    // Three links, three different client UUIDs: a refresh never hands back the old key.
    let uuids: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix("link: vless://"))
        .map(|rest| rest.split('@').next().expect("uuid"))
        .collect();
    assert_eq!(uuids.len(), 3, "{stdout}");
    assert!(
        stdout.contains("enable=false"),
        "the revoked client is disabled:\n{stdout}"
    );

    // What it created is gone.
    let name = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("rabbitmq     vhost "))
        .expect("the vhost line")
        .trim()
        .to_owned();
    let pool = sqlx::PgPool::connect(&testkit::database_server_url())
        .await
        .expect("server");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .expect("query");
    assert_eq!(left, 0, "database {name} left behind");
    let management =
        broker::Management::for_amqp_url(&testkit::broker_server_url()).expect("management");
    let vhosts = management.vhosts().await.expect("vhosts");
    assert!(!vhosts.contains(&name), "vhost {name} left behind");
}
