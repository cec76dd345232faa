//! Least privilege against the real database: a throwaway runtime role, granted by
//! `migrate` run as the owner (the test server's superuser), appends through the store and
//! writes the views, while every statement that could rewrite the log is refused with a
//! permission error; `serve` runs as that role and a projection rebuild runs as the owner.

use crate::common::{self, Serving};

use std::process::{Command, Output};

use domain::{EventType, KeyCommand, KeyId, LocationId, RequestKey, UserId};
use eventstore::{Actor, ActorKind, EventMetadata, EventStore, KeyLedger, NewEvent};
use serde_json::json;
use service::config::Config;
use sqlx::{Connection, PgConnection};
use testkit::{TestDatabase, database_server_url};
use time::OffsetDateTime;
use uuid::Uuid;

/// Prefix of the throwaway runtime roles; `.ci/run` drops any an interrupted run left.
const ROLE_PREFIX: &str = "keyledger_test_rt_";

/// A `LOGIN` role made for one test, dropped when this value is dropped (also when the
/// test fails). Drop it after the databases it holds privileges in.
struct RuntimeRole {
    name: String,
}

impl RuntimeRole {
    async fn create() -> Self {
        let name = format!("{ROLE_PREFIX}{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&database_server_url())
            .await
            .expect("connect to the test server");
        sqlx::raw_sql(&format!(r#"CREATE ROLE "{name}" LOGIN"#))
            .execute(&mut admin)
            .await
            .expect("create the runtime role");
        let _ = admin.close().await;
        Self { name }
    }

    /// `database`'s URL on the test server, logged in as this role (trust auth).
    fn url(&self, database: &str) -> String {
        let mut url = url::Url::parse(&database_server_url()).expect("valid test server URL");
        url.set_username(&self.name).expect("URL with a host");
        url.set_password(None).expect("URL with a host");
        url.set_path(&format!("/{database}"));
        url.to_string()
    }
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&database_server_url()).await.ok()?;
                sqlx::raw_sql(&format!(r#"DROP ROLE IF EXISTS "{name}""#))
                    .execute(&mut admin)
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test role {}", self.name);
        }
    }
}

/// A migrated test database, its runtime role granted by `migrate` run as the owner.
/// Fields drop in order: the runtime's pool, the database, then the role.
struct TwoRoles {
    runtime: EventStore,
    runtime_url: String,
    config: Config,
    db: TestDatabase,
    _role: RuntimeRole,
}

impl TwoRoles {
    async fn create() -> Self {
        let role = RuntimeRole::create().await;
        let db = TestDatabase::create().await;
        let runtime_url = role.url(&db.name);
        let config = config(&runtime_url, Some(&db.url));
        let runtime = service::store::migrate(&config)
            .await
            .expect("migrate as the owner and grant the runtime role");
        Self {
            runtime,
            runtime_url,
            config,
            db,
            _role: role,
        }
    }

    /// One connection as the runtime role.
    async fn runtime_connection(&self) -> PgConnection {
        PgConnection::connect(&self.runtime_url)
            .await
            .expect("connect as the runtime role")
    }
}

fn config(database_url: &str, owner_url: Option<&str>) -> Config {
    Config::from_sources(None, |name| match name {
        "DATABASE_URL" => Some(database_url.to_owned()),
        "DATABASE_OWNER_URL" => owner_url.map(str::to_owned),
        _ => None,
    })
    .expect("valid configuration")
}

fn metadata() -> EventMetadata {
    EventMetadata::for_command(Uuid::new_v4(), Actor::new(ActorKind::TelegramUser, "42"))
}

fn requested() -> NewEvent {
    NewEvent::new(
        EventType::Requested.as_str(),
        json!({"user_id": 42, "location": "ams", "client_uuid": Uuid::new_v4(),
               "email": "tg42-ams", "expires_at": null, "traffic_limit_bytes": 0}),
    )
}

/// Runs the binary with exactly `env`.
fn keyledger(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .env("KEYLEDGER_LOG_FORMAT", "json")
        .output()
        .expect("binary runs")
}

fn is_permission_denied(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501"))
}

#[tokio::test]
async fn the_runtime_role_appends_through_the_store_and_writes_the_views() {
    let roles = TwoRoles::create().await;
    let store = &roles.runtime;
    // Granting again (every migrate does) changes nothing.
    service::store::migrate(&roles.config)
        .await
        .expect("migrate again");

    let stream = Uuid::new_v4();
    store
        .append(stream, 0, &[requested()], &metadata())
        .await
        .expect("append as the runtime role");
    let events = store.read_all(0, 100).await.expect("read_all");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream_id, stream);

    let ledger = KeyLedger::new(store.clone());
    let user = UserId::new(7).expect("valid");
    let ams = LocationId::new("ams").expect("valid");
    let key = KeyId::for_user_at(user, &ams);
    let command = KeyCommand::Request(RequestKey {
        user_id: user,
        location: ams.clone(),
        fresh_client_uuid: Uuid::new_v4(),
        expires_at: None,
        traffic_limit_bytes: 0,
        now: OffsetDateTime::now_utc(),
    });
    let meta = metadata();
    ledger
        .execute(key, &command, &meta)
        .await
        .expect("a command as the runtime role");
    // The idempotency lookup reads `commands`: a retried command is answered, not refused.
    ledger
        .execute(key, &command, &meta)
        .await
        .expect("the same command again");
    assert_eq!(store.read_all(0, 100).await.expect("read").len(), 2);

    let mut conn = roles.runtime_connection().await;
    for statement in [
        "INSERT INTO key_views (key_id, user_id, location, status, client_uuid, version, updated_at)
         VALUES (gen_random_uuid(), 1, 'ams', 'requested', gen_random_uuid(), 1, now())",
        "UPDATE key_views SET status = 'active'",
        "DELETE FROM key_views WHERE user_id = 1",
        "INSERT INTO relay_checkpoints (relay, position) VALUES ('r', 1)",
        "UPDATE relay_checkpoints SET position = 2",
        "INSERT INTO consumer_progress (consumer, stream_id, version) VALUES ('c', gen_random_uuid(), 1)",
        "INSERT INTO api_idempotency (caller, key, request_hash, status, body) VALUES ('a', 'k', 'h', 200, '{}')",
        "DELETE FROM api_idempotency",
        "INSERT INTO bot_users (user_id, chat_id, language) VALUES (1, 1, 'en')",
        "INSERT INTO bot_updates (update_id) VALUES (1)",
        "SELECT count(*) FROM commands",
        "SELECT count(*) FROM chain_formulas",
        "SELECT count(*) FROM _sqlx_migrations",
    ] {
        sqlx::raw_sql(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

#[tokio::test]
async fn the_runtime_role_cannot_rewrite_the_log() {
    let roles = TwoRoles::create().await;
    roles
        .runtime
        .append(Uuid::new_v4(), 0, &[requested()], &metadata())
        .await
        .expect("an event to aim at");
    let mut conn = roles.runtime_connection().await;
    for statement in [
        "UPDATE events SET type = 'Forged'",
        "DELETE FROM events",
        "TRUNCATE events",
        "INSERT INTO events (position, stream_id, version, type, data, metadata, event_id, recorded_at, hash)
         VALUES (1000, gen_random_uuid(), 1, 'Forged', '{}', '{}', gen_random_uuid(), now(), repeat('0', 64))",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "ALTER TABLE events ADD COLUMN x int",
        "CREATE OR REPLACE FUNCTION keyledger_append(
             p_stream_id uuid, p_expected integer, p_metadata jsonb, p_command_id uuid,
             p_event_ids uuid[], p_types text[], p_data jsonb[], p_content_digests text[]
         ) RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'",
        "CREATE OR REPLACE FUNCTION keyledger_refuse_event_change() RETURNS trigger
         LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
        "DROP TABLE events",
        "DROP TABLE key_views",
        "DROP FUNCTION keyledger_append_batch",
        "SELECT nextval('event_position_seq')",
        "SELECT setval('event_position_seq', 1)",
        "UPDATE commands SET last_version = 0",
        "DELETE FROM _sqlx_migrations",
        "DELETE FROM chain_formulas",
        "CREATE TABLE shadow (x int)",
        "CREATE FUNCTION convert_to(text, text) RETURNS bytea LANGUAGE sql AS 'SELECT NULL::bytea'",
        "SELECT keyledger_grant_runtime(current_user)",
    ] {
        match sqlx::raw_sql(statement).execute(&mut conn).await {
            Err(error) if is_permission_denied(&error) => {}
            other => panic!("{statement}: expected a permission error, got {other:?}"),
        }
    }
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                    'REFERENCES', 'TRIGGER']) AS p
         WHERE has_table_privilege(current_user, 'events', p)",
    )
    .fetch_all(&mut conn)
    .await
    .expect("privileges on events");
    assert_eq!(held, ["SELECT"]);
    let forged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'Forged' OR position = 1000")
            .fetch_one(roles.db.pool())
            .await
            .expect("count");
    assert_eq!(forged, 0);
}

