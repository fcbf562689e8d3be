"""The interchange test: does the student's answer FOLLOW what the answer subspace holds?

The noise test (`causal`) asks whether noise in the answer subspace costs more than noise elsewhere; its
answer depends on how large the noise is against what the later blocks tolerate, which changes with depth.
The interchange test needs no scale: each test example (the *receiver*) is paired with a *donor* whose
prompt has the same length and whose answer starts with a different token. At the student hidden state
where training intervened, one part of the receiver's residual is replaced by the donor's (from the
donor's own clean forward pass), and the first answer token is read at the marker (the last prompt
position, teacher-forced like `accuracy.teacher_forced_exact`). Parts:

- `answer`: the answer subspace (the row space of the adapter restricted to the answer dimensions);
- `random`: a random subspace of the same dimension (the control);
- `complement`: everything but the answer subspace (what training's detach-and-roll hands over).

Sites: `prompt` swaps at every prompt position (as training intervened), `marker` at the marker only.
For each (site, part) the fractions of pairs whose prediction is the donor's first answer token and the
receiver's own. An answer held in the subspace reads: `answer` follows the donor, `random` and
`complement` keep the receiver's answer. `norms` gives the sizes that set this beside the noise test: the
median residual norm (the noise test's unit) and, at the marker, the median norm of the swap in each
subspace (the donor's part minus the receiver's).

`by="prediction"` pairs and scores by each example's clean prediction instead of its right answer: on an OOD
split the student's own errors then do not count against the subspace, and a split whose right answers are
all alike (almost-balanced: always "no") still has pairs wherever the student answers differently.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.data import TaskArrays
from jinject.evaluate.batching import batches, jit_model, pad_rows
from jinject.evaluate.causal import random_basis, residual_norms
from jinject.objective import answer_subspace_basis, project
from jinject.step import answer_logits

SITES = ("prompt", "marker")
PARTS = ("answer", "random", "complement")


def marker_and_first(arrays: TaskArrays) -> tuple[np.ndarray, np.ndarray]:
    """([N] the marker position: the last prompt token, where the first answer token is predicted; [N] that token)."""
    marker = arrays.answer_index[:, 0]
    return marker, arrays.targets[np.arange(len(arrays)), marker]


def interchange_pairs(arrays: TaskArrays, seed: int = 0,
                      first: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(receiver rows, donor rows): each row with a random partner whose prompt has the same length and whose
    first answer token (`first`, default the right one) differs; rows without one are left out."""
    marker, right = marker_and_first(arrays)
    first = right if first is None else np.asarray(first)
    has_answer = arrays.answer_valid[:, 0] > 0
    rng = np.random.default_rng(seed)
    receivers, donors = [], []
    for i in np.flatnonzero(has_answer):
        candidates = np.flatnonzero(has_answer & (marker == marker[i]) & (first != first[i]))
        if len(candidates):
            receivers.append(i)
            donors.append(rng.choice(candidates))
    return np.asarray(receivers, np.int64), np.asarray(donors, np.int64)


def swap_part(h: jax.Array, h_donor: jax.Array, basis: jax.Array, where: jax.Array, complement: jax.Array) -> jax.Array:
    """h with its component in span(basis) (`complement` = 1: outside it) replaced by h_donor's, at the
    positions where `where` [B, T] is 1."""
    delta = h_donor.astype(jnp.float32) - h.astype(jnp.float32)
    inside = project(delta, basis)
    change = inside + complement * (delta - 2 * inside)  # complement 0: inside; 1: delta - inside
    return (h.astype(jnp.float32) + where[..., None] * change).astype(h.dtype)


def subspace_bases(adapter: dict, answer_dims: np.ndarray, top_layer: int, seed: int = 0) -> dict[str, jax.Array]:
    """The answer subspace's orthonormal basis [D_s, k] and a random one of the same dimension."""
    answer = answer_subspace_basis(jax.tree.map(jnp.asarray, adapter), np.asarray(answer_dims), top_layer)
    return {"answer": answer, "random": random_basis(jax.random.fold_in(jax.random.key(seed), 2), *answer.shape)}


