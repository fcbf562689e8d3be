"""Small RASP helpers shared by the task programs, the teacher compiler and the verifier.

Why these exist:
- tracr labels every expression `f"{name}_{unique_id}"` with a process-global counter, so the same
  program gets different residual labels in different processes. `canonicalize` renumbers a private
  copy of the program in a fixed traversal order: same program -> same labels -> a disk cache works.
- tracr's stock `CausalEvaluator` re-evaluates shared sub-expressions every time they are used;
  `causal_eval_all` evaluates every expression of a program once, with causal selectors, which is
  exactly what a `causal=True` compiled model computes at every position.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from tracr.rasp import rasp

__all__ = [
    "canonicalize",
    "walk",
    "sops",
    "display_names",
    "causal_eval_all",
    "count_where",
    "has_selector_width",
]


def walk(program: rasp.RASPExpr) -> list[rasp.RASPExpr]:
    """Every expression the program depends on, children before parents, in a fixed order."""
    order: list[rasp.RASPExpr] = []
    seen: set[int] = set()

    def visit(expr: rasp.RASPExpr) -> None:
        if id(expr) in seen:
            return
        seen.add(id(expr))
        for child in expr.children:
            visit(child)
        order.append(expr)

    visit(program)
    return order


def canonicalize(program: rasp.SOp) -> rasp.SOp:
    """A deep copy of `program` whose labels depend only on its structure (not on creation order)."""
    prog = copy.deepcopy(program)
    for i, expr in enumerate(walk(prog), start=1):
        # `unique_id` is a functools.cached_property: pre-setting the instance attribute fixes it.
        expr.__dict__["unique_id"] = i
    return prog


def sops(program: rasp.SOp) -> list[rasp.SOp]:
    """The S-Ops (variables) of a program, inputs first."""
    return [e for e in walk(program) if isinstance(e, rasp.SOp)]


def display_names(program: rasp.SOp) -> dict[str, str]:
    """label -> the name users see: the expression's own name when it is unique, else its label."""
    exprs = sops(program)
    counts: dict[str, int] = {}
    for e in exprs:
        counts[e.name] = counts.get(e.name, 0) + 1
    return {e.label: (e.name if counts[e.name] == 1 else e.label) for e in exprs}


class _MemoCausalEvaluator(rasp.DefaultRASPEvaluator):
    """tracr's evaluator with causal selectors and one evaluation per expression."""

    def __init__(self) -> None:
        super().__init__()
        self.memo: dict[int, Any] = {}

    def evaluate(self, expr: rasp.RASPExpr, xs: Sequence[rasp.Value]):  # type: ignore[override]
        key = id(expr)
        if key in self.memo:
            return self.memo[key]
        out = super().evaluate(expr, xs)
        if isinstance(expr, rasp.Selector):
            out = np.logical_and(np.tril(np.ones((len(xs), len(xs)), dtype=bool)), np.array(out)).tolist()
        self.memo[key] = out
        return out


def causal_eval_all(program: rasp.SOp, xs: Sequence[rasp.Value]) -> dict[str, list]:
    """Value of every S-Op of `program` at every position of `xs` (no BOS), causal semantics.

    Returns label -> list of values (None where tracr's model leaves the variable empty).
    """
    ev = _MemoCausalEvaluator()
    out = {}
    for e in sops(program):
        out[e.label] = list(ev.evaluate(e, list(xs)))
    return out


def count_where(key_pred, name: str, query_pred=None) -> rasp.SOp:
    """Causal count of earlier-or-current positions whose token satisfies `key_pred(token)`.

    With `query_pred(key_token, query_token)` instead, the counted set may depend on the query token.
    Compiles to one attention head + one MLP (tracr SelectorWidth), categorical output 0..max_seq_len.
    """
    pred = query_pred if query_pred is not None else (lambda k, q: key_pred(k))
    return rasp.categorical(rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, pred))).named(name)


def has_selector_width(program: rasp.SOp) -> bool:
    return any(isinstance(e, rasp.SelectorWidth) for e in walk(program))
