-- Where the relay has published up to: every position at or below has been confirmed by
-- the broker. Written only by the relay that holds the leader lock.
CREATE TABLE relay_checkpoints (
    relay      text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What each consumer has applied, per stream: every version at or below has been handled
-- exactly once. Updated in the same transaction as the handler's own writes, so a crash
-- never applies an event twice or skips one.
CREATE TABLE consumer_progress (
    consumer   text        NOT NULL,
    stream_id  uuid        NOT NULL,
    version    integer     NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream_id)
);
