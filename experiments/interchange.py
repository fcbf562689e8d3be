"""The interchange test on trained runs, per split: does the answer follow the donor's answer subspace?

    python experiments/interchange.py RUN... [--splits test ood-new-pair] [--by prediction]   # evaluated, aligned runs

The noise test of `jinject eval` adds noise of a fixed size (a fraction of the median residual norm) at the
intervention site. Deeper sites have more blocks after them that may tolerate or repair that noise, so a
"not causal" there can be a statement about the noise's scale. The interchange test
(`jinject.evaluate.interchange`) needs no scale: it writes the answer-subspace part of a donor example
(same prompt length, other answer) into each example and counts how often the first answer token becomes
the donor's. Columns, at every prompt position unless `marker` says the marker only:

- `answer`, `random`: the share of pairs that follow the donor when the answer subspace / a random subspace
  of the same dimension is swapped; `margin` = answer - random;
- `complement keeps`: the share that keep their own answer when everything BUT the answer subspace is swapped
  (training's detach-and-roll condition);
- `answer swap / median`, `random swap / median`: the median size of the swap at the marker in units of the
  median residual norm (the noise test's unit), so the two tests can be set side by side.

`--by prediction` pairs and scores by each example's clean prediction instead of its right answer, so that
an OOD split reads whether the subspace carries what the run answers, right or wrong (cached as
"SPLIT by prediction").

Question fixed before the runs were read (shuffle-dyck, 900 steps, layer offsets 0 / 6 / 10 / 14): does the
answer subspace carry the answer at offsets 6-14, where the noise test found it not causal? Reading rule:
an offset "carries the answer by interchange" when its mean `margin` on the test split is >= 0.5 and its
mean `complement keeps` is >= 0.8. Each run's numbers are cached in RUN/interchange.json (per split).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from new_pair_errors import print_config_means  # noqa: E402

from jinject.data import PieceEncoder, encode_examples
from jinject.evaluate.interchange import interchange_pairs, interchange_test, site_norms, subspace_bases
from jinject.evaluate.report import split_examples
from jinject.trainer import load_run

CACHE = "interchange.json"


def cache_key(split: str, by: str) -> str:
    """A split's entry in RUN/interchange.json: the split's name when paired by answer (as before `--by`)."""
    return split if by == "answer" else f"{split} by {by}"


def run_interchange(run_dir: Path, splits: list[str], by: str = "answer") -> dict[str, Any]:
    """{split: interchange_test result} on the run's evaluation examples (its n and seed), cached; a cached
    split from before the test reported its norms gets them added."""
    cache_file = run_dir / CACHE
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    todo = [s for s in splits if "norms" not in cached.get(cache_key(s, by), {})]
    if todo:
        if not (run_dir / "eval.json").exists():
            raise SystemExit(f"{run_dir}: no eval.json; evaluate it first (jinject eval {run_dir})")
        settings = json.loads((run_dir / "eval.json").read_text())["settings"]
        n, seed = settings["n_examples"], settings["eval_seed"]
        run = load_run(run_dir)
        if run.adapter is None:
            raise SystemExit(f"{run_dir}: a baseline run has no adapter, so no answer subspace to swap")
        encoder = PieceEncoder(run.tokenizer)
        answer = (run.adapter, run.teacher.answer_dims, run.teacher.n_layers)
        for split in todo:
            arrays = encode_examples(split_examples(run.task, split, n, seed, run.teacher), encoder, None)
            if by == "answer" and split in cached:  # only a by-answer entry predates the norms
                cached[split]["norms"] = site_norms(run.model, subspace_bases(*answer, seed), run.intervene_at, arrays,
                                                    *interchange_pairs(arrays, seed))
            else:
                cached[cache_key(split, by)] = interchange_test(run.model, *answer, run.intervene_at, arrays,
                                                                seed=seed, by=by)
        cache_file.write_text(json.dumps(cached, indent=2) + "\n")
        jax.clear_caches()  # each run compiles its own model: free them, or a long list of runs runs out of memory
    return {s: cached[cache_key(s, by)] for s in splits}


def columns(result: dict[str, Any]) -> dict[str, float]:
    """The table's columns of one split (NaN where the split has no pair: e.g. every answer the same)."""
    share = lambda site, part, who: float("nan") if result[site][part][who] is None else result[site][part][who]
    answer, random = share("prompt", "answer", "donor"), share("prompt", "random", "donor")
    return {"answer": answer, "random": random, "margin": answer - random,
            "complement keeps": share("prompt", "complement", "receiver"),
            "marker answer": share("marker", "answer", "donor"), "pairs": result["n_pairs"],
            **{f"{part} swap / median": norm(result["norms"], part) for part in ("answer", "random")}}


def norm(norms: dict[str, Any], part: str) -> float:
    """The median swap at the marker in units of the median residual norm (the noise test's unit)."""
    swap = norms[f"{part}_swap_at_marker"]
    return float("nan") if swap is None else swap / norms["median_residual"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run directories with an adapter")
    parser.add_argument("--splits", nargs="+", default=["test"], help="evaluation splits (default: test)")
    parser.add_argument("--by", choices=("answer", "prediction"), default="answer",
                        help="pair and score examples by their right first answer token (default) or by the run's "
                             "own clean prediction (reads OOD splits without counting the run's errors)")
    args = parser.parse_args()
    per_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    cols: list[str] = []
    for run_dir in args.runs:
        results = run_interchange(run_dir, args.splits, args.by)
        row = {f"{split} {c}": v for split, r in results.items() for c, v in columns(r).items()}
        if not cols:
            cols = list(row)
            print("| run | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        per_config[run_dir.name.rpartition("-s")[0]].append(row)
        cells = (f"{v:.3f}" if isinstance(v, float) else str(v) for v in (row[c] for c in cols))
        print(f"| {run_dir.name} | " + " | ".join(cells) + " |", flush=True)
    print_config_means(per_config, cols)


if __name__ == "__main__":
    main()
