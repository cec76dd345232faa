-- Recomputes the running log hash of docs/checkpoints.md up to a position, in plain SQL,
-- without keyledger's binary or its functions, so that an auditor can check a signed
-- checkpoint with psql and openssl alone:
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v position=1234 -f sql/checkpoint_hash.sql
--
-- Prints one row: the last position included (the checkpoint's own position when the log
-- still holds it) and the log hash, to compare with the checkpoint's `log_hash`.
--
-- Formula: over every event in position order, h_0 = '' and
--   h_i = lower-hex sha256(h_{i-1} \n position \n hash)
-- where hash is the event's stored chain hash (docs/event-log.md#hash-chain), which already
-- covers its content and its stream predecessor. Each step reads the next event through
-- the primary key, so the query holds one row at a time, however long the log.
WITH RECURSIVE running (position, log_hash) AS (
    SELECT 0::bigint, ''::text
  UNION ALL
    SELECT e.position,
           encode(sha256(convert_to(
               r.log_hash || E'\n' || e.position::text || E'\n' || e.hash, 'UTF8')), 'hex')
    FROM running r
    CROSS JOIN LATERAL (
        SELECT position, hash FROM events
        WHERE position > r.position AND position <= :position
        ORDER BY position LIMIT 1
    ) e
)
SELECT position, log_hash FROM running ORDER BY position DESC LIMIT 1;
