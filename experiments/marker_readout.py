"""How far from decodable are the program's variables at the marker? A closer look than `jinject eval`.

    python experiments/marker_readout.py results/cpu/runs/*-injected-s*     # markdown table on stdout

`jinject eval` scores a categorical variable as decoded when the student's value, read through the
adapter, is the teacher's: the argmax of its one-hot block *and* a peak above 0.5 in teacher units (an
empty one-hot reads as None, as tracr's own decoder has it). At the marker (the last prompt token, where
the program's answer is decided) the running counts of dyck (`need`, `have`) and count (`n_x`) score 0
by that rule. This script separates the two parts, at the layer that writes each variable, on the same
held-out test examples as the evaluation (its seed; the first `--n` that fit the teacher):

- strict: the evaluation's rule (argmax and peak > 0.5),
- argmax: the value alone,
- within 1: for integer-valued variables, the argmax within one of the teacher's value,
- peak: the median height of the one-hot block's largest entry (1.0 in the teacher).

Categorical variables only (a numerical one has no one-hot to separate). Runs of the same task are
averaged (mean ± std over runs).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from jinject.data import PieceEncoder, encode_examples
from jinject.evaluate.batching import batches, pad_rows
from jinject.evaluate.config import EVAL_SEED
from jinject.evaluate.readout import SKIP_VARIABLES, calibrate, mapped_and_teacher
from jinject.evaluate.report import fits_teacher, split_examples
from jinject.trainer import load_run

COLUMNS = ("strict", "argmax", "within 1", "peak")


def marker_scores(run_dir: Path, n: int, batch_size: int = 16) -> tuple[str, dict[str, dict[str, float]]]:
    """(task name, {variable: {column: score}}) at the marker, at the layer that writes each variable."""
    run = load_run(run_dir)
    if run.config.baseline:
        raise SystemExit(f"{run_dir} is a baseline run: it has no adapter to read through")
    teacher = run.teacher
    examples = split_examples(run.task, "test", max(n, 200), EVAL_SEED, teacher)
    arrays = encode_examples([e for e in examples if fits_teacher(e, teacher)][:n],
                             PieceEncoder(run.tokenizer), teacher)
    fn = mapped_and_teacher(run.model, teacher, run.adapter, run.student_index)
    marker = arrays.answer_index[:, 0]
    mapped, resid = [], []
    for sl in batches(len(arrays), batch_size):
        rows = np.arange(sl.stop - sl.start)
        m, r = fn(pad_rows(arrays.inputs[sl], batch_size), pad_rows(arrays.teacher_ids[sl], batch_size))
        mapped.append(calibrate(teacher, np.asarray(m)[:, rows, marker[sl]]))  # [L+1, B, Dt]
        resid.append(np.asarray(r)[:, rows, marker[sl]])
    mapped, resid = np.concatenate(mapped, 1), np.concatenate(resid, 1)
    scores = {}
    for name, info in teacher.var_info.items():
        if not info.categorical or name in SKIP_VARIABLES:
            continue
        m, r = mapped[info.layer][:, info.dims], resid[info.layer][:, info.dims]
        same = m.argmax(-1) == r.argmax(-1)
        row = {"strict": float(np.mean(same & (m.max(-1) > 0.5))), "argmax": float(np.mean(same)),
               "peak": float(np.median(m.max(-1)))}
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in info.values):
            values = np.asarray(info.values)
            row["within 1"] = float(np.mean(np.abs(values[m.argmax(-1)] - values[r.argmax(-1)]) <= 1))
        scores[name] = row
    return run.task.name, scores


def table(per_task: dict[str, list[dict[str, dict[str, float]]]]) -> str:
    lines = ["| task | variable | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for task, runs in sorted(per_task.items()):
        for var in sorted(runs[0]):
            cells = []
            for col in COLUMNS:
                xs = [r[var][col] for r in runs if col in r[var]]
                cells.append(f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if xs else "—")
            lines.append(f"| {task} (n={len(runs)}) | {var} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="injected run directories")
    parser.add_argument("--n", type=int, default=100, help="test examples per run (the evaluation's n_decode)")
    args = parser.parse_args()
    per_task: dict[str, list] = defaultdict(list)
    for run_dir in args.runs:
        task, scores = marker_scores(run_dir, args.n)
        per_task[task].append(scores)
    print(table(per_task))


if __name__ == "__main__":
    main()