def site_norms(model: nnx.Module, bases: dict[str, jax.Array], at: int, arrays: TaskArrays, receivers: np.ndarray,
               donors: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Median residual norm at hidden state `at` over real positions, and per basis the median norm at the
    marker of the receiver's part and of the swap (donor's part - receiver's)."""
    names = list(bases)
    stacked = jnp.concatenate([bases[n] for n in names], axis=1)

    def coords_at_marker(m: nnx.Module, ids, marker):
        h = m(ids).hidden_states[at][jnp.arange(ids.shape[0]), marker].astype(jnp.float32)
        return jnp.einsum("bd,dk->bk", h, stacked, precision="highest")

    run = jit_model(model, coords_at_marker)
    marker, _ = marker_and_first(arrays)
    coords_all = np.concatenate([np.asarray(run(pad_rows(arrays.inputs[sl], batch_size),
                                                pad_rows(marker[sl], batch_size)))[: sl.stop - sl.start]
                                 for sl in batches(len(arrays), batch_size)])
    result = {"median_residual": residual_norms(model, arrays, at, batch_size)[0]}
    start = 0
    for name in names:
        part = coords_all[:, start:start + bases[name].shape[1]]
        start += bases[name].shape[1]
        result[f"{name}_part_at_marker"] = float(np.median(np.linalg.norm(part, axis=-1)))
        swap = np.linalg.norm(part[donors] - part[receivers], axis=-1)
        result[f"{name}_swap_at_marker"] = float(np.median(swap)) if len(swap) else None
    return result


def interchange_test(
    model: nnx.Module,
    adapter: dict,
    answer_dims: np.ndarray,
    top_layer: int,
    at: int,
    arrays: TaskArrays,
    *,
    batch_size: int = 32,
    seed: int = 0,
    by: str = "answer",
) -> dict[str, Any]:
    """How often the first answer token follows the donor's answer subspace (module docstring); `by`: pair and
    score by the right first answer token ("answer") or by the student's clean prediction ("prediction")."""
    if by not in ("answer", "prediction"):
        raise ValueError(f"interchange pairs examples by 'answer' or 'prediction', not {by!r}")
    bases = subspace_bases(adapter, answer_dims, top_layer, seed)
    answer_basis, rand_basis = bases["answer"], bases["random"]
    k = answer_basis.shape[1]
    n_layers = model.config.n_layers

    def predict(m: nnx.Module, ids, ids_donor, marker, where, basis, complement):
        h_donor = m(ids_donor).hidden_states[at]
        hook = lambda h: swap_part(h, h_donor, basis, where, complement)
        out = m(ids, intervene=hook, intervene_at=at)
        index = marker[:, None]
        batch = {"answer_index": index, "targets": jnp.zeros_like(ids), "answer_valid": jnp.ones_like(index)}
        logits, _, _ = answer_logits(m, out, batch, at == n_layers)  # final residual: it predates the swap
        return jnp.argmax(logits[:, 0], axis=-1)

    run = jit_model(model, predict)
    width = arrays.inputs.shape[1]
    marker, first = marker_and_first(arrays)
    positions = np.arange(width)[None]
    masks = {"prompt": (positions <= marker[:, None]).astype(np.float32),
             "marker": (positions == marker[:, None]).astype(np.float32)}

    def predictions(receivers: np.ndarray, donors: np.ndarray, site: str | None, basis: jax.Array,
                    complement: float) -> np.ndarray:
        out = []
        for sl in batches(len(receivers), batch_size):
            r, dn = receivers[sl], donors[sl]
            where = masks[site][r] if site is not None else np.zeros((len(r), width), np.float32)
            cols = [pad_rows(x, batch_size) for x in (arrays.inputs[r], arrays.inputs[dn], marker[r], where)]
            out.append(np.asarray(run(*cols, basis, jnp.float32(complement)))[: len(r)])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    rows = np.arange(len(arrays))
    clean_all = predictions(rows, rows, None, answer_basis, 0.0)  # no swap: every row's own prediction
    if by == "prediction":
        first = clean_all
    receivers, donors = interchange_pairs(arrays, seed, first)
    own, theirs, clean = first[receivers], first[donors], clean_all[receivers]
    share = lambda pred, target: float(np.mean(pred == target)) if len(pred) else None
    result: dict[str, Any] = {"n": len(arrays), "n_pairs": int(len(receivers)), "dim": int(k), "student_index": int(at),
                              "by": by, "clean": {"receiver": share(clean, own), "donor": share(clean, theirs)}}
    for site in SITES:
        result[site] = {}
        for part, basis, complement in (("answer", answer_basis, 0.0), ("random", rand_basis, 0.0),
                                        ("complement", answer_basis, 1.0)):
            pred = predictions(receivers, donors, site, basis, complement)
            result[site][part] = {"donor": share(pred, theirs), "receiver": share(pred, own)}
    result["norms"] = site_norms(model, bases, at, arrays, receivers, donors, batch_size)
    return result
