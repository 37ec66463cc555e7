#!/usr/bin/env bash
# Writes the secrets of a deployment into DIR, keeping any that already exist:
#   DIR/cookie         the cluster cookie (random)         -> ACTORHUB_COOKIE_FILE
#   DIR/jwt-secret     the session-token key (random)      -> ACTORHUB_JWT_SECRET_FILE
#   DIR/admin-token    the operator routes' bearer token   -> ACTORHUB_ADMIN_TOKEN_FILE
#                      (/metrics, /api/cluster, /api/admin/*; `node status`, `node drain`)
#   DIR/tls/           ca.pem and <id>.pem / <id>.key per node id, from `node certs`
#   DIR/ca.key         the cluster CA's key: keep it, out of the nodes' reach (it signs
#                      certificates for new node ids)
#
# Usage: deploy/make-secrets.sh DIR ID...
#   compose:    deploy/make-secrets.sh deploy/secrets n1 n2 n3
#   Kubernetes: deploy/make-secrets.sh /secure/dir actorhub-0 actorhub-1 actorhub-2 actorhub-3 actorhub-4
#               (one certificate per pod name the StatefulSet may ever have: make some spare)
# NODE_BIN names the node binary (default: target/release/node, built when missing);
# CONFIG the config `node certs` reads (default: deploy/cluster.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
dir="$1"
shift
config="${CONFIG:-deploy/cluster.toml}"
node_bin="${NODE_BIN:-target/release/node}"

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

random_secret() {
  head -c 48 /dev/urandom | base64 | tr -d '\n/+='
}
for name in cookie jwt-secret admin-token; do
  if [ -s "$dir/$name" ]; then
    echo "keeping $dir/$name"
  else
    random_secret > "$dir/$name"
    echo "wrote $dir/$name"
  fi
done

if [ -e "$dir/tls/ca.pem" ]; then
  echo "keeping $dir/tls/ (delete it to issue a new CA and certificates)"
else
  if [ ! -x "$node_bin" ]; then
    echo "building $node_bin"
    cargo build --release --locked -q -p node
  fi
  node_args=()
  for id in "$@"; do
    node_args+=(--node "$id")
  done
  "$node_bin" certs --config "$config" --out "$dir/tls" "${node_args[@]}"
  if [ -e "$dir/tls/ca.key" ]; then
    mv "$dir/tls/ca.key" "$dir/ca.key"
  fi
  echo "wrote $dir/tls/ (CA and certificates for $*) and $dir/ca.key"
fi
# The containers run as uid 10001, not as you: the files must be readable by it. DIR itself
# stays 0700, so other users of this machine cannot reach them.
chmod 0644 "$dir/cookie" "$dir/jwt-secret" "$dir/admin-token" "$dir"/tls/*
