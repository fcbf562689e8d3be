"""Figures (matplotlib, PNG): training curves, the answer readout, decoding accuracy, OOD accuracy, causal test,
decoded tokens.

Every function builds a `matplotlib.figure.Figure` without pyplot (no global state, no display needed,
works the same in a terminal, CI and Colab), saves it when `out` is given and returns it. In a notebook
show the PNG with `IPython.display.Image(out)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jinject import rundir

PathLike = str | Path


def _save(fig: Figure, out: PathLike | None) -> Figure:
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
    return fig


Records = list[dict[str, Any]]  # a run's metrics, one dict per step


def read_metrics(path: PathLike) -> Records:
    """Records of a run's metrics.jsonl (a run directory or the file itself); the last record per step wins
    (a resumed run may have logged a step twice)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist: pass a run directory or its metrics.jsonl")
    records, _ = rundir.read_metrics(p)  # a line cut by a kill mid-write is skipped
    by_step = {int(rec["step"]): rec for rec in records}
    return [by_step[s] for s in sorted(by_step)]


def _as_runs(runs: PathLike | Mapping[str, PathLike | Records]) -> dict[str, Records]:
    """{label: records}, each run's metrics.jsonl read once. One run directory / metrics.jsonl is labelled
    with its directory's name; a mapping's values may be paths or records already read."""
    if not isinstance(runs, Mapping):
        p = Path(runs)
        runs = {(p if p.is_dir() else p.parent).name or "run": runs}
    return {label: run if isinstance(run, list) else read_metrics(run) for label, run in runs.items()}


def plot_training_curves(runs: PathLike | Mapping[str, PathLike | Records], out: PathLike | None = None) -> Figure:
    """Losses (task, KL, alignment, total; log scale) and answer accuracy against step.

    `runs`: one run directory / metrics.jsonl, or {label: path or records} to overlay runs (e.g. injected vs
    baseline).
    """
    runs = _as_runs(runs)
    panels = [("task", "task loss (answer CE)"), ("kl", "KL(original || student), text"),
              ("align", "alignment loss (sum of 1 - cos)"), ("answer_acc", "answer-token accuracy (train batch)")]
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, run in runs.items():
            recs = [r for r in run if r.get(key) is not None]
            if recs:
                ax.plot([r["step"] for r in recs], [r[key] for r in recs], label=label, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key != "answer_acc" and ax.lines and all(np.min(ln.get_ydata()) > 0 for ln in ax.lines):
            ax.set_yscale("log")
        if key == "answer_acc":
            ax.set_ylim(-0.02, 1.02)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged" if key != "align" else "no alignment (baseline)",
                    ha="center", va="center", transform=ax.transAxes, color="grey")
        elif len(runs) > 1:
            ax.legend(fontsize=8)
    return _save(fig, out)


