"""Benchmark the injection train step: time, tokens/s, achieved FLOP/s, teacher share, fused vs unfused.

    python experiments/bench_step.py --tasks shuffle-dyck int-sum count --model smollm2-135m
    python experiments/bench_step.py --tasks shuffle-dyck --model gpt2-large-random --dtypes float32 bfloat16  # a GPU

For each task: the fused step (teacher + student in ONE jit, what jinject runs), the baseline step
(no teacher), the teacher forward alone, and the "unfused" step the way PyTorch code does it (teacher
in a separate call, its residuals copied through the host into the student step). Timings are medians
over --iters runs after warm-up, measured side by side in one process. MFU counts the model's FLOPs
(`model_flops`) over the fused step's time, against a dense matmul of the same dtype measured on the same
device and against the vendor's dense peak where the device is known. XLA's own FLOP count is kept in the
JSON beside it. Step memory is XLA's: arguments (state, batch) plus temporaries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

# Vendor dense peaks (FLOP/s, no sparsity) for the conventional MFU; float32 matmuls run on TF32 tensor cores
# under JAX's default precision on these GPUs. Unknown devices get the measured matmul peak only.
NOMINAL_PEAK = {("H100", "bfloat16"): 989.4e12, ("H100", "float32"): 494.7e12,
                ("H200", "bfloat16"): 989.4e12, ("H200", "float32"): 494.7e12,
                ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12}


def nominal_peak(device_kind: str, dtype: str) -> float | None:
    return next((v for (name, dt), v in NOMINAL_PEAK.items() if name in device_kind and dt == dtype), None)


def matmul_peak(dtype: str, iters: int = 5) -> float:
    """Achievable dense matmul FLOP/s in `dtype` on the default device (the denominator of the measured MFU)."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / interleaved_medians({"mm": lambda: f(a).block_until_ready()}, iters)["mm"]


def model_flops(cfg, batch: dict) -> float:
    """Training FLOPs of one step by the usual count (PaLM, appendix B): 2 per weight per token for a
    forward, 3 forwards' worth for forward + backward, attention scores and values included, the unembedding
    only where logits are taken (the answer positions; every text token). The KL term's frozen reference is
    one more forward over the text. The teacher (a few % of the time) and the adapter are left out, so
    injected and baseline steps count the same work."""
    d, hd, n_layers = cfg.d_model, cfg.head_size, cfg.n_layers
    mlp_mats = 3 if cfg.family == "llama" else 2  # SwiGLU has a gate
    block = 2 * d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + mlp_mats * d * cfg.ff_size

    def forward(b: int, t: int, logit_rows: int) -> float:
        return 2 * b * t * n_layers * block + 4 * n_layers * b * t * t * cfg.n_heads * hd \
            + 2 * d * cfg.vocab_size * logit_rows

    (bt, tt), (bx, tx) = batch["inputs"].shape, batch["text_ids"].shape
    return 3 * forward(bt, tt, batch["answer_valid"].size) + 4 * forward(bx, tx, bx * tx)


def compiled_cost(jitted, *args) -> tuple[float | None, float | None]:
    """(FLOPs, device bytes) of one compiled step: XLA's cost analysis (it can miss library calls: on an
    H200 it counted 8x fewer FLOPs for the float32 step than for the same bfloat16 one), and arguments +
    temporaries (the outputs alias the donated state). Both are best-effort on some backends."""
    compiled = jitted.lower(*args).compile()
    flops = memory = None
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list):
            analysis = analysis[0]
        flops = float(analysis.get("flops", 0.0)) or None
    except Exception:
        pass
    try:
        m = compiled.memory_analysis()
        memory = float(m.argument_size_in_bytes + m.temp_size_in_bytes) or None
    except Exception:
        pass
    return flops, memory


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


