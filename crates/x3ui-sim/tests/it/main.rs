//! The panel client, the worker and the reconciler (crate `x3ui-worker`) against the panel
//! simulator, and the simulator itself: one binary for all of them, one module per area.
//! They live here rather than in `x3ui-worker` so the worker crate's whole dependency tree,
//! dev-dependencies included, stays free of an HTTP server (`cargo tree -p x3ui-worker`).

mod common;
mod ensure;
mod faults;
mod health;
mod hostile;
mod reconcile;
mod session;
mod shared_server;
mod simulator;
mod traffic;
mod usage;
mod worker;
