//! The `keyledger` binary: the command line and what each command does.
//!
//! Everything that decides or stores lives in the other crates, and the configuration and
//! the wiring of roles in `service`; this crate parses the command line, runs the command
//! and maps outcomes to exit codes: 0 success, 1 a failure the output explains, 2 bad usage
//! or bad configuration. The default `lab` feature adds `demo`, `panel-sim` and `bench …`
//! from the `lab` crate; without it (`--no-default-features`) the binary is the production
//! service alone, with no simulator or fake inside.

pub mod audit;
pub mod checkpoints;
pub mod cli;

use std::process::ExitCode;

use clap::Parser;

use service::config::Config;
use service::{serve, store, telemetry};

use crate::cli::{AuditCommand, CheckpointsCommand, Cli, Command, ProjectionsCommand};

pub use service::Failure;

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
    let tells_its_own_story = cli.command.tells_its_own_story();
    if tells_its_own_story && std::env::var_os("RUST_LOG").is_none() {
        // The demo and the benchmarks print their own story on stdout; routine log lines
        // would bury it (and, in a benchmark, cost time).
        config.log_filter = "warn".into();
    }
    // Dropped when the command returns (for `serve`, after its graceful stop), which sends
    // the last batched spans.
    let _telemetry = telemetry::init(&config, &cli.command.component());
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve { roles } => {
            serve::serve(&config, roles).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            store::migrate(&config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Checkpoints {
                    command: Some(CheckpointsCommand::PublicKey),
                    ..
                },
        } => {
            checkpoints::print_public_key(&config, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let store = store::open_store(&config).await?;
            let held = match command {
                AuditCommand::History { key_id, json } => {
                    audit::history(&store, key_id, json, &mut out).await?
                }
                AuditCommand::Verify {
                    checkpoint: None, ..
                } => audit::verify(&store, &mut out).await?,
                AuditCommand::Verify {
                    checkpoint: Some(file),
                    public_key,
                } => {
                    let key = checkpoints::pinned_key(&config, public_key.as_deref())?;
                    let log_holds = audit::verify(&store, &mut out).await?;
                    checkpoints::verify_file(&store, &file, &key, &mut out).await? && log_holds
                }
                AuditCommand::Checkpoints { after, .. } => {
                    checkpoints::print(&store, after, &mut out).await?
                }
                AuditCommand::Export { after } => audit::export(&store, after, &mut out).await?,
            };
            Ok(if held {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Reconcile { location, dry_run } => {
            let store = service::privileges::store_for_runtime(&config).await?;
            let clean =
                service::panels::reconcile(&config, store, location.as_deref(), dry_run, &mut out)
                    .await?;
            Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Projections { command } => {
            // The rebuild replaces the view table: the owner's work (docs/operations.md).
            store::migrate(&config).await?;
            let store = service::privileges::open_owner_store(&config).await?;
            match command {
                ProjectionsCommand::Rebuild => audit::rebuild_projections(&store, &mut out).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "lab")]
        Command::Demo => {
            lab::demo(&config, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "lab")]
        Command::PanelSim(args) => {
            lab::panel_sim(&args, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "lab")]
        Command::Bench { command } => {
            lab::bench(&config, &command, &mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
