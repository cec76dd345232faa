//! The notary role: signs checkpoints of the log so that a later rewrite of it, even by a
//! database superuser, can be proven (docs/checkpoints.md).
//!
//! Once at start and then every `interval`, it reads the events past its last checkpoint
//! with the gap-free reader (so no event that commits late below them is ever left out),
//! folds them into the running log hash, and, if the log grew, signs the new position and
//! hash with `KEYLEDGER_NOTARY_KEY`, stores the checkpoint, appends it as a JSON line to
//! `[notary] file` when one is configured, and logs it. Before it continues from a stored
//! checkpoint it recomputes that checkpoint's hash from the log: a notary that signed on top
//! of a log already rewritten would bless the rewrite, so it refuses and says so instead.
//! Its settings live here rather than in `config.rs` so the role is one file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use eventstore::{Checkpoint, EventStore, LogHash, NotaryKey};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Secret};

/// The environment variable holding the notary's private key (never in the file).
pub const NOTARY_KEY_VARIABLE: &str = "KEYLEDGER_NOTARY_KEY";
/// How many events the notary reads per query.
const PAGE: i64 = 1000;

/// When and where the notary writes (file section `[notary]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotarySettings {
    /// Between two checkpoints (at most; none is signed while the log stands still).
    pub interval: Duration,
    /// A file each checkpoint is also appended to, as one JSON line.
    pub file: Option<PathBuf>,
}

impl Default for NotarySettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            file: None,
        }
    }
}

/// The `[notary]` section as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileNotary {
    interval_seconds: Option<u64>,
    file: Option<PathBuf>,
}

pub(crate) fn notary_settings(file: &FileNotary) -> Result<NotarySettings, ConfigError> {
    let defaults = NotarySettings::default();
    let interval = match file.interval_seconds {
        None => defaults.interval,
        Some(s) if (5..=86_400).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(ConfigError::new(
                "notary.interval_seconds",
                format!("{s} is outside 5 to 86400 seconds"),
            ));
        }
    };
    Ok(NotarySettings {
        interval,
        file: file.file.clone(),
    })
}

/// `KEYLEDGER_NOTARY_KEY`, checked to be base64 of exactly 32 bytes.
pub(crate) fn notary_key(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let Some(raw) = env(NOTARY_KEY_VARIABLE) else {
        return Ok(None);
    };
    let secret = Secret::new(raw);
    NotaryKey::from_base64(&secret)
        .map_err(|e| ConfigError::new(NOTARY_KEY_VARIABLE, e.to_string()))?;
    Ok(Some(secret))
}

/// The notary's key from the configuration, if one is set.
pub fn key_from_config(config: &Config) -> Result<Option<NotaryKey>, ConfigError> {
    config
        .notary_key
        .as_ref()
        .map(|secret| {
            NotaryKey::from_base64(secret)
                .map_err(|e| ConfigError::new(NOTARY_KEY_VARIABLE, e.to_string()))
        })
        .transpose()
}

/// Why a notary pass did not sign.
#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    #[error(transparent)]
    Checkpoint(#[from] eventstore::CheckpointError),
    #[error(
        "the log no longer hashes to the stored checkpoint at position {position}: it was altered; the notary will not sign on top of it"
    )]
    Altered { position: i64 },
    #[error("cannot append the checkpoint to {path}: {error}")]
    File { path: String, error: std::io::Error },
    #[error("cannot write the checkpoint as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The notary role.
#[derive(Debug, Clone)]
pub struct Notary {
    store: EventStore,
    key: NotaryKey,
    interval: Duration,
    file: Option<PathBuf>,
}

impl Notary {
    pub fn new(
        store: EventStore,
        key: NotaryKey,
        interval: Duration,
        file: Option<PathBuf>,
    ) -> Self {
        Self {
            store,
            key,
            interval,
            file,
        }
    }

    /// Signs at start and then every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(
            public_key = %self.key.public_key().to_base64(),
            interval_seconds = self.interval.as_secs(),
            "notary role started"
        );
        let mut running: Option<LogHash> = None;
        loop {
            match self.pass(&mut running).await {
                Ok(_) => {}
                Err(error @ NotaryError::Altered { .. }) => {
                    tracing::error!(%error, "notary role stopped");
                    return;
                }
                Err(error) => tracing::warn!(%error, "notary pass failed; retrying later"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One pass: extends `running` (resumed from the last stored checkpoint the first
    /// time) over the new events and signs a checkpoint if the log grew.
    pub async fn pass(
        &self,
        running: &mut Option<LogHash>,
    ) -> Result<Option<Checkpoint>, NotaryError> {
        let signed = match running {
            Some(log) => log.clone(),
            None => {
                let resumed = self.resume().await?;
                *running = Some(resumed.clone());
                resumed
            }
        };
        let mut log = signed.clone();
        loop {
            let page = self.store.read_all(log.position, PAGE).await?;
            for event in &page {
                log.extend(event.position, &event.hash);
            }
            if page.len() < PAGE as usize {
                break;
            }
        }
        if log.position == signed.position {
            return Ok(None);
        }
        let checkpoint = self.key.sign_now(&log)?;
        self.store.insert_checkpoint(&checkpoint).await?;
        *running = Some(log);
        self.append_to_file(&checkpoint)?;
        tracing::info!(
            position = checkpoint.position,
            log_hash = %checkpoint.log_hash,
            signed_at = %checkpoint.signed_at,
            public_key = %checkpoint.public_key,
            signature = %checkpoint.signature,
            "checkpoint signed"
        );
        Ok(Some(checkpoint))
    }

    /// The running hash at the last stored checkpoint, recomputed from the log and
    /// compared with it.
    async fn resume(&self) -> Result<LogHash, NotaryError> {
        let Some(last) = self.store.last_checkpoint().await? else {
            return Ok(LogHash::start());
        };
        let computed =
            eventstore::log_hash_up_to(self.store.pool(), LogHash::start(), last.position).await?;
        if computed.log_hash != last.log_hash {
            return Err(NotaryError::Altered {
                position: last.position,
            });
        }
        Ok(LogHash {
            position: last.position,
            log_hash: computed.log_hash,
        })
    }

    fn append_to_file(&self, checkpoint: &Checkpoint) -> Result<(), NotaryError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let line = serde_json::to_string(checkpoint)?;
        let file_error = |error| NotaryError::File {
            path: path.display().to_string(),
            error,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(file_error)?;
        writeln!(file, "{line}").map_err(file_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_defaults_to_a_minute_and_is_bounded() {
        let settings = notary_settings(&FileNotary::default()).expect("defaults");
        assert_eq!(settings, NotarySettings::default());
        assert_eq!(settings.interval, Duration::from_secs(60));
        let error = notary_settings(&FileNotary {
            interval_seconds: Some(4),
            file: None,
        })
        .expect_err("too short");
        assert_eq!(error.field, "notary.interval_seconds");
    }

    #[test]
    fn the_key_must_be_base64_of_32_bytes_and_is_never_echoed() {
        let env = |value: &'static str| {
            move |name: &str| (name == NOTARY_KEY_VARIABLE).then(|| value.to_owned())
        };
        assert_eq!(notary_key(&|_: &str| None).expect("unset"), None);
        let error = notary_key(&env("c2hvcnQ=")).expect_err("5 bytes");
        assert_eq!(error.field, NOTARY_KEY_VARIABLE);
        assert!(!error.to_string().contains("c2hvcnQ="), "{error}");
        let seed = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
        assert_eq!(
            notary_key(&env(seed)).expect("valid"),
            Some(Secret::new(seed))
        );
    }
}
