-- The key views of CONTRACT.md §7, kept by the projector from the log. A read model:
-- `keyledger projections rebuild` may drop and rebuild it from the log at any time.
CREATE TABLE key_views (
    key_id      uuid        PRIMARY KEY,
    user_id     bigint      NOT NULL,
    location    text        NOT NULL,
    status      text        NOT NULL,
    client_uuid uuid        NOT NULL,
    link        text,
    expires_at  timestamptz,
    version     integer     NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX key_views_user ON key_views (user_id);
