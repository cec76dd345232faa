//! The `keyledger` binary: configuration, the command line, and the wiring of roles.
//!
//! Everything that decides or stores lives in the other crates; this one reads the
//! configuration (CONTRACT.md §2), parses the command line (§1), connects the parts and maps
//! outcomes to exit codes: 0 success, 1 a failure the output explains, 2 bad usage or bad
//! configuration.

pub mod audit;
pub mod bench;
mod bench_e2e;
mod bench_rebuild;
pub mod cli;
pub mod config;
mod demo;
pub mod panel_sim;
pub mod panels;
pub mod scheduler;
mod scratch;
pub mod serve;
pub mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{AuditCommand, BenchCommand, Cli, Command, ProjectionsCommand};
use crate::config::{Config, ConfigError};

/// How a run ended, for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) | Self::Usage(_) => ExitCode::from(2),
            Self::Runtime(_) => ExitCode::from(1),
        }
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("keyledger: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("keyledger: {failure}");
            failure.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let mut config = Config::load(cli.config.as_deref())?;
    let tells_its_own_story = matches!(cli.command, Command::Demo | Command::Bench { .. });
    if tells_its_own_story && std::env::var_os("RUST_LOG").is_none() {
        // The demo and the benchmarks print their own story on stdout; routine log lines
        // would bury it (and, in a benchmark, cost time).
        config.log_filter = "warn".into();
    }
    telemetry::init(&config);
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve { roles } => {
            serve::serve(&config, roles).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            audit::migrate(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let store = audit::open_store(&config).await?;
            let held = match command {
                AuditCommand::History { key_id, json } => {
                    audit::history(&store, key_id, json, &mut out).await?
                }
                AuditCommand::Verify => audit::verify(&store, &mut out).await?,
                AuditCommand::Export { after } => audit::export(&store, after, &mut out).await?,
            };
            Ok(if held {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Reconcile { location, dry_run } => {
            let store = audit::migrate(&config).await?;
            let clean =
                panels::reconcile(&config, store, location.as_deref(), dry_run, &mut out).await?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Projections { command } => {
            let store = audit::migrate(&config).await?;
            match command {
                ProjectionsCommand::Rebuild => audit::rebuild_projections(&store, &mut out).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            demo::run(&config, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PanelSim(args) => {
            panel_sim::run(&args, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { command } => {
            match command {
                BenchCommand::Append(args) => bench::append(&config, &args, &mut out).await?,
                BenchCommand::Relay(args) => bench::relay(&config, &args, &mut out).await?,
                BenchCommand::E2e(args) => bench_e2e::e2e(&config, &args, &mut out).await?,
                BenchCommand::Rebuild(args) => {
                    bench_rebuild::rebuild(&config, &args, &mut out).await?
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
