//! Rewriting history as a superuser would: the attack the log's defences are tested
//! against. The per-stream hash formula is public, so someone who may write to `events`
//! can change an event and recompute every stream's hashes; only a signed checkpoint taken
//! before tells the difference. One copy of that attack, so every test makes the same one.

use domain::Secret;
use eventstore::NotaryKey;
use sqlx::PgPool;

/// Recomputes every stream's hashes with the published formula (docs/event-log.md).
const RECHAIN: &str = r#"
DO $$
DECLARE r record; prev text := ''; prev_stream uuid := NULL; h text;
BEGIN
  FOR r IN SELECT * FROM events ORDER BY stream_id, version LOOP
    IF prev_stream IS DISTINCT FROM r.stream_id THEN prev := ''; END IF;
    h := encode(sha256(convert_to(
           prev || E'\n' || r.position::text || E'\n'
           || ((extract(epoch FROM r.recorded_at) * 1000000)::bigint)::text || E'\n'
           || encode(sha256(convert_to(
                r.stream_id::text || E'\n' || r.version::text || E'\n' || r.event_id::text
                || E'\n' || r.type || E'\n' || r.data::text || E'\n' || r.metadata::text,
                'UTF8')), 'hex'), 'UTF8')), 'hex');
    UPDATE events SET hash = h WHERE position = r.position;
    prev := h; prev_stream := r.stream_id;
  END LOOP;
END $$;
"#;

/// Runs `sql` against `events` with the append-only triggers off, then recomputes every
/// stream's hashes, so the per-stream chains hold again afterwards.
pub async fn rewrite_history(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(&format!(
        "ALTER TABLE events DISABLE TRIGGER USER;
         {sql}
         {RECHAIN}
         ALTER TABLE events ENABLE TRIGGER USER;"
    ))
    .execute(pool)
    .await
    .expect("superuser rewrites history");
}

/// Base64 of the 32-byte seed `[42; 32]`: the notary key tests sign with.
pub const NOTARY_SEED: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// The notary key of [`NOTARY_SEED`].
pub fn notary_key() -> NotaryKey {
    NotaryKey::from_base64(&Secret::new(NOTARY_SEED)).expect("the test notary key")
}
