"""Which part of the objective moves what: the shuffle-dyck ablation behind the `cpu` preset's defaults.

    python experiments/ablation.py                         # every configuration, seeds 0 and 1
    python experiments/ablation.py --configs all-fixes+stride2 baseline+frame-bos --seeds 2
    python experiments/ablation.py --aggregate-only        # tables from finished runs
    python experiments/ablation.py --task count --seeds 0  # the chosen settings' parts on another task
    python experiments/ablation.py --configs all-fixes+stride2-intervene --seeds 1 --steps 900 --out DIR

Every configuration is the `cpu` preset's shuffle-dyck run (smollm2-135m, 300 steps unless `--steps` says
otherwise, inputs of up to 12 brackets) with a few settings changed; each trains into
OUT/runs/<config>-s<seed> (resumable, like compare.py: a finished eval.json is reused) and the table
OUT/results.md gives mean ± std over seeds of accuracy (test, every OOD split), retention, decoding per
variable (at the layer that writes it, over all positions and at the marker) and the causal test with noise
relative to the residual norm.

"today" is the objective as it was before this ablation (intervention on the top aligned hidden state,
every teacher dimension aligned, bare symbols, adapter lr 10x the student's, uniform positions); each
"+fix" changes one thing on top of it. CHOSEN (all-fixes+stride2) was chosen by in-distribution signals
only (held-out test accuracy, alignment, decoding of every variable; results/ablation/README.md) and is
now the cpu preset's setting; "baseline+frame-bos" is its matching baseline (same prompts).

`--task count` / `--task int-sum` run the configurations that do not depend on the dyck teacher (no fixed
hidden index, no dyck program) into results/ablation-<task>: the chosen settings with the intervention or
the alignment or the warm-up taken out, to measure which part costs those tasks their accuracy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import describe_exit, flatten, load_eval, load_preset, mean_std, run_one  # noqa: E402

TODAY = {"intervene_at": 4, "align_exclude": []}  # the 4-layer dyck teacher: top aligned state = hidden 4
FRAMED = {"frame": True, "bos": True}
# the objective settings of the cpu preset before this ablation (TrainConfig's defaults, stride 1, bare prompts)
BEFORE = {"layer_stride": 1, "adapter_warmup_steps": 0, "marker_weight": 1.0, "align_exclude": None,
          "intervene_at": None}
CHOSEN = "all-fixes+stride2"  # the cpu preset's settings; chosen by the rule in results/ablation/README.md
CHOSEN_FIELDS = {"task_options": FRAMED, "adapter_warmup_steps": 30, "marker_weight": 5.0, "layer_stride": 2}

# name -> (what it tests, TrainConfig overrides on top of the cpu preset's shuffle-dyck run)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("task + KL only", {"baseline": True}),
    "align-only": ("alignment, no intervention", {**TODAY, "intervene": False}),
    "intervene-only": ("intervention (random fixed subspace), no alignment", {**TODAY, "align": False}),
    "today": ("alignment + intervention as before this ablation", TODAY),
    "+placement": ("intervene on the output of the block after the top aligned one (the original's)",
                   {**TODAY, "intervene_at": None}),
    "+feasible": ("leave tracr's `indices` out of the alignment (RoPE host)", {**TODAY, "align_exclude": ["indices"]}),
    "+frame-bos": ("question in words + the host's BOS before the symbols", {**TODAY, "task_options": FRAMED}),
    "+adapter-ratio": ("adapter lr 100x the student's (the original's ratio) instead of 10x",
                       {**TODAY, "adapter_lr": 1e-2}),
    "+adapter-warmup": ("adapter alone for the first 30 steps (student frozen)", {**TODAY, "adapter_warmup_steps": 30}),
    "+marker-weight": ("the marker position weighs 5x in the alignment mean", {**TODAY, "marker_weight": 5.0}),
    "+stride2": ("teacher layer i <-> student hidden state 2i (two student blocks per teacher layer)",
                 {**TODAY, "layer_stride": 2, "intervene_at": 8}),
    "all-fixes": ("every fix above at once (adapter: warm-up), stride 1",
                  {"task_options": FRAMED, "adapter_warmup_steps": 30, "marker_weight": 5.0}),
    "all-fixes+stride2": ("every fix above at once, stride 2 (the cpu preset's injected run)", CHOSEN_FIELDS),
    "all-fixes+stride2+balance": ("every fix, stride 2, and the original's balance-based dyck program "
                                  "(8 layers) instead of exact counts",
                                  {**CHOSEN_FIELDS, "task_options": {**FRAMED, "program": "balance"}}),
    "all-fixes+stride4": ("every fix, stride 4 (the teacher spread over hidden states 0-16 of 30); tried after "
                          "the choice was frozen, because the counts stay approximate at the marker",
                          {**CHOSEN_FIELDS, "layer_stride": 4}),
    "all-fixes+stride2+per-variable": ("every fix, stride 2, one cosine per RASP variable; tried after the choice "
                                       "was frozen, because the counts stay approximate at the marker",
                                       {**CHOSEN_FIELDS, "align_per_variable": True}),
    "baseline+frame-bos": ("the baseline on the framed prompts (the cpu preset's baseline run)",
                           {**CHOSEN_FIELDS, "baseline": True}),
    "all-fixes+stride2-intervene": ("the chosen settings without the intervention (alignment only); run after "
                                    "the freeze, to find what costs count / int-sum their accuracy",
                                    {**CHOSEN_FIELDS, "intervene": False}),
    "all-fixes+stride2-align": ("the chosen settings without the alignment (intervention through a random "
                                "subspace); run after the freeze, like the row above",
                                {**CHOSEN_FIELDS, "align": False}),
    "all-fixes+stride2-warmup": ("the chosen settings without the 30 adapter-only steps; run after the freeze, "
                                 "like the row above", {**CHOSEN_FIELDS, "adapter_warmup_steps": 0}),
    "all-fixes+stride2+offset14": ("the chosen settings with the teacher in the upper half of the student (layer i "
                                   "<-> hidden state 14 + 2i; intervention after block 14 + 2 L_t); run after the "
                                   "freeze, because activation patching found the injected runs read the new pair "
                                   "into the marker by hidden state 3, the baseline only from about 12 on",
                                   {**CHOSEN_FIELDS, "layer_offset": 14}),
    "all-fixes+stride2+offset10": ("the chosen settings with teacher layer i <-> hidden state 10 + 2i (the counting "
                                   "layer at the baseline's patching crossover, 11 blocks after the intervention); "
                                   "run after the freeze, between the chosen row and offset 14",
                                   {**CHOSEN_FIELDS, "layer_offset": 10}),
    "all-fixes+stride2+offset6": ("the chosen settings with teacher layer i <-> hidden state 6 + 2i (15 blocks after "
                                  "the intervention); run after the freeze, between the chosen row and offset 14",
                                  {**CHOSEN_FIELDS, "layer_offset": 6}),
    "all-fixes+stride2+offset6+align0.3": ("offset 6 with the alignment weighted 0.3 instead of 1 (the KL to the "
                                          "original weighs relatively more); run after the freeze, because the "
                                          "new-pair loss comes with the alignment, not the intervention",
                                          {**CHOSEN_FIELDS, "layer_offset": 6, "align_weight": 0.3}),
    "all-fixes+stride2+offset6+align3": ("offset 6 with the alignment weighted 3; the second step of the row "
                                        "above, set before its runs, after λ = 0.3 lowered the decoding of the "
                                        "counts at the marker",
                                        {**CHOSEN_FIELDS, "layer_offset": 6, "align_weight": 3.0}),
    "all-fixes+stride2+offset6+align10": ("offset 6 with the alignment weighted 10; the third step, set before its "
                                         "runs, because λ = 3 left the counts' decoding at the marker below 0.95",
                                         {**CHOSEN_FIELDS, "layer_offset": 6, "align_weight": 10.0}),
    "all-fixes+stride2+gate": ("the chosen settings, intervening only on batches whose answer the subspace already "
                               "reads at the marker for >= 0.95 of the examples (the decoding target); run after "
                               "the freeze, because count's subspace holds its answer only approximately",
                               {**CHOSEN_FIELDS, "intervene_gate": 0.95}),
}
# configurations tied to the 4-layer dyck teacher (a fixed intervention index, the dyck program)
DYCK_ONLY = {n for n, (_, o) in CONFIGS.items() if "intervene_at" in o or "program" in o.get("task_options", {})}
DEFAULT_ORDER = ["all-fixes", "baseline", "all-fixes+stride2", "all-fixes+stride2+balance", "today", "+placement",
                 "+feasible", "+frame-bos",
                 "+adapter-warmup", "+adapter-ratio", "+marker-weight", "+stride2", "align-only", "intervene-only",
                 "baseline+frame-bos", "all-fixes+stride4",
                 "all-fixes+stride2+per-variable", "all-fixes+stride2+gate"]
# on another task: the chosen settings, each part taken out, and the matching baseline
OTHER_TASK_ORDER = ["all-fixes+stride2-intervene", "all-fixes+stride2-align", "all-fixes+stride2-warmup",
                    "all-fixes+stride2+gate", CHOSEN, "baseline+frame-bos"]
TASK = "shuffle-dyck"


def make_config(preset: dict[str, Any], name: str, seed: int, task: str = TASK):
    from jinject.config import TrainConfig

    if task != TASK and name in DYCK_ONLY:
        raise ValueError(f"configuration {name!r} is tied to the shuffle-dyck teacher (a fixed hidden index or the "
                         f"dyck program) and cannot run on {task!r}; on other tasks run one of "
                         f"{sorted(set(CONFIGS) - DYCK_ONLY)}")
    _, overrides = CONFIGS[name]
    # the preset now carries the chosen settings: every configuration starts from the objective before them
    base = {**preset["train"], **preset["tasks"][task], **BEFORE}
    task_options = {k: v for k, v in preset["tasks"][task].get("task_options", {}).items() if k not in FRAMED}
    task_options.update(overrides.get("task_options", {}))
    fields = {**base, **overrides, "task_options": task_options, "task": task, "seed": seed}
    return TrainConfig(**fields)


def summary_columns(results: dict[str, Any]) -> dict[str, float]:
    """The ablation's columns for one eval.json (absent ones are left out)."""
    flat = flatten(results)
    cols = {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith("accuracy/")}
    cols.update({k: v for k, v in flat.items() if k in ("retention/ppl_trained", "retention/kl")})
    dec = results.get("decoding")
    if dec:
        for var, v in dec["variables"].items():
            if v.get("written") is not None:
                cols[f"dec {var}"] = v["written"]
        for var, v in dec.get("marker", {}).items():
            if v.get("written") is not None:
                cols[f"dec@? {var}"] = v["written"]
    rel = (results.get("causal") or {}).get("relative")
    if rel:
        for f, a, r in zip(rel["fractions"], rel["answer_subspace"], rel["random_subspace"], strict=True):
            cols[f"causal {f:g}x ans"] = a
            cols[f"causal {f:g}x rand"] = r
    for key, col in (("time/train seconds", "train s"), ("time/eval seconds", "eval s")):  # flatten's time rows
        if key in flat:
            cols[col] = flat[key]
    return cols


