//! Logging for every role: `tracing` to stderr, filtered by `RUST_LOG`, as JSON unless stderr
//! is a terminal or `log_format` says otherwise (docs/configuration.md). JSON is the default
//! because in a deployment logs are read by machines; the pretty format is for a person
//! running the binary by hand.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Structured logs to stderr: JSON unless a person is watching a terminal.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = config
        .log_format
        .unwrap_or(if std::io::stderr().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
