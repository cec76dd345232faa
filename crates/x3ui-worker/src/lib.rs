//! The 3x-ui side of keyledger: a client for the panel's HTTP API and the idempotent
//! operations a worker or reconciler builds on. [`panel`] speaks one panel's API (the
//! legacy `/panel/api/inbounds` routes of v2.x–v3.0 and the clients API of v3.1+) with
//! the panel's login and session quirks handled; [`Panel`] turns those calls into "make
//! it so" operations — ensure a client exists with given settings, ensure it is gone —
//! that are safe to repeat, serialised per panel, read back after every write, retried
//! with backoff and guarded by a circuit breaker. [`worker`] is the `worker` role: it
//! consumes `keyledger.x3ui-worker`, applies each key's desired state from the log to its
//! location's panel (batching concurrent keys per location, see [`Panels`]) and records
//! the acknowledgements. [`reconcile`] compares whole panels with the log, repairs drift
//! and records it.
//! docs/panel.md describes the real panel this code is written against.

mod call_span;
mod config;
mod ensure;
mod error;
mod model;
pub mod panel;
mod panels;
pub mod reconcile;
mod resilience;
mod session_lock;
pub mod usage;
pub mod worker;

pub use config::{ApiKind, Credentials, DEFAULT_MAX_RESPONSE_BYTES, PanelConfig};
pub use domain::Secret;
pub use ensure::{Absence, Ensured, Panel};
pub use error::{LinkUnavailable, Operation, PanelError, Refusal};
pub use model::{
    ClientSpec, ClientTraffic, FLOW_VISION, Inbound, InboundClients, PanelClient, SUB_ID_LEN,
    random_sub_id,
};
pub use panel::{AnyPanelApi, PanelApi};
pub use panels::{LocationHealth, LocationProbe, PanelLocation, Panels, SharedPanelError};
pub use reconcile::{
    DEFAULT_IN_FLIGHT_GRACE, DEFAULT_USAGE_INTERVAL, ReconcileReport, Reconciler, UsageReport,
    run_reconciler,
};
pub use resilience::{BreakerState, CircuitBreaker, ResiliencePolicy};
pub use usage::{PanelDecision, judge_panel_decision};
pub use worker::{Worker, WorkerConfig, consumer_config, run_worker, worker_consumer};
