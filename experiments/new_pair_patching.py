"""Where does the unseen pair `<>` turn a balanced string into "no"? Activation patching, layer by layer.

    python experiments/new_pair_patching.py RUN...        # shuffle-dyck run directories (evaluated)

For each run, the balanced strings of the ood-new-pair split (the evaluation's examples) that the run answers
wrong are paired with their *clean* twin: the same string with `<` -> `(` and `>` -> `)`, which is still
balanced, uses only training pairs, and has the same tokens everywhere else. The student's hidden state `k`
(the input of block `k`; `k` = the number of blocks is the last one) of the clean twin is written into the
wrong string's forward pass, at one set of positions at a time:

- `marker`: the last prompt token, where the answer is read;
- `new pair`: the positions of `<` and `>`;
- `all`: every position (at `k` = 0 this is the clean run; a check of the plumbing).

The score is the logit difference d = logit(" yes") - logit(" no") at the marker: `restored` is
(d_patched - d_wrong) / (d_clean - d_wrong), averaged over the strings (1: patching gives the clean
answer's margin, 0: no effect), and `yes` the fraction of strings whose patched d is > 0. Read together:
patching the new pair's positions restores the answer while their hidden state still carries what the rest
of the network reads from them; patching the marker restores it once everything the answer needs has been
moved to the marker. The layers where the two curves cross say where the student's reading of `<`/`>`
goes wrong (early: their representation; late: the comparison at the marker).

Aligned runs also patch the marker at each aligned hidden state in a part of the space only: `program`,
the span of the student directions the adapter maps to that teacher layer's compared dimensions (where the
program's variables are read); `complement`, the rest; `random`, a random subspace of the program's
dimension. Which part carries the restoration says whether the answer follows the program's variables or
something the alignment does not see. Each run's numbers are cached in RUN/new_pair_patching.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import mean_std  # noqa: E402
from new_pair_errors import load_dyck_run  # noqa: E402

from jinject.data import PieceEncoder
from jinject.evaluate.accuracy import generation_accuracy
from jinject.evaluate.batching import jit_model
from jinject.evaluate.report import split_examples
from jinject.objective import map_index
from jinject.tasks.dyck import OOD_PAIR

SPLIT = "ood-new-pair"
SITES = ("marker", "new pair", "all")
PARTS = ("program", "complement", "random")


def clean_twin(problem: str) -> str:
    """The string with the unseen pair written as `()`: balanced iff the original is, training pairs only."""
    return problem.replace(OOD_PAIR[0], "(").replace(OOD_PAIR[1], ")")


def site_masks(run: Any, problems: list[str], width: int) -> dict[str, np.ndarray]:
    """[B, T] 0/1 masks of the positions each site patches (framing pieces come before the symbols)."""
    masks = {s: np.zeros((len(problems), width), np.float32) for s in SITES}
    for b, p in enumerate(problems):
        marker = len(run.task.pieces(p)[0]) - 1
        first = marker - len(p)
        masks["marker"][b, marker] = 1
        masks["new pair"][b, [first + j for j, c in enumerate(p) if c in OOD_PAIR]] = 1
        masks["all"][b, :] = 1
    return masks


def yes_no_ids(run: Any, encoder: PieceEncoder) -> tuple[int, int]:
    """The student tokens of the answers' first pieces (" yes", " no")."""
    ids = [encoder(run.task.pieces(p)[1][0]) for p in ("()", ")(")]
    if ids[0] == ids[1]:
        raise SystemExit("the balanced and the unbalanced answer start with the same token; nothing to compare")
    return ids[0], ids[1]


def wrong_balanced(run_dir: Path, max_strings: int) -> tuple[Any, list[str]]:
    """(the run, the first `max_strings` balanced strings of its evaluation's new-pair split it answers wrong)."""
    run, settings = load_dyck_run(run_dir)
    examples = split_examples(run.task, SPLIT, settings["n_examples"], settings["eval_seed"], None)
    right = generation_accuracy(run.model, PieceEncoder(run.tokenizer), examples, return_outputs=True)["correct"]
    return run, [e.problem for e, r in zip(examples, right, strict=True) if e.answer == "yes" and not r][:max_strings]


