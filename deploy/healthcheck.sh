#!/bin/bash
# The image's HEALTHCHECK: exits 0 when GET /healthz on the node's HTTP address answers 200.
# The node listens on the address given by --http-addr, not on every interface, so the address
# comes from ACTORHUB_HEALTH_ADDR (HOST:PORT), else this container's first address, port 8080.
# Plain bash (/dev/tcp): the image carries no HTTP client.
set -u
address="${ACTORHUB_HEALTH_ADDR:-}"
if [ -z "$address" ]; then
  read -r first _ < <(hostname -i 2>/dev/null) || true
  address="${first:-127.0.0.1}:8080"
fi
host="${address%:*}"
port="${address##*:}"
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: %s\r\n\r\n' "$address" >&3
IFS= read -r -t 3 status <&3 || exit 1
case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) exit 1 ;;
esac
