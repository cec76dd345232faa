//! The keyledger crate's integration tests, one binary for all of them (one link instead of one per file); each module is one area.

mod architecture;
mod bench_e2e;
mod bot;
mod checkpoints;
mod cli;
mod common;
mod config;
mod console;
mod demo;
mod faults;
mod http_api;
mod panel_sim;
mod roles;
mod rolling_upgrade;
mod subscription_clients;
