"""Tracr injection vs baseline, for every task over several seeds: the result table of the method.

    python experiments/compare.py --preset cpu --jobs 2   # smollm2-135m, 2-core CPU, ~4 hours (18 runs)
    python experiments/compare.py --preset paper          # gpt2-large, 20k steps: a GPU/TPU VM
    python experiments/compare.py --preset cpu --tasks count --seeds 0   # one slice (e.g. per machine)
    python experiments/compare.py --preset cpu --aggregate-only          # tables from finished runs

Every (task, variant, seed) trains into OUT/runs/<task>-<variant>-s<seed> (resumable: an interrupted
command picks up where it stopped; a run whose eval.json is complete is not redone), is evaluated with
`jinject.evaluate.evaluate_run` (same evaluation examples for all runs), and the table is rebuilt from
every eval.json under OUT: `results.md` (mean ± std over seeds, injected next to baseline),
`results.csv` (the same numbers, one row per task x metric), `runs.csv` (one row per run x metric) and
one OOD-accuracy figure per task; a hand-written OUT/notes.md (status, what the numbers say) is copied
into results.md above the tables. A preset is a JSON file in experiments/presets/ (or any path).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PRESETS = Path(__file__).resolve().parent / "presets"
VARIANTS = ("injected", "baseline")


def load_preset(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith(".json") else PRESETS / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PRESETS.glob("*.json"))
        raise SystemExit(f"compare: no preset {name!r} (known: {known}, or pass a .json path)")
    preset = json.loads(path.read_text())
    preset.setdefault("name", path.stem)
    return preset


def run_dir(out: Path, task: str, variant: str, seed: int) -> Path:
    return out / "runs" / f"{task}-{variant}-s{seed}"


def make_config(preset: dict[str, Any], task: str, variant: str, seed: int, steps: int | None = None):
    from jinject.config import TrainConfig

    fields = {**preset.get("train", {}), **preset.get("tasks", {}).get(task, {}), "task": task, "seed": seed,
              "baseline": variant == "baseline"}
    if steps is not None:
        fields["steps"] = steps
    return TrainConfig(**fields)


def run_one(config: Any, directory: Path, eval_kwargs: dict[str, Any], components: tuple | None = None,
            log=print) -> dict[str, Any]:
    """Train (or resume) one run and evaluate it; an existing complete eval.json is reused."""
    from jinject.compilation import enable_compilation_cache
    from jinject.evaluate import evaluate_run
    from jinject.trainer import load_run, train

    enable_compilation_cache()  # seeds of one configuration share compiled steps and evaluations

    done = directory / "eval.json"
    if done.exists():
        results = json.loads(done.read_text())
        if results.get("run", {}).get("step") == config.steps:
            log(f"  {directory.name}: evaluated already (step {config.steps}), reused")
            return results
    t0 = time.perf_counter()
    ckpt = directory / "checkpoints"
    finished = False
    if ckpt.exists():
        try:
            run = load_run(directory, components=components)
            finished = run.step >= config.steps and run.config == config
        except FileNotFoundError:
            finished = False
    if not finished:
        run = train(config, directory, components=components, progress=sys.stderr.isatty())
        log(f"  {directory.name}: trained {config.steps} steps in {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    results = evaluate_run(run, out=directory, **eval_kwargs)
    results["run"]["train_seconds"] = train_loop_seconds(directory)
    results["run"]["eval_seconds"] = round(time.perf_counter() - t1, 1)
    from jinject.rundir import finite_or_none

    done.write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n")  # standard JSON only
    log(f"  {directory.name}: evaluated in {time.perf_counter() - t1:.0f} s")
    keep_final_checkpoint(directory / "checkpoints", run.step)
    return results


def keep_final_checkpoint(ckpt: Path, final: int) -> None:
    """An evaluated run needs only its final checkpoint (eval, decode, probing read it): the older ones go.
    Each holds parameters and AdamW moments, 1.5 GB for SmolLM2-135M: the 18 runs of the cpu preset would
    otherwise keep 54 GB."""
    from jinject.rundir import checkpoint_steps

    for step in checkpoint_steps(ckpt):
        if step < final:
            shutil.rmtree(ckpt / str(step))


# ------------------------------------------------------------------------------------------ tables


def train_loop_seconds(directory: Path) -> float | None:
    """The seconds the run's steps took, summed over every session that trained it: a resumed run's own
    call sees only its last part (one run resumed near its end once reported 16 s instead of 852 s). It is
    the sum of the per-step times in metrics.jsonl, the steps the final run kept (redone ones once), without
    the minute of loading and compiling before the first step."""
    from jinject.rundir import read_metrics

    records, _ = read_metrics(directory / "metrics.jsonl")
    times = [r["time"] for r in records if r.get("time") is not None]
    return round(sum(times), 1) if times else None


def load_eval(path: Path) -> dict[str, Any]:
    """One run's eval.json, with its training time recounted from metrics.jsonl (older eval.json files
    stored the last session's time only)."""
    results = json.loads(path.read_text())
    seconds = train_loop_seconds(path.parent)
    if seconds is not None:
        results.setdefault("run", {})["train_seconds"] = seconds
    return results


