//! Shared test helpers: a simulator with a panel client in front, and condition waits.
#![allow(dead_code, clippy::unwrap_used)]

pub mod stack;

use std::time::Duration;

use uuid::Uuid;
use x3ui_sim::{PanelSimulator, SimConfig};
use x3ui_worker::{ClientSpec, Panel, ResiliencePolicy};

pub use testkit::eventually;

/// Retries quickly so tests stay fast; the breaker needs three failures in a row.
pub fn fast_policy() -> ResiliencePolicy {
    ResiliencePolicy {
        max_attempts: 6,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(40),
        failure_threshold: 3,
        open_for: Duration::from_millis(300),
    }
}

pub async fn start(config: SimConfig) -> (PanelSimulator, Panel) {
    let sim = PanelSimulator::start(config).await.unwrap();
    let panel = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    (sim, panel)
}

pub fn spec(email: &str) -> ClientSpec {
    ClientSpec::new(Uuid::new_v4(), email)
}
