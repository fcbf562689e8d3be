"""The `jinject` command line: compile, train, eval, decode."""

from __future__ import annotations

import argparse
import sys

from jinject.versions import FlaxMismatch, check_flax_imports


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile (or load) a task's teacher, print its size and variables, verify it against the oracle."""
    import time

    from jinject.config_flags import parse_task_options
    from jinject.tasks import get_task
    from jinject.tasks.fit import check_teacher_size

    check_nonnegative(args, "seed")
    task = get_task(args.task, **parse_task_options(args.task_option))
    check_teacher_size(task, args.max_seq_len)  # before JAX and tracr's compiler are even imported

    from jinject.compiler import compile_teacher
    from jinject.verify import verify_teacher

    t0 = time.perf_counter()
    teacher = compile_teacher(task, args.max_seq_len, cache=not args.no_cache, progress=note)
    took = time.perf_counter() - t0
    build = teacher.build
    how = f"loaded from cache in {took:.2f} s" if build.from_cache else f"compiled in {took:.1f} s"
    print(f"task {task.name}: {how} ({build.cache_path or 'not cached'})")
    print(f"  max_seq_len {teacher.max_seq_len} tokens + BOS, layers {teacher.n_layers}, "
          f"residual width D {teacher.d_model}, vocabulary {len(teacher.vocab)}")
    print(f"  parameters {teacher.param_count:,} (tracr's zero-padded dense model: {build.tracr_param_count:,}); "
          f"mlp_exactness {build.mlp_exactness:g}")
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


def note(msg: str) -> None:
    print(f"jinject: {msg} ...", file=sys.stderr, flush=True)


def check_nonnegative(args: argparse.Namespace, *names: str, positive: tuple[str, ...] = ()) -> None:
    """Integer options: `names` must be >= 0, `positive` >= 1 (argparse already refused non-integers)."""
    for name in names + positive:
        value = getattr(args, name)
        low = 1 if name in positive else 0
        if value is not None and value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be >= {low}, got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    from jinject.config_flags import config_from_args

    config = config_from_args(args)  # types and ranges of every option, before anything heavy
    out = args.out or f"runs/{config.task}-{config.variant}-s{config.seed}"
    if not out.strip():
        raise ValueError("--out is empty; give a run directory")

    from jinject.config import check_inputs
    from jinject.rundir import check_out_dir

    check_out_dir(Path(out))
    check_inputs(config)  # task, options, teacher size, corpus: no JAX, no model, no compile

    from jinject.preflight import preflight
    from jinject.sharding import maybe_initialize_distributed
    from jinject.trainer import TrainingDiverged, train

    if args.tensorboard and importlib.util.find_spec("tensorboardX") is None:  # before minutes of set-up
        print("jinject train: error: --tensorboard needs tensorboardX: pip install 'jinject[tensorboard]'",
              file=sys.stderr)
        return 2
    maybe_initialize_distributed()
    preflight(config)  # + the device mesh
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


def check_eval_args(args: argparse.Namespace, task) -> None:
    """Every `jinject eval` option, checked before the model is loaded."""
    import math

    check_nonnegative(args, "n_decode", "eval_seed", positive=("n", "n_causal", "n_text", "text_seq_len",
                                                                 "batch_size"))
    from jinject.config import MAX_N_TRAIN

    for name in ("n", "n_decode", "n_causal"):
        value = getattr(args, name)
        if value is not None and value > MAX_N_TRAIN:
            raise ValueError(f"--{name.replace('_', '-')}={value:,} is above the limit of {MAX_N_TRAIN:,} examples "
                             "(generated in Python, evaluated batch by batch: hours); the original used 4000")
    for x in args.noise_norms:
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"--noise-norms must be finite numbers >= 0 (L2 norms of the causal-test noise), got {x}")
    for x in args.relative_noise:
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"--relative-noise must be finite numbers >= 0 (multiples of the median residual norm "
                             f"at the intervened layer), got {x}")
    if args.splits is not None:
        unknown = [s for s in args.splits if s not in task.splits]
        if unknown:
            raise ValueError(f"--splits {unknown} are not splits of {task.name}; its splits: {', '.join(task.splits)}")


