"""Benchmarks the offline host model (smollm2-135m) on this machine: load time, memory, forward and
generation throughput, float32 vs bfloat16. Each dtype runs in its own process so memory is clean.

    .venv/bin/python experiments/bench_model.py [--model smollm2-135m] [--batch 8] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(model_name: str, dtype: str, batch: int, seq: int, new_tokens: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jinject.generation import generate
    from jinject.loading import load_model

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    model, tok = load_model(model_name, dtype=dtype)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    graphdef, params = nnx.split(model)
    param_mb = sum(p.nbytes for p in jax.tree.leaves(params)) / 2**20

    fwd = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids).logits)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size, (batch, seq)), jnp.int32)
    t0 = time.perf_counter()
    fwd(params, ids).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fwd(params, ids).block_until_ready()
        times.append(time.perf_counter() - t0)
    fwd_s = statistics.median(times)

    prompts = [tok.encode("The capital of France is"), tok.encode("Once upon a time, there was a")] * 2
    generate(model, prompts, new_tokens)  # compile
    t0 = time.perf_counter()
    out = generate(model, prompts, new_tokens)
    gen_s = time.perf_counter() - t0
    return {
        "model": model_name,
        "dtype": dtype,
        "load_s": round(load_s, 2),
        "param_MiB": round(param_mb, 1),
        "rss_after_load_MiB": round(rss_loaded - rss0, 1),
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "forward_compile_s": round(compile_s, 2),
        "forward_shape": [batch, seq],
        "forward_s": round(fwd_s, 3),
        "forward_tok_per_s": round(batch * seq / fwd_s, 1),
        "generate_batch": len(prompts),
        "generate_tok_per_s": round(sum(len(o) for o in out) / gen_s, 1),
        "sample": tok.decode(out[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="run one dtype in this process")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    if args.dtype:
        print(json.dumps(run_one(args.model, args.dtype, args.batch, args.seq, args.new_tokens)))
        return
    rows = []
    for dtype in ("float32", "bfloat16"):
        cmd = [sys.executable, __file__, "--dtype", dtype, "--model", args.model, "--batch", str(args.batch),
               "--seq", str(args.seq), "--new-tokens", str(args.new_tokens)]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    keys = [k for k in rows[0] if k not in ("model", "dtype")]
    print(f"{args.model} on this machine (median of 5 forwards; generate = {args.new_tokens} new tokens)")
    print(f"{'':24s}" + "".join(f"{r['dtype']:>20s}" for r in rows))
    for k in keys:
        print(f"{k:24s}" + "".join(f"{str(r[k])!r:>20s}"[:20] if k == "sample" else f"{str(r[k]):>20s}" for r in rows))


if __name__ == "__main__":
    main()
