#!/usr/bin/env bash
# The accelerator checks behind docs/benchmarks.md, as one script for a rented GPU. Parts (PARTS, in order):
#   bench-bf16  the train step on gpt2-large's shape in bfloat16 at batch 8 (the original's): fused, baseline,
#               unfused, teacher alone, MFU, step memory (experiments/bench_step.py)    ~4 min
#   bench-f32   the same in float32, without the unfused variant                         2.5 min
#   bench-b32   bfloat16 at batch 32, fused and teacher only                             (not run yet)
#   slice       the `paper` preset's shuffle-dyck run for SLICE_STEPS steps on a random gpt2-large (no model
#               hub needed), then its evaluation: steps/s, checkpoint and evaluation time  2.5 min + evaluation
# (times seen on an H200 on 2026-11-27; a machine start and the install add about a minute)
# Most of each part is compiling 36-layer steps (60-80 s each). Each part has its own limit (PART_S seconds),
# so a slow part cannot take the others' results with it.
# Usage, from the repository root with jinject importable:
#   OUT=out/gpu bash experiments/gpu_check.sh
#   PARTS="bench-bf16 slice" PART_S=240 OUT=out/gpu bash experiments/gpu_check.sh
set -u
OUT=${OUT:-out/gpu}
PY=${PY:-python3}
PARTS=${PARTS:-bench-bf16 bench-f32 bench-b32 slice}
PART_S=${PART_S:-270}
SLICE_STEPS=${SLICE_STEPS:-600}
WORK=${WORK:-/tmp/jinject-gpu-check}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

bench() {  # bench NAME ARGS...: one bench_step.py process with its own limit, log and JSON
  local name=$1; shift
  SECONDS=0
  timeout "$PART_S" $PY experiments/bench_step.py --tasks shuffle-dyck --model gpt2-large-random \
      --json "$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log"
  echo "$name: ${SECONDS}s" | tee -a "$OUT/$name.log"
}

for part in $PARTS; do
  case $part in
    bench-bf16) bench bench-bf16 --dtypes bfloat16 --batch-sizes 8 ;;
    bench-f32) bench bench-f32 --dtypes float32 --batch-sizes 8 --variants baseline teacher ;;
    bench-b32) bench bench-b32 --dtypes bfloat16 --batch-sizes 32 --variants teacher ;;
    slice)
      SECONDS=0
      [ -f "$WORK/gpt2-large-random/model.safetensors" ] \
        || $PY experiments/random_host.py gpt2-large "$WORK/gpt2-large-random" > /dev/null
      echo "random gpt2-large ready: ${SECONDS}s" | tee "$OUT/slice.log"
      SECONDS=0
      timeout "$PART_S" $PY experiments/compare.py --preset paper --model "$WORK/gpt2-large-random" \
          --tasks shuffle-dyck --seeds 0 --variants injected --steps "$SLICE_STEPS" --out "$WORK/paper" 2>&1 \
          | tee -a "$OUT/slice.log"
      echo "slice: ${SECONDS}s" | tee -a "$OUT/slice.log"
      run="$WORK/paper/runs/shuffle-dyck-injected-s0"
      for f in metrics.jsonl eval.json; do [ -f "$run/$f" ] && cp "$run/$f" "$OUT/slice-$f"; done ;;
    *) echo "gpu_check: unknown part $part (known: bench-bf16 bench-f32 bench-b32 slice)" >&2; exit 2 ;;
  esac
done
exit 0
