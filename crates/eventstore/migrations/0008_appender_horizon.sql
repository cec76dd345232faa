-- Readers are held back only by our own appends.
--
-- Until now a gap-free reader passed only events whose transaction was older than every
-- transaction still running on the whole server (pg_snapshot_xmin). On a server other
-- services share, one long transaction of theirs — in another database, or a session left
-- idle in transaction — held every keyledger reader back for as long as it lived.
--
-- Now an appending transaction advertises itself: before its transaction id is assigned it
-- takes a transaction-scoped shared advisory lock, which PostgreSQL releases only after
-- the transaction's outcome is visible to new snapshots. The read horizon is the oldest
-- transaction id among the holders of that lock in this database, or, with none, the next
-- transaction id to be assigned. An event whose transaction is below the horizon has
-- therefore ended, and every event below it is final; nothing else on the server counts.
-- The horizon must be taken in a statement of its own, before the statement that reads
-- the events (whose snapshot then includes everything that ended before the horizon).

CREATE OR REPLACE FUNCTION keyledger_reserve_positions(n integer) RETURNS bigint
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
    -- Advertise this transaction to readers (see keyledger_read_horizon) before it has an
    -- id: a reader that does not see the lock yet will see an id at least its horizon.
    PERFORM pg_advisory_xact_lock_shared(7308604911061266792);
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

-- The transaction id below which every appending transaction has ended: the oldest id
-- among this database's appenders still running, or the next id to be assigned.
--
-- pg_locks shows each appender's advisory lock and, under the same virtual transaction,
-- the lock every transaction holds on its own (32-bit) id; the id is widened to the
-- 64-bit xid8 of the events table around the current snapshot's xmax (a running
-- transaction's id is always within 2^31 of it, on either side: xmax is one past the
-- newest *completed* transaction, and ids above it may be assigned and still running).
CREATE FUNCTION keyledger_read_horizon() RETURNS xid8
LANGUAGE sql VOLATILE AS $$
    WITH next AS (
        SELECT pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS full_id
    ), appenders AS (
        SELECT own.transactionid::text::numeric AS low_id
        FROM pg_locks advert
        JOIN pg_locks own
          ON own.virtualtransaction = advert.virtualtransaction
         AND own.locktype = 'transactionid'
         AND own.granted
         AND own.mode = 'ExclusiveLock'
        WHERE advert.locktype = 'advisory'
          AND advert.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND advert.classid = 1701667185 AND advert.objid = 2809885032 AND advert.objsubid = 1
          AND advert.granted
    ), widened AS (
        -- The 32-bit id's distance from the next id's low half, taken modulo 2^32 into
        -- (-2^31, 2^31]: running ids may lie on either side of xmax, never further.
        SELECT n.full_id + d.diff - CASE WHEN d.diff > 2147483648 THEN 4294967296
                                         WHEN d.diff <= -2147483648 THEN -4294967296
                                         ELSE 0 END AS full_id
        FROM appenders a
        CROSS JOIN next n
        CROSS JOIN LATERAL (SELECT a.low_id - mod(n.full_id, 4294967296) AS diff) d
    )
    SELECT least((SELECT full_id FROM next), (SELECT min(full_id) FROM widened))::text::xid8
$$;
