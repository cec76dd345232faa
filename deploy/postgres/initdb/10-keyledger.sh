#!/bin/bash
# Runs once, inside the postgres container, when its data volume is empty (the image runs
# /docker-entrypoint-initdb.d/* then). Creates the login role keyledger and the database it
# owns. The role is no superuser: the event log's append-only triggers stay out of its
# reach (a superuser could set session_replication_role and bypass them).
#
# The password is set only here, at the first start. To change it later:
#   docker compose exec postgres psql -U postgres -c "ALTER ROLE keyledger PASSWORD '<new>'"
# then update KEYLEDGER_DB_PASSWORD in .env and `docker compose up -d`.
set -euo pipefail

role=${KEYLEDGER_DB_USER:-keyledger}
database=${KEYLEDGER_DB_NAME:-keyledger}

for variable in POSTGRES_PASSWORD KEYLEDGER_DB_PASSWORD; do
  value=${!variable:-}
  # Fail closed: a copied .env.example must not become a running database.
  if [[ -z $value || $value == change-me* ]]; then
    echo "keyledger initdb: set $variable in deploy/.env to a real secret" >&2
    exit 1
  fi
done

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  --set=role="$role" --set=database="$database" --set=password="$KEYLEDGER_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
-- Only its owner (and superusers) may connect to the event store.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