#[tokio::test]
async fn serve_runs_the_relay_and_projector_as_the_runtime_role() {
    let roles = TwoRoles::create().await;
    let broker = testkit::TestBroker::create().await;
    // No DATABASE_OWNER_URL: the runtime container does not get the owner's password.
    let serving = Serving::start(
        "relay,projector",
        &[
            ("DATABASE_URL", &roles.runtime_url),
            ("AMQP_URL", &broker.amqp_url),
        ],
    )
    .await;
    let key = Uuid::new_v4();
    roles
        .runtime
        .append(key, 0, &[requested()], &metadata())
        .await
        .expect("append as the runtime role");
    let pool = roles.runtime.pool().clone();
    common::eventually("the event is relayed and projected", || {
        let pool = pool.clone();
        async move {
            matches!(projector::load_view(&pool, key).await, Ok(Some(view)) if view.version == 1)
        }
    })
    .await;
    common::eventually("the relay records its checkpoint", || {
        let pool = pool.clone();
        async move {
            let relayed: Result<Option<i64>, _> =
                sqlx::query_scalar("SELECT max(position) FROM relay_checkpoints")
                    .fetch_one(&pool)
                    .await;
            matches!(relayed, Ok(Some(position)) if position >= 1)
        }
    })
    .await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
}

