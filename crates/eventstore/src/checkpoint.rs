//! Signed checkpoints: proof that the log up to a position has not been altered since.
//!
//! The per-stream hash chains catch an edit made behind the log's back, but their formula is
//! public, so a superuser who rewrites an event and recomputes the stream's hashes, deletes a
//! stream's tail, or reorders positions leaves chains that still hold. A checkpoint closes
//! that gap: the *running log hash* folds every event's stored hash, in position order, into
//! one value, and the notary signs it with an Ed25519 key the database never sees
//! (docs/checkpoints.md). Anyone holding the public key can recompute the running hash from
//! the database and check the signature; changing anything at or below a checkpoint's
//! position changes the hash, and no one without the key can sign the new one.
//!
//! The running hash is a pure function of `(position, hash)` pairs, so continuing from a
//! checkpoint gives the same value as computing from scratch, and the database computes it
//! by streaming rows, never holding the whole log in memory.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use domain::Secret;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::EventStore;
use crate::error::StoreError;

/// The first line of every signed message; a new layout would get a new version.
pub const CHECKPOINT_MESSAGE_HEADER: &str = "keyledger checkpoint v1";

/// The running log hash after the event at `position` with stored hash `hash`, given the
/// running hash `previous` before it (`""` before the first event).
pub fn next_log_hash(previous: &str, position: i64, hash: &str) -> String {
    hex::encode(Sha256::digest(
        format!("{previous}\n{position}\n{hash}").as_bytes(),
    ))
}

/// The running log hash up to and including `position` (0 and `""` before any event).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogHash {
    pub position: i64,
    pub log_hash: String,
}

impl LogHash {
    /// Before the first event.
    pub fn start() -> Self {
        Self::default()
    }

    /// Folds in the next event in position order.
    pub fn extend(&mut self, position: i64, hash: &str) {
        self.log_hash = next_log_hash(&self.log_hash, position, hash);
        self.position = position;
    }
}

/// Continues `from` over every stored event above `from.position` and up to `up_to`, by
/// streaming the rows in position order. With [`LogHash::start`] it computes from scratch.
pub async fn log_hash_up_to(
    pool: &PgPool,
    from: LogHash,
    up_to: i64,
) -> Result<LogHash, StoreError> {
    let mut running = from;
    let mut rows = sqlx::query_as::<_, (i64, String)>(
        "SELECT position, hash FROM events
         WHERE position > $1 AND position <= $2 ORDER BY position",
    )
    .bind(running.position)
    .bind(up_to)
    .fetch(pool);
    while let Some((position, hash)) = rows.try_next().await? {
        running.extend(position, &hash);
    }
    Ok(running)
}

/// A problem with a key, a signature or a checkpoint's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the notary key must be base64 of exactly 32 bytes: {0}")]
    InvalidSigningKey(String),
    #[error("the public key must be base64 of exactly 32 bytes of an Ed25519 key: {0}")]
    InvalidPublicKey(String),
    #[error("the signature is not base64 of 64 bytes: {0}")]
    MalformedSignature(String),
    #[error("the signature does not match the pinned public key")]
    SignatureMismatch,
    #[error("signed_at cannot be written as RFC 3339: {0}")]
    Time(String),
}

/// The notary's private key, from `KEYLEDGER_NOTARY_KEY`. Its `Debug` shows only the
/// public key.
#[derive(Clone)]
pub struct NotaryKey(SigningKey);

impl NotaryKey {
    /// The key whose 32-byte seed is `seed`, written in standard base64.
    pub fn from_base64(seed: &Secret) -> Result<Self, CheckpointError> {
        let bytes = BASE64
            .decode(seed.expose().trim())
            .map_err(|e| CheckpointError::InvalidSigningKey(e.to_string()))?;
        let seed: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            CheckpointError::InvalidSigningKey(format!("it decodes to {} bytes", bytes.len()))
        })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A checkpoint of `log` signed now (to the second).
    pub fn sign_now(&self, log: &LogHash) -> Result<Checkpoint, CheckpointError> {
        let now = OffsetDateTime::now_utc();
        let signed_at = now.replace_nanosecond(0).unwrap_or(now);
        self.sign(log, signed_at)
    }

    /// A checkpoint of `log` signed at `signed_at` (seconds precision, UTC).
    pub fn sign(
        &self,
        log: &LogHash,
        signed_at: OffsetDateTime,
    ) -> Result<Checkpoint, CheckpointError> {
        let signed_at = signed_at.to_offset(time::UtcOffset::UTC);
        let message = signed_message(log.position, &log.log_hash, signed_at)?;
        let signature = self.0.sign(message.as_bytes());
        Ok(Checkpoint {
            position: log.position,
            log_hash: log.log_hash.clone(),
            signed_at,
            public_key: self.public_key().to_base64(),
            signature: BASE64.encode(signature.to_bytes()),
        })
    }
}

