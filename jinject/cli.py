"""The `jinject` command line: compile, train, eval, decode."""

from __future__ import annotations

import argparse
import sys


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile (or load) a task's teacher, print its size and variables, verify it against the oracle."""
    import time

    from jinject.tasks import get_task
    from jinject.teacher import compile_teacher
    from jinject.verify import verify_teacher

    task = get_task(args.task, **parse_task_options(args.task_option))
    t0 = time.perf_counter()
    teacher = compile_teacher(task, args.max_seq_len, cache=not args.no_cache)
    took = time.perf_counter() - t0
    how = f"loaded from cache in {took:.2f} s" if teacher.from_cache else f"compiled in {took:.1f} s"
    print(f"task {task.name}: {how} ({teacher.cache_path or 'not cached'})")
    print(f"  max_seq_len {teacher.max_seq_len} tokens + BOS, layers {teacher.n_layers}, "
          f"residual width D {teacher.d_model}, vocabulary {len(teacher.vocab)}")
    print(f"  parameters {teacher.param_count:,} (tracr's zero-padded dense model: {teacher.tracr_param_count:,}); "
          f"mlp_exactness {teacher.mlp_exactness:g}")
    print(f"  answer variable {teacher.answer_var!r} ({len(teacher.answer_dims)} dims)")
    print(f"  variables ({len(teacher.var_info)}):")
    for v in teacher.var_info.values():
        vals = v.values if len(v.values) <= 8 else [*v.values[:4], "...", *v.values[-2:]]
        kind = f"categorical {len(v.values)} values {vals}" if v.categorical else "numerical"
        print(f"    {v.name:<22} layer {v.layer}  {kind}")
    if args.n_check <= 0:
        return 0
    report = verify_teacher(teacher, n_random=args.n_check, seed=args.seed)
    print(report.summary())
    return 0 if report.ok else 1


def parse_task_options(items: list[str] | None) -> dict:
    """`KEY=VALUE` strings -> {KEY: value}, values read as JSON where they parse (numbers, booleans)."""
    import json

    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-option expects KEY=VALUE (e.g. max_len=12), got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def train_config_from_args(args: argparse.Namespace):
    from jinject.config import TrainConfig

    fields = {
        "task": args.task, "model": args.model, "baseline": args.baseline, "align": not args.no_align,
        "intervene": not args.no_intervene, "intervene_at": args.intervene_at, "marker_weight": args.marker_weight,
        "align_exclude": None if args.align_exclude is None else tuple(x for x in args.align_exclude if x),
        "adapter_warmup_steps": args.adapter_warmup_steps, "schedule": args.schedule, "steps": args.steps,
        "batch_size": args.batch_size, "text_batch_size": args.text_batch_size or args.batch_size,
        "text_seq_len": args.text_seq_len, "n_train": args.n_train, "corpus": args.corpus, "seed": args.seed,
        "align_weight": args.align_weight, "kl_weight": args.kl_weight, "layer_offset": args.layer_offset,
        "layer_stride": args.layer_stride, "per_layer_adapter": args.per_layer_adapter, "lr": args.lr,
        "adapter_lr": args.adapter_lr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
        "grad_clip": args.grad_clip, "dtype": args.dtype, "remat": args.remat, "mesh_fsdp": args.fsdp,
        "checkpoint_every": args.checkpoint_every, "log_every": args.log_every,
        "teacher_max_seq_len": args.max_seq_len, "task_options": parse_task_options(args.task_option),
    }
    return TrainConfig(**fields)


