//! From the configuration's locations to the worker's panels.

use std::io::Write;
use std::sync::Arc;

use eventstore::EventStore;

use x3ui_worker::{ApiKind, Credentials, PanelConfig, Panels, ResiliencePolicy};

use crate::config::{Config, PanelApi, PanelCredentials};

/// One panel configuration per configured location.
pub fn panel_configs(config: &Config) -> Vec<PanelConfig> {
    config
        .locations
        .iter()
        .map(|location| {
            let credentials = match &location.credentials {
                PanelCredentials::Password { username, password } => Credentials::Password {
                    username: username.clone(),
                    password: password.clone(),
                },
                PanelCredentials::ApiToken(token) => Credentials::ApiToken(token.clone()),
            };
            let mut panel = PanelConfig::new(
                location.id.as_str(),
                location.panel_url.clone(),
                credentials,
                location.inbound_id,
            )
            .with_api(match location.api {
                PanelApi::Legacy => ApiKind::Legacy,
                PanelApi::Clients => ApiKind::Clients,
            });
            panel.accept_invalid_certs = location.accept_invalid_certs;
            panel.public_host = Some(location.public_host.clone());
            panel
        })
        .collect()
}

/// The panels of every configured location, each with its own breaker.
pub fn panels(config: &Config) -> anyhow::Result<Arc<Panels>> {
    let panels = Panels::from_configs(panel_configs(config), &ResiliencePolicy::default())?;
    Ok(Arc::new(panels))
}

/// `keyledger reconcile`: one pass now; prints each location's findings and repairs as
/// JSON, and says whether every location could be reconciled.
pub async fn reconcile(
    config: &Config,
    store: EventStore,
    location: Option<&str>,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let pass = x3ui_worker::Reconciler::new(store, panels(config)?)
        .with_in_flight_grace(config.reconcile.stuck_after)
        .reconcile(location, dry_run)
        .await?;
    for report in &pass.reports {
        writeln!(out, "{}", serde_json::to_string_pretty(report)?)?;
    }
    for failure in &pass.failures {
        writeln!(out, "FAILED {failure}")?;
    }
    Ok(pass.failures.is_empty())
}
