#!/usr/bin/env bash
# The main job: set up (venv, selfsup, Fashion-MNIST), pretrain SimCLR on Fashion-MNIST,
# evaluate with kNN. Extra arguments go to `selfsup pretrain` (e.g. train.epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/selfsup pretrain "$@"