def patching_curves(run: Any, problems: list[str]) -> dict[str, Any]:
    """{n, d_wrong, d_clean, clean_yes, curves: {site: [(restored, yes) at k = 0, 1, ...]}, marker_parts:
    [{k, dim, program, complement, random: (restored, yes)} at each aligned hidden state k]} over `problems`."""
    if not problems:
        return {"n": 0}
    encoder = PieceEncoder(run.tokenizer)
    yes_id, no_id = yes_no_ids(run, encoder)
    prompts = [encoder.encode(run.task.pieces(p)[0]) for p in problems]
    twins = [encoder.encode(run.task.pieces(clean_twin(p))[0]) for p in problems]
    width = max(map(len, prompts))
    pad = lambda rows: np.asarray([r + [0] * (width - len(r)) for r in rows], np.int32)  # right padding
    ids, clean_ids = pad(prompts), pad(twins)
    marker = np.array([len(r) - 1 for r in prompts])
    rows = np.arange(len(problems))

    def margin(logits: jnp.ndarray) -> np.ndarray:
        at = np.asarray(logits)[rows, marker]
        return at[:, yes_id] - at[:, no_id]

    forward = jit_model(run.model, lambda m, x: m(x))  # one compilation: both batches have one shape
    clean = forward(clean_ids)
    d_clean, d_wrong = margin(clean.logits), margin(forward(ids).logits)
    masks = site_masks(run, problems, width)
    d_model = run.model.config.d_model
    whole = jnp.eye(d_model, dtype=jnp.float32)
    # aligned hidden state k -> projectors at the marker: program (the adapter's row space), complement, random
    subspaces = {} if run.config.baseline else {
        int(k): subspace_projectors(run, layer, d_model) for layer, k in enumerate(run.student_index)}
    curves: dict[str, list[tuple[float, float]]] = {s: [] for s in SITES}
    marker_parts = []
    for k in range(run.model.config.n_layers + 1):
        fwd = jit_model(run.model, lambda m, x, src, w, proj, k=k: m(
            x, intervene=lambda h: h + w[..., None] * ((src - h) @ proj).astype(h.dtype), intervene_at=k).logits)

        def score(mask: np.ndarray, proj: jnp.ndarray, k: int = k, fwd: Any = fwd) -> tuple[float, float]:
            d = margin(fwd(ids, clean.hidden_states[k], jnp.asarray(mask), proj))
            return float(np.mean((d - d_wrong) / (d_clean - d_wrong))), float(np.mean(d > 0))

        for site in SITES:
            curves[site].append(score(masks[site], whole))
        if k in subspaces:
            dim, projs = subspaces[k]
            marker_parts.append({"k": k, "dim": dim} | {n: score(masks["marker"], q) for n, q in projs.items()})
    return {"n": len(problems), "d_wrong": float(d_wrong.mean()), "d_clean": float(d_clean.mean()),
            "clean_yes": float(np.mean(d_clean > 0)), "curves": curves, "marker_parts": marker_parts}


def subspace_projectors(run: Any, layer: int, d_model: int) -> tuple[int, dict[str, jnp.ndarray]]:
    """(dim, {"program", "complement", "random": [D, D] projectors}) for teacher layer `layer`: the span of
    the student directions its adapter map reads for the teacher dimensions the alignment compares there (the
    program's variables; a left-out dimension's column keeps its random initial value), its orthogonal
    complement, and a random subspace of the same dimension (a fixed seed)."""
    w = np.asarray(run.adapter["w"][map_index(run.adapter, layer)], np.float64)  # [D_s, D_t]
    u, sv, _ = np.linalg.svd(w[:, run.plan.dim_weights[layer] > 0], full_matrices=False)
    q = u[:, sv > sv[0] * 1e-6]
    r, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d_model, q.shape[1])))
    program = q @ q.T
    projs = {"program": program, "complement": np.eye(d_model) - program, "random": r @ r.T}
    return int(q.shape[1]), {n: jnp.asarray(x, jnp.float32) for n, x in projs.items()}


def cell(scores: list[list[float]]) -> str:
    """Restored fraction mean ± std over runs, with the mean fraction answered "yes" in brackets."""
    rest, rest_std = mean_std([r for r, _ in scores])
    return f"{rest:.2f} ± {rest_std:.2f} ({np.mean([y for _, y in scores]):.2f})"


def run_curves(run_dir: Path, max_strings: int) -> dict[str, Any]:
    """`patching_curves` of one run, cached in RUN/new_pair_patching.json (recomputed if --max-strings differs)."""
    cache = run_dir / "new_pair_patching.json"
    if cache.exists():
        res = json.loads(cache.read_text())
        if res.get("max_strings") == max_strings:
            return res
    res = patching_curves(*wrong_balanced(run_dir, max_strings)) | {"max_strings": max_strings}
    cache.write_text(json.dumps(res))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="evaluated shuffle-dyck run directories")
    ap.add_argument("--max-strings", type=int, default=64, help="wrong balanced strings per run (the first ones)")
    args = ap.parse_args(argv)
    per_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    print("| run | wrong balanced strings (n) | d wrong | d clean twin | clean twin \"yes\" |\n|---|---|---|---|---|")
    for r in args.runs:
        res = run_curves(r, args.max_strings)
        cells = [f"{res[c]:.2f}" for c in ("d_wrong", "d_clean", "clean_yes")] if res["n"] else ["—"] * 3
        print(f"| {r.name} | {res['n']} | " + " | ".join(cells) + " |", flush=True)
        if res["n"]:
            per_config[r.name.rpartition("-s")[0]].append(res)
    for name, done in per_config.items():
        print(f"\n{name}: restored fraction of the margin, mean ± std over {len(done)} runs (in brackets the "
              "fraction answered \"yes\"), when hidden state k of the clean twin is patched in at each site")
        print("\n| k | " + " | ".join(SITES) + " |\n" + "|---" * (len(SITES) + 1) + "|")
        for k in range(len(done[0]["curves"]["all"])):
            cells = [cell([res["curves"][site][k] for res in done]) for site in SITES]
            print(f"| {k} | " + " | ".join(cells) + " |")
        if done[0]["marker_parts"]:
            print(f"\n{name}: the marker patched at each aligned hidden state k in a part of the space only: the "
                  "program's span (the adapter's map there), its complement, a random subspace of the same dimension")
            print("\n| teacher layer | k | dim | " + " | ".join(PARTS) + " |\n" + "|---" * (len(PARTS) + 3) + "|")
            for layer, part in enumerate(done[0]["marker_parts"]):
                cells = [cell([res["marker_parts"][layer][q] for res in done]) for q in PARTS]
                print(f"| {layer} | {part['k']} | {part['dim']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
