#!/bin/bash
# deploy/compose.yaml's entrypoint for the rabbitmq container: writes the definitions the
# broker imports at every boot (rabbitmq.conf: management.load_definitions), then runs the
# image's own entrypoint.
#
# Why: definitions.json in the repository holds no password (the user keyledger has an
# empty hash, docs/operations.md#rabbitmq-definitions-and-the-password), the boot-time
# import resets that user at every start, and a node that imports definitions on its first
# boot creates no default user. So the passwords from deploy/.env are put in here, on every
# start, as salted hashes:
#   - keyledger's own user (KEYLEDGER_AMQP_PASSWORD), with the committed permissions;
#   - an operator user RABBITMQ_ADMIN_USER (tag administrator, all of vhost keyledger) for
#     the management UI and the dead-letter runbook ("Move messages" needs a policymaker).
# The committed file is only read (mounted read-only); the result never leaves the container.
set -euo pipefail

template=${KEYLEDGER_DEFINITIONS_TEMPLATE:-/etc/keyledger/definitions.json}
target=${KEYLEDGER_DEFINITIONS_TARGET:-/etc/rabbitmq/definitions.json}
admin=${RABBITMQ_ADMIN_USER:-admin}

fail() { echo "keyledger rabbitmq entrypoint: $*" >&2; exit 1; }

for variable in KEYLEDGER_AMQP_PASSWORD RABBITMQ_ADMIN_PASSWORD; do
  value=${!variable:-}
  # Fail closed: a copied .env.example must not become a running broker.
  if [[ -z $value || $value == change-me* ]]; then
    fail "set $variable in deploy/.env to a real secret"
  fi
done
# The name goes into JSON and into the management UI's login: keep it plain.
[[ $admin =~ ^[A-Za-z0-9_.-]+$ ]] || fail "RABBITMQ_ADMIN_USER may only hold letters, digits, _ . -"
[[ $admin != keyledger ]] || fail "RABBITMQ_ADMIN_USER must not be keyledger"

# RabbitMQ's rabbit_password_hashing_sha256: base64(salt ‖ SHA-256(salt ‖ password)) with a
# random 4-byte salt. Files, not shell variables: the salt is binary.
password_hash() {
  local dir
  dir=$(mktemp -d)
  head -c 4 /dev/urandom >"$dir/salt"
  { cat "$dir/salt"; printf '%s' "$1"; } | openssl dgst -sha256 -binary >"$dir/digest"
  cat "$dir/salt" "$dir/digest" | base64 | tr -d '\n'
  rm -rf "$dir"
}

# The edits below depend on the committed file's layout (one key per line, as the broker
# test prints it); check it first, so a reformatted file fails here instead of booting a
# broker nobody can log in to.
[[ $(grep -c '"password_hash": ""' "$template") == 1 ]] ||
  fail "$template: expected exactly one user with an empty password_hash"
grep -q '^  "users": \[$' "$template" || fail "$template: no '  \"users\": [' line"
grep -q '^  "permissions": \[$' "$template" || fail "$template: no '  \"permissions\": [' line"

keyledger_hash=$(password_hash "$KEYLEDGER_AMQP_PASSWORD")
admin_hash=$(password_hash "$RABBITMQ_ADMIN_PASSWORD")
admin_user='    {"name": "'"$admin"'", "password_hash": "'"$admin_hash"'", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]},'
admin_permissions='    {"user": "'"$admin"'", "vhost": "keyledger", "configure": ".*", "write": ".*", "read": ".*"},'

umask 077
rendered=$(mktemp)
sed -e 's|"password_hash": ""|"password_hash": "'"$keyledger_hash"'"|' \
  -e '/^  "users": \[$/a\'$'\n'"$admin_user" \
  -e '/^  "permissions": \[$/a\'$'\n'"$admin_permissions" \
  "$template" >"$rendered"
mv "$rendered" "$target"
# The image's entrypoint drops to the rabbitmq user before the broker reads the file.
if [[ $(id -u) == 0 ]]; then
  chown rabbitmq:rabbitmq "$target"
fi

exec docker-entrypoint.sh "$@"
