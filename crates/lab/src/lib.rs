//! The lab: what runs keyledger for show or for measurement, never in production.
//!
//! `keyledger demo` (the whole pipeline with a scripted user), `keyledger panel-sim` (the
//! stand-in 3x-ui panel, served), and the benchmarks (`keyledger bench …`), which are
//! programs that print their figures beside a baseline measured in the same run. They all
//! work in scratch databases and vhosts of their own ([`scratch`]) and use the panel
//! simulator (`x3ui-sim`) and the fake Bot API (`telegram-fake`). The binary includes this
//! crate only through its default `lab` feature, so a production build
//! (`--no-default-features`) carries none of it.

mod bench;
mod bench_e2e;
mod bench_rebuild;
mod bench_sub;
mod demo;
mod panel_sim;
mod scratch;

use std::io::Write;

use clap::{Args, Subcommand};
use service::Failure;
use service::config::Config;

pub use panel_sim::PanelSimArgs;

/// `keyledger demo`.
pub async fn demo(config: &Config, out: &mut impl Write) -> Result<(), Failure> {
    demo::run(config, out).await
}

/// `keyledger panel-sim`.
pub async fn panel_sim(args: &PanelSimArgs, out: &mut impl Write) -> Result<(), Failure> {
    panel_sim::run(args, out).await
}

/// `keyledger bench …`.
pub async fn bench(
    config: &Config,
    command: &BenchCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        BenchCommand::Append(args) => bench::append(config, args, out).await,
        BenchCommand::Relay(args) => bench::relay(config, args, out).await,
        BenchCommand::E2e(args) => bench_e2e::e2e(config, args, out).await,
        BenchCommand::Rebuild(args) => bench_rebuild::rebuild(config, args, out).await,
        BenchCommand::Sub(args) => bench_sub::sub(config, args, out).await,
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append throughput against a bare INSERT of the same rows through the same pool.
    Append(AppendBenchArgs),
    /// Relay throughput from the log to a queue with confirms, against raw confirmed
    /// publishing of the same bodies to a quorum queue.
    Relay(RelayBenchArgs),
    /// Rebuilding the key views from the log, against a raw ordered scan (COPY) of the
    /// same rows.
    Rebuild(RebuildBenchArgs),
    /// Simulated users through every role against the panel simulator, against the
    /// simulator's own capacity at the same latency.
    E2e(E2eBenchArgs),
    /// Fetches of one subscription URL with five locations, against the same listener
    /// answering a fixed body of the same size.
    Sub(SubBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SubBenchArgs {
    /// Fetches in flight at once, for the subscription and the baseline alike.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Alternating rounds of baseline and subscription; the best of each counts.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

#[derive(Debug, Clone, Args)]
pub struct E2eBenchArgs {
    /// Users, each requesting a key, refreshing it three times and revoking it.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Added to every panel answer.
    #[arg(long, default_value_t = 20)]
    pub panel_latency_ms: u64,
    /// Users acting at the same time (and the baseline's concurrent panel calls).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RebuildBenchArgs {
    /// Events in the generated log, ten per key.
    #[arg(long, default_value_t = 200_000)]
    pub events: usize,
    /// Alternating rounds of rebuild and scan; the best of each counts.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

#[derive(Debug, Clone, Args)]
pub struct RelayBenchArgs {
    /// Events in the log, each relayed once per round.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Publishes awaiting their confirm, for the relay and the baseline alike.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Alternating rounds of relay and baseline, to even out machine noise.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

#[derive(Debug, Clone, Args)]
pub struct AppendBenchArgs {
    /// Seconds each measurement runs (store and baseline alike).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Alternating rounds of store and baseline per case, to even out machine noise.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}
