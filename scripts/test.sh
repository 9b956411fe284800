#!/usr/bin/env bash
# Set up (venv, selfsup with test tools, Fashion-MNIST) and run the test suite.
# Extra arguments go to pytest (e.g. -k knn, -x; -n 0 runs everything in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# One test process per core (pytest-xdist): every test runs torch on one thread (tests/conftest.py).
workers=$(.venv/bin/python -c "import os; print(max(1, len(os.sched_getaffinity(0))))")
exec .venv/bin/python -m pytest -q -n "$workers" "$@"