def flatten(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one eval.json as {metric: value} (absent metrics are left out)."""
    flat: dict[str, float] = {}
    for split, a in results.get("accuracy", {}).items():
        if a.get("accuracy") is not None:
            flat[f"accuracy/{split}"] = a["accuracy"]
    ret = results.get("retention")
    if ret:
        for k in ("ppl_original", "ppl_trained", "kl"):
            flat[f"retention/{k}"] = ret[k]
    dec = results.get("decoding")
    if dec:
        if dec.get("mean") is not None:
            flat["decoding/mean over variables"] = dec["mean"]
        finals = [v["final"] for v in dec["variables"].values() if v.get("final") is not None]
        if finals:
            flat["decoding/mean at top layer"] = sum(finals) / len(finals)
        answer = dec.get("answer_var")
        if answer in dec["variables"] and dec["variables"][answer].get("final") is not None:
            flat[f"decoding/{answer} (answer) at top layer"] = dec["variables"][answer]["final"]
        for var, v in dec["variables"].items():
            if v.get("written") is not None:
                flat[f"decoding/{var} at its layer"] = v["written"]
        for var, v in dec.get("marker", {}).items():
            if v.get("written") is not None:
                flat[f"decoding/{var} at its layer, marker"] = v["written"]
    cau = results.get("causal")
    if cau:
        for n, a, r in zip(cau["norms"], cau["answer_subspace"], cau["random_subspace"], strict=True):
            flat[f"causal/noise {n:g}: answer subspace"] = a
            flat[f"causal/noise {n:g}: random subspace"] = r
        rel = cau.get("relative")
        if rel:
            for f, a, r in zip(rel["fractions"], rel["answer_subspace"], rel["random_subspace"], strict=True):
                flat[f"causal/noise {f:g}x residual norm: answer subspace"] = a
                flat[f"causal/noise {f:g}x residual norm: random subspace"] = r
    for k in ("train_seconds", "eval_seconds"):
        if results.get("run", {}).get(k) is not None:
            flat[f"time/{k.replace('_', ' ')}"] = results["run"][k]
    return flat


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def collect(out: Path) -> list[dict[str, Any]]:
    """Every evaluated run under OUT/runs as {task, variant, seed, step, metrics}."""
    records = []
    for path in sorted((out / "runs").glob("*/eval.json")):
        res = load_eval(path)
        r = res.get("run", {})
        records.append({"task": r.get("task"), "variant": "baseline" if r.get("baseline") else "injected",
                        "seed": r.get("seed"), "step": r.get("step"), "metrics": flatten(res), "eval": res,
                        "dir": path.parent})
    return records


SETTING_KEYS = ("jax", "jaxlib", "device", "cpu", "cpus_usable", "XLA_FLAGS", "OMP_NUM_THREADS")


def time_and_setting(records: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the runs' summed wall time (the budget a preset is held to) and the execution settings
    they trained under, from each run's environment.jsonl. XLA on a CPU rounds differently under other thread
    settings, so a seed's numbers reproduce bit-for-bit only under the setting listed here."""
    train = sum(r["metrics"].get("time/train seconds", 0.0) for r in records)
    evaluation = sum(r["metrics"].get("time/eval seconds", 0.0) for r in records)
    hours = (train + evaluation) / 3600
    lines = ["## time and execution setting", "",
             f"{len(records)} runs: {train:.0f} s training + {evaluation:.0f} s evaluation = {hours:.2f} h of one "
             f"core, about {hours / 2:.2f} h with `--jobs 2` (two runs at once, one core each).", ""]
    from jinject.rundir import read_environment

    settings: dict[str, list[str]] = {}
    for rec in records:
        keys = {json.dumps({k: c.get(k) for k in SETTING_KEYS}) for c in read_environment(rec["dir"])}
        keys = keys or {"not recorded"}
        for key in sorted(keys):  # a run resumed under another setting is listed under both
            settings.setdefault(key, []).append(f"{rec['task']} {rec['variant']} s{rec['seed']}")
    for key, runs in settings.items():
        what = key if key == "not recorded" else ", ".join(f"{k}={v}" for k, v in json.loads(key).items())
        lines.append(f"- {what}: {len(runs)} run{'s' * (len(runs) > 1)} ({', '.join(runs)})")
    return lines + [""]


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, metric): mean, std and n per variant."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for rec in records:
        for metric in rec["metrics"]:
            key = (rec["task"], metric)
            if key not in rows:
                rows[key] = {"task": rec["task"], "metric": metric}
                order.append(key)
    for key in order:
        row = rows[key]
        for variant in VARIANTS:
            vals = [r["metrics"][key[1]] for r in records
                    if r["task"] == key[0] and r["variant"] == variant and key[1] in r["metrics"]]
            if vals:
                m, s = mean_std(vals)
                row.update({f"{variant}_mean": m, f"{variant}_std": s, f"{variant}_n": len(vals)})
    group = {"accuracy": 0, "retention": 1, "decoding": 2, "causal": 3, "time": 4}
    return sorted(rows.values(), key=lambda r: (r["task"], group.get(r["metric"].split("/")[0], 9)))


