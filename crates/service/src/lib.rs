//! keyledger's service: its configuration and the wiring of its roles into one process.
//!
//! Every role lives in a crate of its own (`api`, `broker`'s relay, `projector`,
//! `x3ui-worker`, `bot`, `scheduler`, `subscription`); this crate reads the configuration (environment over
//! an optional TOML file), opens the event store, and starts and stops any subset of the
//! roles together ([`pipeline::Pipeline`]). The binary (`crates/keyledger`) parses the
//! command line and calls in here; the lab (`crates/lab`) and the test kit
//! (`crates/testkit`) start the very same roles through the same function, which is why
//! this is a library of its own and not part of the binary: a binary cannot be a
//! dependency of the lab it runs.

pub mod config;
pub mod notary;
pub mod panels;
pub mod pipeline;
pub mod privileges;
pub mod serve;
pub mod store;
pub mod telemetry;

use clap::ValueEnum;

/// How a run ended, for the exit code: 0 success, 1 a failure the output explains, 2 bad
/// usage or bad configuration.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> std::process::ExitCode {
        match self {
            Self::Config(_) | Self::Usage(_) => std::process::ExitCode::from(2),
            Self::Runtime(_) => std::process::ExitCode::from(1),
        }
    }
}

/// The roles one process can run; `serve --roles` picks a subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Api,
    Relay,
    Projector,
    Worker,
    Bot,
    Scheduler,
    /// Serves users' subscription URLs (docs/subscriptions.md); needs
    /// `KEYLEDGER_SUB_PUBLIC_URL` and `KEYLEDGER_SUB_SECRET`.
    Sub,
    /// Signs checkpoints of the log (docs/checkpoints.md); needs `KEYLEDGER_NOTARY_KEY`.
    Notary,
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
