"""Threshold-free view of shuffle-dyck answers: how well each run SEPARATES balanced from unbalanced strings.

    python experiments/answer_margin.py RUN...     # evaluated shuffle-dyck run directories

Accuracy mixes two things: how well a run separates the two kinds of string, and where its yes/no
threshold sits. The margin m = logit(" yes") - logit(" no") at the first answer position (the prompt fed as
in training, no intervention, as the evaluation's accuracy runs the model) ranks the strings; its AUROC for
"balanced" is the same for every threshold. Computed on the evaluation's own examples (its seed and n, read
from eval.json): per split with both answers, and pooled over the three OOD splits. Per run and per
configuration (mean ± std over runs), with the mean margin on almost-balanced strings (all "no") beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from new_pair_errors import load_dyck_run, print_config_means  # noqa: E402

from jinject.data import PieceEncoder, encode_examples
from jinject.evaluate.batching import batches, jit_model, pad_rows
from jinject.evaluate.report import split_examples
from jinject.step import answer_logits

OOD = ("ood-length", "ood-almost-balanced", "ood-new-pair")
BOTH_ANSWERS = ("test", "ood-length", "ood-new-pair")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(a positive outscores a negative), ties counting half: the Mann-Whitney statistic, exactly."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def margins(run, splits: Sequence[str], n: int, seed: int, batch_size: int = 50) -> dict[str, tuple]:
    """{split: (margin [N], balanced [N])} on the evaluation's examples of each split."""
    encoder = PieceEncoder(run.tokenizer)
    yes_id, no_id = (encoder(run.task.answer_units(a)[0][0]) for a in ("yes", "no"))

    def first_answer_margin(model, ids, index, valid):
        batch = {"answer_index": index, "targets": jnp.zeros_like(ids), "answer_valid": valid}
        logits, _, _ = answer_logits(model, model(ids), batch)
        return logits[:, 0, yes_id] - logits[:, 0, no_id]

    fn = jit_model(run.model, first_answer_margin)
    result = {}
    for split in splits:
        examples = split_examples(run.task, split, n, seed, None)
        arrays = encode_examples(examples, encoder, None)
        out = []
        for sl in batches(len(arrays), batch_size):
            cols = [pad_rows(x[sl], batch_size) for x in (arrays.inputs, arrays.answer_index, arrays.answer_valid)]
            out.append(np.asarray(fn(*cols))[: sl.stop - sl.start])
        result[split] = (np.concatenate(out), np.array([e.answer == "yes" for e in examples]))
    return result


def run_scores(run_dir: Path) -> tuple[str, dict[str, float]]:
    run, settings = load_dyck_run(run_dir)
    per_split = margins(run, (*BOTH_ANSWERS, OOD[1]), settings["n_examples"], settings["eval_seed"])
    scores = {f"AUROC {s}": auroc(*per_split[s]) for s in BOTH_ANSWERS}
    pooled_m, pooled_y = (np.concatenate(x) for x in zip(*(per_split[s] for s in OOD), strict=True))
    scores["AUROC OOD pooled"] = auroc(pooled_m, pooled_y)
    scores["margin almost-bal."] = float(per_split[OOD[1]][0].mean())
    scores["sign acc OOD pooled"] = float(((pooled_m > 0) == pooled_y).mean())
    jax.clear_caches()
    return run_dir.name.rpartition("-s")[0], scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated shuffle-dyck run directories")
    args = parser.parse_args()
    per_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    cols: list[str] = []
    for run_dir in args.runs:
        name, s = run_scores(run_dir)
        if not cols:
            cols = list(s)
            print("| run | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        per_config[name].append(s)
        print(f"| {run_dir.name} | " + " | ".join(f"{s[c]:.3f}" for c in cols) + " |", flush=True)
    print_config_means(per_config, cols)


if __name__ == "__main__":
    main()
