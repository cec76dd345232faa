//! The store's two error types. [`StoreError`] is the store itself failing (connection, SQL, a
//! stuck read horizon, an unreadable row); [`AppendError`] is an append that did not happen and
//! wrote nothing. Keeping them apart lets a caller tell "decide again or give up" from "the
//! database is in trouble".

use uuid::Uuid;

/// A failure of the store itself (connection, SQL, migration).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the log cannot be read past position {position} (committed up to {target}): a long-running transaction holds readers back"
    )]
    HorizonStuck { position: i64, target: i64 },
    #[error("stored event at position {position} is unreadable: {reason}")]
    CorruptEvent { position: i64, reason: String },
}

impl StoreError {
    /// Whether PostgreSQL gave up waiting for a lock ([`crate::LOCK_TIMEOUT`]): the same
    /// work may succeed once whoever held or queued for the lock is done.
    pub fn is_lock_timeout(&self) -> bool {
        match self {
            Self::Database(error) => crate::is_lock_timeout(error),
            Self::Migration(sqlx::migrate::MigrateError::Execute(error))
            | Self::Migration(sqlx::migrate::MigrateError::ExecuteMigration(error, _)) => {
                crate::is_lock_timeout(error)
            }
            _ => false,
        }
    }
}

/// Why an append did not happen. Nothing was written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("stream {stream_id} is at version {actual}, not the expected {expected}")]
    VersionConflict {
        stream_id: Uuid,
        expected: u32,
        actual: u32,
    },
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("event id {event_id} is already recorded as another event")]
    EventIdTaken { event_id: Uuid },
    #[error("command {command_id} was already applied to stream {stream_id}, not {requested}")]
    CommandIdTaken {
        command_id: Uuid,
        stream_id: Uuid,
        requested: Uuid,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}