#[tokio::test]
async fn serve_as_the_runtime_role_asks_for_migrate_when_a_migration_is_missing() {
    let roles = TwoRoles::create().await;
    let last = *EventStore::migration_versions().last().expect("migrations");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(roles.db.pool())
        .await
        .expect("forget the newest migration");
    let output = keyledger(
        &[
            ("DATABASE_URL", &roles.runtime_url),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ],
        &["serve", "--roles", "relay"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("keyledger migrate"), "{stderr}");
    assert!(stderr.contains(&last.to_string()), "{stderr}");

    // With the owner's URL in its environment, serve migrates itself.
    let serving = Serving::start(
        "scheduler",
        &[
            ("DATABASE_URL", &roles.runtime_url),
            ("DATABASE_OWNER_URL", &roles.db.url),
        ],
    )
    .await;
    let (code, logs) = serving.terminate().await;
    assert_eq!(code, Some(0), "{logs:#?}");
    assert!(
        roles
            .runtime
            .pending_migrations()
            .await
            .expect("read migrations")
            .is_empty()
    );
}

#[tokio::test]
async fn a_rebuild_runs_as_the_owner_and_leaves_the_views_writable_by_the_runtime() {
    let roles = TwoRoles::create().await;
    let key = Uuid::new_v4();
    roles
        .runtime
        .append(key, 0, &[requested()], &metadata())
        .await
        .expect("append");
    // The runtime login alone may not replace the view table.
    let refused = keyledger(
        &[("DATABASE_URL", &roles.runtime_url)],
        &["projections", "rebuild"],
    );
    assert!(!refused.status.success());

    let rebuilt = keyledger(
        &[
            ("DATABASE_URL", &roles.runtime_url),
            ("DATABASE_OWNER_URL", &roles.db.url),
        ],
        &["projections", "rebuild"],
    );
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let view = projector::load_view(roles.runtime.pool(), key)
        .await
        .expect("the runtime reads the rebuilt views")
        .expect("a view");
    assert_eq!(view.version, 1);
    let mut conn = roles.runtime_connection().await;
    sqlx::raw_sql("UPDATE key_views SET status = 'active'; DELETE FROM key_views")
        .execute(&mut conn)
        .await
        .expect("the runtime writes the rebuilt views");
}

#[tokio::test]
async fn a_temporary_table_of_the_runtime_role_does_not_capture_appends() {
    let roles = TwoRoles::create().await;
    let mut conn = roles.runtime_connection().await;
    sqlx::raw_sql("CREATE TEMP TABLE events (LIKE public.events INCLUDING ALL)")
        .execute(&mut conn)
        .await
        .expect("a temporary table named events");
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT keyledger_append(gen_random_uuid(), 0, '{}'::jsonb, NULL::uuid,
                                 ARRAY[gen_random_uuid()], ARRAY['Requested'],
                                 ARRAY['{}'::jsonb], ARRAY[repeat('a', 64)])",
    )
    .fetch_one(&mut conn)
    .await
    .expect("append through the function");
    assert!(position.is_some());
    let shadowed: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_temp.events")
        .fetch_one(&mut conn)
        .await
        .expect("count the temporary table");
    assert_eq!(shadowed, 0);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(roles.db.pool())
        .await
        .expect("count the log");
    assert_eq!(logged, 1);
}