impl std::fmt::Debug for NotaryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NotaryKey(public {})", self.public_key().to_base64())
    }
}

/// An Ed25519 public key a verifier pins (never the one written in a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<Self, CheckpointError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| CheckpointError::InvalidPublicKey(e.to_string()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            CheckpointError::InvalidPublicKey(format!("it decodes to {} bytes", bytes.len()))
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| CheckpointError::InvalidPublicKey(e.to_string()))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.to_bytes())
    }
}

/// The text the notary signs: header, position, log hash and time, one per line.
pub fn signed_message(
    position: i64,
    log_hash: &str,
    signed_at: OffsetDateTime,
) -> Result<String, CheckpointError> {
    let signed_at = signed_at
        .to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| CheckpointError::Time(e.to_string()))?;
    Ok(format!(
        "{CHECKPOINT_MESSAGE_HEADER}\n{position}\n{log_hash}\n{signed_at}"
    ))
}

/// A signed checkpoint, as stored, printed and written to the notary's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// The last event the checkpoint covers.
    pub position: i64,
    /// The running log hash over every event up to `position`.
    pub log_hash: String,
    /// When it was signed: RFC 3339, UTC, whole seconds.
    #[serde(with = "time::serde::rfc3339")]
    pub signed_at: OffsetDateTime,
    /// The notary's public key, base64; informative only: verifiers pin their own.
    pub public_key: String,
    /// Ed25519 signature of the message of docs/checkpoints.md, base64.
    pub signature: String,
}

impl Checkpoint {
    /// The text that was signed.
    pub fn message(&self) -> Result<String, CheckpointError> {
        signed_message(self.position, &self.log_hash, self.signed_at)
    }

    /// Checks the signature against `key` (the pinned key, not `self.public_key`).
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), CheckpointError> {
        let bytes = BASE64
            .decode(self.signature.trim())
            .map_err(|e| CheckpointError::MalformedSignature(e.to_string()))?;
        let signature = Signature::from_slice(&bytes)
            .map_err(|e| CheckpointError::MalformedSignature(e.to_string()))?;
        key.0
            .verify(self.message()?.as_bytes(), &signature)
            .map_err(|_| CheckpointError::SignatureMismatch)
    }

    pub fn log(&self) -> LogHash {
        LogHash {
            position: self.position,
            log_hash: self.log_hash.clone(),
        }
    }
}

/// What checking one checkpoint against the database found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointVerdict {
    /// The signature is the pinned key's and the log still hashes to the signed value.
    Holds,
    /// The signature is not the pinned key's (or is malformed).
    BadSignature(CheckpointError),
    /// The signature holds but the log up to the position no longer hashes to it.
    LogDiffers { computed: String },
}

impl CheckpointVerdict {
    pub fn holds(&self) -> bool {
        matches!(self, Self::Holds)
    }
}

impl std::fmt::Display for CheckpointVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Holds => f.write_str("holds"),
            Self::BadSignature(error) => write!(f, "bad signature: {error}"),
            Self::LogDiffers { computed } => write!(
                f,
                "the log was altered: it now hashes to {computed} up to this position"
            ),
        }
    }
}

const CHECKPOINT_COLUMNS: &str = "position, log_hash, signed_at, public_key, signature";

type CheckpointRow = (i64, String, OffsetDateTime, String, String);

fn from_row((position, log_hash, signed_at, public_key, signature): CheckpointRow) -> Checkpoint {
    Checkpoint {
        position,
        log_hash,
        signed_at: signed_at.to_offset(time::UtcOffset::UTC),
        public_key,
        signature,
    }
}