def _run_components(config, say=note) -> tuple:
    """(task, teacher, model, tokenizer) of a run, loading the model last."""
    from jinject.trainer import build

    return build(config, say)


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jinject.rundir import read_run_config
    from jinject.tasks import get_task

    config = read_run_config(args.dir)  # the directory, its config.json, a checkpoint: before any load
    check_eval_args(args, get_task(config.task, **config.task_options))
    from jinject.loading import peek_model_config

    host = peek_model_config(config.model)
    if host is not None and args.text_seq_len > host.max_position_embeddings:
        raise ValueError(f"--text-seq-len {args.text_seq_len} is longer than the model's "
                         f"{host.max_position_embeddings} positions")

    from jinject.evaluate import EvalConfig, evaluate_run, format_table
    from jinject.trainer import load_run

    run = load_run(args.dir, components=_run_components(config))
    say = lambda msg: print(f"jinject eval: {msg} ...", file=sys.stderr, flush=True)
    settings = EvalConfig(
        n_examples=args.n, n_decode=args.n_decode, n_causal=args.n_causal, n_text_windows=args.n_text,
        text_seq_len=args.text_seq_len, noise_norms=tuple(args.noise_norms),
        relative_noise=tuple(args.relative_noise), splits=args.splits, batch_size=args.batch_size,
        seed=args.eval_seed,
    )
    results = evaluate_run(run, settings, out=args.dir, progress=say)
    print(format_table(results))
    print(f"\nwritten: {Path(args.dir) / 'eval.json'}", file=sys.stderr)
    if not args.no_plots:
        from jinject.plots import plot_eval

        written = plot_eval(results, Path(args.dir) / "plots", Path(args.dir) / "metrics.jsonl")
        print(f"figures: {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jinject.rundir import read_run_config
    from jinject.tasks import get_task

    config = read_run_config(args.dir)
    if config.baseline:
        raise ValueError(f"{args.dir} is a baseline run: it has no adapter, so there is nothing to decode through")
    task = get_task(config.task, **config.task_options)
    try:
        problem = task.parse(args.text)
    except ValueError as e:
        example = task.examples("test", 1, 0)[0]
        raise ValueError(f"{args.text!r} is not a {task.name} problem: {e}. Give the compact form, e.g. "
                         f"{example.problem!r}, or the prompt text {example.prompt.strip()!r}") from None
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.is_dir():
            raise ValueError(f"--plot {plot} is a directory; give a file name such as decoded.png")
        if not plot.parent.exists():
            raise ValueError(f"--plot {plot}: the directory {plot.parent} does not exist")
    from jinject.compiler import compile_teacher

    teacher = compile_teacher(task, config.teacher_max_seq_len, progress=note)
    if args.layer is not None and not 0 <= args.layer <= teacher.n_layers:
        raise ValueError(f"--layer must be a teacher layer in [0, {teacher.n_layers}], got {args.layer}")

    from jinject.decoding import decode_problem, format_decoded
    from jinject.trainer import load_run

    components = _run_components(config)
    run = load_run(args.dir, components=(task, teacher, *components[2:]))
    decoded = decode_problem(run, problem, layer=args.layer)
    print(format_decoded(decoded))
    if args.plot:
        from jinject.plots import plot_decoded

        plot_decoded(decoded, args.plot)
        print(f"heatmap: {args.plot}", file=sys.stderr)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, with a hint when a problem starting with '-' was read as an option."""

    def error(self, message: str):  # type: ignore[override]
        argv = getattr(Parser, "argv", None) or []
        if argv and argv[0] == "decode" and any(a.startswith("-") and a.split("=")[0] not in DECODE_FLAGS
                                                and a != "--" for a in argv[1:]):
            message += ("; a problem that starts with '-' must come after `--`, e.g. "
                        "jinject decode DIR -- '-1+2'")
        super().error(message)


DECODE_FLAGS = {"--layer", "--plot", "-h", "--help"}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jinject", description=__doc__)
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

    from jinject.config_flags import add_config_flags

    p = sub.add_parser("train", help="inject a task into a model (or train the baseline); resumes from --out")
    add_config_flags(p)  # one option per TrainConfig field (help and flag names: jinject/config.py)
    p.add_argument("--out", default=None, help="run directory (resumed if it holds a run)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write the metrics as TensorBoard event files to DIR (needs jinject[tensorboard]; "
                        "not part of the run's config)")
    p.set_defaults(func=cmd_train)

    from jinject.evaluate.config import EvalConfig

    e = EvalConfig()
    p = sub.add_parser("eval", help="accuracy (test + OOD), language retention, decoding accuracy, causal test")
    p.add_argument("dir", help="run directory (from jinject train --out)")
    p.add_argument("--n", type=int, default=e.n_examples, help="examples per split for accuracy (original: 4000)")
    p.add_argument("--n-decode", type=int, default=e.n_decode, help="test examples for decoding accuracy")
    p.add_argument("--n-causal", type=int, default=e.n_causal, help="test examples for the causal test (default --n)")
    p.add_argument("--n-text", type=int, default=e.n_text_windows, help="held-out text windows for retention")
    p.add_argument("--text-seq-len", type=int, default=e.text_seq_len, help="tokens per held-out text window")
    p.add_argument("--noise-norms", type=float, nargs="+", default=list(e.noise_norms),
                   help="L2 norms of the causal-test noise")
    p.add_argument("--relative-noise", type=float, nargs="*", default=list(e.relative_noise),
                   help="causal-test noise norms as fractions of the median residual norm at the intervened layer")
    p.add_argument("--splits", nargs="+", default=e.splits, help="splits for accuracy (default: test + every OOD)")
    p.add_argument("--batch-size", type=int, default=e.batch_size)
    p.add_argument("--eval-seed", type=int, default=e.seed, help="seed of the evaluation examples (same for all runs)")
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
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.command in ("train", "eval", "decode"):
            from jinject.compilation import enable_compilation_cache

            check_flax_imports()
            enable_compilation_cache()
        return int(args.func(args) or 0)
    except (ValueError, OSError, NotImplementedError, FlaxMismatch) as e:  # bad input, missing files, offline hub,
        # unsupported model, a flax that does not import beside the installed jax
        print(f"jinject {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jinject {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if type(e).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(e):
            print(f"jinject {args.command}: error: out of memory ({one_line(e)[:200]}); lower --batch-size / "
                  "--text-batch-size, or try --dtype bfloat16 / --remat", file=sys.stderr)
            return 2
        raise  # a genuine bug: keep the traceback


def one_line(e: BaseException) -> str:
    """An exception as one line (multi-line messages, e.g. tracr's, are joined)."""
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    if isinstance(e, OSError) and e.filename is not None and e.strerror and str(e.filename) not in text:
        text = f"{e.strerror}: {e.filename}"
    return text or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
