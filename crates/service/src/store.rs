//! The event store as the service opens it: creating and migrating the database
//! (`keyledger migrate`, and `serve` at start) and the connection pool every role shares.

use anyhow::Context;
use eventstore::{EventStore, create_database_if_missing};

use crate::config::Config;

/// Creates the database if missing and applies migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<EventStore> {
    let url = config.database_url.as_str();
    let created = create_database_if_missing(url).await.with_context(|| {
        format!(
            "cannot reach or create the database at {}",
            config.database_url
        )
    })?;
    if created {
        tracing::info!(database = %config.database_url, "created database");
    }
    let store = open_store(config).await?;
    apply_migrations(&store).await?;
    tracing::info!(database = %config.database_url, "migrations applied");
    Ok(store)
}

/// How long `migrate` keeps trying when its locks are not to be had.
const MIGRATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Applies the migrations, each in its own transaction with lock waits bounded by the
/// session's lock timeout: during a rolling upgrade the replicas still serving hold weak
/// locks on the tables a migration alters, and a migration that queued for its strong lock
/// without bound would stall them all behind it. Instead it gives up after the timeout,
/// lets them through, and tries again, until it gets its turn.
async fn apply_migrations(store: &EventStore) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + MIGRATION_PATIENCE;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_lock_timeout() && std::time::Instant::now() < deadline => {
                tracing::info!(%error, "a migration could not take its locks yet; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => return Err(anyhow::Error::new(error).context("migrations failed")),
        }
    }
}

/// Connections per process. Every consumer delivery in hand (up to 8 per queue) holds one
/// for its transaction, and the worker's handler needs a second one to read the key and
/// record the acknowledgement: with 8, eight worker deliveries held every connection and
/// waited for a ninth until the pool timed out (the fault suite's 500 scenario showed it).
/// Worker, projector and bot notifier together hold at most 24, so 32 leaves the
/// handlers, the relay, the API and the reconciler room.
const POOL_CONNECTIONS: u32 = 32;

/// Connects to the configured database.
pub async fn open_store(config: &Config) -> anyhow::Result<EventStore> {
    EventStore::connect(config.database_url.as_str(), POOL_CONNECTIONS)
        .await
        .with_context(|| format!("cannot connect to the database at {}", config.database_url))
}
