//! `keyledger serve`: runs the selected roles in one process until SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use eventstore::{EventStore, KeyLedger};
use tokio_util::sync::CancellationToken;

use broker::management::vhost_of;
use broker::{Management, Relay, RelayConfig};

use crate::Failure;
use crate::Role;
use crate::config::Config;
use scheduler::Scheduler;

/// Roles this build can run: every role of CONTRACT.md §1.
pub const AVAILABLE_ROLES: [Role; 6] = [
    Role::Api,
    Role::Relay,
    Role::Projector,
    Role::Worker,
    Role::Bot,
    Role::Scheduler,
];

const SCHEDULER_TICK: Duration = Duration::from_secs(5);

pub async fn serve(config: &Config, roles: Option<Vec<Role>>) -> Result<(), Failure> {
    let roles = roles.unwrap_or_else(|| AVAILABLE_ROLES.to_vec());
    if let Some(missing) = roles.iter().find(|role| !AVAILABLE_ROLES.contains(role)) {
        return Err(Failure::Usage(format!(
            "role {missing:?} is not available in this build; available: {AVAILABLE_ROLES:?}"
        )));
    }
    let store = crate::store::migrate(config).await?;
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

/// Roles started by [`start_roles`], until [`RunningRoles::stop`].
pub struct RunningRoles {
    tasks: tokio::task::JoinSet<()>,
    stop: CancellationToken,
    /// Where the API listens, when the `api` role runs.
    pub http_addr: Option<std::net::SocketAddr>,
}

impl RunningRoles {
    /// Stops taking work and waits for every role to finish what it has in hand.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts `roles` on `store` (already migrated) in this process.
pub async fn start_roles(
    config: &Config,
    store: &EventStore,
    roles: &[Role],
) -> Result<RunningRoles, Failure> {
    if roles.iter().any(|role| role.uses_broker()) {
        apply_broker_policies(config).await;
    }
    // One recorder for every role, before any of them records.
    let metrics = api::metrics::recorder();
    // Worker and API share the panels, so /readyz sees the breakers the worker trips.
    let panels = if config.locations.is_empty() {
        None
    } else {
        Some(crate::panels::panels(config).map_err(Failure::Runtime)?)
    };
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut http_addr = None;
    for role in roles {
        match role {
            Role::Api => {
                let listener = tokio::net::TcpListener::bind(config.http_addr)
                    .await
                    .map_err(|e| {
                        Failure::Runtime(anyhow::anyhow!(
                            "cannot listen on {} (KEYLEDGER_HTTP_ADDR): {e}",
                            config.http_addr
                        ))
                    })?;
                http_addr = listener.local_addr().ok();
                let router = api::router(
                    store.clone(),
                    api_config(config, panels.clone()),
                    metrics.clone(),
                );
                let stop_api = stop.clone();
                tasks.spawn(async move {
                    if let Err(error) = api::serve(listener, router, stop_api).await {
                        tracing::error!(%error, "HTTP API stopped");
                    }
                });
                let amqp_url = Some(config.amqp_url.as_str().to_owned());
                tasks.spawn(api::metrics::sample_backlog(
                    store.clone(),
                    amqp_url,
                    stop.clone(),
                ));
            }
            Role::Scheduler => {
                let scheduler = Scheduler::new(KeyLedger::new(store.clone()), SCHEDULER_TICK);
                tasks.spawn(scheduler.run(stop.clone()));
            }
            Role::Projector => {
                let (store, url) = (store.clone(), config.amqp_url.as_str().to_owned());
                let stop = stop.clone();
                tasks.spawn(async move { projector::run_projector(store, &url, stop).await });
            }
            Role::Worker if config.locations.is_empty() => {
                tracing::warn!("worker role not started: no locations are configured");
            }
            Role::Worker => {
                let Some(panels) = panels.clone() else {
                    continue;
                };
                let url = config.amqp_url.as_str().to_owned();
                tasks.spawn(x3ui_worker::run_worker(
                    store.clone(),
                    url,
                    panels.clone(),
                    stop.clone(),
                ));
                let reconciler = x3ui_worker::Reconciler::new(store.clone(), panels)
                    .with_in_flight_grace(config.reconcile.stuck_after);
                tasks.spawn(reconciler.run(config.reconcile.interval, stop.clone()));
            }
            Role::Relay => {
                let relay = Relay::new(store.clone(), RelayConfig::new(config.amqp_url.as_str()));
                tasks.spawn(relay.run(stop.clone()));
            }
            Role::Bot => match &config.telegram_bot_token {
                None => tracing::info!("bot role off: TELEGRAM_BOT_TOKEN not set"),
                Some(token) => {
                    let bot_config = bot_config(config, token);
                    let (store, url) = (store.clone(), config.amqp_url.as_str().to_owned());
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        if let Err(error) = bot::run_bot(store, &url, bot_config, stop).await {
                            tracing::error!(%error, "bot role could not start");
                        }
                    });
                }
            },
        }
    }
    Ok(RunningRoles {
        tasks,
        stop,
        http_addr,
    })
}

/// What the bot needs from the configuration: the token, the Bot API URL and the locations
/// users may choose, by the names they see.
fn bot_config(config: &Config, token: &crate::config::Secret) -> bot::BotConfig {
    let locations = config
        .locations
        .iter()
        .map(|location| bot::BotLocation {
            id: location.id.clone(),
            name: location.name.clone(),
        })
        .collect();
    bot::BotConfig::new(
        bot::BotToken::new(token.expose()),
        config.telegram_api_url.clone(),
        locations,
    )
}

/// What the HTTP API needs from the configuration.
fn api_config(config: &Config, panels: Option<Arc<x3ui_worker::Panels>>) -> api::ApiConfig {
    api::ApiConfig {
        tokens: api::Tokens::new(
            config.admin_token.as_ref(),
            config.service_token.as_ref(),
            config.auditor_token.as_ref(),
        ),
        locations: config
            .locations
            .iter()
            .map(|location| api::ApiLocation {
                id: location.id.clone(),
                name: location.name.clone(),
            })
            .collect(),
        amqp_url: Some(config.amqp_url.as_str().to_owned()),
        panels: panels.map(|panels| {
            Arc::new(crate::panels::PanelsStatus::new(panels)) as Arc<dyn api::PanelStatus>
        }),
    }
}

/// Sets the broker's tunables (CONTRACT.md §6 policies) through the management API on the
/// AMQP host. Best effort: the topology itself is declared over AMQP by each role, and
/// the consumer runtime keeps its own delivery limit, so a broker without the management
/// API still works, with the backstop missing; the log line says so.
async fn apply_broker_policies(config: &Config) {
    let url = config.amqp_url.as_str();
    let vhost = vhost_of(url).unwrap_or_else(|_| "/".to_owned());
    let applied = match Management::for_amqp_url(url) {
        Ok(management) => management
            .apply_policies(&vhost)
            .await
            .map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match applied {
        Ok(()) => tracing::info!(%vhost, "broker policies applied"),
        Err(error) => {
            tracing::warn!(%vhost, %error, "cannot apply broker policies through the management API; the broker-side delivery limit may be missing")
        }
    }
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
