//! `keyledger audit checkpoints …` and the checkpoint half of `keyledger audit verify
//! --checkpoint FILE`: the signed checkpoints of docs/checkpoints.md, seen by an auditor.
//!
//! Verification never trusts the public key written in a checkpoint: whoever could rewrite
//! the log could write a key of their own next to a signature of their own. The key is
//! pinned by the auditor (`--public-key`, `KEYLEDGER_NOTARY_PUBLIC_KEY`) or derived from the
//! notary's own key, and without one the command refuses to run.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use eventstore::{Checkpoint, EventStore, LogHash, PublicKey};
use service::Failure;
use service::config::Config;

const PAGE: i64 = 1000;

/// Prints the stored checkpoints above `after` as JSON lines, oldest first.
pub async fn print(store: &EventStore, after: i64, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut position = after;
    loop {
        let page = store.checkpoints_after(position, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(true);
        };
        position = last.position;
        for checkpoint in &page {
            writeln!(out, "{}", serde_json::to_string(checkpoint)?)?;
        }
    }
}

/// Prints the public key of `KEYLEDGER_NOTARY_KEY`; a usage failure (exit 2) when unset.
pub fn print_public_key(config: &Config, out: &mut impl Write) -> Result<(), Failure> {
    let key = service::notary::key_from_config(config)?.ok_or_else(|| {
        Failure::Usage("KEYLEDGER_NOTARY_KEY is not set: there is no notary key to show".into())
    })?;
    writeln!(out, "{}", key.public_key().to_base64())
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot write: {e}")))
}

/// The key checkpoints are checked with: `--public-key` (or `KEYLEDGER_NOTARY_PUBLIC_KEY`),
/// else the one derived from `KEYLEDGER_NOTARY_KEY`; a usage failure when there is none.
pub fn pinned_key(config: &Config, public_key: Option<&str>) -> Result<PublicKey, Failure> {
    if let Some(text) = public_key {
        return PublicKey::from_base64(text)
            .map_err(|e| Failure::Usage(format!("--public-key: {e}")));
    }
    match service::notary::key_from_config(config)? {
        Some(key) => Ok(key.public_key()),
        None => Err(Failure::Usage(
            "a public key must be pinned to verify checkpoints: pass --public-key or set KEYLEDGER_NOTARY_PUBLIC_KEY (the key written in the file is never trusted)"
                .into(),
        )),
    }
}

/// Checks every checkpoint in `file` (JSON lines) against the log with `key`; prints a
/// verdict per checkpoint and returns whether all hold (and there was at least one).
pub async fn verify_file(
    store: &EventStore,
    file: &Path,
    key: &PublicKey,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let (mut checked, mut failed) = (0_usize, 0_usize);
    // Each checkpoint continues the hash recomputed from the database for the one before.
    let mut running = LogHash::start();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        checked += 1;
        let checkpoint: Checkpoint = match serde_json::from_str(&line) {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                failed += 1;
                writeln!(
                    out,
                    "CHECKPOINT line {}: not a checkpoint: {error}",
                    index + 1
                )?;
                continue;
            }
        };
        let (verdict, computed) = store
            .verify_checkpoint(&checkpoint, key, running.clone())
            .await?;
        running = computed;
        if !verdict.holds() {
            failed += 1;
        }
        writeln!(
            out,
            "CHECKPOINT position {} signed {}: {verdict}",
            checkpoint.position,
            checkpoint
                .signed_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        )?;
    }
    let verdict = match (checked, failed) {
        (0, _) => format!("no checkpoint found in {}", file.display()),
        (_, 0) => "every checkpoint holds".to_owned(),
        (_, failed) => format!("{failed} failed: the log was altered"),
    };
    writeln!(out, "checked {checked} checkpoints: {verdict}")?;
    Ok(checked > 0 && failed == 0)
}
