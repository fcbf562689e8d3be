"""Reading RASP variables out of a student: the one readout that decoding accuracy and `jinject decode` share.

- which residual dimensions hold which variable, and its kind (`variable_dims`, `variable_kinds`);
- the one equality rule for a variable's value read two ways (`same_value`), with its tolerance as a
  parameter: the grid of values a variable takes (decoding accuracy) or a relative tolerance (teacher vs
  RASP interpreter in `jinject.verify`; the `jinject decode` table);
- the forward pass that maps the student's hidden states to teacher space beside the teacher's own
  residuals (`mapped_and_teacher`), and the calibration of the mapped length (`structural_scale`,
  `calibrate_layer`, `calibrate`): the cosine objective leaves the length of A·h free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.evaluate.batching import jit_model
from jinject.objective import adapter_apply

if TYPE_CHECKING:
    from jinject.teacher import Teacher

SKIP_VARIABLES = ("one",)  # tracr's constant direction: always 1, nothing to decode
NUMERIC_DECIMALS = 3  # tracr's numerical MLPs leave ~1e-6 noise: true values are read to 3 decimals


def variable_dims(labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Residual dimensions of each variable, from tracr's labels (`"var:value"` or `"var"` for numbers)."""
    dims: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        dims.setdefault(lab.split(":", 1)[0], []).append(i)
    return {k: np.asarray(v) for k, v in dims.items()}


def variable_kinds(labels: Sequence[str]) -> dict[str, str]:
    """"numerical" for a one-dimensional variable without a value in its label, else "categorical"."""
    kinds: dict[str, str] = {}
    for lab in labels:
        name, sep, _ = lab.partition(":")
        kinds[name] = "categorical" if sep else kinds.get(name, "numerical")
    return kinds


def value_grid(true_values: np.ndarray) -> np.ndarray:
    """The distinct values a numerical variable takes (rounded to `NUMERIC_DECIMALS`), sorted."""
    return np.unique(np.round(np.asarray(true_values, np.float64), NUMERIC_DECIMALS))


def nearest(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to each x."""
    x = np.asarray(x, np.float64)
    if len(grid) == 1:  # a constant: its neighbours are taken to lie max(|v|, 1) away on either side
        v = grid[0]
        return np.where(np.abs(x - v) < 0.5 * max(abs(v), 1.0), 0, -1)
    i = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
    left, right = grid[i - 1], grid[i]
    return np.where(np.abs(x - left) <= np.abs(right - x), i - 1, i)


def same_value(a: Any, b: Any, kind: str, *, rtol: float | None = None, grid: np.ndarray | None = None) -> np.ndarray:
    """Whether the value `a` (read one way) equals the reference value `b`, elementwise (bool; 0-d for scalars).

    The one equality rule for RASP variables. Categorical: the same value (None == None: an empty one-hot
    on both sides). Numerical, with exactly one tolerance:

    - `grid`, the sorted values the variable takes (`value_grid`): `a` is nearer to `b` than to any other
      value of the grid (both snap to the same grid value; `nearest`). Decoding accuracy: the gaps between
      a variable's values say how exact a read must be.
    - `rtol`: |a - b| <= rtol * max(1, |b|). `jinject.verify` (compiled teacher vs RASP interpreter, 1e-3:
      float32 arithmetic) and the `jinject decode` table (10%).
    """
    if kind != "numerical":
        return np.asarray(a == b, bool)
    if (grid is None) == (rtol is None):
        raise ValueError("a numerical value is compared with exactly one tolerance: rtol or grid")
    if grid is not None:
        return nearest(grid, a) == nearest(grid, b)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) <= rtol * np.maximum(1.0, np.abs(b))


def mapped_and_teacher(
    model: nnx.Module, teacher: Teacher, adapter: dict, student_index: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]]:
    """A jitted `(inputs, teacher_ids) -> (A_i h_{index[i]} [L+1,B,T,Dt], r_i without BOS [L+1,B,T,Dt])`."""
    from jinject.step import teacher_residuals  # here, not above: `jinject compile` (verify) stays light

    index = np.asarray(student_index)
    adapter = jax.tree.map(jnp.asarray, adapter)

    def fn(m: nnx.Module, ids: jax.Array, t_ids: jax.Array, adapter: dict, t_params: Any):
        hidden = m(ids).hidden_states
        mapped = jnp.stack([adapter_apply(adapter, hidden[s], i) for i, s in enumerate(index)])
        return mapped, teacher_residuals(teacher, t_params, t_ids)[:, :, 1:]

    run = jit_model(model, fn)
    return lambda ids, t_ids: run(ids, t_ids, adapter, teacher.params)


def structural_scale(teacher: Teacher, mapped: np.ndarray, layer: int) -> np.ndarray:
    """Per-position length of A·h in teacher units [...], from the known shape of a tracr residual.

    The alignment loss is a cosine: it fixes the direction of A·h but leaves its length free (it varies
    10x and more between positions). In the teacher, tracr's `one` direction is 1 and every categorical
    variable already written has one dimension at 1; the mean of those maxima in A·h estimates the
    length, without looking at the teacher's answer for this input. Numerical values and the "empty
    one-hot" threshold are read after dividing by it (categorical argmaxes do not depend on it).
    """
    maxima = [mapped[..., v.dims].max(-1) for v in teacher.var_info.values()
              if v.encoding == "categorical" and v.layer <= layer]
    if "one" in teacher.labels:
        maxima.append(mapped[..., teacher.labels.index("one")])
    if not maxima:
        return np.ones(mapped.shape[:-1])
    c = np.mean(maxima, axis=0)
    return np.where(c > 1e-6, c, 1.0)


def calibrate_layer(teacher: Teacher, mapped: np.ndarray, layer: int) -> np.ndarray:
    """Mapped vectors [..., Dt] at teacher layer `layer`, divided by their `structural_scale`."""
    return mapped / structural_scale(teacher, mapped, layer)[..., None]


def calibrate(teacher: Teacher, mapped: np.ndarray) -> np.ndarray:
    """Divide each layer's mapped vectors [L+1, ..., Dt] by their `structural_scale`."""
    return np.stack([calibrate_layer(teacher, mapped[i], i) for i in range(len(mapped))])
