-- The hash chain's second formula (README "Hash chain"): the writer hashes each event's
-- content, and the database links those digests into the stream's chain.
--
-- Why: with the first formula the database rendered every event's jsonb to text, joined
-- nine parts and hashed the result in plpgsql, on the busiest path. That cost about as
-- much per event as inserting the row, and kept appends under 0.7 of a bare INSERT. The content digest needs nothing the writer does not already have
-- (stream, version, event id, type, data, metadata), so the writer computes it; only the
-- parts decided here, the position and the time, are hashed here, over a short text.
--
--   content = hex(sha256(stream_id \n version \n event_id \n type \n data::text \n metadata::text))
--   hash    = hex(sha256(prev_hash \n position \n recorded_at_us \n content))
--
-- The chain still covers every column. A writer that sends a wrong digest writes an event
-- whose chain breaks at once, which `audit verify` and sql/verify_chain.sql report like
-- any tampering: they recompute the content from the stored row, never trust the writer.

-- Which formula chains an event, by position. The log is immutable, so events written
-- before this migration keep the first formula; verification picks the formula by
-- position. Taking the events table's SHARE lock waits for appends in flight, so every
-- event of the first formula lies below the second's first position.
CREATE TABLE chain_formulas (
    formula        smallint PRIMARY KEY,
    first_position bigint   NOT NULL
);
LOCK TABLE events IN SHARE MODE;
INSERT INTO chain_formulas (formula, first_position)
VALUES (1, 1), (2, (SELECT coalesce(max(position), 0) + 1 FROM events));

-- A writer still on the first formula must fail loudly rather than chain by it.
DROP FUNCTION keyledger_append_batch(uuid[], integer[], jsonb[], uuid[], integer[], uuid[],
                                     text[], jsonb[]);

-- One append: the events of one command to one stream. Returns the first event's position,
-- or NULL (nothing written) when the stream is not at p_expected. This is the path of every
-- append made alone, so it is written for as few statements as the work allows.
CREATE FUNCTION keyledger_append(
    p_stream_id uuid, p_expected integer, p_metadata jsonb, p_command_id uuid,
    p_event_ids uuid[], p_types text[], p_data jsonb[], p_content_digests text[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_event_ids);
    head_version integer;
    h text;
    base_position bigint;
    at timestamptz := now();
    at_text text;
    hashes text[];
BEGIN
    IF n IS NULL OR n < 1 OR cardinality(p_types) <> n OR cardinality(p_data) <> n
       OR cardinality(p_content_digests) <> n THEN
        RAISE EXCEPTION 'keyledger: an append needs matching, non-empty event arrays'
            USING ERRCODE = 'KL003';
    END IF;
    SELECT ev.version, ev.hash INTO head_version, h
    FROM events ev WHERE ev.stream_id = p_stream_id ORDER BY ev.version DESC LIMIT 1;
    IF coalesce(head_version, 0) <> p_expected THEN
        RETURN NULL;
    END IF;
    base_position := keyledger_reserve_positions(n);
    at_text := ((extract(epoch FROM at) * 1000000)::bigint)::text;
    h := coalesce(h, '');
    FOR k IN 1..n LOOP
        h := encode(sha256(convert_to(h || E'\n' || (base_position + k - 1)::text || E'\n'
                                      || at_text || E'\n' || p_content_digests[k], 'UTF8')),
                    'hex');
        hashes[k] := h;
    END LOOP;
    INSERT INTO events (position, stream_id, version, type, data, metadata, event_id,
                        recorded_at, hash)
    SELECT base_position + u.ord - 1, p_stream_id, p_expected + u.ord::integer, u.type,
           u.data, p_metadata, u.event_id, at, u.hash
    FROM unnest(p_event_ids, p_types, p_data, hashes) WITH ORDINALITY
         AS u(event_id, type, data, hash, ord);
    IF p_command_id IS NOT NULL THEN
        INSERT INTO commands (command_id, stream_id, first_position, last_position,
                              first_version, last_version)
        VALUES (p_command_id, p_stream_id, base_position, base_position + n - 1,
                p_expected + 1, p_expected + n);
    END IF;
    RETURN base_position;
END
$$;

-- Appends of several commands, each to its own stream, in one transaction: group commit.
-- As in migration 0002 (see there for the batch's shape and error handling), with each
-- event's content digest in p_content_digests, indexed like the events.
CREATE FUNCTION keyledger_append_batch(
    p_stream_ids uuid[], p_expected integer[], p_metadata jsonb[], p_command_ids uuid[],
    p_event_counts integer[], p_event_ids uuid[], p_types text[], p_data jsonb[],
    p_content_digests text[]
) RETURNS TABLE (append_index integer, first_position bigint, first_version integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_appends integer := cardinality(p_stream_ids);
    n_events integer := cardinality(p_event_ids);
    head_version integer;
    head_hash text;
    accepted boolean[];
    prev_hash text[];
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
       OR cardinality(p_types) <> n_events OR cardinality(p_data) <> n_events
       OR cardinality(p_content_digests) <> n_events THEN
        RAISE EXCEPTION 'keyledger: a batch needs matching arrays for its appends and events'
            USING ERRCODE = 'KL003';
    END IF;

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

    -- out_hash is indexed like the events and stays NULL for those of skipped appends.
    seen_events := 0;
    FOR a IN 1..n_appends LOOP
        CONTINUE WHEN NOT accepted[a];
        first_positions[a] := base_position + seen_events;
        seen_events := seen_events + p_event_counts[a];
        h := prev_hash[a];
        FOR k IN 1..p_event_counts[a] LOOP
            h := encode(sha256(convert_to(
                h || E'\n' || (first_positions[a] + k - 1)::text || E'\n' || at_text
                || E'\n' || p_content_digests[event_offset[a] + k], 'UTF8')), 'hex');
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
