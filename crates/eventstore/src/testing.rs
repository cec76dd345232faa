//! A throwaway database per test, so tests run in parallel against the real PostgreSQL.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::EventStore;

/// The server tests create their databases on: `KEYLEDGER_TEST_DATABASE_URL`, or the
/// machine's local PostgreSQL.
pub fn server_url() -> String {
    std::env::var("KEYLEDGER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A freshly created and migrated database, dropped when this value is dropped.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub store: EventStore,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let name = format!("keyledger_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .expect("test PostgreSQL reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = database_url(&server, &name);
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&url)
            .await
            .expect("connect test database");
        let store = EventStore::new(pool);
        store.migrate().await.expect("migrate test database");
        Self { name, url, store }
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }
}

/// `server` with its database name replaced by `database`.
pub fn database_url(server: &str, database: &str) -> String {
    let mut url = url::Url::parse(server).expect("valid server URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = server_url();
        // Drop may run inside or outside a runtime; a thread with its own runtime works in both.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&server).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
