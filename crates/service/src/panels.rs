//! From the configuration's locations to the worker's panels, and those panels as the
//! HTTP API sees them ([`PanelsStatus`], the [`api::PanelStatus`] this binary injects).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use eventstore::EventStore;

use x3ui_worker::{BreakerState, LocationHealth, PanelConfig, Panels, ResiliencePolicy};

use crate::config::Config;

/// One panel configuration per configured location.
pub fn panel_configs(config: &Config) -> Vec<PanelConfig> {
    config
        .locations
        .iter()
        .map(|location| {
            let mut panel = PanelConfig::new(
                location.id.as_str(),
                location.panel_url.clone(),
                location.credentials.clone(),
                location.inbound_id,
            )
            .with_api(location.api);
            panel.accept_invalid_certs = location.accept_invalid_certs;
            panel.public_host = Some(location.public_host.clone());
            panel.flow = location.flow.clone();
            panel.max_response_bytes = location.max_response_bytes;
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

/// The worker's panels as the HTTP API sees them: the API does not depend on the panel
/// client, so this adapter maps its probes and health into the API's own types.
#[derive(Debug, Clone)]
pub struct PanelsStatus(Arc<Panels>);

impl PanelsStatus {
    pub fn new(panels: Arc<Panels>) -> Self {
        Self(panels)
    }
}

impl api::PanelStatus for PanelsStatus {
    fn probe(&self, timeout: Duration) -> api::BoxFuture<'_, Vec<api::PanelProbe>> {
        Box::pin(async move {
            self.0
                .probe(timeout)
                .await
                .into_iter()
                .map(|probe| api::PanelProbe {
                    location: probe.location,
                    // Panel errors name the location and the call, never the password.
                    outcome: probe.outcome.map_err(|error| error.to_string()),
                })
                .collect()
        })
    }

    fn health(&self, location: &str) -> Option<api::PanelHealth> {
        self.0.get(location).map(|l| api_health(l.health()))
    }
}

fn api_health(health: LocationHealth) -> api::PanelHealth {
    api::PanelHealth {
        breaker: match health.breaker {
            BreakerState::Closed => api::Breaker::Closed,
            BreakerState::Open => api::Breaker::Open,
            BreakerState::HalfOpen => api::Breaker::HalfOpen,
        },
        last_success_at: health.last_success_at,
        last_reconcile_at: health.last_reconcile_at,
        drift_found_last_pass: health.drift_found_last_pass,
        last_reconcile_error: health.last_reconcile_error,
    }
}
