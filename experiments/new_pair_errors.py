"""Where do runs fail the unseen bracket pair: on balanced strings or on unbalanced ones?

    python experiments/new_pair_errors.py results/ablation/runs/{baseline+frame-bos,all-fixes+stride2}-s*
    python experiments/new_pair_errors.py --split ood-length RUN...   # the same split by answer, another split

The shuffle-dyck teacher's program knows three pairs, `()`, `[]` and `{}`; the ood-new-pair split adds `<>`,
which no training string and no teacher input contains. This script regenerates each run's greedy answers on
the split (the evaluation's examples: its seed and n, read from eval.json) and splits the accuracy by the
right answer. It also counts the strings whose "three-pair answer" (balance with `<` and `>` dropped, what a
student that ignores the unknown pair would say) differs from the right one. Per run and per configuration
(mean ± std over runs):

- acc: exact-match accuracy on the whole split (as in eval.json),
- acc yes / acc no: accuracy on the balanced / the unbalanced strings (n yes / n no of them),
- 3-pair differs: how many strings a student ignoring `<>` would get wrong.

`--readout VAR` (aligned runs) also decodes the RASP variable VAR through the adapter at the marker (the
last prompt token, top teacher layer, as `jinject decode`) and gives its mean over the balanced strings the
run answers right, those it answers wrong, and the unbalanced strings: does the program's own variable,
read from the LM, already call the string unbalanced where the answer does?

`--counts` (aligned runs) asks what the student makes of `<` and `>`: on the balanced strings, the program's
`need` and `have` (at the marker: how many openers and closers the string has) decoded there, minus the true
count with the new pair, and where `unmatched` (a closer with no opener left, or at the marker more openers
than closers) is read (`count_readout`). If `<` counted as an opener and `>` not as a closer, `need` would
exceed `have` at the marker and the program would say "no". For every run it also gives the accuracy on the
balanced strings by their number of `<>` pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import mean_std  # noqa: E402

from jinject.data import PieceEncoder
from jinject.decoding import student_mapped
from jinject.evaluate.accuracy import generation_accuracy
from jinject.evaluate.readout import calibrate_layer
from jinject.evaluate.report import split_examples
from jinject.tasks.dyck import OOD_PAIR, PAIRS, is_balanced
from jinject.trainer import load_run

SPLITS = ("ood-new-pair", "ood-length", "test")  # the shuffle-dyck splits with both answers
OPENERS, CLOSERS = ("".join(p[i] for p in (*PAIRS, OOD_PAIR)) for i in (0, 1))  # the new pair included


def three_pair_answer(problem: str) -> str:
    """The answer of a balance check that knows only the training pairs: `<` and `>` are dropped."""
    kept = "".join(c for c in problem if c not in OOD_PAIR)
    return "yes" if is_balanced(kept, PAIRS) else "no"


def load_dyck_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(the trained run, its evaluation settings) of an evaluated shuffle-dyck run directory."""
    if not (run_dir / "eval.json").exists():
        raise SystemExit(f"{run_dir}: no eval.json; this analysis reuses an evaluated run's examples "
                         f"(evaluate it first: jinject eval {run_dir})")
    settings = json.loads((run_dir / "eval.json").read_text())["settings"]
    run = load_run(run_dir)
    if run.config.task != "shuffle-dyck":
        raise SystemExit(f"{run_dir}: task {run.config.task!r}; this analysis is for shuffle-dyck runs")
    return run, settings


def print_config_means(per_config: dict[str, list[dict[str, float]]], cols: Sequence[str]) -> None:
    """One row per configuration: mean ± std over its runs of each column."""
    print("\n| config (mean ± std over runs) | n | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 2) + "|")
    for name, runs in per_config.items():
        cells = ["{:.3f} ± {:.3f}".format(*mean_std([r[c] for r in runs])) for c in cols]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")


def student_vectors(run: Any, examples: Sequence[Any], layer: int | None = None, batch: int = 32) -> list[np.ndarray]:
    """The student's hidden states mapped through the adapter to teacher layer `layer` (default: the top) and
    calibrated, `[tokens, D_teacher]` per example (prompt then answer pieces, teacher-forced, as `jinject
    decode`), from the student alone (`student_mapped`): the teacher cannot read `<` or `>`."""
    layer = run.teacher.n_layers if layer is None else layer
    encoder = PieceEncoder(run.tokenizer)
    seqs = [encoder.encode([*p, *a]) for p, a in (run.task.pieces(e.problem) for e in examples)]
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i:i + batch]
        width = max(map(len, chunk))
        ids = np.asarray([q + [0] * (width - len(q)) for q in chunk], np.int32)
        mapped = student_mapped(run, ids, layer)
        out += [calibrate_layer(run.teacher, m[:len(q)], layer) for q, m in zip(chunk, mapped, strict=True)]
    return out


