#!/usr/bin/env bash
# Set up (idempotent) and run the demo on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mtserve demo "$@"
