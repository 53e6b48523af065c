#!/usr/bin/env bash
# Train every rung of the model ladder on Tiny Shakespeare with the same budget and print a
# Markdown table: parameters, val loss, tokens/s, wall time, a sample line (docs/ladder.md).
#
#   scripts/ladder.sh [extra overrides for every rung...]
#   STEPS=500 RUNGS=bigram,gpt DEVICE=cpu LADDER_DIR=/tmp/ladder scripts/ladder.sh
#
# STEPS optimizer steps of BATCH windows of BLOCK tokens for every rung: default 2000 x 12 x 64,
# shakespeare_gpt's own budget (181 s for all six rungs on an idle 2-core CPU; see
# docs/ladder.md). EVAL_INTERVAL: steps between estimates (default STEPS/5). RUNGS: a comma-separated
# subset of bigram, single_head, multi_head, block, gpt, char. DEVICE: auto, cpu, cuda, mps. Each
# rung trains into LADDER_DIR/<rung> (default runs/ladder, relative to the repository), replacing
# what is there; the table also goes to LADDER_DIR/ladder.md. scripts/ladder.py does the work.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
args=(--steps "${STEPS:-2000}" --batch-size "${BATCH:-12}" --block-size "${BLOCK:-64}"
      --device "${DEVICE:-auto}" --ladder-dir "${LADDER_DIR:-runs/ladder}")
if [[ -n ${RUNGS:-} ]]; then args+=(--rungs "$RUNGS"); fi
if [[ -n ${EVAL_INTERVAL:-} ]]; then args+=(--eval-interval "$EVAL_INTERVAL"); fi
exec "$PYTHON" scripts/ladder.py "${args[@]}" "$@"