def soft_value(run: Any, vector: np.ndarray, var: str) -> float:
    """A categorical count read as a graded quantity: the mean of its values weighted by the (positive part
    of the) one-hot's entries, where the argmax would round it to one value."""
    info = run.teacher.var_info[var]
    w = np.maximum(vector[info.dims], 0)
    return float(np.dot(w, np.asarray(info.values, float)) / w.sum()) if w.sum() > 0 else np.nan


def as_float(value: Any) -> float:
    """A decoded value as a number; NaN where the one-hot was empty (None)."""
    return np.nan if value is None else float(value)


def check_readout(run: Any, var: str) -> None:
    """Refuse, before any work, a variable the teacher lacks or whose values have no mean."""
    if var not in run.teacher.var_info:
        raise SystemExit(f"no variable {var!r}; the teacher's variables: {', '.join(sorted(run.teacher.var_info))}")
    info = run.teacher.var_info[var]
    if info.categorical and not all(isinstance(x, (bool, int, float, np.number)) for x in info.values):
        raise SystemExit(f"--readout {var}: its values {info.values[:6]} are not numbers, so they have no mean; "
                         "choose a numerical or a number-valued variable, e.g. any_unmatched or need")


def any_true(values: Sequence[float]) -> float:
    """1 if any value is true, 0 if none is, NaN if none decoded (None) or there are none."""
    known = [v for v in values if not np.isnan(v)]
    return float(any(known)) if known else np.nan


def marker_readout(run: Any, examples: Sequence[Any], vectors: Sequence[np.ndarray], right: np.ndarray,
                   yes: np.ndarray, var: str) -> dict[str, float]:
    """Mean of `var` decoded at the marker over balanced-right, balanced-wrong and unbalanced strings
    (`vectors`: the examples' `student_vectors`)."""
    decoded = [run.teacher.decode(v) for v in vectors]
    n_prompt = [len(run.task.pieces(e.problem)[0]) for e in examples]
    values = np.array([as_float(d[var][n - 1]) for d, n in zip(decoded, n_prompt, strict=True)])
    groups = {"balanced right": yes & right, "balanced wrong": yes & ~right, "unbalanced": ~yes}
    return {f"{var} {name}": float(np.nanmean(values[m])) if m.any() else np.nan for name, m in groups.items()}


def count_readout(run: Any, examples: Sequence[Any], vectors: Sequence[np.ndarray], right: np.ndarray,
                  yes: np.ndarray) -> dict[str, float]:
    """What the program's counts make of `<` and `>`, on the balanced strings (answered right / wrong): at
    the marker, decoded `need`/`have` minus the true number of openers/closers with the new pair, the
    fraction of strings where both decode, their graded difference (`soft_value`), and `unmatched` at the
    marker and before it (`vectors`: the examples' `student_vectors`)."""
    scores: dict[str, float] = {}
    rows = []
    for e, v in zip(examples, vectors, strict=True):
        d = run.teacher.decode(v)
        marker = len(run.task.pieces(e.problem)[0]) - 1
        first = marker - len(e.problem)  # the first symbol's position (framing pieces come before it)
        need, have = (as_float(d[var][marker]) for var in ("need", "have"))
        rows.append({
            "<> pairs": e.problem.count(OOD_PAIR[0]),
            "need-open4": need - sum(c in OPENERS for c in e.problem),
            "have-close4": have - sum(c in CLOSERS for c in e.problem),
            "both decode": float(not np.isnan(need - have)),
            "soft need-have": soft_value(run, v[marker], "need") - soft_value(run, v[marker], "have"),
            "unmatched at marker": as_float(d["unmatched"][marker]),
            "unmatched before": any_true([as_float(x) for x in d["unmatched"][first:marker]]),
        })
    for group, mask in (("right", yes & right), ("wrong", yes & ~right)):
        chosen = [r for r, m in zip(rows, mask, strict=True) if m]
        if chosen:
            scores[f"n ({group})"] = len(chosen)
            scores |= {f"{k} ({group})": float(np.nanmean([r[k] for r in chosen])) for k in chosen[0]}
    return scores


