//! Least privilege: the owner login (`DATABASE_OWNER_URL`) migrates and grants, the runtime
//! login (`DATABASE_URL`) serves. `keyledger migrate` grants the runtime role exactly what
//! the service needs (migration 0010); `serve` migrates with the owner login only when it
//! has it, and otherwise only checks that the database carries every migration of this
//! build, asking for `keyledger migrate` when it does not (docs/operations.md).

use anyhow::Context;
use eventstore::{EventStore, StoreError, login_role};

use crate::Failure;
use crate::config::Config;

/// Why the runtime login cannot serve the database as it is.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "the database at {database} lacks migrations {pending:?} of this build and {role:?} may not apply them: run `keyledger migrate` with DATABASE_OWNER_URL set to the owner login first"
    )]
    NotMigrated {
        database: String,
        role: String,
        pending: Vec<i64>,
    },
    #[error("cannot tell which role {0} logs in as: {1}")]
    UnknownRole(String, StoreError),
}

/// The runtime role to grant to: `Some` when the owner and runtime URLs log in as
/// different roles, `None` when one login does both (a laptop, a test).
pub fn runtime_role(config: &Config) -> Result<Option<String>, PrivilegeError> {
    let role = |url: &crate::config::ServiceUrl| {
        login_role(url.as_str()).map_err(|e| PrivilegeError::UnknownRole(url.to_string(), e))
    };
    let runtime = role(&config.database_url)?;
    let owner = role(&config.database_owner_url)?;
    Ok((runtime != owner).then_some(runtime))
}

/// Grants the runtime role its privileges on `owner_store` (connected as the owner), when
/// the configuration names two roles.
pub async fn grant_runtime(config: &Config, owner_store: &EventStore) -> anyhow::Result<()> {
    let Some(runtime) = runtime_role(config)? else {
        return Ok(());
    };
    owner_store
        .grant_runtime(&runtime)
        .await
        .with_context(|| format!("cannot grant the runtime role {runtime:?} its privileges"))?;
    tracing::info!(role = %runtime, "runtime role granted its privileges");
    Ok(())
}

/// The store `serve` (and `reconcile`) run on, connected as the runtime login, the
/// database migrated: by migrating with the owner login when it is configured apart, or
/// else by finding every migration applied, or else (one login that owns the database,
/// as on a laptop) by migrating with it. A runtime login that may not migrate a database
/// that needs it ends the run with exit code 2 and a message naming `keyledger migrate`.
pub async fn store_for_runtime(config: &Config) -> Result<EventStore, Failure> {
    if runtime_role(config)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .is_some()
    {
        return Ok(crate::store::migrate(config).await?);
    }
    let pending = match crate::store::open_store(config).await {
        Ok(store) => match store.pending_migrations().await {
            Ok(pending) if pending.is_empty() => return Ok(store),
            Ok(pending) => pending,
            Err(error) => {
                tracing::debug!(%error, "cannot read the applied migrations; migrating");
                Vec::new()
            }
        },
        // Not there yet, perhaps: migrate creates it.
        Err(error) => {
            tracing::debug!(error = %format!("{error:#}"), "cannot open the database; migrating");
            Vec::new()
        }
    };
    match crate::store::migrate(config).await {
        Ok(store) => Ok(store),
        Err(error) if refused_for_privilege(&error) => {
            let role = login_role(config.database_url.as_str()).unwrap_or_default();
            let pending = if pending.is_empty() {
                EventStore::migration_versions()
            } else {
                pending
            };
            Err(Failure::Usage(
                PrivilegeError::NotMigrated {
                    database: config.database_url.to_string(),
                    role,
                    pending,
                }
                .to_string(),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

/// Whether PostgreSQL refused some step of `error`'s chain for lack of a privilege.
fn refused_for_privilege(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_permission_denied)
    })
}

/// The event store as the owner login, for work only the owner may do (a projection
/// rebuild replaces the view table, which takes its owner).
pub async fn open_owner_store(config: &Config) -> anyhow::Result<EventStore> {
    EventStore::connect(config.database_owner_url.as_str(), OWNER_CONNECTIONS)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the database as its owner at {}",
                config.database_owner_url
            )
        })
}

/// Connections of the owner's pool: migrations and a rebuild, a few statements at a time.
pub const OWNER_CONNECTIONS: u32 = 4;
