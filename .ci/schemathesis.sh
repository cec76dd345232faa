#!/usr/bin/env bash
# CI: the HTTP API against its own OpenAPI document. Starts `keyledger serve --roles api` on
# a scratch database and RabbitMQ vhost, with the panel simulator as its locations' panel
# (the API's /readyz probes them), runs schemathesis with every check (coverage, fuzzing,
# and stateful sequences along the document's links) as the admin, and fails on any
# finding. Needs PostgreSQL and RabbitMQ (with its management API) up, as .ci/run leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/keyledger-target}"
SCHEMATHESIS_VERSION=4.32.5
# The coverage phase tries every operation's bounds once whatever these say; then fuzzing
# (up to MAX_EXAMPLES cases per operation, repeated) and stateful sequences share MAX_TIME
# seconds, which bounds the whole run to about two minutes.
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-40}"
MAX_TIME="${SCHEMATHESIS_MAX_TIME:-90}"
PG=postgres://postgres@127.0.0.1:5432
RABBIT_API=http://127.0.0.1:15672/api

if [ "$(python3 -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "$SCHEMATHESIS_VERSION" ]; then
  echo "ci: installing schemathesis $SCHEMATHESIS_VERSION"
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION" ||
    { echo "ci: cannot install schemathesis (pip install schemathesis==$SCHEMATHESIS_VERSION failed)" >&2; exit 1; }
fi

# The binary with its default `lab` feature, for `panel-sim` (the test command builds the
# same one), or KEYLEDGER_BIN. `serve --roles api` is the same code in both builds.
keyledger="${KEYLEDGER_BIN:-$CARGO_TARGET_DIR/debug/keyledger}"
if [ -z "${KEYLEDGER_BIN:-}" ]; then
  cargo build --locked -q -p keyledger
fi

name="keyledger_schemathesis_$$"
scratch=$(mktemp -d)
server=
panel=
cleanup() {
  for process in $server $panel; do
    kill "$process" 2>/dev/null || true
    wait "$process" 2>/dev/null || true
  done
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
  curl -sf -u guest:guest -X DELETE "$RABBIT_API/vhosts/$name" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT

psql -q "$PG/postgres" -c "CREATE DATABASE \"$name\""
curl -sf -u guest:guest -X PUT "$RABBIT_API/vhosts/$name" >/dev/null
curl -sf -u guest:guest -X PUT -H 'content-type: application/json' \
  -d '{"configure": ".*", "write": ".*", "read": ".*"}' "$RABBIT_API/permissions/$name/guest" >/dev/null

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
random_secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }

export SCHEMATHESIS_PANEL_PASSWORD
SCHEMATHESIS_PANEL_PASSWORD=$(random_secret)
panel_port=$(free_port)
"$keyledger" panel-sim --addr "127.0.0.1:$panel_port" --password-env SCHEMATHESIS_PANEL_PASSWORD \
  >"$scratch/panel.log" 2>&1 &
panel=$!

# Two locations, so a key request has a choice; one simulated panel serves both.
cat >"$scratch/keyledger.toml" <<EOF
[[locations]]
id = "ams"
name = "Amsterdam"
panel_url = "http://127.0.0.1:$panel_port/panel-sim/"
allow_plain_http = true
username = "admin"
password_env = "SCHEMATHESIS_PANEL_PASSWORD"
inbound_id = 1
public_host = "ams.example.com"

[[locations]]
id = "fra-2"
name = "Frankfurt"
panel_url = "http://127.0.0.1:$panel_port/panel-sim/"
allow_plain_http = true
username = "admin"
password_env = "SCHEMATHESIS_PANEL_PASSWORD"
inbound_id = 1
public_host = "fra.example.com"
EOF

port=$(free_port)
admin_token=$(random_secret)
export KEYLEDGER_CONFIG="$scratch/keyledger.toml"
export DATABASE_URL="$PG/$name"
export AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$name"
export KEYLEDGER_HTTP_ADDR="127.0.0.1:$port"
export KEYLEDGER_ADMIN_TOKEN="$admin_token"
export KEYLEDGER_SUB_PUBLIC_URL="https://sub.example.com"
export KEYLEDGER_SUB_SECRET
KEYLEDGER_SUB_SECRET=$(random_secret)
export KEYLEDGER_LOG_FORMAT=json RUST_LOG=warn

"$keyledger" migrate >"$scratch/migrate.log" 2>&1 ||
  { cat "$scratch/migrate.log" >&2; echo "ci: keyledger migrate failed" >&2; exit 1; }
"$keyledger" serve --roles api >"$scratch/serve.log" 2>&1 &
server=$!

base="http://127.0.0.1:$port"
deadline=$((SECONDS + 60))
until curl -sf "$base/readyz" >/dev/null 2>&1; do
  if ! kill -0 "$server" 2>/dev/null || ((SECONDS >= deadline)); then
    cat "$scratch/panel.log" "$scratch/serve.log" >&2
    curl -s "$base/readyz" >&2 || true
    echo "ci: keyledger serve --roles api did not become ready within 60s" >&2
    exit 1
  fi
  sleep 0.2
done

echo "ci: schemathesis against $base/openapi.json"
status=0
# schemathesis prints the seed it drew; SCHEMATHESIS_SEED=<seed> replays a run.
# Run from the scratch folder: schemathesis keeps a cache of its findings in the working
# directory, which must not land in the work tree.
config="$PWD/.ci/schemathesis.toml"
(cd "$scratch" && st --config-file "$config" --no-color run "$base/openapi.json" \
  --checks all \
  --header "Authorization: Bearer $admin_token" \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  ${SCHEMATHESIS_SEED:+--seed "$SCHEMATHESIS_SEED"}) ||
  status=$?
if ((status != 0)); then
  echo "ci: schemathesis found problems (exit $status); the server's log:" >&2
  tail -n 50 "$scratch/serve.log" >&2
  exit 1
fi
