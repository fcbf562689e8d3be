"""The causal test: does the student's answer live in the answer subspace the adapter found?

Noise of a fixed L2 norm is added at every position of the student residual where training intervened
(hidden index `student_index[-1]`), inside the answer subspace (the row space of the adapter restricted to
the answer dimensions) vs inside a random subspace of the same dimension. Accuracy here is the
teacher-forced exact match (`accuracy.teacher_forced_exact`'s event), so one forward pass carries fresh
noise at every position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.data import TaskArrays
from jinject.evaluate.accuracy import answers_right, exact_over_batches
from jinject.evaluate.batching import batches, jit_model, pad_rows
from jinject.evaluate.config import NOISE_NORMS, RELATIVE_NOISE
from jinject.objective import answer_subspace_basis


def random_basis(key: jax.Array, d: int, k: int) -> jax.Array:
    """A random orthonormal basis [d, k] (QR of a Gaussian matrix)."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (d, k), jnp.float32), mode="reduced")
    return q


def subspace_noise(h: jax.Array, basis: jax.Array, norm: jax.Array, key: jax.Array) -> jax.Array:
    """h + noise of L2 norm `norm` at every position, in a uniformly random direction of span(basis)."""
    z = jax.random.normal(key, h.shape[:-1] + (basis.shape[1],), jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    noise = jnp.einsum("...k,dk->...d", z, basis, precision="highest") * norm
    return (h.astype(jnp.float32) + noise).astype(h.dtype)


def causal_test(
    model: nnx.Module,
    adapter: dict,
    answer_dims: np.ndarray,
    top_layer: int,
    at: int,
    arrays: TaskArrays,
    *,
    norms: Sequence[float] = NOISE_NORMS,
    relative: Sequence[float] = RELATIVE_NOISE,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy under noise in the answer subspace vs in a random subspace of equal dimension.

    `norms` are absolute L2 norms; `relative` are fractions of the median L2 norm of the clean residual at
    hidden state `at` over real positions, which makes runs and hosts of different scales comparable. The
    median, not the mean: the first token of an LM (its attention sink) carries a massive activation, 60x
    the other positions' norm deep in SmolLM2, which would make the mean a statement about one token.
    """
    for x in (*norms, *relative):
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"noise norms must be finite and >= 0, got {x}")
    answer_basis = answer_subspace_basis(jax.tree.map(jnp.asarray, adapter), np.asarray(answer_dims), top_layer)
    d, k = answer_basis.shape
    key = jax.random.key(seed)
    rand_basis = random_basis(jax.random.fold_in(key, 1), d, k)

    def fwd(m: nnx.Module, ids, targets, index, valid, basis, norm, nkey):
        hook = lambda h: subspace_noise(h, basis, norm, nkey)
        return answers_right(m, ids, targets, index, valid, hook, at)

    run = jit_model(model, fwd)

    def acc(basis: jax.Array, norm: float, salt: int) -> float:
        return exact_over_batches(run, arrays, batch_size, jax.random.fold_in(key, salt), basis, jnp.float32(norm))

    def curves(values: Sequence[float], salt: int) -> tuple[list[float], list[float]]:
        pairs = [(acc(answer_basis, v, salt + j), acc(rand_basis, v, salt + 100 + j)) for j, v in enumerate(values)]
        return [a for a, _ in pairs], [r for _, r in pairs]

    answer_acc, random_acc = curves(norms, 100)
    result = {
        "norms": [float(x) for x in norms],
        "answer_subspace": answer_acc,
        "random_subspace": random_acc,
        "dim": int(k),
        "student_index": int(at),
        "n": len(arrays),
    }
    if relative:
        median, mean = residual_norms(model, arrays, at, batch_size)
        rel_norms = [float(r) * median for r in relative]
        rel_answer, rel_random = curves(rel_norms, 1000)
        result["relative"] = {"fractions": [float(r) for r in relative], "median_norm": median, "mean_norm": mean,
                              "norms": rel_norms, "answer_subspace": rel_answer, "random_subspace": rel_random}
    return result


def residual_norms(model: nnx.Module, arrays: TaskArrays, at: int, batch_size: int = 32) -> tuple[float, float]:
    """(median, mean) L2 norm of the student's hidden state `at` over the real positions of `arrays`."""
    norms = jit_model(model, lambda m, ids: jnp.linalg.norm(m(ids).hidden_states[at].astype(jnp.float32), axis=-1))
    values = []
    for sl in batches(len(arrays), batch_size):
        rows = sl.stop - sl.start
        n = np.asarray(norms(pad_rows(arrays.inputs[sl], batch_size)))[:rows]
        values.append(n[arrays.real_mask[sl] > 0])
    values = np.concatenate(values)
    return float(np.median(values)), float(np.mean(values))
