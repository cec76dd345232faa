//! `keyledger serve`: runs the selected roles in one process until SIGTERM or SIGINT.

use eventstore::EventStore;

use crate::Failure;
use crate::Role;
use crate::config::Config;
use crate::pipeline::{Pipeline, RunningRoles};

/// Roles this build can run: every role of docs/cli.md.
pub const AVAILABLE_ROLES: [Role; 8] = [
    Role::Api,
    Role::Relay,
    Role::Projector,
    Role::Worker,
    Role::Bot,
    Role::Scheduler,
    Role::Sub,
    Role::Notary,
];

pub async fn serve(config: &Config, roles: Option<Vec<Role>>) -> Result<(), Failure> {
    let roles = roles.unwrap_or_else(|| AVAILABLE_ROLES.to_vec());
    if let Some(missing) = roles.iter().find(|role| !AVAILABLE_ROLES.contains(role)) {
        return Err(Failure::Usage(format!(
            "role {missing:?} is not available in this build; available: {AVAILABLE_ROLES:?}"
        )));
    }
    let store = crate::privileges::store_for_runtime(config).await?;
    let running = start_roles(config, &store, &roles).await?;
    // Listen for signals before saying we serve: a SIGTERM right after that line must
    // shut down cleanly, not hit the default handler.
    let shutdown = shutdown_signal()?;
    tracing::info!(?roles, "keyledger serving");
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Starts `roles` on `store` (already migrated) in this process, as the configuration
/// says; [`Pipeline`] does the wiring.
pub async fn start_roles(
    config: &Config,
    store: &EventStore,
    roles: &[Role],
) -> Result<RunningRoles, Failure> {
    Pipeline::from_config(config, store)?.start(roles).await
}

/// Registers the SIGINT and SIGTERM handlers now and returns a future that ends at the
/// first of them.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen for SIGTERM: {e}")))?;
    #[cfg(unix)]
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen for SIGINT: {e}")))?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
