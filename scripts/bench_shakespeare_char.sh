#!/usr/bin/env bash
# Train recipes/shakespeare_char.yaml from scratch and report its wall time and validation loss.
#
#   scripts/bench_shakespeare_char.sh [extra overrides...]
#
# Wall time is the whole `llmkit train` command (start-up, data steps, training, evaluations,
# checkpoints, the final sample). The loss is `llmkit eval` over every token of the val split with
# the final weights (latest.pt). Data comes from $LLMKIT_DATA_MIRROR when set. Nothing else should
# run on the machine meanwhile: training uses every core.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LLMKIT=${LLMKIT:-.venv/bin/llmkit}
out=${OUT_DIR:-runs/bench_shakespeare_char}

"$LLMKIT" download shakespeare >/dev/null   # so the timing below is training, not fetching
"$LLMKIT" tokenize recipes/shakespeare_char.yaml >/dev/null
start=$(date +%s.%N)
"$LLMKIT" train recipes/shakespeare_char.yaml "out_dir=$out" --overwrite "$@" >/dev/null
end=$(date +%s.%N)
"$LLMKIT" eval "$out" --checkpoint latest --json | python3 -c "
import json, sys
r = json.load(sys.stdin)
print(f\"wall {float('$end') - float('$start'):.1f} s | steps {r['step']} | val loss {r['loss']:.4f} | \"
      f\"perplexity {r['perplexity']:.3f} | bits/char {r['bits_per_char']:.4f} | $(nproc) cores\")"
