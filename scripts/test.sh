#!/usr/bin/env bash
# Set up (venv, selfsup with test tools, Fashion-MNIST) and run the test suite.
# Extra arguments go to pytest (e.g. -k knn, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q "$@"