def _cell(row: dict[str, Any], variant: str) -> str:
    if f"{variant}_mean" not in row:
        return "—"
    m, s, n = row[f"{variant}_mean"], row[f"{variant}_std"], row[f"{variant}_n"]
    metric = row["metric"]
    digits = 0 if metric.startswith("time/") else 2 if "ppl" in metric else 4 if metric.endswith("/kl") else 3
    return f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"


def write_tables(out: Path, records: list[dict[str, Any]], preset: dict[str, Any] | None = None) -> Path:
    """results.md, results.csv, runs.csv and ood_<task>.png under OUT; returns the results.md path."""
    rows = summarise(records)
    with open(out / "results.csv", "w", newline="") as f:
        fields = ["task", "metric"] + [f"{v}_{k}" for v in VARIANTS for k in ("mean", "std", "n")]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "variant", "seed", "step", "metric", "value"])
        for rec in records:
            for k, v in rec["metrics"].items():
                w.writerow([rec["task"], rec["variant"], rec["seed"], rec["step"], k, v])

    lines = ["# jinject: tracr injection vs baseline", ""]
    if preset:
        lines += [f"Preset `{preset.get('name')}`: {preset.get('description', '')}", "",
                  f"Training settings: `{json.dumps(preset.get('train', {}))}`; per task: "
                  f"`{json.dumps(preset.get('tasks', {}))}`; evaluation: `{json.dumps(preset.get('eval', {}))}`.", ""]
    lines += ["Mean ± sample std over seeds (n = number of runs). Accuracy: greedy exact match. Retention: "
              "perplexity on held-out text (original model, trained model) and KL(original ‖ trained) per token. "
              "Decoding: fraction of (position, variable) values read from the student through the adapter that "
              "equal the teacher's, averaged over the aligned layers where the teacher holds the variable; "
              "'at its layer': at the layer that writes the variable ('marker': at the last prompt token only). "
              "Causal: accuracy with noise of the given L2 norm (absolute, or a fraction of the median residual norm "
              "at the intervened hidden state) added inside the answer subspace vs a random subspace of "
              "the same dimension. Decoding and causal rows do not apply to the baseline (—).", ""]
    notes = out / "notes.md"  # hand-written status and reading of the numbers, kept across table rebuilds
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    for task in sorted({r["task"] for r in rows}):
        seeds = sorted({rec["seed"] for rec in records if rec["task"] == task})
        steps = sorted({rec["step"] for rec in records if rec["task"] == task})
        lines += [f"## {task}", "", f"seeds: {seeds}; trained steps: {steps}", "",
                  "| metric | injected | baseline |", "|---|---|---|"]
        for r in rows:
            if r["task"] == task:
                lines.append(f"| {r['metric']} | {_cell(r, 'injected')} | {_cell(r, 'baseline')} |")
        lines.append("")
        fig = _ood_figure(out, task, records)
        if fig is not None:
            lines += [f"![OOD accuracy, {task}]({fig.name})", ""]
    lines += time_and_setting(records)
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def _ood_figure(out: Path, task: str, records: list[dict[str, Any]]) -> Path | None:
    try:
        from jinject.plots import plot_ood_accuracy
    except ImportError:
        return None
    groups = {v: [r["eval"] for r in records if r["task"] == task and r["variant"] == v] for v in VARIANTS}
    groups = {k: v for k, v in groups.items() if v}
    path = out / f"ood_{task}.png"
    plot_ood_accuracy(groups, path, title=f"{task}: exact-match accuracy, injected vs baseline")
    return path


