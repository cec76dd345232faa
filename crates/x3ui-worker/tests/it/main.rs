//! The x3ui-worker crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod common;
mod ensure;
mod faults;
mod health;
mod reconcile;
mod session;
mod shared_server;
mod simulator;
mod worker;