def cmd_train(args: argparse.Namespace) -> int:
    import importlib.util

    from jinject.trainer import TrainingDiverged, maybe_initialize_distributed, train

    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:  # before minutes of set-up
        print("jinject train: error: --tensorboard needs tensorboardX: pip install 'jinject[tensorboard]'",
              file=sys.stderr)
        return 2
    maybe_initialize_distributed()
    config = train_config_from_args(args)
    out = args.out or f"runs/{config.task}-{config.variant}-s{config.seed}"
    print(f"jinject train: {config.variant} run of {config.task} into "
          f"{config.model}, {config.steps} steps -> {out}", file=sys.stderr)
    try:
        run = train(config, out, tensorboard=args.tensorboard)
    except TrainingDiverged as e:
        print(f"jinject train: stopped: {e}", file=sys.stderr)
        return 1
    print(f"jinject train: done at step {run.step}; metrics in {out}/metrics.jsonl, checkpoints in "
          f"{out}/checkpoints. Next: jinject eval {out}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jinject.evaluate import evaluate_run, format_table
    from jinject.trainer import load_run

    run = load_run(args.dir)
    say = lambda msg: print(f"jinject eval: {msg} ...", file=sys.stderr, flush=True)
    results = evaluate_run(
        run, n_examples=args.n, n_decode=args.n_decode, n_causal=args.n_causal, n_text_windows=args.n_text,
        text_seq_len=args.text_seq_len, noise_norms=tuple(args.noise_norms),
        relative_noise=tuple(args.relative_noise), splits=args.splits,
        batch_size=args.batch_size, seed=args.eval_seed, out=args.dir, progress=say,
    )
    print(format_table(results))
    print(f"\nwritten: {Path(args.dir) / 'eval.json'}", file=sys.stderr)
    if not args.no_plots:
        from jinject.plots import plot_eval

        written = plot_eval(results, Path(args.dir) / "plots", Path(args.dir) / "metrics.jsonl")
        print(f"figures: {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from jinject.decoding import decode_problem, format_decoded
    from jinject.trainer import load_run

    run = load_run(args.dir)
    decoded = decode_problem(run, args.text, layer=args.layer)
    print(format_decoded(decoded))
    if args.plot:
        from jinject.plots import plot_decoded

        plot_decoded(decoded, args.plot)
        print(f"heatmap: {args.plot}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jinject", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile (or load cached) a task's tracr teacher and verify it")
    p.add_argument("task", help="shuffle-dyck | count | int-sum")
    p.add_argument("--max-seq-len", type=int, default=None, help="teacher context length")
    p.add_argument("--n-check", type=int, default=200, help="random inputs checked against the oracle")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--no-cache", action="store_true", help="recompile and do not write the disk cache")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task size option, repeatable (e.g. max_len=12 max_input_len=12 for shuffle-dyck)")
    p.set_defaults(func=cmd_compile)

    from jinject.config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="inject a task into a model (or train the baseline); resumes from --out")
    p.add_argument("--task", required=True, help="shuffle-dyck | count | int-sum")
    p.add_argument("--model", default=d.model, help="smollm2-135m (offline default), a HF id, or a local HF dir")
    p.add_argument("--baseline", action="store_true", help="task + KL only: no alignment, no intervention")
    p.add_argument("--no-align", action="store_true", help="no alignment term (intervention only)")
    p.add_argument("--no-intervene", action="store_true", help="no detach-and-roll intervention (alignment only)")
    p.add_argument("--intervene-at", type=int, default=None, metavar="HIDDEN_INDEX",
                   help="student hidden-state index of the intervention (default: the output of the block after "
                        "the top aligned layer, the original's placement)")
    p.add_argument("--align-exclude", nargs="*", default=None, metavar="VAR[@LAYER]",
                   help="teacher variables left out of the alignment, at every layer or one (e.g. indices@0); "
                        "default: auto (indices on hosts without absolute position embeddings); no value: none")
    p.add_argument("--marker-weight", type=float, default=d.marker_weight,
                   help="weight of the marker position (last prompt token) in the alignment mean")
    p.add_argument("--adapter-warmup-steps", type=int, default=d.adapter_warmup_steps,
                   help="train only the adapter (student frozen) for the first N steps")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. max_len=12 max_input_len=12 frame=true bos=true)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--text-batch-size", type=int, default=None, help="default: --batch-size")
    p.add_argument("--text-seq-len", type=int, default=d.text_seq_len)
    p.add_argument("--n-train", type=int, default=d.n_train, help="size of the training example pool")
    p.add_argument("--corpus", default=None, help="plain-text file for the KL regulariser (default: built-in)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=None, help="run directory (resumed if it holds a run)")
    p.add_argument("--lr", type=float, default=d.lr, help="student learning rate")
    p.add_argument("--adapter-lr", type=float, default=d.adapter_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--schedule", default=d.schedule, choices=["constant", "cosine"],
                   help="learning rate after warm-up: constant, or cosine decay to 0 at --steps")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip)
    p.add_argument("--align-weight", "--multiplier", type=float, default=d.align_weight,
                   help="λ: total = task + KL + λ·alignment")
    p.add_argument("--kl-weight", type=float, default=d.kl_weight)
    p.add_argument("--layer-offset", type=int, default=d.layer_offset)
    p.add_argument("--layer-stride", type=int, default=d.layer_stride)
    p.add_argument("--per-layer-adapter", action="store_true", help="one map per aligned layer")
    p.add_argument("--max-seq-len", type=int, default=None, help="teacher max_seq_len (default: task's)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true", help="gradient checkpointing per block")
    p.add_argument("--fsdp", type=int, default=d.mesh_fsdp, help="devices on the fsdp mesh axis")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--log-every", type=int, default=d.log_every,
                   help="steps between metric fetches; without a terminal, one plain progress line each")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the metrics as TensorBoard event files to DIR (needs jinject[tensorboard]; "
                        "not part of the run's config)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy (test + OOD), language retention, decoding accuracy, causal test")
    p.add_argument("dir", help="run directory (from jinject train --out)")
    p.add_argument("--n", type=int, default=500, help="examples per split for accuracy (original: 4000)")
    p.add_argument("--n-decode", type=int, default=200, help="test examples for decoding accuracy")
    p.add_argument("--n-causal", type=int, default=None, help="test examples for the causal test (default --n)")
    p.add_argument("--n-text", type=int, default=32, help="held-out text windows for retention")
    p.add_argument("--text-seq-len", type=int, default=64, help="tokens per held-out text window")
    p.add_argument("--noise-norms", type=float, nargs="+", default=[0.0, 5.0, 10.0, 30.0],
                   help="L2 norms of the causal-test noise")
    p.add_argument("--relative-noise", type=float, nargs="*", default=[0.1, 0.3, 0.5, 1.0],
                   help="causal-test noise norms as fractions of the median residual norm at the intervened layer")
    p.add_argument("--splits", nargs="+", default=None, help="splits for accuracy (default: test + every OOD)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation examples (same for all runs)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures in DIR/plots")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("decode", help="the decoded RASP variables at every token of one problem")
    p.add_argument("dir", help="run directory of an injected (not baseline) run")
    p.add_argument("text", help="a problem in the task's compact form, e.g. '([)]' or 'xyxxy' or '213+391'")
    p.add_argument("--layer", type=int, default=None, help="teacher layer to decode at (default: the top one)")
    p.add_argument("--plot", default=None, metavar="FILE", help="also save a heatmap (PNG) of tokens x variables")
    p.set_defaults(func=cmd_decode)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "eval", "decode"):
        from jinject.compilation import enable_compilation_cache

        enable_compilation_cache()
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, NotImplementedError) as e:  # bad input, missing files, offline hub, unsupported model
        print(f"jinject {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
