#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on this container's own keyledger listener
# (liveness only; /readyz also asks the database, the broker and every panel, and a panel
# being down is no reason for Docker to call the process unhealthy).
#
# bash's /dev/tcp instead of curl keeps the runtime image at ca-certificates only; bash is
# part of every Debian image. The port comes from KEYLEDGER_HTTP_ADDR (host:port or
# [v6]:port); the listener binds 0.0.0.0 in the containers, so 127.0.0.1 reaches it.
set -euo pipefail

addr=${KEYLEDGER_HTTP_ADDR:-127.0.0.1:8080}
port=${addr##*:}

exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
status=""
IFS= read -r -t 5 status <&3 || true
case $status in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "keyledger /healthz on port $port: ${status:-no answer}" >&2; exit 1 ;;
esac
