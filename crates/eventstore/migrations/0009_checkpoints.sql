-- Signed checkpoints of the whole log (docs/checkpoints.md). Each row says: the running
-- log hash over every event up to `position` is `log_hash`, signed with Ed25519 by the
-- notary at `signed_at`. The notary's private key is never stored here; `public_key` is
-- informative only, verifiers pin the key they trust.
CREATE TABLE checkpoints (
    position   bigint      PRIMARY KEY,
    log_hash   text        NOT NULL,
    signed_at  timestamptz NOT NULL,
    public_key text        NOT NULL,
    signature  text        NOT NULL
);

-- Checkpoints are append-only like the events they vouch for (SQLSTATE KL002).
CREATE FUNCTION keyledger_refuse_checkpoint_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'keyledger: the checkpoints table is append-only; % refused', TG_OP
        USING ERRCODE = 'KL002';
END
$$;

CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION keyledger_refuse_checkpoint_change();

CREATE TRIGGER checkpoints_no_truncate
    BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION keyledger_refuse_checkpoint_change();
