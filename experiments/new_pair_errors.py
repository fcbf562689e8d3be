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
from jinject.decoding import decode_problem
from jinject.evaluate.accuracy import generation_accuracy
from jinject.evaluate.report import split_examples
from jinject.tasks.dyck import OOD_PAIR, PAIRS, is_balanced
from jinject.trainer import load_run

SPLITS = ("ood-new-pair", "ood-length", "test")  # the shuffle-dyck splits with both answers


def three_pair_answer(problem: str) -> str:
    """The answer of a balance check that knows only the training pairs: `<` and `>` are dropped."""
    kept = "".join(c for c in problem if c not in OOD_PAIR)
    return "yes" if is_balanced(kept, PAIRS) else "no"


def load_dyck_run(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(the trained run, its evaluation settings) of an evaluated shuffle-dyck run directory."""
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


def marker_readout(run: Any, examples: Sequence[Any], right: np.ndarray, yes: np.ndarray, var: str) -> dict[str, float]:
    """Mean of `var` decoded at the marker over balanced-right, balanced-wrong and unbalanced strings."""
    at_marker = []
    for e in examples:
        d = decode_problem(run, e.problem, with_generation=False)
        if var not in d.student:
            raise SystemExit(f"no variable {var!r}; the teacher's variables: {', '.join(d.variables)}")
        at_marker.append(float(d.student[var][d.n_prompt - 1]))
    values = np.array(at_marker)
    groups = {"balanced right": yes & right, "balanced wrong": yes & ~right, "unbalanced": ~yes}
    return {f"{var} {name}": float(values[m].mean()) if m.any() else float("nan") for name, m in groups.items()}


def run_scores(run_dir: Path, split: str = SPLITS[0], readout: str | None = None) -> tuple[str, dict[str, float]]:
    """(configuration name, scores) of one run directory."""
    run, settings = load_dyck_run(run_dir)
    examples = split_examples(run.task, split, settings["n_examples"], settings["eval_seed"], None)
    res = generation_accuracy(run.model, PieceEncoder(run.tokenizer), examples, return_outputs=True)
    right = np.array(res["correct"])
    yes = np.array([e.answer == "yes" for e in examples])
    scores = {"acc": float(right.mean()), "acc yes": float(right[yes].mean()), "acc no": float(right[~yes].mean()),
              "n yes": int(yes.sum()), "n no": int((~yes).sum()),
              "3-pair differs": sum(three_pair_answer(e.problem) != e.answer for e in examples)}
    if readout is not None and not run.config.baseline:
        scores |= marker_readout(run, examples, right, yes, readout)
    return run_dir.name.rpartition("-s")[0], scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated shuffle-dyck run directories")
    parser.add_argument("--split", choices=SPLITS, default=SPLITS[0],
                        help="ood-almost-balanced is left out: all its strings are unbalanced")
    parser.add_argument("--readout", metavar="VAR", default=None,
                        help="also decode this RASP variable at the marker (aligned runs), e.g. any_unmatched")
    args = parser.parse_args()
    per_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    cols = ("acc", "acc yes", "acc no")
    print("| run | " + " | ".join(cols) + " | n yes / no | 3-pair differs |\n" + "|---" * (len(cols) + 3) + "|")
    readouts: dict[str, dict[str, float]] = {}
    for run_dir in args.runs:
        name, s = run_scores(run_dir, args.split, args.readout)
        per_config[name].append(s)
        print(f"| {run_dir.name} | " + " | ".join(f"{s[c]:.3f}" for c in cols)
              + f" | {s['n yes']} / {s['n no']} | {s['3-pair differs']} |",
              flush=True)
        if args.readout is not None and f"{args.readout} unbalanced" in s:
            readouts[run_dir.name] = {k: v for k, v in s.items() if k.startswith(args.readout + " ")}
    print_config_means(per_config, cols)
    if readouts:
        heads = list(next(iter(readouts.values())))
        print(f"\n`{args.readout}` decoded at the marker, mean over the strings of each group\n")
        print("| run | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 1) + "|")
        for run_name, r in readouts.items():
            print(f"| {run_name} | " + " | ".join(f"{r[h]:.2f}" for h in heads) + " |")


if __name__ == "__main__":
    main()
