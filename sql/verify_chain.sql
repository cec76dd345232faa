-- Recomputes every stream's hash chain in plain SQL, without keyledger's binary or its
-- functions, and lists every event that breaks its chain. No rows: every chain holds.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/verify_chain.sql
--
-- Formulas (docs/event-log.md#hash-chain); every hash is the lower-case hex SHA-256 of
-- UTF-8 text, parts joined by \n, prev_hash being the stored hash of the stream's previous
-- version ('' for version 1) and recorded_at_us the time as integer microseconds since the
-- epoch.
-- Events from chain_formulas' first position of formula 2 on (all of them in a log
-- started after migration 0007):
--   content = stream_id \n version \n event_id \n type \n data::text \n metadata::text
--   hash    = prev_hash \n position \n recorded_at_us \n hex(sha256(content))
-- Events before it (formula 1):
--   hash    = prev_hash \n position \n stream_id \n version \n event_id \n type \n
--             data::text \n metadata::text \n recorded_at_us
-- Chaining on the stored previous hash pins a break to the event that was altered; an
-- altered event whose hash was recomputed to match shows up as a break at the next one.
SELECT stream_id, version, position,
       CASE WHEN version <> coalesce(prev_version, 0) + 1 THEN 'version does not follow'
            ELSE 'hash differs' END AS problem,
       hash AS stored, computed
FROM (
    SELECT e.*,
           lag(e.version) OVER w AS prev_version,
           encode(sha256(convert_to(
               CASE WHEN e.position >= (SELECT first_position FROM chain_formulas
                                        WHERE formula = 2) THEN
                   coalesce(lag(e.hash) OVER w, '') || E'\n' || e.position::text || E'\n'
                   || ((extract(epoch FROM e.recorded_at) * 1000000)::bigint)::text
                   || E'\n' || encode(sha256(convert_to(
                       e.stream_id::text || E'\n' || e.version::text || E'\n'
                       || e.event_id::text || E'\n' || e.type || E'\n'
                       || e.data::text || E'\n' || e.metadata::text, 'UTF8')), 'hex')
               ELSE
                   coalesce(lag(e.hash) OVER w, '') || E'\n' || e.position::text || E'\n'
                   || e.stream_id::text || E'\n' || e.version::text || E'\n'
                   || e.event_id::text || E'\n' || e.type || E'\n'
                   || e.data::text || E'\n' || e.metadata::text || E'\n'
                   || ((extract(epoch FROM e.recorded_at) * 1000000)::bigint)::text
               END, 'UTF8')), 'hex') AS computed
    FROM events e
    WINDOW w AS (PARTITION BY e.stream_id ORDER BY e.version)
) checked
WHERE hash IS DISTINCT FROM computed OR version <> coalesce(prev_version, 0) + 1
ORDER BY stream_id, version;
