use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
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
    Demo,
    /// Serve a simulated 3x-ui panel (in memory, for demos) until SIGTERM or SIGINT.
    PanelSim(crate::panel_sim::PanelSimArgs),
    /// Benchmarks; each prints JSON with its baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
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
    Verify,
    /// Every event as JSON lines, in log order.
    Export {
        /// Start after this log position.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuild every key view from the log into a fresh table and swap it in.
    Rebuild,
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

/// The roles of CONTRACT.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Api,
    Relay,
    Projector,
    Worker,
    Bot,
    Scheduler,
}

impl Role {
    /// Whether the role talks to RabbitMQ.
    pub fn uses_broker(self) -> bool {
        matches!(
            self,
            Role::Relay | Role::Projector | Role::Worker | Role::Bot
        )
    }
}
