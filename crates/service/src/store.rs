//! The event store as the service opens it: creating and migrating the database
//! (`keyledger migrate`, and `serve` at start) and the connection pool every role shares.

use anyhow::Context;
use eventstore::{EventStore, create_database_if_missing};

use crate::config::Config;

/// Creates the database if missing and applies migrations, as the owner login
/// (`DATABASE_OWNER_URL`); then grants the runtime login its privileges when it is
/// another role (crate::privileges). Returns the store as the runtime login.
pub async fn migrate(config: &Config) -> anyhow::Result<EventStore> {
    let owner_url = &config.database_owner_url;
    let created = create_database_if_missing(owner_url.as_str())
        .await
        .with_context(|| format!("cannot reach or create the database at {owner_url}"))?;
    if created {
        tracing::info!(database = %owner_url, "created database");
    }
    let one_login = owner_url == &config.database_url;
    let owner_store = if one_login {
        open_store(config).await?
    } else {
        crate::privileges::open_owner_store(config).await?
    };
    apply_migrations(&owner_store).await?;
    crate::privileges::grant_runtime(config, &owner_store).await?;
    tracing::info!(database = %owner_url, "migrations applied");
    if one_login {
        return Ok(owner_store);
    }
    owner_store.pool().close().await;
    open_store(config).await
}

/// How long `migrate` keeps trying when its locks are not to be had.
const MIGRATION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Applies the migrations, each in its own transaction with lock waits bounded by the
/// session's lock timeout: during a rolling upgrade the replicas still serving hold weak
/// locks on the tables a migration alters, and a migration that queued for its strong lock
/// without bound would stall them all behind it. Instead it gives up after the timeout,
/// lets them through, and tries again, until it gets its turn.
async fn apply_migrations(store: &EventStore) -> anyhow::Result<()> {
    with_migration_patience(|| store.migrate()).await
}

/// Runs `migrate` (migrations on a store whose sessions bound their lock waits) until it
/// succeeds, trying again while it fails only for a lock it could not take, for up to
/// 120 s. `keyledger migrate` applies its migrations through this; it is public so that the
/// rolling-upgrade test (crates/keyledger/tests/it/rolling_upgrade.rs) applies a migration
/// of its own the very same way.
pub async fn with_migration_patience<F, Fut>(mut migrate: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), eventstore::StoreError>>,
{
    let deadline = std::time::Instant::now() + MIGRATION_PATIENCE;
    loop {
        match migrate().await {
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
