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
    hash        text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
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
    PERFORM pg_advisory_lock(7308604911061266791);
    BEGIN
        PERFORM pg_current_xact_id();
        first_position := nextval('event_position_seq');
        IF n > 1 THEN
            PERFORM setval('event_position_seq', first_position + n - 1);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock(7308604911061266791);
        RAISE;
    END;
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
LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(
        p_prev_hash || E'\n' || p_position::text || E'\n' || p_stream_id::text || E'\n'
        || p_version::text || E'\n' || p_event_id::text || E'\n' || p_type || E'\n'
        || p_data::text || E'\n' || p_metadata::text || E'\n'
        || ((extract(epoch FROM p_recorded_at) * 1000000)::bigint)::text,
        'UTF8')), 'hex')
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
