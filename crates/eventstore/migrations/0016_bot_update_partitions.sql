-- Bot replicas share the RabbitMQ partitions of incoming Telegram updates (docs/bot.md,
-- "Several replicas"): which replicas are alive, and which one reads each partition. Leases
-- that expire, not history: a replica that dies stops renewing and the others take over.
CREATE TABLE IF NOT EXISTS bot_replicas (
    replica_id  uuid        PRIMARY KEY,
    alive_until timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS bot_update_partitions (
    partition   integer     PRIMARY KEY CHECK (partition >= 0),
    holder      uuid,
    lease_until timestamptz
);
-- Which replica handled an update (null for updates handled before replicas existed).
ALTER TABLE bot_updates ADD COLUMN IF NOT EXISTS handled_by uuid;
