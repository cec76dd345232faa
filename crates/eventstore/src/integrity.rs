//! The hash chain of docs/event-log.md ("Hash chain") computed in Rust, and the check behind
//! `keyledger audit verify`: every stream's chain, and the append-only triggers. The formulas
//! are written here a second time, beside the SQL of the migrations and `sql/verify_chain.sql`,
//! so that each implementation checks the others; events keep the formula they were written
//! with, since the log is never rewritten ([`ChainFormula`]).

use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::error::StoreError;

/// One place where a stream's chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub stream_id: Uuid,
    pub version: i32,
    pub position: i64,
    pub problem: String,
}

/// What `audit verify` found about the log itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub streams: u64,
    pub events: u64,
    pub breaks: Vec<ChainBreak>,
    /// Append-only triggers that are missing or disabled.
    pub disabled_guards: Vec<String>,
}

impl ChainReport {
    pub fn holds(&self) -> bool {
        self.breaks.is_empty() && self.disabled_guards.is_empty()
    }
}

/// Which formula chains an event (docs/event-log.md, "Hash chain"). The log is immutable, so events
/// keep the formula they were written with; table `chain_formulas` says from which
/// position each applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFormula {
    /// Migration 0001: one hash over the previous hash and the whole event.
    Flat,
    /// Migration 0007: the writer's content digest, linked with the position and time.
    ContentDigest,
}

/// The digest of an event's content under [`ChainFormula::ContentDigest`]: everything the
/// writer knows before the database places the event. `data_text` and `metadata_text` are
/// PostgreSQL's `jsonb` text ([`crate::jsonb_text`] renders it on the writer's side).
pub fn content_digest(
    stream_id: Uuid,
    version: i64,
    event_id: Uuid,
    event_type: &str,
    data_text: &str,
    metadata_text: &str,
) -> String {
    sha256_hex(&format!(
        "{stream_id}\n{version}\n{event_id}\n{event_type}\n{data_text}\n{metadata_text}"
    ))
}

/// Links a content digest into its stream's chain under [`ChainFormula::ContentDigest`],
/// with what the database decides: the position and the time.
pub fn link_hash(prev_hash: &str, position: i64, recorded_at_micros: i64, content: &str) -> String {
    sha256_hex(&format!(
        "{prev_hash}\n{position}\n{recorded_at_micros}\n{content}"
    ))
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// An event's content as the hash chain sees it: JSON as PostgreSQL renders `jsonb` to
/// text, the time as whole microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy)]
pub struct ChainLink<'a> {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i32,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub data_text: &'a str,
    pub metadata_text: &'a str,
    pub recorded_at_micros: i64,
}

impl ChainLink<'_> {
    /// The hash of this event given the previous event's hash (docs/event-log.md, "Hash chain"). The
    /// same formulas as the append functions (migrations 0002 and 0007) and
    /// `sql/verify_chain.sql`, written again so that each can check the others.
    pub fn hash(&self, prev_hash: &str, formula: ChainFormula) -> String {
        match formula {
            ChainFormula::Flat => sha256_hex(&format!(
                "{prev_hash}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
                self.position,
                self.stream_id,
                self.version,
                self.event_id,
                self.event_type,
                self.data_text,
                self.metadata_text,
                self.recorded_at_micros
            )),
            ChainFormula::ContentDigest => {
                let content = content_digest(
                    self.stream_id,
                    self.version.into(),
                    self.event_id,
                    self.event_type,
                    self.data_text,
                    self.metadata_text,
                );
                link_hash(prev_hash, self.position, self.recorded_at_micros, &content)
            }
        }
    }
}

/// The first position chained by [`ChainFormula::ContentDigest`].
async fn content_digest_from(pool: &PgPool) -> Result<i64, StoreError> {
    let first: i64 =
        sqlx::query_scalar("SELECT first_position FROM chain_formulas WHERE formula = 2")
            .fetch_one(pool)
            .await?;
    Ok(first)
}

/// Recomputes every stream's hash chain and checks the append-only guards are in place.
pub async fn verify_chains(pool: &PgPool) -> Result<ChainReport, StoreError> {
    check_chains(pool, None).await
}

/// The same check for one stream only (through its `(stream_id, version)` index): what a
/// page showing one key's history can afford on every view.
pub async fn verify_stream_chain(
    pool: &PgPool,
    stream_id: Uuid,
) -> Result<ChainReport, StoreError> {
    check_chains(pool, Some(stream_id)).await
}