def bench_task(task_name: str, model, tokenizer, args, dtype: str, batch_size: int, peak: float) -> dict:
    from jinject.compiler import compile_teacher
    from jinject.config import TrainConfig
    from jinject.data import Pipeline
    from jinject.step import init_state, make_train_step, teacher_residuals
    from jinject.tasks import get_task

    task = get_task(task_name, **args.task_options.get(task_name, {}))
    t0 = time.perf_counter()
    teacher = compile_teacher(task)
    teacher_load = time.perf_counter() - t0
    config = TrainConfig(task=task_name, model=args.model, batch_size=batch_size, text_batch_size=batch_size,
                         text_seq_len=args.text_seq_len, n_train=256, dtype=dtype)
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

    fns = {}
    fused_step, fused_holder, fns["fused"] = stepper(config, teacher, batch)
    t0 = time.perf_counter()
    xla_flops, memory = compiled_cost(fused_step.jitted, fused_holder["state"], fused_step.frozen, batch)
    compile_s = time.perf_counter() - t0
    if "baseline" in args.variants:
        fns["baseline"] = stepper(dataclasses.replace(config, baseline=True), None,
                                  {k: v for k, v in batch.items() if k != "teacher_ids"})[2]
    teacher_fn = jax.jit(lambda p, ids: teacher_residuals(teacher, p, ids))
    teacher_params = jax.device_put(teacher.params)
    if "teacher" in args.variants:
        fns["teacher"] = lambda: teacher_fn(teacher_params, batch["teacher_ids"]).block_until_ready()
    if "unfused" in args.variants:
        def host_copied_residuals():  # the unfused way: a separate call, residuals through host memory
            return jax.device_put(np.asarray(teacher_fn(teacher_params, batch["teacher_ids"])))

        fns["unfused"] = stepper(config, teacher, batch, host_copied_residuals)[2]
    t = interleaved_medians(fns, args.iters)
    del fused_holder  # free this configuration's optimizer state before the next one
    nominal = nominal_peak(jax.devices()[0].device_kind, dtype)
    flops = model_flops(model.config, batch)
    achieved = flops / t["fused"]
    return {
        "task": task_name, "dtype": dtype, "batch_size": batch_size, "teacher_layers": teacher.n_layers,
        "teacher_width": teacher.d_model,
        "teacher_params": int(sum(np.size(x) for x in jax.tree.leaves(teacher.params))),
        "teacher_load_s": round(teacher_load, 2), "compile_s": round(compile_s, 1),
        "batch": [list(batch["inputs"].shape), list(batch["text_ids"].shape)],
        "fused_step_s": t["fused"], "baseline_step_s": t.get("baseline"), "unfused_step_s": t.get("unfused"),
        "teacher_forward_s": t.get("teacher"),
        "teacher_share": t["teacher"] / t["fused"] if "teacher" in t else None,
        "unfused_over_fused": t["unfused"] / t["fused"] if "unfused" in t else None,
        "fused_over_baseline": t["fused"] / t["baseline"] if "baseline" in t else None,
        "tokens_per_s": tokens / t["fused"], "model_flops": flops, "xla_flops": xla_flops,
        "step_memory_bytes": memory, "achieved_flops_per_s": achieved, "matmul_peak": peak,
        "mfu_of_matmul_peak": achieved / peak, "mfu_of_nominal_peak": achieved / nominal if nominal else None,
    }


def load_host(name: str, dtype: str):
    if name.endswith("-random"):  # step time does not depend on the weights' values
        from random_host import random_gpt2

        return random_gpt2(name.removesuffix("-random"), dtype)
    from jinject.loading import load_model

    return load_model(name, dtype=dtype, param_dtype="float32")  # as jinject train loads it


def fmt(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x * scale, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["shuffle-dyck", "int-sum", "count"])
    parser.add_argument("--model", default="smollm2-135m",
                        help="a load_model name, or gpt2-{small,medium,large,xl}-random: that GPT-2 shape with random "
                             "weights and GPT-2's tokenizer (offline), e.g. gpt2-large-random for the original's host")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="host weight and activation dtypes to time, each with its own matmul peak")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8],
                        help="task examples per step (the text batch is the same size)")
    parser.add_argument("--text-seq-len", type=int, default=30)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=["unfused", "baseline", "teacher"],
                        choices=["unfused", "baseline", "teacher"], help="timed beside the fused step")
    parser.add_argument("--task-options", default="{}",
                        help='JSON per-task options, e.g. {"shuffle-dyck": {"max_len": 12, "max_input_len": 12}}')
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    args.task_options = json.loads(args.task_options)

    from jinject.compilation import enable_compilation_cache

    enable_compilation_cache()  # the cost analysis compiles the fused step once; its first call reuses that
    device = jax.devices()[0].device_kind
    print(f"device: {device} x{jax.device_count()}, jax {jax.__version__}", flush=True)
    rows = []
    for dtype in args.dtypes:
        peak = matmul_peak(dtype)
        print(f"dense {dtype} matmul peak: {peak / 1e12:.2f} TFLOP/s", flush=True)
        model, tokenizer = load_host(args.model, dtype)
        for batch_size in args.batch_sizes:
            for name in args.tasks:
                row = bench_task(name, model, tokenizer, args, dtype, batch_size, peak)
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model
    print(f"\n{args.model} on {device}\n")
    print("| task | dtype | batch | teacher L x D | fused step s | baseline s | fused/baseline | unfused/fused "
          "| teacher share | tokens/s | TFLOP/s | MFU (matmul peak) | MFU (nominal) | step memory GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['dtype']} | {r['batch_size']} | {r['teacher_layers']} x {r['teacher_width']} | "
              f"{r['fused_step_s']:.4f} | {fmt(r['baseline_step_s'], '.4f')} | "
              f"{fmt(r['fused_over_baseline'], '.2f')} | "
              f"{fmt(r['unfused_over_fused'], '.2f')} | {fmt(r['teacher_share'], '.1%')} | {r['tokens_per_s']:.0f} | "
              f"{fmt(r['achieved_flops_per_s'], '.2f', 1e-12)} | {fmt(r['mfu_of_matmul_peak'], '.1%')} | "
              f"{fmt(r['mfu_of_nominal_peak'], '.1%')} | {fmt(r['step_memory_bytes'], '.2f', 2**-30)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "model": args.model, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
