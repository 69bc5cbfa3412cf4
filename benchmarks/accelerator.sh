#!/usr/bin/env bash
# One short accelerator run (about 5-8 minutes on one GPU): the full-size hico training step at
# 8 images per device on the training buckets' shapes, float32 and bfloat16, host (scipy) and
# on-device matcher: compile time, step ms, img/s, device memory, matcher share, GFLOP per image
# and MFU (benchmarks/accelerator.py; results in benchmarks/README.md, "Accelerators").
#
#   bash benchmarks/accelerator.sh                       # the default rows
#   PYTHON=.venv/bin/python bash benchmarks/accelerator.sh --rows 1216x1216:bfloat16:device
#
# Needs jax with its GPU plugin (e.g. pip install "jax[cuda12]") and this repository's
# requirements; weights and data are not needed (random weights, one random batch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c 'import jax; print("devices:", jax.devices())'
# Each row compiles and runs its own step; the limit keeps the whole run short.
timeout "${ACCELERATOR_TIMEOUT_S:-480}" "$PY" -m benchmarks.accelerator --config configs/hico.py "$@"
