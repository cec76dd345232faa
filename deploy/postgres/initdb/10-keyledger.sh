#!/bin/bash
# Runs once, inside the postgres container, when its data volume is empty (the image runs
# /docker-entrypoint-initdb.d/* then). Creates two login roles and the database:
#   keyledger_owner  owns the database and everything `keyledger migrate` creates in it;
#                    only the one-shot keyledger-migrate container logs in as it;
#   keyledger        the runtime role of every other keyledger container: it owns nothing
#                    and gets, at every migrate, exactly the privileges the service needs
#                    (migration 0010, keyledger_grant_runtime): it reads the log and writes
#                    it only through the append functions.
# Neither is a superuser: the event log's append-only triggers stay out of their reach (a
# superuser could set session_replication_role and bypass them).
#
# The passwords are set only here, at the first start. To change one later:
#   docker compose exec postgres psql -U postgres -c "ALTER ROLE keyledger PASSWORD '<new>'"
# (or keyledger_owner), then update deploy/.env and `docker compose up -d`.
set -euo pipefail

owner=${KEYLEDGER_DB_OWNER:-keyledger_owner}
role=${KEYLEDGER_DB_USER:-keyledger}
database=${KEYLEDGER_DB_NAME:-keyledger}

for variable in POSTGRES_PASSWORD KEYLEDGER_DB_OWNER_PASSWORD KEYLEDGER_DB_PASSWORD; do
  value=${!variable:-}
  # Fail closed: a copied .env.example must not become a running database.
  if [[ -z $value || $value == change-me* ]]; then
    echo "keyledger initdb: set $variable in deploy/.env to a real secret" >&2
    exit 1
  fi
done
if [[ $KEYLEDGER_DB_OWNER_PASSWORD == "$KEYLEDGER_DB_PASSWORD" ]]; then
  echo "keyledger initdb: KEYLEDGER_DB_OWNER_PASSWORD and KEYLEDGER_DB_PASSWORD must differ" >&2
  exit 1
fi

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set=owner="$owner" --set=owner_password="$KEYLEDGER_DB_OWNER_PASSWORD" \
  --set=role="$role" --set=password="$KEYLEDGER_DB_PASSWORD" \
  --set=database="$database" <<'SQL'
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"owner";
-- Only the two keyledger roles (and superusers) may connect to the event store.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"role";
SQL