# -------------------------------------------------------------------------------------------- main


SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def describe_exit(returncode: int) -> str:
    """Why a run's process ended, in words: a SIGKILL is almost always the out-of-memory killer, which leaves
    no traceback in the log."""
    import signal

    if returncode >= 0:
        return f"exit {returncode}"
    name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else f"signal {-returncode}"
    hint = " (on Linux usually the out-of-memory killer: run fewer jobs at once)" if name == "SIGKILL" else ""
    return f"killed by {name}{hint}; rerunning resumes it from its last checkpoint"


def run_in_parallel(jobs: list[tuple[str, str, int]], args: argparse.Namespace, out: Path, preset: dict) -> None:
    """Each run in its own process on one core (XLA single-threaded), `args.jobs` at a time; a failed run is
    reported and the others go on (rerunning resumes it)."""
    import os
    import subprocess

    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {SINGLE_THREAD_XLA}".strip()}
    cores = sorted(os.sched_getaffinity(0))
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            task, variant, seed = pending.pop(0)
            core = next(c for c in cores[: args.jobs] if c not in running.values()) if len(cores) >= args.jobs else None
            cmd = [sys.executable, __file__, "--preset", args.preset, "--out", str(out), "--tasks", task,
                   "--variants", variant, "--seeds", str(seed), "--no-tables"]
            for flag in ("steps", "model"):
                if getattr(args, flag) is not None:
                    cmd += [f"--{flag}", str(getattr(args, flag))]
            if core is not None:
                cmd = ["taskset", "-c", str(core), *cmd]
            print(f"[{len(jobs) - len(pending)}/{len(jobs)}] {task} {variant} seed {seed}"
                  f"{f' on core {core}' if core is not None else ''} ({time.strftime('%H:%M:%S')})", flush=True)
            running[subprocess.Popen(cmd, env=env)] = core
        finished = next((p for p in running if p.poll() is not None), None)
        if finished is None:
            time.sleep(5)
            continue
        if finished.returncode != 0:
            print(f"compare: a run failed ({describe_exit(finished.returncode)}): {' '.join(finished.args[-8:])}",
                  flush=True)
        del running[finished]
        write_tables(out, collect(out), preset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", help="cpu | paper | path/to/preset.json")
    parser.add_argument("--out", default=None, help="output directory (default: results/<preset>)")
    parser.add_argument("--tasks", nargs="+", default=None, help="subset of the preset's tasks")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="override the preset's seeds")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--model", default=None, help="override the preset's host model")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild the tables from eval.json files")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, each pinned to one core with one XLA thread (2 on a 2-core machine: "
                             "1.11x the throughput of one run on both cores, experiments/bench_cpu_jobs.py)")
    parser.add_argument("--no-tables", action="store_true", help=argparse.SUPPRESS)  # a --jobs worker
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")

    preset = load_preset(args.preset)
    for flag in ("model", "steps"):  # an override shows in the tables' settings line, as the runs used it
        if getattr(args, flag) is not None:
            preset["train"] = {**preset.get("train", {}), flag: getattr(args, flag)}
    out = Path(args.out or f"results/{preset['name']}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        tasks = args.tasks or list(preset.get("tasks", {}))
        seeds = args.seeds if args.seeds is not None else preset.get("seeds", [0])
        eval_kwargs = dict(preset.get("eval", {}))
        if "noise_norms" in eval_kwargs:
            eval_kwargs["noise_norms"] = tuple(float(x) for x in eval_kwargs["noise_norms"])
        jobs = [(t, v, s) for t in tasks for s in seeds for v in args.variants]
        print(f"compare: preset {preset['name']}, {len(jobs)} runs -> {out}")
        if args.jobs > 1:
            run_in_parallel(jobs, args, out, preset)
        else:
            for k, (task, variant, seed) in enumerate(jobs, 1):
                config = make_config(preset, task, variant, seed)  # --steps is in preset["train"] by now
                print(f"[{k}/{len(jobs)}] {task} {variant} seed {seed}: {config.model}, {config.steps} steps",
                      flush=True)
                run_one(config, run_dir(out, task, variant, seed), eval_kwargs)
                if not args.no_tables:
                    write_tables(out, collect(out), preset)  # partial tables as runs finish
    if args.no_tables:
        return 0
    path = write_tables(out, collect(out), preset)
    print(path.read_text())
    print(f"compare: wrote {path}, {out / 'results.csv'}, {out / 'runs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
