-- Least privilege: the service runs as a login that does not own the database.
--
-- The owner role (DATABASE_OWNER_URL, used by `keyledger migrate`) owns every table and
-- function. The runtime role (DATABASE_URL, used by `serve`) may read the log but never
-- write it directly: appends go through the functions below, which now run with their
-- owner's rights (SECURITY DEFINER) and a fixed search_path, so a caller's own objects can
-- never stand in for the ones they use. Without INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER
-- or ownership of `events`, the runtime cannot rewrite an event, disable the append-only
-- trigger or recompute hashes; without CREATE on the schema it cannot shadow a function
-- the append functions call, and pg_temp, named last, cannot shadow their tables (unnamed,
-- PostgreSQL would search the caller's temporary tables first).

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND p.proname IN ('keyledger_append', 'keyledger_append_batch',
                            'keyledger_reserve_positions')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp', f);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- Grants `runtime_role` exactly what the service needs, and nothing it had before beyond
-- that. Run by `keyledger migrate` (as the owner) after every migration run, so tables a
-- later migration adds are covered too; idempotent.
--
--   events, commands, chain_formulas, _sqlx_migrations: SELECT (appends go through the
--     SECURITY DEFINER append functions, on which the role gets EXECUTE);
--   checkpoints (when present): SELECT, INSERT;
--   every other table (read models, relay and consumer progress, bot tables, API
--     idempotency, and any later one): SELECT, INSERT, UPDATE, DELETE;
--   sequences except event_position_seq: USAGE, SELECT;
--   tables and sequences the owner creates later in this schema (a projection rebuild's
--     fresh table): the same DML by default, until the next migrate sets them exactly.
CREATE OR REPLACE FUNCTION keyledger_grant_runtime(runtime_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    rel record;
    f regprocedure;
BEGIN
    IF runtime_role = current_user THEN
        RAISE EXCEPTION 'keyledger: the runtime role must not be the owner (%)', runtime_role
            USING ERRCODE = 'KL004';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', runtime_role);
    -- No one but the owner creates objects where the append functions look (PostgreSQL
    -- before 15 let PUBLIC create in schema public).
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    EXECUTE format('REVOKE CREATE ON SCHEMA public FROM %I', runtime_role);
    FOR rel IN
        SELECT c.relname, c.relkind FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
    LOOP
        IF rel.relkind = 'S' THEN
            EXECUTE format('REVOKE ALL ON SEQUENCE %I FROM %I', rel.relname, runtime_role);
            IF rel.relname <> 'event_position_seq' THEN
                EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %I TO %I', rel.relname,
                               runtime_role);
            END IF;
            CONTINUE;
        END IF;
        EXECUTE format('REVOKE ALL ON TABLE %I FROM %I', rel.relname, runtime_role);
        IF rel.relname IN ('events', 'commands', 'chain_formulas', '_sqlx_migrations') THEN
            EXECUTE format('GRANT SELECT ON TABLE %I TO %I', rel.relname, runtime_role);
        ELSIF rel.relname = 'checkpoints' THEN
            EXECUTE format('GRANT SELECT, INSERT ON TABLE %I TO %I', rel.relname, runtime_role);
        ELSE
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %I TO %I',
                           rel.relname, runtime_role);
        END IF;
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND p.proname IN ('keyledger_append', 'keyledger_append_batch',
                            'keyledger_reserve_positions')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, runtime_role);
    END LOOP;
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public '
                   'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', runtime_role);
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA public '
                   'GRANT USAGE, SELECT ON SEQUENCES TO %I', runtime_role);
END
$$;
REVOKE ALL ON FUNCTION keyledger_grant_runtime(name) FROM PUBLIC;
