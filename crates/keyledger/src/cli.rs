//! The command line: every command of the binary, parsed by clap. Lab commands (`demo`,
//! `panel-sim`, `bench …`) exist only with the default `lab` feature.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use service::Role;
use uuid::Uuid;

/// keyledger: VPN access keys for Telegram users, from one append-only event log.
#[derive(Debug, Parser)]
#[command(name = "keyledger", version)]
pub struct Cli {
    /// TOML configuration file; environment variables take precedence over it.
    #[arg(long, global = true, env = "KEYLEDGER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service's roles in one process until SIGTERM or SIGINT.
    Serve {
        /// Comma-separated subset of roles to run (default: every role this build has).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<Role>>,
    },
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Read and check the event log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One full reconcile pass now: every location's panel against the log.
    Reconcile {
        /// Only this location.
        #[arg(long)]
        location: Option<String>,
        /// Report the drift without repairing or recording anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The whole pipeline against a built-in panel simulator and a scripted user, told as
    /// it happens; in a scratch database and vhost removed afterwards.
    #[cfg(feature = "lab")]
    Demo,
    /// Serve a simulated 3x-ui panel (in memory, for demos) until SIGTERM or SIGINT.
    #[cfg(feature = "lab")]
    PanelSim(lab::PanelSimArgs),
    /// Benchmarks; each prints JSON with its baseline measured in the same run.
    #[cfg(feature = "lab")]
    Bench {
        #[command(subcommand)]
        command: lab::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// A key's full history, oldest first.
    History {
        key_id: Uuid,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check every stream's hash chain and the log's append-only guards; exit 1 on a break.
    Verify {
        /// Also check every signed checkpoint in this file (JSON lines) against the log.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// The notary's public key to trust, base64 (else the key of KEYLEDGER_NOTARY_KEY).
        #[arg(long, value_name = "B64", env = "KEYLEDGER_NOTARY_PUBLIC_KEY")]
        public_key: Option<String>,
    },
    /// The signed checkpoints stored in the database, as JSON lines, oldest first.
    Checkpoints {
        #[command(subcommand)]
        command: Option<CheckpointsCommand>,
        /// Only checkpoints above this log position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Every event as JSON lines, in log order.
    Export {
        /// Start after this log position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum CheckpointsCommand {
    /// The notary's public key (base64), derived from KEYLEDGER_NOTARY_KEY.
    PublicKey,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuild every key view from the log into a fresh table and swap it in.
    Rebuild,
}

impl Command {
    /// Commands that print their own story on stdout, where routine log lines would bury
    /// it (and, in a benchmark, cost time).
    /// What this process runs, as its traces name it: `serve`'s roles, or the command.
    pub fn component(&self) -> String {
        match self {
            Self::Serve { roles: Some(roles) } => roles
                .iter()
                .map(|role| format!("{role:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(","),
            Self::Serve { roles: None } => "all".to_owned(),
            other => format!("{other:?}")
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_lowercase(),
        }
    }

    pub fn tells_its_own_story(&self) -> bool {
        #[cfg(feature = "lab")]
        if matches!(self, Self::Demo | Self::Bench { .. }) {
            return true;
        }
        false
    }
}