#[test]
fn the_owner_url_defaults_to_the_database_url_and_is_shown_masked() {
    let runtime = "postgres://keyledger:runtime-secret@db:5432/keyledger";
    let one = config(runtime, None);
    assert_eq!(one.database_owner_url, one.database_url);
    let two = config(
        runtime,
        Some("postgres://keyledger_owner:owner-secret@db:5432/keyledger"),
    );
    let shown = format!("{two:?} {}", two.database_owner_url);
    assert!(!shown.contains("owner-secret"), "{shown}");
    assert!(shown.contains("keyledger_owner:***@db"), "{shown}");
    let elsewhere = Config::from_sources(None, |name| match name {
        "DATABASE_URL" => Some(runtime.to_owned()),
        "DATABASE_OWNER_URL" => Some("postgres://keyledger_owner@db:5432/other".to_owned()),
        _ => None,
    })
    .expect_err("another database");
    assert_eq!(elsewhere.field, "DATABASE_OWNER_URL");
    assert!(!elsewhere.to_string().contains("secret"));
}

#[tokio::test]
async fn every_migrate_covers_tables_added_later() {
    let roles = TwoRoles::create().await;
    // As a later migration would: a table of the service's own. (The notary's
    // checkpoints, which are only ever added to, came with migration 0009.)
    sqlx::raw_sql("CREATE TABLE later_table (id int PRIMARY KEY, note text)")
        .execute(roles.db.pool())
        .await
        .expect("tables added later");
    // Only the next migrate grants them exactly; until then the owner's default
    // privileges let the runtime write them.
    service::store::migrate(&roles.config)
        .await
        .expect("migrate again");
    let mut conn = roles.runtime_connection().await;
    for statement in [
        "INSERT INTO later_table VALUES (1, 'a')",
        "UPDATE later_table SET note = 'b'",
        "DELETE FROM later_table",
        "INSERT INTO checkpoints (position, log_hash, signed_at, public_key, signature)
         VALUES (1, 'h', now(), 'k', 'signed')",
        "SELECT count(*) FROM checkpoints",
    ] {
        sqlx::raw_sql(statement)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    for statement in [
        "UPDATE checkpoints SET signature = 'forged'",
        "DELETE FROM checkpoints",
        "TRUNCATE later_table",
    ] {
        match sqlx::raw_sql(statement).execute(&mut conn).await {
            Err(error) if is_permission_denied(&error) => {}
            other => panic!("{statement}: expected a permission error, got {other:?}"),
        }
    }
}
