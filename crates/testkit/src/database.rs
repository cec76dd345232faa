//! A throwaway database per test, cloned from a migrated template, so tests run in
//! parallel against the real PostgreSQL without each paying for the migrations.
//!
//! The template is named after the migrations this build carries
//! ([`EventStore::schema_fingerprint`]), built once per machine by whichever test process
//! gets there first (an advisory lock makes the others wait), and then closed to
//! connections: PostgreSQL copies a template only while nobody is connected to it, and a
//! template that accepts no connections is also how a finished one is told from one a
//! killed process left half-built. Every test database is a `CREATE DATABASE … TEMPLATE`
//! copy of it, a file copy on the server that takes a fraction of running the migrations.

use eventstore::{EventStore, drop_database, with_database};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Prefix of test databases; `.ci/run` drops any left behind by an interrupted run.
pub const DATABASE_PREFIX: &str = "keyledger_test_";

/// Prefix of template databases, one per set of migrations.
pub const TEMPLATE_PREFIX: &str = "keyledger_template_";

/// The server tests create their databases on: `KEYLEDGER_TEST_DATABASE_URL`, or the
/// machine's local PostgreSQL.
pub fn database_server_url() -> String {
    std::env::var("KEYLEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A freshly created database holding every migration, dropped when this value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub store: EventStore,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let template = ensure_template().await;
        let name = format!("{DATABASE_PREFIX}{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&database_server_url())
            .await
            .expect("connect to the test server");
        sqlx::raw_sql(&format!(
            r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
        ))
        .execute(&mut admin)
        .await
        .expect("clone the template database");
        let _ = admin.close().await;
        let url = with_database(&database_server_url(), &name).expect("valid test server URL");
        // Connected as the service connects, lock timeout included.
        let store = EventStore::connect(&url, 20)
            .await
            .expect("connect test database");
        Self { name, url, store }
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(drop_database(&url)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// The template database for this build's migrations, built if it is missing.
async fn ensure_template() -> String {
    let fingerprint = EventStore::schema_fingerprint();
    let template = format!("{TEMPLATE_PREFIX}{}", &fingerprint[..16]);
    let mut admin = PgConnection::connect(&database_server_url())
        .await
        .expect("connect to the test server");
    if template_ready(&mut admin, &template).await {
        let _ = admin.close().await;
        return template;
    }
    // One builder per machine; the others wait here and then find it ready.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(&template)
        .execute(&mut admin)
        .await
        .expect("take the template lock");
    if !template_ready(&mut admin, &template).await {
        build_template(&mut admin, &template).await;
    }
    // Closing the session releases the lock.
    let _ = admin.close().await;
    template
}

async fn template_ready(admin: &mut PgConnection, template: &str) -> bool {
    let allows: Option<bool> =
        sqlx::query_scalar("SELECT datallowconn FROM pg_database WHERE datname = $1")
            .bind(template)
            .fetch_optional(admin)
            .await
            .expect("look up the template database");
    allows == Some(false)
}

async fn build_template(admin: &mut PgConnection, template: &str) {
    // A template a killed builder left half-built still accepts connections.
    // Two statements: PostgreSQL runs neither inside a transaction block.
    sqlx::raw_sql(&format!(
        r#"DROP DATABASE IF EXISTS "{template}" WITH (FORCE)"#
    ))
    .execute(&mut *admin)
    .await
    .expect("drop a half-built template database");
    sqlx::raw_sql(&format!(r#"CREATE DATABASE "{template}""#))
        .execute(&mut *admin)
        .await
        .expect("create the template database");
    let url = with_database(&database_server_url(), template).expect("valid test server URL");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect the template database");
    EventStore::new(pool.clone())
        .migrate()
        .await
        .expect("migrate the template database");
    pool.close().await;
    sqlx::raw_sql(&format!(
        r#"ALTER DATABASE "{template}" WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"#
    ))
    .execute(admin)
    .await
    .expect("close the template database to connections");
}
