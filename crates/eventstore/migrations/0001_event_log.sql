-- The append-only event log (CONTRACT.md §5) and what keeps it honest.

-- Global positions. Only keyledger_reserve_positions() may draw from it (see there).
CREATE SEQUENCE event_position_seq AS bigint;

CREATE TABLE events (
    position    bigint      PRIMARY KEY,
    stream_id   uuid        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    type        text        NOT NULL CHECK (type <> ''),
    data        jsonb       NOT NULL CHECK (jsonb_typeof(data) = 'object'),
    metadata    jsonb       NOT NULL CHECK (jsonb_typeof(metadata) = 'object'),
    event_id    uuid        NOT NULL UNIQUE,
    recorded_at timestamptz NOT NULL,
    hash        text        NOT NULL CHECK (char_length(hash) = 64),
    -- The writing transaction. Readers of the whole log only pass events whose transaction
    -- is older than every transaction still running, which is what makes them gap-free.
    tx          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (stream_id, version)
);

-- Hands out `n` consecutive positions and returns the first.
--
-- Positions come from a sequence, so a transaction can take position 10 and commit before
-- another that took position 9 — the gap problem: a reader passing 10 would never see 9.
-- Here the transaction id is assigned and the positions drawn under one short advisory lock
-- (a session lock, released before this function returns, never held across a commit). So
-- transaction ids and positions rise together: if every transaction older than the oldest
-- one still running has ended, every position below their events is final. Readers rely
-- on exactly that (`tx < pg_snapshot_xmin(pg_current_snapshot())`). The invariant needs the
-- transaction id to be assigned here, so the events must be the transaction's first write.
CREATE FUNCTION keyledger_reserve_positions(n integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    first_position bigint;
BEGIN
    IF n < 1 THEN
        RAISE EXCEPTION 'keyledger: cannot reserve % positions', n USING ERRCODE = 'KL003';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'keyledger: events must be the first write of their transaction'
            USING ERRCODE = 'KL001';
    END IF;
    -- No exception block around the locked part: it would cost a subtransaction on every
    -- append, and nothing in it fails short of sequence exhaustion or xid wraparound. A
    -- cancelled statement could still leave the lock held, so the store closes a connection
    -- whose append failed rather than returning it to the pool.
    PERFORM pg_advisory_lock(7308604911061266791);
    PERFORM pg_current_xact_id();
    first_position := nextval('event_position_seq');
    IF n > 1 THEN
        PERFORM setval('event_position_seq', first_position + n - 1);
    END IF;
    PERFORM pg_advisory_unlock(7308604911061266791);
    RETURN first_position;
END
$$;

-- The hash chain of a stream (README "Hash chain"). sql/verify_chain.sql repeats this
-- formula on purpose rather than calling this function, so it checks independently.
CREATE FUNCTION keyledger_event_hash(
    p_prev_hash text, p_position bigint, p_stream_id uuid, p_version integer, p_event_id uuid,
    p_type text, p_data jsonb, p_metadata jsonb, p_recorded_at timestamptz
) RETURNS text
-- plpgsql, not sql: a non-inlined SQL function is planned again on every call, which made
-- hashing cost more than the insert itself; plpgsql keeps the plan for the session.
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN encode(sha256(convert_to(
        p_prev_hash || E'\n' || p_position::text || E'\n' || p_stream_id::text || E'\n'
        || p_version::text || E'\n' || p_event_id::text || E'\n' || p_type || E'\n'
        || p_data::text || E'\n' || p_metadata::text || E'\n'
        || ((extract(epoch FROM p_recorded_at) * 1000000)::bigint)::text,
        'UTF8')), 'hex');
END
$$;

-- Appends events to a stream if it is at p_expected, and remembers the command; returns
-- the new events' positions and versions, or no rows when the stream is at another version.
-- One call does the whole append, so it needs no explicit transaction and costs one round
-- trip; plpgsql keeps its plans for the session. Races on one stream end in the
-- (stream_id, version) unique violation, which the caller reads as a conflict.
CREATE FUNCTION keyledger_append(
    p_stream_id uuid, p_expected integer, p_event_ids uuid[], p_types text[], p_data jsonb[],
    p_metadata jsonb, p_command_id uuid
) RETURNS TABLE (out_position bigint, out_version integer)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_event_ids);
    current_version integer;
    prev_hash text;
    first_position bigint;
    at timestamptz := now();
    hashes text[] := '{}';
BEGIN
    IF n IS NULL OR n < 1 OR cardinality(p_types) <> n OR cardinality(p_data) <> n THEN
        RAISE EXCEPTION 'keyledger: an append needs matching, non-empty event arrays'
            USING ERRCODE = 'KL003';
    END IF;
    SELECT e.version, e.hash INTO current_version, prev_hash
    FROM events e WHERE e.stream_id = p_stream_id ORDER BY e.version DESC LIMIT 1;
    IF coalesce(current_version, 0) <> p_expected THEN
        RETURN;
    END IF;
    prev_hash := coalesce(prev_hash, '');
    first_position := keyledger_reserve_positions(n);
    -- Hashes chain from one event to the next, so they are computed in order; the rows
    -- then go in with one set-based INSERT, far cheaper than one INSERT per event.
    FOR i IN 1..n LOOP
        prev_hash := keyledger_event_hash(prev_hash, first_position + i - 1, p_stream_id,
            p_expected + i, p_event_ids[i], p_types[i], p_data[i], p_metadata, at);
        hashes[i] := prev_hash;
    END LOOP;
    RETURN QUERY
    INSERT INTO events (position, stream_id, version, type, data, metadata, event_id,
                        recorded_at, hash)
    SELECT first_position + e.ord - 1, p_stream_id, p_expected + e.ord::integer, e.type,
           e.data, p_metadata, e.event_id, at, e.hash
    FROM unnest(p_event_ids, p_types, p_data, hashes) WITH ORDINALITY
         AS e(event_id, type, data, hash, ord)
    RETURNING events.position, events.version;
    IF p_command_id IS NOT NULL THEN
        INSERT INTO commands (command_id, stream_id, first_position, last_position,
                              first_version, last_version)
        VALUES (p_command_id, p_stream_id, first_position, first_position + n - 1,
                p_expected + 1, p_expected + n);
    END IF;
END
$$;

-- The log is append-only, enforced by the database itself.
CREATE FUNCTION keyledger_refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keyledger: the events table is append-only; % refused', TG_OP
        USING ERRCODE = 'KL002';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION keyledger_refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION keyledger_refuse_event_change();

-- Commands already applied, so that a retried command (same id) is answered with its
-- first outcome instead of being applied twice.
CREATE TABLE commands (
    command_id     uuid        PRIMARY KEY,
    stream_id      uuid        NOT NULL,
    first_position bigint      NOT NULL,
    last_position  bigint      NOT NULL,
    first_version  integer     NOT NULL,
    last_version   integer     NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
