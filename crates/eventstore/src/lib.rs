//! The PostgreSQL event log: keyledger's one source of truth.
//!
//! Appends are atomic per command, optimistic on the stream's version and idempotent on the
//! command id; readers follow the log by global position without ever skipping an event
//! that commits late; the table refuses UPDATE, DELETE and TRUNCATE; every stream is a hash
//! chain an auditor can check with plain SQL. [`Ledger`] runs a domain command against a
//! key's, a subscription's or a user's access stream: load, `decide`, append, retrying on a concurrent
//! writer; [`Subscriptions`] runs the commands that touch a subscription and its keys, and
//! [`AccessControl`] those that block and unblock a user and check each new key's user.
//!
//! There is no separate outbox table: the relay follows the log itself by position. The
//! log is already written in the command's transaction and already gap-free for readers
//! (see `keyledger_reserve_positions` in the migration), so an outbox would be a second
//! copy of every event kept in step with the first, for nothing.

mod access;
mod append;
mod checkpoint;
mod error;
mod group;
mod integrity;
mod jsonb_text;
mod ledger;
mod model;
mod privileges;
mod read;
mod subscriptions;

pub use access::{AccessControl, AccessStatus, Blocked};
pub use append::{AppendOutcome, AppendedRange};
pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointVerdict, LogHash, NotaryKey, PublicKey, log_hash_up_to,
    next_log_hash, signed_message,
};
pub use error::{AppendError, StoreError};
pub use integrity::{
    ChainBreak, ChainFormula, ChainLink, ChainReport, content_digest, link_hash, verify_chains,
    verify_stream_chain,
};
pub use jsonb_text::jsonb_text;
pub use ledger::{
    CommandOutcome, ExecuteError, KeyLedger, Ledger, SubscriptionLedger, UserAccessLedger,
};
pub use model::{Actor, ActorKind, EventMetadata, NewEvent, RecordedEvent};
pub use privileges::{is_permission_denied, login_role};
pub use subscriptions::{LinkReplaced, Subscriptions};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long any statement of the service waits for a lock before it fails and is retried.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(3);
const LOCK_TIMEOUT_SETTING: &str = "3s";

/// Whether `error` is PostgreSQL giving up on a lock wait ([`LOCK_TIMEOUT`]): worth
/// retrying once whoever held or queued for the lock is done.
pub fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// The event log in one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct EventStore {
    pool: PgPool,
    group: Arc<group::GroupCommit>,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            group: Arc::default(),
        }
    }

    /// Connects a pool of `max_connections` to `database_url`.
    ///
    /// Every session bounds its lock waits ([`LOCK_TIMEOUT`]): an outside request for a
    /// strong lock on a table (a `TRUNCATE`, an `ALTER TABLE`, a migration of a newer
    /// release) queues every later request behind it, so a keyledger transaction that
    /// waits for another of its own connections while holding a weak lock would wait
    /// forever. With the bound, the waiting statement fails with SQLSTATE 55P03, the
    /// work is retried, the locks are let go, and the outside request gets its turn.
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(database_url)
            .map_err(StoreError::Database)?
            .options([("lock_timeout", LOCK_TIMEOUT_SETTING)])
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self::new(pool))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A digest of every migration this build carries (version and checksum), so a copy
    /// of a migrated database can be known to match this build: the test kit names its
    /// template database after it.
    pub fn schema_fingerprint() -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for migration in MIGRATOR.iter() {
            hasher.update(migration.version.to_be_bytes());
            hasher.update(&migration.checksum);
        }
        hex::encode(hasher.finalize())
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

/// `database_url` with its database name replaced by `database`.
pub fn with_database(database_url: &str, database: &str) -> Result<String, url::ParseError> {
    let mut url = url::Url::parse(database_url)?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Creates the database named in `database_url`.
pub async fn create_database(database_url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    Ok(sqlx::Postgres::create_database(database_url).await?)
}

/// Drops the database named in `database_url`, ending its open sessions. The server ends
/// them itself (`WITH (FORCE)`, PostgreSQL 13+): terminating them one by one from here
/// races sessions that end on their own, and the server warns about each it misses.
pub async fn drop_database(database_url: &str) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let options: sqlx::postgres::PgConnectOptions = database_url.parse()?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = options.database("postgres").connect().await?;
    let quoted = database.replace('"', "\"\"");
    sqlx::query(&format!(
        r#"DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)"#
    ))
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Creates the database named in `database_url` if it does not exist yet.
pub async fn create_database_if_missing(database_url: &str) -> Result<bool, StoreError> {
    use sqlx::migrate::MigrateDatabase;
    if sqlx::Postgres::database_exists(database_url).await? {
        return Ok(false);
    }
    match sqlx::Postgres::create_database(database_url).await {
        Ok(()) => Ok(true),
        // Another process created it between our check and our CREATE.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e.into()),
    }
}
