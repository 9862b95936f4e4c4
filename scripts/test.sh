#!/usr/bin/env bash
# Set up (idempotent) and run the test suite: every tier except the long
# benchmarks. Extra arguments go to pytest, e.g. `bash scripts/test.sh -x -k engine`.
# The fast tier alone: `.venv/bin/pytest` (pyproject's default skips `slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .   # ruff's default rules plus import sorting (pyproject [tool.ruff])
.venv/bin/mypy           # the whole tree; every function typed in the core and the API floor
# One pytest worker per core (TEST_WORKERS=0 for one process, e.g. to debug);
# worksteal rebalances the long fault tests that land on one worker.
TEST_REQUIRE_SERVICES=1 exec .venv/bin/pytest -m "not bench" -n "${TEST_WORKERS:-auto}" --dist worksteal "$@"
