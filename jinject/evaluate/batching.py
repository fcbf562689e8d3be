"""Run a model jitted over fixed-shape batches: the plumbing every evaluation pass shares.

Every batch is padded to one shape, so each pass compiles once; the padding rows are cut off the results.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx


def jit_model(model: nnx.Module, fn: Callable) -> Callable:
    """`fn(model, *args)` jitted over the model's pure state (nnx.split outside jit, merge inside)."""
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: jitted(state, *args)


def batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` rows covering `n` rows."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the first axis to `size` rows (repeat row 0) so every batch has one shape: one compilation."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])
