#!/usr/bin/env bash
# The accelerator check behind docs/benchmarks.md, as one short script for a rented GPU:
#   1. the train step on gpt2-large's shape, bfloat16 and float32 at batch 8 (the original's), bfloat16 at
#      32: step time, fused/baseline, unfused/fused, MFU, step memory (experiments/bench_step.py);
#   2. a slice of the `paper` preset: its shuffle-dyck run for SLICE_STEPS steps on a random gpt2-large
#      (no model hub needed), then the preset's full evaluation, for steps/s and the preset's wall time.
# Usage, from the repository root with jinject importable:  OUT=out/gpu bash experiments/gpu_check.sh
# Each part has its own time limit (BENCH_S, SLICE_S seconds), so a slow part cannot starve the other.
set -u
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
SLICE_STEPS=${SLICE_STEPS:-600}
WORK=${WORK:-/tmp/jinject-gpu-check}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

SECONDS=0
bench="$PY experiments/bench_step.py --tasks shuffle-dyck --model gpt2-large-random"
timeout "${BENCH_S:-240}" bash -c "$bench --dtypes bfloat16 float32 --batch-sizes 8 --json $OUT/bench.json \
    && $bench --dtypes bfloat16 --batch-sizes 32 --variants baseline teacher --json $OUT/bench-b32.json" \
    2>&1 | tee "$OUT/bench.log"
echo "bench: ${SECONDS}s" | tee -a "$OUT/bench.log"

SECONDS=0
$PY experiments/random_host.py gpt2-large "$WORK/gpt2-large-random" > /dev/null
echo "random gpt2-large written: ${SECONDS}s" | tee "$OUT/slice.log"
SECONDS=0
timeout "${SLICE_S:-210}" $PY experiments/compare.py --preset paper --model "$WORK/gpt2-large-random" \
    --tasks shuffle-dyck --seeds 0 --variants injected --steps "$SLICE_STEPS" --out "$WORK/paper" 2>&1 \
    | tee -a "$OUT/slice.log"
echo "slice: ${SECONDS}s" | tee -a "$OUT/slice.log"
run="$WORK/paper/runs/shuffle-dyck-injected-s0"
for f in metrics.jsonl eval.json; do [ -f "$run/$f" ] && cp "$run/$f" "$OUT/slice-$f"; done
exit 0