def training_columns(directory: Path, last: int = 20) -> dict[str, float]:
    """From metrics.jsonl: per-layer 1 - cos and the answer read through the adapter at the marker, each
    averaged over the last `last` logged steps, and the fraction of all steps the intervention cut."""
    from jinject.rundir import read_metrics

    recs, _ = read_metrics(directory / "metrics.jsonl")
    cols: dict[str, float] = {}
    rows = [r["align_per_layer"] for r in recs[-last:] if "align_per_layer" in r]
    if rows:
        align = [sum(c) / len(c) for c in zip(*rows, strict=True)]
        cols["align sum (train)"] = sum(align)
        cols.update({f"align t{i} (train)": a for i, a in enumerate(align)})
    readout = [r["answer_readout"] for r in recs[-last:] if "answer_readout" in r]
    if readout:
        cols["readout@? answer (train)"] = sum(readout) / len(readout)
    cut = [r["intervened"] for r in recs if "intervened" in r]
    if cut:
        cols["intervened steps (train)"] = sum(cut) / len(cut)
    return cols


def collect(out: Path) -> dict[str, list[dict[str, float]]]:
    by_config: dict[str, list[dict[str, float]]] = {}
    for path in sorted((out / "runs").glob("*/eval.json")):
        name, _, seed = path.parent.name.rpartition("-s")
        if name not in CONFIGS:
            continue
        cols = {**summary_columns(load_eval(path)), **training_columns(path.parent)}
        cols["seed"] = int(seed)
        by_config.setdefault(name, []).append(cols)
    return by_config


