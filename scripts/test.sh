#!/usr/bin/env bash
# The README's test command: install the test dependencies (Python extras, plus Chromium,
# chromedriver and PostgreSQL from Debian's packages for the feedback app's browser and
# database tests), then run the whole suite, slow end-to-end tests included.
set -euo pipefail
# Passive OpenMP waiting: the tests start 2-process torchrun jobs on a 2-core machine, where
# spinning worker threads would steal the other process's core.
export OMP_WAIT_POLICY=PASSIVE
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev,app,eval]"
if [ -f scripts/ci-services.sh ]; then
  # Prints `export ALIGNFORGE_TEST_PG_URL=...` for the PostgreSQL tests.
  eval "$(bash scripts/ci-services.sh)"
fi
python -m pytest -q --durations=25 "$@"