def accuracy_by_new_pairs(examples: Sequence[Any], right: np.ndarray, yes: np.ndarray) -> dict[str, float]:
    """Accuracy on the balanced strings with 1, 2 and 3 or more `<>` pairs: does each unseen pair tip them?"""
    pairs = np.array([e.problem.count(OOD_PAIR[0]) for e in examples])
    groups = {"1 <>": pairs == 1, "2 <>": pairs == 2, ">=3 <>": pairs >= 3}
    return {f"{name} (n)": float((m & yes).sum()) for name, m in groups.items()} | {
        f"{name} (acc)": float(right[m & yes].mean()) for name, m in groups.items() if (m & yes).any()}


def run_scores(run_dir: Path, split: str = SPLITS[0], readout: str | None = None, counts: bool = False
               ) -> tuple[str, dict[str, float], dict[str, dict[str, float]]]:
    """(configuration name, scores, {table title: the readout scores} of an aligned run) of one run directory."""
    run, settings = load_dyck_run(run_dir)
    if readout is not None and not run.config.baseline:  # before any work
        check_readout(run, readout)
    examples = split_examples(run.task, split, settings["n_examples"], settings["eval_seed"], None)
    res = generation_accuracy(run.model, PieceEncoder(run.tokenizer), examples, return_outputs=True)
    right = np.array(res["correct"])
    yes = np.array([e.answer == "yes" for e in examples])
    scores = {"acc": float(right.mean()), "acc yes": float(right[yes].mean()), "acc no": float(right[~yes].mean()),
              "n yes": int(yes.sum()), "n no": int((~yes).sum()),
              "3-pair differs": sum(three_pair_answer(e.problem) != e.answer for e in examples)}
    readouts = {}
    aligned = not run.config.baseline
    vectors = student_vectors(run, examples) if aligned and (readout is not None or counts) else []
    if readout is not None and aligned:
        readouts[f"`{readout}` decoded at the marker, mean over the strings of each group"] = (
            marker_readout(run, examples, vectors, right, yes, readout))
    if counts:
        readouts["Accuracy on the balanced strings by their number of `<>` pairs"] = (
            accuracy_by_new_pairs(examples, right, yes))
    if counts and aligned:
        readouts["Balanced strings, the program's counts read from the student (`count_readout`)"] = (
            count_readout(run, examples, vectors, right, yes))
    return run_dir.name.rpartition("-s")[0], scores, readouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated shuffle-dyck run directories")
    parser.add_argument("--split", choices=SPLITS, default=SPLITS[0],
                        help="ood-almost-balanced is left out: all its strings are unbalanced")
    parser.add_argument("--readout", metavar="VAR", default=None,
                        help="also decode this RASP variable at the marker (aligned runs), e.g. any_unmatched")
    parser.add_argument("--counts", action="store_true",
                        help="also read the program's counts on the balanced strings (aligned runs; see above)")
    args = parser.parse_args()
    per_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    cols = ("acc", "acc yes", "acc no")
    print("| run | " + " | ".join(cols) + " | n yes / no | 3-pair differs |\n" + "|---" * (len(cols) + 3) + "|")
    tables: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for run_dir in args.runs:
        name, s, readouts = run_scores(run_dir, args.split, args.readout, args.counts)
        per_config[name].append(s)
        print(f"| {run_dir.name} | " + " | ".join(f"{s[c]:.3f}" for c in cols)
              + f" | {s['n yes']} / {s['n no']} | {s['3-pair differs']} |",
              flush=True)
        for title, r in readouts.items():
            tables[title][run_dir.name] = r
    print_config_means(per_config, cols)
    for title, rows in tables.items():
        heads = sorted({h for r in rows.values() for h in r}, key=lambda h: (h.split(" (")[-1], h))
        print(f"\n{title}\n")
        print("| run | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 1) + "|")
        for run_name, r in rows.items():
            print(f"| {run_name} | " + " | ".join(f"{r.get(h, np.nan):.2f}" for h in heads) + " |")


if __name__ == "__main__":
    main()
