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


def matmul_peak(n: int = 2048, iters: int = 5) -> float:
    """Achievable dense f32 matmul FLOP/s on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / interleaved_medians({"mm": lambda: f(a).block_until_ready()}, iters)["mm"]


def compiled_flops(jitted, *args) -> float | None:
    try:
        analysis = jitted.lower(*args).compile().cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        return float(analysis.get("flops", 0.0)) or None
    except Exception:  # cost analysis is best-effort on some backends
        return None


def interleaved_medians(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each callable, run round-robin so machine noise hits every variant alike."""
    for fn in fns.values():
        fn()  # warm-up (compile)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_task(task_name: str, model, tokenizer, args, peak: float) -> dict:
    from jinject.compiler import compile_teacher
    from jinject.config import TrainConfig
    from jinject.data import Pipeline
    from jinject.step import init_state, make_train_step, teacher_residuals
    from jinject.tasks import get_task

    task = get_task(task_name, **args.task_options.get(task_name, {}))
    t0 = time.perf_counter()
    teacher = compile_teacher(task)
    teacher_load = time.perf_counter() - t0
    config = TrainConfig(task=task_name, model=args.model, batch_size=args.batch_size,
                         text_batch_size=args.batch_size, text_seq_len=args.text_seq_len, n_train=256)
    pipeline = Pipeline(config, task, teacher, tokenizer)
    batch = jax.device_put(pipeline.batch(0))
    tokens = batch["inputs"].size + batch["text_ids"].size

    def stepper(cfg, teacher_or_none, batch, resid_fn=None):
        # unfused: the step reads the residuals from the batch instead of running the teacher
        from_batch = None if resid_fn is None else (lambda params, b: b["teacher_resid"])
        step = make_train_step(model, teacher_or_none, cfg, residuals=from_batch)
        holder = {"state": init_state(model, teacher_or_none, cfg)}

        def run():
            b = batch if resid_fn is None else {**batch, "teacher_resid": resid_fn()}
            holder["state"], m = step(holder["state"], b)
            jax.block_until_ready(m["loss"])

        return step, holder, run

    fused_step, fused_holder, fused = stepper(config, teacher, batch)
    flops = compiled_flops(fused_step.jitted, fused_holder["state"], fused_step.frozen, batch)
    _, _, baseline = stepper(dataclasses.replace(config, baseline=True), None,
                             {k: v for k, v in batch.items() if k != "teacher_ids"})
    teacher_fn = jax.jit(lambda p, ids: teacher_residuals(teacher, p, ids))
    teacher_params = jax.device_put(teacher.params)

    def teacher_alone():
        teacher_fn(teacher_params, batch["teacher_ids"]).block_until_ready()

    def host_copied_residuals():  # the unfused way: a separate call, residuals through host memory
        return jax.device_put(np.asarray(teacher_fn(teacher_params, batch["teacher_ids"])))

    _, _, unfused = stepper(config, teacher, batch, host_copied_residuals)
    t = interleaved_medians({"fused": fused, "unfused": unfused, "baseline": baseline, "teacher": teacher_alone},
                            args.iters)
    return {
        "task": task_name, "teacher_layers": teacher.n_layers, "teacher_width": teacher.d_model,
        "teacher_params": int(sum(np.size(x) for x in jax.tree.leaves(teacher.params))),
        "teacher_load_s": round(teacher_load, 2), "batch": [list(batch["inputs"].shape), list(batch["text_ids"].shape)],
        "fused_step_s": t["fused"], "baseline_step_s": t["baseline"], "unfused_step_s": t["unfused"],
        "teacher_forward_s": t["teacher"], "teacher_share": t["teacher"] / t["fused"],
        "unfused_over_fused": t["unfused"] / t["fused"], "tokens_per_s": tokens / t["fused"],
        "step_flops": flops, "achieved_flops_per_s": (flops / t["fused"]) if flops else None,
        "fraction_of_matmul_peak": (flops / t["fused"] / peak) if flops else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["shuffle-dyck", "int-sum", "count"])
    parser.add_argument("--model", default="smollm2-135m",
                        help="a load_model name, or 'gpt2-small-random': GPT-2 small's shape with random weights and "
                             "GPT-2's tokenizer (offline), to compare with the original code's GPT-2-small step")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--text-seq-len", type=int, default=30)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--task-options", default="{}",
                        help='JSON per-task options, e.g. {"shuffle-dyck": {"max_len": 12, "max_input_len": 12}}')
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    args.task_options = json.loads(args.task_options)

    from jinject.loading import load_model

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}", flush=True)
    peak = matmul_peak()
    print(f"dense f32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    if args.model == "gpt2-small-random":  # step time does not depend on the weights' values
        from jinject.models import ModelConfig, create_model
        from jinject.tokenizer import gpt2_tokenizer

        model = create_model(ModelConfig(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                                         max_position_embeddings=1024))
        tokenizer = gpt2_tokenizer()
    else:
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
