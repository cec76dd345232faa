-- Traffic the panels report, and users' subscriptions.

-- What a panel last reported of a key's client: counters are observations, not decisions,
-- so they live in this view beside the log, written by the worker, and shown in the key
-- view's `usage`. (The one decision the panel takes from them, disabling a client whose
-- limit is used up, is recorded in the log as `key.depleted`.)
CREATE TABLE key_usage (
    key_id           uuid        PRIMARY KEY,
    up_bytes         bigint      NOT NULL CHECK (up_bytes >= 0),
    down_bytes       bigint      NOT NULL CHECK (down_bytes >= 0),
    -- the panel's `total`, in bytes; 0 = no limit
    limit_bytes      bigint      NOT NULL CHECK (limit_bytes >= 0),
    last_online      timestamptz,
    -- the panel's own `enable` of the client's traffic row
    enabled_on_panel boolean     NOT NULL,
    observed_at      timestamptz NOT NULL DEFAULT now()
);

-- Users' subscriptions as their streams say (subscription.* events), rebuilt by a replay.
-- The URL's token is not here: it is derived from the id and generation with a secret the
-- database never sees.
CREATE TABLE subscription_views (
    subscription_id uuid        PRIMARY KEY,
    user_id         bigint      NOT NULL UNIQUE,
    generation      integer     NOT NULL CHECK (generation >= 1),
    version         integer     NOT NULL,
    updated_at      timestamptz NOT NULL
);

-- Fetches of subscription URLs, for operators and for the per-token limits: kept outside
-- the log, which records decisions, not reads. The address is kept only as a keyed hash.
CREATE TABLE subscription_fetches (
    id              bigserial   PRIMARY KEY,
    subscription_id uuid,
    generation      integer,
    fetched_at      timestamptz NOT NULL DEFAULT now(),
    address_hash    text        NOT NULL,
    user_agent      text,
    hwid            text,
    format          text        NOT NULL,
    status          smallint    NOT NULL
);
CREATE INDEX subscription_fetches_by_subscription
    ON subscription_fetches (subscription_id, fetched_at);