impl EventStore {
    /// Stores `checkpoint`; false when one at its position was already stored (by another
    /// notary over the same log, so with the same log hash).
    pub async fn insert_checkpoint(&self, checkpoint: &Checkpoint) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO checkpoints (position, log_hash, signed_at, public_key, signature)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (position) DO NOTHING",
        )
        .bind(checkpoint.position)
        .bind(&checkpoint.log_hash)
        .bind(checkpoint.signed_at)
        .bind(&checkpoint.public_key)
        .bind(&checkpoint.signature)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// The stored checkpoint with the highest position, if any.
    pub async fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let sql =
            format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY position DESC LIMIT 1");
        let row: Option<CheckpointRow> = sqlx::query_as(&sql).fetch_optional(self.pool()).await?;
        Ok(row.map(from_row))
    }

    /// Up to `limit` stored checkpoints above `after_position`, oldest first.
    pub async fn checkpoints_after(
        &self,
        after_position: i64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE position > $1
             ORDER BY position LIMIT $2"
        );
        let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
            .bind(after_position)
            .bind(limit.max(1))
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Checks `checkpoint` with the pinned `key`, then recomputes the running hash from
    /// `from` (a log hash already checked, or [`LogHash::start`]) up to its position.
    /// Returns the verdict and the recomputed log hash, from which the next checkpoint
    /// (in position order) can continue.
    pub async fn verify_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        key: &PublicKey,
        from: LogHash,
    ) -> Result<(CheckpointVerdict, LogHash), StoreError> {
        let from = if from.position <= checkpoint.position {
            from
        } else {
            LogHash::start()
        };
        let computed = log_hash_up_to(self.pool(), from, checkpoint.position).await?;
        let verdict = if let Err(error) = checkpoint.verify_signature(key) {
            CheckpointVerdict::BadSignature(error)
        } else if computed.log_hash != checkpoint.log_hash {
            CheckpointVerdict::LogDiffers {
                computed: computed.log_hash.clone(),
            }
        } else {
            CheckpointVerdict::Holds
        };
        Ok((verdict, computed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_hex(text: &str) -> String {
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    fn key(seed: u8) -> NotaryKey {
        NotaryKey::from_base64(&Secret::new(BASE64.encode([seed; 32]))).expect("key")
    }

    #[test]
    fn the_running_hash_of_two_events_is_computed_as_documented() {
        let (first, second) = ("a".repeat(64), "b".repeat(64));
        let h1 = sha256_hex(&format!("\n3\n{first}"));
        let h2 = sha256_hex(&format!("{h1}\n7\n{second}"));
        let mut log = LogHash::start();
        log.extend(3, &first);
        assert_eq!(log.log_hash, h1);
        log.extend(7, &second);
        assert_eq!(
            log,
            LogHash {
                position: 7,
                log_hash: h2
            }
        );
        // The same values, fixed once with coreutils:
        // h1=$(printf '\n3\naaaa…a' | sha256sum); printf '%s\n7\nbbbb…b' "$h1" | sha256sum
        assert_eq!(
            log.log_hash,
            "1e8d28b7cf30ab4696a01c403919dafd77afafd685aba7ed4c5aafb81bf5803c"
        );
        assert_eq!(
            next_log_hash("", 1, "x"),
            "2bbf5b8ff95fce74a6103ce572fa6357670600ae7f23d053581a3d8f97f24fae"
        );
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_not_with_another() {
        let notary = key(7);
        let log = LogHash {
            position: 42,
            log_hash: "c".repeat(64),
        };
        let signed_at = time::macros::datetime!(2026-11-30 07:00:00 UTC);
        let checkpoint = notary.sign(&log, signed_at).expect("sign");
        assert_eq!(
            checkpoint.message().expect("message"),
            format!(
                "keyledger checkpoint v1\n42\n{}\n2026-11-30T07:00:00Z",
                "c".repeat(64)
            )
        );
        // Ed25519 is deterministic: the same signature as `openssl pkeyutl -sign -rawin`
        // over the same message with the same seed (docs/checkpoints.md).
        assert_eq!(
            checkpoint.signature,
            "VwB8SP4XEexg+Gz662afWkSQJDcYPCimFmw2NXLo70e9ByIwKjFis0PG4AOgj+em6rqDXSHdeZx9FhL3BImTBw=="
        );
        let pinned = PublicKey::from_base64(&notary.public_key().to_base64()).expect("public");
        assert_eq!(checkpoint.verify_signature(&pinned), Ok(()));
        assert_eq!(
            checkpoint.verify_signature(&key(8).public_key()),
            Err(CheckpointError::SignatureMismatch)
        );
        let mut altered = checkpoint.clone();
        altered.log_hash = "d".repeat(64);
        assert_eq!(
            altered.verify_signature(&pinned),
            Err(CheckpointError::SignatureMismatch)
        );
        let line = serde_json::to_string(&checkpoint).expect("json");
        assert!(
            line.contains("\"signed_at\":\"2026-11-30T07:00:00Z\""),
            "{line}"
        );
        let back: Checkpoint = serde_json::from_str(&line).expect("parse");
        assert_eq!(back, checkpoint);
    }

    #[test]
    fn keys_must_be_base64_of_32_bytes_and_debug_hides_the_seed() {
        assert!(matches!(
            NotaryKey::from_base64(&Secret::new(BASE64.encode([1u8; 31]))),
            Err(CheckpointError::InvalidSigningKey(_))
        ));
        assert!(matches!(
            NotaryKey::from_base64(&Secret::new("not base64!")),
            Err(CheckpointError::InvalidSigningKey(_))
        ));
        let seed = BASE64.encode([9u8; 32]);
        let notary = NotaryKey::from_base64(&Secret::new(seed.clone())).expect("key");
        assert!(!format!("{notary:?}").contains(&seed));
        assert!(PublicKey::from_base64("AAAA").is_err());
    }
}
