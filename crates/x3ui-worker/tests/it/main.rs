//! The x3ui-worker crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod common;
mod ensure;
mod faults;
mod health;
mod outside_locks;
mod reconcile;
mod session;
mod simulator;
mod worker;
