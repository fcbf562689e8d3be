"""Benchmark the injection train step: time, tokens/s, achieved FLOP/s, teacher share, fused vs unfused.

    python experiments/bench_step.py --tasks shuffle-dyck int-sum count --model smollm2-135m

For each task: the fused step (teacher + student in ONE jit, what jinject runs), the baseline step
(no teacher), the teacher forward alone, and the "unfused" step the way PyTorch code does it (teacher
in a separate call, its residuals copied through the host into the student step). Timings are medians
over --iters runs after warm-up, measured side by side in one process. FLOP counts come from XLA's
cost analysis of the compiled step; the peak is a measured dense f32 matmul on the same device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def median_seconds(fn, iters: int) -> float:
    fn()  # warm-up (compile)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 2048, iters: int = 5) -> float:
    """Achievable dense f32 matmul FLOP/s on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / median_seconds(lambda: f(a).block_until_ready(), iters)


def compiled_flops(jitted, *args) -> float | None:
    try:
        analysis = jitted.lower(*args).compile().cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        return float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best-effort on some backends
        return None


def bench_task(task_name: str, model, tokenizer, args, peak: float) -> dict:
    from jinject.config import TrainConfig
    from jinject.tasks import get_task
    from jinject.teacher import compile_teacher
    from jinject.trainer import Pipeline, init_state, make_train_step, teacher_residuals

    task = get_task(task_name)
    t0 = time.perf_counter()
    teacher = compile_teacher(task, args.max_seq_len.get(task_name))
    teacher_load = time.perf_counter() - t0
    config = TrainConfig(task=task_name, model=args.model, batch_size=args.batch_size,
                         text_batch_size=args.batch_size, text_seq_len=args.text_seq_len, n_train=256)
    pipeline = Pipeline(config, task, teacher, tokenizer)
    batch = jax.device_put(pipeline.batch(0))
    tokens = batch["inputs"].size + batch["text_ids"].size

    def time_step(cfg, teacher_or_none, batch):
        step = make_train_step(model, teacher_or_none, cfg)
        holder = {"state": init_state(model, teacher_or_none, cfg)}
        flops = compiled_flops(step.jitted, holder["state"], step.frozen, batch)

        def run():
            holder["state"], m = step(holder["state"], batch)
            jax.block_until_ready(m["loss"])

        return median_seconds(run, args.iters), flops, step

    fused, flops, step = time_step(config, teacher, batch)
    baseline, _, _ = time_step(dataclasses.replace(config, baseline=True), None,
                               {k: v for k, v in batch.items() if k != "teacher_ids"})

    teacher_fn = jax.jit(lambda p, ids: teacher_residuals(teacher, p, ids))
    teacher_params = jax.device_put(teacher.params)
    teacher_alone = median_seconds(
        lambda: teacher_fn(teacher_params, batch["teacher_ids"]).block_until_ready(), args.iters)

    # unfused: teacher call, residuals copied to host and back, then the student step
    state_holder = {"state": init_state(model, teacher, config)}
    unfused_batch = {k: v for k, v in batch.items()}

    def unfused():
        resid = np.asarray(teacher_fn(teacher_params, batch["teacher_ids"]))
        unfused_batch["teacher_resid"] = jax.device_put(resid)
        state_holder["state"], m = step(state_holder["state"], unfused_batch)
        jax.block_until_ready(m["loss"])

    unfused_s = median_seconds(unfused, args.iters)
    return {
        "task": task_name, "teacher_layers": teacher.n_layers, "teacher_width": teacher.d_model,
        "teacher_params": int(sum(np.size(x) for x in jax.tree.leaves(teacher.params))),
        "teacher_load_s": round(teacher_load, 2), "batch": [list(batch["inputs"].shape), list(batch["text_ids"].shape)],
        "fused_step_s": fused, "baseline_step_s": baseline, "unfused_step_s": unfused_s,
        "teacher_forward_s": teacher_alone, "teacher_share": teacher_alone / fused,
        "unfused_over_fused": unfused_s / fused, "tokens_per_s": tokens / fused,
        "step_flops": flops, "achieved_flops_per_s": (flops / fused) if flops else None,
        "fraction_of_matmul_peak": (flops / fused / peak) if flops else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["shuffle-dyck", "int-sum", "count"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-seq-len", type=int, default=30)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--max-seq-len", default="{}", help='JSON {"count": 120} per-task teacher sizes')
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    args.max_seq_len = json.loads(args.max_seq_len)

    from jinject.loading import load_model

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    peak = matmul_peak()
    print(f"dense f32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    model, tokenizer = load_model(args.model)
    rows = []
    for name in args.tasks:
        row = bench_task(name, model, tokenizer, args, peak)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| task | teacher L x D (params) | fused step s | baseline s | unfused s | unfused/fused | teacher share "
          "| tokens/s | GFLOP/s (% of matmul peak) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gf = f"{r['achieved_flops_per_s'] / 1e9:.1f} ({100 * r['fraction_of_matmul_peak']:.0f}%)" \
            if r["achieved_flops_per_s"] else "n/a"
        print(f"| {r['task']} | {r['teacher_layers']} x {r['teacher_width']} ({r['teacher_params']:,}) | "
              f"{r['fused_step_s']:.3f} | {r['baseline_step_s']:.3f} | {r['unfused_step_s']:.3f} | "
              f"{r['unfused_over_fused']:.2f} | {100 * r['teacher_share']:.1f}% | {r['tokens_per_s']:.0f} | {gf} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].device_kind, "matmul_peak": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
