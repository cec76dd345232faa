-- Appends of several commands, each to its own stream, in one transaction: group commit.
--
-- Concurrent appenders mostly wait for their commit to reach the disk, and the position
-- lock (keyledger_reserve_positions) is taken once per transaction. Handing a batch of
-- queued appends to one call shares both among them. Every append in the batch is checked
-- against its own expected version and applied or skipped on its own: one stale writer
-- never fails the others. A batch-wide error (a unique violation from a race with another
-- transaction, a duplicate event id) rolls the whole call back; the store then retries the
-- appends one by one, so each gets its own answer.
--
-- Appends are described by parallel arrays (index a = 1..appends); events by parallel
-- arrays too, the events of append a being the p_event_counts[a] that follow those of
-- append a - 1. Returns one row per applied append: its index, first position and first
-- version (its events are consecutive in both). An append missing from the result found
-- its stream at another version.
CREATE FUNCTION keyledger_append_batch(
    p_stream_ids uuid[], p_expected integer[], p_metadata jsonb[], p_command_ids uuid[],
    p_event_counts integer[], p_event_ids uuid[], p_types text[], p_data jsonb[]
) RETURNS TABLE (append_index integer, first_position bigint, first_version integer)
-- Written for few statements per event and per call: this is the busiest path, and every
-- statement a plpgsql function runs costs more than the work it names.
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_appends integer := cardinality(p_stream_ids);
    n_events integer := cardinality(p_event_ids);
    head_version integer;
    head_hash text;
    accepted boolean[];
    prev_hash text[];
    stream_text text[];
    metadata_text text[];
    event_offset integer[];
    event_append integer[] := '{}';
    first_positions bigint[];
    seen_events integer := 0;
    accepted_events integer := 0;
    any_command boolean := false;
    base_position bigint;
    at timestamptz := now();
    at_text text := ((extract(epoch FROM now()) * 1000000)::bigint)::text;
    h text;
    out_hash text[] := '{}';
BEGIN
    IF n_appends IS NULL OR n_appends < 1 OR cardinality(p_expected) <> n_appends
       OR cardinality(p_metadata) <> n_appends OR cardinality(p_command_ids) <> n_appends
       OR cardinality(p_event_counts) <> n_appends OR n_events IS NULL
       OR cardinality(p_types) <> n_events OR cardinality(p_data) <> n_events THEN
        RAISE EXCEPTION 'keyledger: a batch needs matching arrays for its appends and events'
            USING ERRCODE = 'KL003';
    END IF;

    -- Each stream's head, through the (stream_id, version) index.
    FOR a IN 1..n_appends LOOP
        IF p_event_counts[a] IS NULL OR p_event_counts[a] < 1 THEN
            RAISE EXCEPTION 'keyledger: append % of the batch has no events', a
                USING ERRCODE = 'KL003';
        END IF;
        event_offset[a] := seen_events;
        seen_events := seen_events + p_event_counts[a];
        event_append := event_append || array_fill(a, ARRAY[p_event_counts[a]]);
        head_version := NULL;
        head_hash := NULL;
        SELECT ev.version, ev.hash INTO head_version, head_hash
        FROM events ev WHERE ev.stream_id = p_stream_ids[a] ORDER BY ev.version DESC LIMIT 1;
        accepted[a] := coalesce(head_version, 0) = p_expected[a];
        prev_hash[a] := coalesce(head_hash, '');
        IF accepted[a] THEN
            stream_text[a] := p_stream_ids[a]::text;
            metadata_text[a] := p_metadata[a]::text;
            accepted_events := accepted_events + p_event_counts[a];
            any_command := any_command OR p_command_ids[a] IS NOT NULL;
        END IF;
    END LOOP;
    IF seen_events <> n_events THEN
        RAISE EXCEPTION 'keyledger: the batch counts % events but carries %', seen_events,
            n_events USING ERRCODE = 'KL003';
    END IF;
    IF accepted_events = 0 THEN
        RETURN;
    END IF;
    base_position := keyledger_reserve_positions(accepted_events);

    -- Hashes chain from one event to the next within a stream, so they are computed in
    -- order; the rows then go in with one set-based INSERT. The formula is that of
    -- keyledger_event_hash (migration 0001), inlined: a function call per event cost as
    -- much as the rest of the loop. out_hash is indexed like the events and stays NULL for
    -- the events of skipped appends.
    seen_events := 0;
    FOR a IN 1..n_appends LOOP
        CONTINUE WHEN NOT accepted[a];
        first_positions[a] := base_position + seen_events;
        seen_events := seen_events + p_event_counts[a];
        h := prev_hash[a];
        FOR k IN 1..p_event_counts[a] LOOP
            h := encode(sha256(convert_to(
                h || E'\n' || (first_positions[a] + k - 1)::text || E'\n' || stream_text[a]
                || E'\n' || (p_expected[a] + k)::text || E'\n'
                || p_event_ids[event_offset[a] + k]::text || E'\n'
                || p_types[event_offset[a] + k] || E'\n'
                || p_data[event_offset[a] + k]::text || E'\n' || metadata_text[a] || E'\n'
                || at_text, 'UTF8')), 'hex');
            out_hash[event_offset[a] + k] := h;
        END LOOP;
    END LOOP;

    INSERT INTO events (position, stream_id, version, type, data, metadata, event_id,
                        recorded_at, hash)
    SELECT first_positions[u.append] + (u.ord - event_offset[u.append]) - 1,
           p_stream_ids[u.append], p_expected[u.append] + (u.ord - event_offset[u.append]),
           u.type, u.data, p_metadata[u.append], u.event_id, at, u.hash
    FROM unnest(event_append, p_event_ids, p_types, p_data, out_hash) WITH ORDINALITY
         AS u(append, event_id, type, data, hash, ord)
    WHERE u.hash IS NOT NULL;

    IF any_command THEN
        INSERT INTO commands (command_id, stream_id, first_position, last_position,
                              first_version, last_version)
        SELECT p_command_ids[a.ix], p_stream_ids[a.ix], first_positions[a.ix],
               first_positions[a.ix] + p_event_counts[a.ix] - 1,
               p_expected[a.ix] + 1, p_expected[a.ix] + p_event_counts[a.ix]
        FROM generate_subscripts(p_stream_ids, 1) AS a(ix)
        WHERE accepted[a.ix] AND p_command_ids[a.ix] IS NOT NULL;
    END IF;

    FOR a IN 1..n_appends LOOP
        CONTINUE WHEN NOT accepted[a];
        append_index := a;
        first_position := first_positions[a];
        first_version := p_expected[a] + 1;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Every append now goes through the batch function (a single append is a batch of one).
DROP FUNCTION keyledger_append(uuid, integer, uuid[], text[], jsonb[], jsonb, uuid);
DROP FUNCTION keyledger_event_hash(text, bigint, uuid, integer, uuid, text, jsonb, jsonb, timestamptz);
