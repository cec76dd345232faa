//! Least privilege (migration 0010): the owner role migrates and grants the runtime role
//! exactly what the service needs, and a runtime that may not migrate can still tell
//! whether the database it was given carries every migration of this build.

use crate::{EventStore, MIGRATOR, StoreError};

/// SQLSTATE `42501`, insufficient_privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Whether `error` is PostgreSQL refusing a statement for lack of a privilege or ownership.
pub fn is_permission_denied(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE))
}

impl StoreError {
    /// Whether the store refused the work for lack of a privilege (SQLSTATE 42501), e.g.
    /// the runtime role trying to migrate.
    pub fn is_permission_denied(&self) -> bool {
        match self {
            Self::Database(error) => is_permission_denied(error),
            Self::Migration(sqlx::migrate::MigrateError::Execute(error))
            | Self::Migration(sqlx::migrate::MigrateError::ExecuteMigration(error, _)) => {
                is_permission_denied(error)
            }
            _ => false,
        }
    }
}

impl EventStore {
    /// Versions of the migrations this build carries, oldest first.
    pub fn migration_versions() -> Vec<i64> {
        MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .collect()
    }

    /// Grants `runtime_role` exactly what the service needs (`keyledger_grant_runtime`,
    /// migration 0010). Run as the owner, after the migrations; idempotent.
    pub async fn grant_runtime(&self, runtime_role: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT keyledger_grant_runtime($1)")
            .bind(runtime_role)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Versions of the migrations this build carries that the database has not applied
    /// (all of them when it has no migration table yet), oldest first. Needs only SELECT
    /// on `_sqlx_migrations`, which the runtime role has.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(self.pool())
                .await?;
        let applied: Vec<i64> = if has_table {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(self.pool())
                .await?
        } else {
            Vec::new()
        };
        Ok(Self::migration_versions()
            .into_iter()
            .filter(|version| !applied.contains(version))
            .collect())
    }
}

/// The role a PostgreSQL URL logs in as, as PostgreSQL will see it: the URL's user name
/// (percent-decoded), or the default a client falls back to (`PGUSER`, the OS user).
pub fn login_role(database_url: &str) -> Result<String, StoreError> {
    use std::str::FromStr;
    let options =
        sqlx::postgres::PgConnectOptions::from_str(database_url).map_err(StoreError::Database)?;
    Ok(options.get_username().to_owned())
}