def write_tables(out: Path, by_config: dict[str, list[dict[str, float]]], task: str = TASK,
                 steps: int = 300) -> Path:
    names = [n for n in CONFIGS if n in by_config]
    columns: list[str] = []
    for n in names:
        for rec in by_config[n]:
            columns += [c for c in rec if c not in columns and c != "seed"]

    def cell(name: str, col: str) -> str:
        vals = [r[col] for r in by_config[name] if col in r]
        if not vals:
            return "—"
        m, s = mean_std(vals)
        digits = 0 if col.endswith(" s") else 2 if col == "retention/ppl_trained" else 4 if "kl" in col else 3
        return f"{m:.{digits}f} ± {s:.{digits}f}"

    inputs = ", inputs of up to 12 brackets" if task == TASK else ""
    lines = [f"# {task} ablation (cpu preset: smollm2-135m, {steps} steps{inputs})", "",
             "Mean ± sample std over seeds. Generated by `experiments/ablation.py` from every eval.json under "
             "`runs/`. Accuracy: greedy exact match (200 examples per split). `dec VAR`: decoding accuracy of "
             "the variable at the layer that writes it, every position; `dec@? VAR`: the same at the marker "
             "(the last prompt token) only. Causal: teacher-forced exact match with noise of norm f x the median "
             "residual norm at the intervened hidden state, inside the answer subspace (ans) vs a random "
             "subspace of the same dimension (rand). `align tI (train)`: mean 1 - cos at teacher layer I over "
             "the last 20 training steps (on the dimensions the run aligns). `readout@? answer (train)`: the "
             "fraction of a batch whose answer, read through the adapter at the intervention site at the marker, "
             "is the teacher's (last 20 steps); `intervened steps (train)`: the fraction of steps the intervention "
             "cut (below 1 only with a gate).", "",
             "| config | what it tests | seeds |", "|---|---|---|"]
    for n in names:
        seeds = sorted(r["seed"] for r in by_config[n])
        lines.append(f"| {n} | {CONFIGS[n][0]} | {seeds} |")
    lines.append("")
    def table(title: str, rows: list[str], cols: list[str]) -> None:
        lines.extend([f"## {title}", "", "| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"])
        lines.extend(f"| {n} | " + " | ".join(cell(n, c) for c in cols) + " |" for n in rows)
        lines.append("")

    table("accuracy and retention", names, [c for c in columns if c.startswith(("test", "ood", "retention"))])
    # one decoding table per program: the configs that share a set of variables
    programs: dict[tuple[str, ...], list[str]] = {}
    for n in names:
        key = tuple(c for c in columns if c.startswith("dec") and any(c in r for r in by_config[n]))
        if key:
            programs.setdefault(key, []).append(n)
    for cols, rows in programs.items():
        table("decoding" + (f" ({', '.join(rows)})" if len(programs) > 1 else ""), rows, list(cols))
    for title, prefix in (("causal", "causal"), ("alignment", "align"),
                          ("answer readout at the marker and the intervention gate", ("readout", "intervened")),
                          ("wall time", None)):
        cols = [c for c in columns if (c.startswith(prefix) if prefix else c.endswith(" s"))]
        rows = [n for n in names if any(c in r for r in by_config[n] for c in cols)]
        if cols and rows:
            table(title, rows, cols)
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def write_readout_figure(out: Path) -> Path | None:
    """OUT/answer_readout.png: the answer read through the adapter at the marker over training, and the
    fraction of steps cut, for every evaluated run that logged them (runs from before the readout was logged
    have none)."""
    from jinject.plots import plot_answer_readout, read_metrics

    runs = {p.parent.name: read_metrics(p.parent) for p in sorted((out / "runs").glob("*/eval.json"))
            if p.parent.name.rpartition("-s")[0] in CONFIGS and (p.parent / "metrics.jsonl").exists()}
    runs = {name: records for name, records in runs.items() if any("answer_readout" in r for r in records)}
    if not runs:
        return None
    plot_answer_readout(runs, out / "answer_readout.png")
    return out / "answer_readout.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=TASK, help="shuffle-dyck (default) or another task of the cpu preset")
    parser.add_argument("--out", help="default: results/ablation, or results/ablation-<task> for another task")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        help="default: every configuration on shuffle-dyck; on another task the chosen settings "
                             "with each part taken out, and the matching baseline")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=None,
                        help="override the preset's steps (a step-budget study; use its own --out)")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="run the jobs in this process (default: one child process per run, so memory is "
                             "returned between runs)")
    args = parser.parse_args(argv)
    preset = load_preset("cpu")
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        preset["train"] = {**preset["train"], "steps": args.steps}
    steps = preset["train"]["steps"]
    if args.task not in preset["tasks"]:
        parser.error(f"--task {args.task!r}: the cpu preset has no such task; choose one of {sorted(preset['tasks'])}")
    configs = args.configs or (DEFAULT_ORDER if args.task == TASK else OTHER_TASK_ORDER)
    try:  # every configuration is checked before the first run starts
        for name in configs:
            make_config(preset, name, 0, args.task)
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out or ("results/ablation" if args.task == TASK else f"results/ablation-{args.task}"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.aggregate_only:
        eval_kwargs = dict(preset.get("eval", {}))
        eval_kwargs["noise_norms"] = tuple(float(x) for x in eval_kwargs.get("noise_norms", (0, 5, 10, 30)))
        jobs = [(n, s) for s in args.seeds for n in configs]
        for k, (name, seed) in enumerate(jobs, 1):
            print(f"[{k}/{len(jobs)}] {name} seed {seed} ({time.strftime('%H:%M:%S')})", flush=True)
            if not args.in_process:
                child = subprocess.run([sys.executable, __file__, "--task", args.task, "--out", str(out), "--configs",
                                        name, "--seeds", str(seed), "--steps", str(steps), "--in-process"],
                                       check=False)
                if child.returncode != 0:  # the queue goes on; say why this one stopped
                    print(f"ablation: {name} seed {seed} failed ({describe_exit(child.returncode)})", flush=True)
                continue
            try:
                run_one(make_config(preset, name, seed, args.task), out / "runs" / f"{name}-s{seed}", eval_kwargs)
            except Exception:  # one failed run must not stop the queue; its traceback stays in the log
                traceback.print_exc()
            write_tables(out, collect(out), args.task, steps)
    path = write_tables(out, collect(out), args.task, steps)
    write_readout_figure(out)
    if not args.in_process:
        print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