def _moving_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start), so the curve starts at step 1."""
    c = np.cumsum(np.concatenate([[0.0], np.asarray(values, float)]))
    lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(values) + 1) - lo)


def plot_answer_readout(runs: PathLike | Mapping[str, PathLike | Records], out: PathLike | None = None,
                        window: int = 20) -> Figure:
    """Left: the fraction of a batch whose answer, read through the adapter at the intervention site at the
    marker, is the teacher's (`answer_readout` in metrics.jsonl; a moving mean over `window` steps).
    Right: the fraction of steps so far the intervention cut (`intervened`; 1 throughout without a gate).

    This is the signal the intervention gate acts on: it shows whether and when the aligned subspace comes
    to carry the answer. `runs`: one run directory / metrics.jsonl, or {label: path or records} to overlay runs.
    """
    runs = _as_runs(runs)
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for label, run in runs.items():
        recs = [r for r in run if r.get("answer_readout") is not None]
        if not recs:
            continue
        steps = [r["step"] for r in recs]
        (line,) = left.plot(steps, _moving_mean([r["answer_readout"] for r in recs], window), label=label, lw=1.2)
        cut = [r["intervened"] for r in recs if "intervened" in r]
        if len(cut) == len(recs):
            right.plot(steps, np.cumsum(cut) / np.arange(1, len(cut) + 1), color=line.get_color(), lw=1.2,
                       label=label)
    if not left.lines:
        return _placeholder("no answer readout logged (a baseline run, or a run from before it was logged)", out)
    left.set_title(f"answer read through the adapter at the marker (mean of {window} steps)", fontsize=9)
    right.set_title("fraction of steps so far the intervention cut", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, out)


def _placeholder(message: str, out: PathLike | None) -> Figure:
    """A figure that says why there is nothing to plot (e.g. a baseline run has no adapter)."""
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _save(fig, out)


def plot_decoding_accuracy(results: Mapping[str, Any], out: PathLike | None = None) -> Figure:
    """Heatmap: decoding accuracy of each RASP variable (rows) at each aligned layer (columns); grey where
    the teacher has not computed the variable yet."""
    dec = results.get("decoding") if "decoding" in results else results
    if not dec:
        return _placeholder("no decoding accuracy (baseline run)", out)
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.subplots()
    names = list(dec["variables"])
    index = dec["student_index"]
    grid = np.array([[np.nan if a is None else a for a in dec["variables"][v]["per_layer"]] for v in names])
    fig.set_size_inches(max(5.0, 1.0 + 0.6 * len(index)), max(3.0, 1.0 + 0.35 * len(names)))
    cmap = _cmap("RdYlGn").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap=cmap, aspect="auto")
    for (i, j), a in np.ndenumerate(grid):
        if not np.isnan(a):
            ax.text(j, i, f"{a:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(index)), [f"T{i}\nS{s}" for i, s in enumerate(index)], fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("teacher layer / student hidden state")
    run = results.get("run", {})
    ax.set_title(f"decoding accuracy through the adapter {run.get('task', '')}".strip())
    fig.colorbar(im, ax=ax, shrink=0.8, label="accuracy")
    return _save(fig, out)


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None], float)
    if v.size == 0:
        return np.nan, 0.0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def plot_ood_accuracy(
    groups: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]], out: PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars: exact-match accuracy per split for each group (e.g. {"injected": [...], "baseline": [...]}).

    Each group is one eval result or a list of them (seeds): bars show the mean, error bars the std.
    """
    groups = {k: ([v] if isinstance(v, Mapping) else list(v)) for k, v in groups.items()}
    splits: list[str] = []
    for evals in groups.values():
        for e in evals:
            splits += [s for s in e["accuracy"] if s not in splits]
    fig = Figure(figsize=(max(6.0, 1.2 * len(splits) + 2), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(splits))
    for g, (label, evals) in enumerate(groups.items()):
        stats = [_mean_std([e["accuracy"].get(s, {}).get("accuracy") for e in evals]) for s in splits]
        means, stds = np.array([m for m, _ in stats]), np.array([s for _, s in stats])
        bars = ax.bar(x + (g - (len(groups) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
                      label=f"{label} (n={len(evals)})")
        for b, m in zip(bars, means, strict=True):
            if not np.isnan(m):
                ax.text(b.get_x() + b.get_width() / 2, m + 0.02, f"{m:.2f}", ha="center", fontsize=7)
    ax.set_xticks(x, splits, rotation=20, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(title or "accuracy: test and out-of-distribution splits")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_causal(results: Mapping[str, Any], out: PathLike | None = None) -> Figure:
    """Accuracy against noise norm: noise inside the answer subspace vs inside a random subspace."""
    cau = results.get("causal") if "causal" in results else results
    if not cau:
        return _placeholder("no causal test (baseline run)", out)
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(cau["norms"], cau["answer_subspace"], "o-", label=f"answer subspace (dim {cau['dim']})")
    ax.plot(cau["norms"], cau["random_subspace"], "s--", label=f"random subspace (dim {cau['dim']})")
    ax.set_xlabel(f"noise L2 norm at student hidden state {cau['student_index']}")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("causal test")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_decoded(decoded: Any, out: PathLike | None = None) -> Figure:
    """Heatmap tokens (x) x variables (y) of a `jinject.decoding.Decoded`, each cell labelled with the value
    read from the student; a red frame marks a cell where it differs from the teacher's value.

    Colour = the value (categorical: its rank among the variable's values; numerical: min-max scaled per row).
    """
    from matplotlib.patches import Rectangle

    from jinject.decoding import display_same, format_value

    d = decoded
    n_t, n_v = len(d.pieces), len(d.variables)
    colour = np.zeros((n_v, n_t))
    for i, v in enumerate(d.variables):
        vals = d.student[v]
        if d.kinds[v] == "numerical":
            f = vals.astype(float)
            span = np.ptp(f)
            colour[i] = (f - f.min()) / span if span > 0 else 0.5
        else:
            uniq = sorted({str(x) for x in vals})
            rank = {u: k for k, u in enumerate(uniq)}
            colour[i] = [rank[str(x)] / max(1, len(uniq) - 1) for x in vals]
    fig = Figure(figsize=(max(6.0, 0.55 * n_t + 2.5), max(3.0, 0.38 * n_v + 1.5)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(colour, cmap=_cmap("viridis"), aspect="auto", vmin=0, vmax=1, alpha=0.85)
    for i, v in enumerate(d.variables):
        for t in range(n_t):
            x = d.student[v][t]
            txt = format_value(x, d.kinds[v])
            ax.text(t, i, txt[:6], ha="center", va="center", fontsize=7,
                    color="white" if colour[i, t] < 0.5 else "black")
            if d.teacher is not None and not display_same(x, d.teacher[v][t], d.kinds[v]):
                ax.add_patch(Rectangle((t - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xticks(range(n_t), [repr(p)[1:-1] for p in d.pieces], fontsize=8)
    ax.set_yticks(range(n_v), d.variables, fontsize=8)
    ax.axvline(d.n_prompt - 0.5, color="white", lw=2)
    ax.set_xlabel("token (answer teacher-forced right of the white line)")
    agree = d.agreement()
    extra = "" if agree is None else f"; agrees with the teacher on {agree:.0%} (red = differs)"
    ax.set_title(f"{d.problem!r}: variables at teacher layer {d.layer} / student hidden state "
                 f"{d.student_layer}{extra}", fontsize=9)
    return _save(fig, out)


def plot_eval(results: Mapping[str, Any], out_dir: PathLike, metrics: PathLike | None = None) -> list[Path]:
    """The standard figures of one evaluated run into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    if metrics is not None and Path(metrics).exists():
        run = _as_runs(metrics)
        plot_training_curves(run, out_dir / "training_curves.png")
        written.append(out_dir / "training_curves.png")
        if any("answer_readout" in r for records in run.values() for r in records):
            plot_answer_readout(run, out_dir / "answer_readout.png")
            written.append(out_dir / "answer_readout.png")
    plot_ood_accuracy({"baseline" if results["run"].get("baseline") else "injected": results},
                      out_dir / "accuracy.png")
    written.append(out_dir / "accuracy.png")
    if results.get("decoding"):
        plot_decoding_accuracy(results, out_dir / "decoding_accuracy.png")
        written.append(out_dir / "decoding_accuracy.png")
    if results.get("causal"):
        plot_causal(results, out_dir / "causal.png")
        written.append(out_dir / "causal.png")
    return written
