//! A throwaway database per test, so tests run in parallel against the real PostgreSQL.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::{EventStore, create_database, drop_database, with_database};

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
        let name = format!("keyledger_test_{}", Uuid::new_v4().simple());
        let url = with_database(&server_url(), &name).expect("valid test server URL");
        create_database(&url).await.expect("create test database");
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
