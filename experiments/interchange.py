"""The interchange test on trained runs, per split: does the answer follow the donor's answer subspace?

    python experiments/interchange.py RUN... [--splits test ood-new-pair]   # evaluated, aligned runs

The noise test of `jinject eval` adds noise of a fixed size (a fraction of the median residual norm) at the
intervention site. Deeper sites have more blocks after them that may tolerate or repair that noise, so a
"not causal" there can be a statement about the noise's scale. The interchange test
(`jinject.evaluate.interchange`) needs no scale: it writes the answer-subspace part of a donor example
(same prompt length, other answer) into each example and counts how often the first answer token becomes
the donor's. Columns, at every prompt position unless `marker` says the marker only:

- `answer`, `random`: the share of pairs that follow the donor when the answer subspace / a random subspace
  of the same dimension is swapped; `margin` = answer - random;
- `complement keeps`: the share that keep their own answer when everything BUT the answer subspace is swapped
  (training's detach-and-roll condition).

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
from jinject.evaluate.interchange import interchange_test
from jinject.evaluate.report import split_examples
from jinject.trainer import load_run

CACHE = "interchange.json"


def run_interchange(run_dir: Path, splits: list[str]) -> dict[str, Any]:
    """{split: interchange_test result} on the run's evaluation examples (its n and seed), cached."""
    cache_file = run_dir / CACHE
    cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    missing = [s for s in splits if s not in cached]
    if missing:
        if not (run_dir / "eval.json").exists():
            raise SystemExit(f"{run_dir}: no eval.json; evaluate it first (jinject eval {run_dir})")
        settings = json.loads((run_dir / "eval.json").read_text())["settings"]
        run = load_run(run_dir)
        if run.adapter is None:
            raise SystemExit(f"{run_dir}: a baseline run has no adapter, so no answer subspace to swap")
        encoder = PieceEncoder(run.tokenizer)
        for split in missing:
            examples = split_examples(run.task, split, settings["n_examples"], settings["eval_seed"], run.teacher)
            arrays = encode_examples(examples, encoder, None)
            cached[split] = interchange_test(run.model, run.adapter, run.teacher.answer_dims, run.teacher.n_layers,
                                             run.intervene_at, arrays, seed=settings["eval_seed"])
        cache_file.write_text(json.dumps(cached, indent=2) + "\n")
        jax.clear_caches()  # each run compiles its own model: free them, or a long list of runs runs out of memory
    return {s: cached[s] for s in splits}


def columns(result: dict[str, Any]) -> dict[str, float]:
    """The table's columns of one split (NaN where the split has no pair: e.g. every answer the same)."""
    share = lambda site, part, who: float("nan") if result[site][part][who] is None else result[site][part][who]
    answer, random = share("prompt", "answer", "donor"), share("prompt", "random", "donor")
    return {"answer": answer, "random": random, "margin": answer - random,
            "complement keeps": share("prompt", "complement", "receiver"),
            "marker answer": share("marker", "answer", "donor"), "pairs": result["n_pairs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evaluated run directories with an adapter")
    parser.add_argument("--splits", nargs="+", default=["test"], help="evaluation splits (default: test)")
    args = parser.parse_args()
    per_config: dict[str, list[dict[str, float]]] = defaultdict(list)
    cols: list[str] = []
    for run_dir in args.runs:
        results = run_interchange(run_dir, args.splits)
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
