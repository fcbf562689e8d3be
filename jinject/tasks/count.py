"""count: how many `x` in a string of `x`/`y`?

Student text: `" x y x x y ="` -> `"3."` (pieces `" x"`, `" y"`, ..., `" ="`, then one piece per digit
`"1"`, `"2"` (digits never carry a leading space: SmolLM2 splits digits from spaces) and `"."`).

Teacher program (causal, categorical, 3 layers):

    n_x         = #x so far                       (SelectorWidth, layer 0)
    answer_step = #answer symbols (=, digits, .) so far, i.e. 1 at `=`, 2 at the first digit, ...
                                                    (SelectorWidth, layer 0; clipped by a Map, layer 1)
    answer      = (digits of n_x + ["."])[answer_step - 1], "_" elsewhere   (layer 2 MLP)

After the marker no `x` follows, so `n_x` is the total count at every answer position: each answer
digit is a per-value lookup of (n_x, answer_step) -- (n+1) x (digits+3) MLP neurons instead of the
original's pairwise SequenceMaps over all positions (1.08 B parameters at max_seq_len 120).
"""

from __future__ import annotations

import numpy as np
from tracr.rasp import rasp

from jinject.tasks import rasp_lib
from jinject.tasks.base import Task, split_symbols
from jinject.tasks.registry import check_length_option, register_task

DIGITS = tuple("0123456789")
OOD_LETTER = "z"


def make_count_program(max_seq_len: int, symbol: str = "x", marker: str = "=", end: str = ".",
                       filler: str = "_") -> rasp.SOp:
    """The causal count next-token program described in the module docstring."""
    n_digits = len(str(max_seq_len))
    answer_syms = {marker, end, *DIGITS}
    n_x = rasp_lib.count_where(lambda t: t == symbol, "n_x")
    seen = rasp_lib.count_where(lambda t: t in answer_syms, "n_answer_symbols")
    step = rasp.categorical(rasp.Map(lambda v: min(v, n_digits + 2), seen)).named("answer_step")

    def next_token(count, k):
        toks = [*str(count), end]
        return toks[k - 1] if 1 <= k <= len(toks) else filler

    return rasp.categorical(rasp.SequenceMap(next_token, n_x, step)).named("answer")


class Count(Task):
    """Count the x. Lengths are in symbols; the teacher adds `=`, the digits and the end marker."""

    name = "count"
    splits = ("train", "test", "ood-all-x", "ood-other-letter", "ood-length")
    marker = "="
    end_token = "."
    end_piece = "."
    frame_pieces = ("How", " many", " x", " are", " in", " this", " text", ":")  # "How many x are in this text: x y ="

    def __init__(self, min_len: int = 5, max_len: int = 40, ood_max_len: int = 120, max_input_len: int = 120,
                 frame: bool = False, bos: bool = False):
        check_length_option(self.name, min_len=min_len, max_len=max_len, ood_max_len=ood_max_len,
                            max_input_len=max_input_len)
        if not 1 <= min_len <= max_len <= max_input_len:
            raise ValueError(f"count needs 1 <= min_len <= max_len <= max_input_len, got min_len={min_len}, "
                             f"max_len={max_len}, max_input_len={max_input_len}")
        if ood_max_len <= max_len:
            raise ValueError(f"count needs ood_max_len > max_len (the ood-length split is longer than training), "
                             f"got ood_max_len={ood_max_len}, max_len={max_len}")
        self.min_len, self.max_len, self.ood_max_len = min_len, max_len, ood_max_len
        self.max_input_len = max_input_len
        self.frame, self.bos = frame, bos
        self.default_max_seq_len = self._need(max_input_len)

    def _need(self, n_symbols: int) -> int:
        """Teacher positions for n symbols: prefix, symbols, marker, digits of the count, end."""
        return self.prefix_len + n_symbols + 1 + len(str(n_symbols)) + 1

    def symbols(self, problem: str) -> list[str]:
        return split_symbols(problem, ("x", "y", OOD_LETTER), self.name)

    def prompt_units(self, problem: str) -> list[tuple[str, str]]:
        return [*self.prefix_units(), *((f" {s}", s) for s in self.symbols(problem)), (f" {self.marker}", self.marker)]

    def answer_units(self, answer: str) -> list[tuple[str, str]]:
        if not answer.isdigit():
            raise ValueError(f"count answers are digits, not {answer!r}")
        return [(d, d) for d in answer]

    def solve(self, problem: str) -> str:
        self.symbols(problem)
        return str(problem.count("x"))

    def program(self, max_seq_len: int) -> rasp.SOp:
        return make_count_program(max_seq_len, "x", self.marker, self.end_token, self.filler)

    def teacher_vocab(self) -> frozenset[str]:
        return frozenset({"x", "y", self.marker, self.end_token, self.filler, *DIGITS})

    def generate(self, split: str, rng: np.random.Generator) -> str:
        other = "y"
        lo, hi = self.min_len, self.max_len
        if split == "ood-length":
            lo, hi = self.max_len + 1, self.ood_max_len
        n = int(rng.integers(lo, hi + 1))
        if split == "ood-all-x":
            return "x" * n
        if split == "ood-other-letter":
            other = OOD_LETTER
        elif split not in ("train", "test", "ood-length"):
            raise ValueError(f"unknown split {split!r}")
        return "".join("x" if b else other for b in rng.random(n) < 0.5)

    def max_problem_len(self, split: str) -> int | None:
        return self._need(self.max_len) if split in ("train", "test") else None

    def min_seq_len(self) -> int | None:
        return self.prefix_len + 3  # no symbol, "=", "0", "."

    def edge_cases(self, max_seq_len: int) -> list[str]:
        n = max(n for n in range(1, max_seq_len) if self._need(n) <= max_seq_len)
        cases = ["x", "y", "x" * n, "y" * n, "xy" * (n // 2), "y" * (n - 1) + "x", "x" + "y" * (n - 1)]
        for k in (9, 10, 11, 99, 100, 101, n - 1):  # digit-count boundaries of the answer
            if 0 < k <= n:
                cases.append("x" * k + "y" * (n - k))
                cases.append("y" * (n - k) + "x" * k)
        return cases


register_task("count", Count)
