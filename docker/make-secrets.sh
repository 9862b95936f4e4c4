#!/usr/bin/env bash
# Makes every secret docker/compose.yaml mounts, once, into docker/secrets/
# (or the folder given): the PostgreSQL, Redis and Grafana passwords, the
# settings file with the URLs that hold them, a CA with a server certificate
# for the service names, and one token per process with the least role it
# needs (docs/security.md). Files that exist are kept, so running it again
# changes nothing; delete a file to make it anew.
#
# The CA, certificate and tokens are made by mtserve itself (`mtserve tls
# init`, `mtserve tokens create`) in a private home inside the folder: run it
# where mtserve is installed (MTSERVE=path/to/mtserve, default: mtserve on
# PATH, else this checkout's .venv), or in the image:
#   docker run --rm -u "$(id -u)" -v "$PWD/docker:/docker" -e MTSERVE=mtserve mtserve:cpu bash /docker/make-secrets.sh /docker/secrets
#
# The folder is owner-only (0700); the files in it are 0644 because Compose
# mounts file secrets with their host permissions and the containers' users
# (mtserve 10001, redis, postgres) must read them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
mtserve="${MTSERVE:-$(command -v mtserve || echo "$here/../.venv/bin/mtserve")}"

mkdir -p "$out"
chmod 700 "$out"
cd "$out"
umask 022

new_password() { [ -s "$1" ] || openssl rand -hex "$2" > "$1"; }
new_password pg_password 24
new_password redis_password 24
new_password grafana_password 16
new_password tgi_api_key 32  # compose.tgi.yaml: TGI's --api-key, the bearer token inference sends it

if [ ! -s mtserve.yaml ]; then
  sed -e "s/PG_PASSWORD/$(cat pg_password)/g" -e "s/REDIS_PASSWORD/$(cat redis_password)/g" \
    "$here/mtserve-secrets.example.yaml" > mtserve.yaml
fi

# A private home: its CA key and its admin token never leave this folder.
export MTSERVE_HOME="$out/home"
export MTSERVE_CONFIG="$out/mtserve.yaml"  # for tls.server_names: the names the services are dialled by
if [ ! -s tls_cert.pem ]; then
  "$mtserve" tls init >/dev/null
  cp home/tls/ca.pem tls_ca.pem
  cp home/tls/server.pem tls_cert.pem
  cp home/tls/server.key tls_key.pem
fi

new_token() {  # file role name
  [ -s "$1" ] || "$mtserve" tokens create --role "$2" --name "$3" > "$1" 2>/dev/null
}
new_token inference_token operator inference    # follows the registry's Watch stream
new_token trainer_token admin trainer           # registers checkpoints, promotes routes
new_token worker_token client batch-worker      # classifies, reads task definitions
new_token prometheus_token operator prometheus  # scrapes /metrics
[ -s admin_token ] || cp home/auth/admin.token admin_token   # the bootstrap's (and an operator's)
cp home/auth/tokens.json tokens.json            # hashes only: what the servers check calls against

chmod 644 ./*.pem ./*_token ./*_password mtserve.yaml tokens.json
echo "secrets in $out"