async fn check_chains(pool: &PgPool, stream: Option<Uuid>) -> Result<ChainReport, StoreError> {
    let mut report = ChainReport {
        disabled_guards: disabled_guards(pool).await?,
        ..ChainReport::default()
    };
    let digest_from = content_digest_from(pool).await?;
    let columns = "SELECT stream_id, version, position, event_id, type, data::text AS data_text,
                metadata::text AS metadata_text, hash,
                (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_at_micros
         FROM events";
    let sql = match stream {
        None => format!("{columns} ORDER BY stream_id, version"),
        Some(_) => format!("{columns} WHERE stream_id = $1 ORDER BY version"),
    };
    let mut rows = match stream {
        None => sqlx::query(&sql).fetch(pool),
        Some(id) => sqlx::query(&sql).bind(id).fetch(pool),
    };

    let mut previous: Option<(Uuid, i32, String)> = None;
    while let Some(row) = rows.try_next().await? {
        let stream_id: Uuid = row.try_get("stream_id")?;
        let version: i32 = row.try_get("version")?;
        let position: i64 = row.try_get("position")?;
        let stored: String = row.try_get("hash")?;
        let (expected_version, prev_hash) = match &previous {
            Some((prev_stream, prev_version, prev_hash)) if *prev_stream == stream_id => {
                (prev_version + 1, prev_hash.as_str())
            }
            _ => {
                report.streams += 1;
                (1, "")
            }
        };
        report.events += 1;
        let link = ChainLink {
            position,
            stream_id,
            version,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("type")?,
            data_text: row.try_get("data_text")?,
            metadata_text: row.try_get("metadata_text")?,
            recorded_at_micros: row.try_get("recorded_at_micros")?,
        };
        let formula = if position < digest_from {
            ChainFormula::Flat
        } else {
            ChainFormula::ContentDigest
        };
        let computed = link.hash(prev_hash, formula);
        let problem = if version != expected_version {
            Some(format!(
                "version {version} follows version {}",
                expected_version - 1
            ))
        } else if computed != stored {
            Some(format!(
                "stored hash {stored} but the content hashes to {computed}"
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            report.breaks.push(ChainBreak {
                stream_id,
                version,
                position,
                problem,
            });
        }
        previous = Some((stream_id, version, stored));
    }
    Ok(report)
}

async fn disabled_guards(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let mut missing = Vec::new();
    // The signed checkpoints (migration 0009) are guarded the same way as the events.
    for (table, trigger) in [
        ("events", "events_append_only"),
        ("events", "events_no_truncate"),
        ("checkpoints", "checkpoints_append_only"),
        ("checkpoints", "checkpoints_no_truncate"),
    ] {
        let enabled: Option<String> = sqlx::query_scalar(
            "SELECT tgenabled::text FROM pg_trigger
             WHERE tgrelid = to_regclass($2) AND tgname = $1",
        )
        .bind(trigger)
        .bind(table)
        .fetch_optional(pool)
        .await?;
        match enabled.as_deref() {
            Some("O") | Some("A") => {}
            Some(_) => missing.push(format!("trigger {trigger} is disabled")),
            None => missing.push(format!("trigger {trigger} is missing")),
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::EventType;

    fn link() -> ChainLink<'static> {
        ChainLink {
            position: 1,
            stream_id: Uuid::nil(),
            version: 1,
            event_id: Uuid::nil(),
            event_type: EventType::Revoked.as_str(),
            data_text: "{}",
            metadata_text: "{}",
            recorded_at_micros: 0,
        }
    }

    fn is_lower_hex_sha256(hash: &str) -> bool {
        hash.len() == 64
            && hash
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    }

    #[test]
    fn flat_chain_hash_is_lower_hex_sha256_of_the_documented_text() {
        let hash = link().hash("", ChainFormula::Flat);
        let expected = hex::encode(Sha256::digest(
            format!(
                "\n1\n{0}\n1\n{0}\n{1}\n{{}}\n{{}}\n0",
                Uuid::nil(),
                EventType::Revoked
            )
            .as_bytes(),
        ));
        assert_eq!(hash, expected);
        assert!(is_lower_hex_sha256(&hash));
    }

    #[test]
    fn content_digest_chain_hash_links_the_documented_content_text() {
        let prev = "ab".repeat(32);
        let hash = link().hash(&prev, ChainFormula::ContentDigest);
        let content = hex::encode(Sha256::digest(
            format!(
                "{0}\n1\n{0}\n{1}\n{{}}\n{{}}",
                Uuid::nil(),
                EventType::Revoked
            )
            .as_bytes(),
        ));
        let expected = hex::encode(Sha256::digest(
            format!("{prev}\n1\n0\n{content}").as_bytes(),
        ));
        assert_eq!(hash, expected);
        assert!(is_lower_hex_sha256(&content));
        assert_ne!(hash, link().hash(&prev, ChainFormula::Flat));
    }
}
