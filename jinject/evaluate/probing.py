"""Decoding accuracy: how often each RASP variable read through the adapter equals the teacher's own value.

Every variable is read from the student through the adapter at every aligned layer
(`teacher.decode(A_i h_{student_index[i]})`, calibrated: `readout.calibrate`) and compared with the
teacher's value at that layer (`teacher.decode(r_i)`), at every real position of held-out examples the
teacher can hold, by `readout.same_value` on the grid of values the variable takes (categorical: the same
value, an empty one-hot reads as None on both sides; numerical: nearer to the true value than to any other
value the variable takes on the held-out set, read to 3 decimals; the mean absolute error is reported too).
A variable is scored only from the layer that writes it on (`teacher.var_info[v].layer`; for a teacher
without it, the first layer where its residual dimensions are non-zero): before that there is nothing to read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flax import nnx

from jinject.data import TaskArrays
from jinject.evaluate.batching import batches, pad_rows
from jinject.evaluate.readout import (
    SKIP_VARIABLES,
    calibrate,
    mapped_and_teacher,
    same_value,
    value_grid,
)

if TYPE_CHECKING:
    from jinject.teacher import Teacher


class DecodingCollector:
    """Accumulates decoded values (student through adapter vs teacher) over batches, then scores them."""

    def __init__(self, teacher: Teacher, n_layers: int):
        self.teacher = teacher
        self.n_layers = n_layers
        info = teacher.var_info  # dims, encoding, and the layer that writes each variable
        self.dims = {k: np.asarray(v.dims) for k, v in info.items()}
        self.kinds = {k: v.encoding for k, v in info.items()}
        self.first_layer = {k: int(v.layer) for k, v in info.items()}
        self.student: dict[str, list[list[np.ndarray]]] = {}
        self.truth: dict[str, list[list[np.ndarray]]] = {}
        self.present: dict[str, np.ndarray] = {}
        self.n_positions = 0

    def add(self, mapped: np.ndarray, resid: np.ndarray, real: np.ndarray) -> None:
        """mapped/resid [L+1, B, T, Dt] (student through adapter, teacher without its BOS); real [B, T]."""
        sel = np.asarray(real) > 0
        self.n_positions += int(sel.sum())
        for i in range(self.n_layers):
            m, r = mapped[i][sel], resid[i][sel]  # [P, Dt]
            dm, dr = self.teacher.decode(m), self.teacher.decode(r)
            for var, tv in dr.items():
                if var in SKIP_VARIABLES or var not in dm:
                    continue
                self.student.setdefault(var, [[] for _ in range(self.n_layers)])[i].append(np.asarray(dm[var]))
                self.truth.setdefault(var, [[] for _ in range(self.n_layers)])[i].append(np.asarray(tv))
                present = self.present.setdefault(var, np.zeros(self.n_layers, bool))
                present[i] = i >= self.first_layer[var]

    def result(self, student_index: Sequence[int]) -> dict[str, Any]:
        """Per variable: the score at each layer (None before it is written), mean, final, written."""
        variables: dict[str, Any] = {}
        for var in self.truth:
            kind = self.kinds.get(var, "categorical")
            truth_all = [np.concatenate(t) for t in self.truth[var]]
            grid = None
            if kind == "numerical":
                grid = value_grid(np.concatenate([t for t, p in zip(truth_all, self.present[var], strict=True) if p]
                                                 or truth_all))
            per_layer: list[float | None] = []
            mae: list[float | None] = []
            for i in range(self.n_layers):
                if not self.present[var][i]:
                    per_layer.append(None)
                    mae.append(None)
                    continue
                s = np.concatenate(self.student[var][i])
                per_layer.append(float(same_value(s, truth_all[i], kind, grid=grid).mean()))
                if kind == "numerical":
                    mae.append(float(np.mean(np.abs(s.astype(np.float64) - truth_all[i].astype(np.float64)))))
            scored = [a for a in per_layer if a is not None]
            first = next((i for i, a in enumerate(per_layer) if a is not None), None)
            variables[var] = {
                "kind": kind,
                "first_layer": first,
                "per_layer": per_layer,
                "mean": float(np.mean(scored)) if scored else None,
                "final": per_layer[-1],
                "written": per_layer[first] if first is not None else None,  # at the layer that writes it
            }
            if kind == "numerical":
                variables[var]["n_values"] = int(len(grid))
                variables[var]["mean_abs_error"] = mae
        return {
            "student_index": [int(s) for s in student_index],
            "n_positions": self.n_positions,
            "variables": dict(sorted(variables.items())),
            "mean": _mean([v["mean"] for v in variables.values()]),
        }


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def decoding_accuracy(
    model: nnx.Module,
    teacher: Teacher,
    adapter: dict,
    student_index: np.ndarray,
    arrays: TaskArrays,
    *,
    batch_size: int = 16,
    calibrated: bool = True,
) -> dict[str, Any]:
    """Per variable and aligned layer: how often the value read through the adapter equals the teacher's.

    With `calibrated` (default) each mapped vector is first divided by its length in teacher units
    (`structural_scale`). `result["marker"]` holds the same scores at the marker (last prompt token) only.
    """
    run = mapped_and_teacher(model, teacher, adapter, student_index)
    collector = DecodingCollector(teacher, len(student_index))
    at_marker = DecodingCollector(teacher, len(student_index))
    marker_mask = np.zeros_like(arrays.real_mask)
    marker_mask[np.arange(len(arrays)), arrays.answer_index[:, 0]] = 1.0  # the last prompt token
    for sl in batches(len(arrays), batch_size):
        rows = sl.stop - sl.start
        ids = pad_rows(arrays.inputs[sl], batch_size)
        t_ids = pad_rows(arrays.teacher_ids[sl], batch_size)
        mapped, resid = run(ids, t_ids)
        mapped = np.asarray(mapped)[:, :rows]
        if calibrated:
            mapped = calibrate(teacher, mapped)
        resid = np.asarray(resid)[:, :rows]
        collector.add(mapped, resid, arrays.real_mask[sl])
        at_marker.add(mapped, resid, marker_mask[sl])
    result = collector.result(student_index)
    result["marker"] = at_marker.result(student_index)["variables"]  # the same scores at the marker only
    result["n_examples"] = len(arrays)
    result["calibrated"] = calibrated
    return result
