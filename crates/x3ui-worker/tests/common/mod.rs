//! Shared test helpers: a simulator with a panel client in front, and condition waits.
#![allow(dead_code, clippy::unwrap_used)]

pub mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

use uuid::Uuid;
use x3ui_worker::simulator::{PanelSimulator, SimConfig};
use x3ui_worker::{ClientSpec, Panel, ResiliencePolicy};

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

/// Polls `check` until it yields `Some`, failing the test after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
