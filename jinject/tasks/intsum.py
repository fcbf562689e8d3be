"""int-sum: `a + b =` -> the digits of a + b.

Student text: `"213 + 391 ="` -> `"604\\n"`; pieces `"2" "1" "3" " +" " " "3" "9" "1" " ="` then
`"6" "0" "4" "\\n"` (one piece per digit: SmolLM2 splits digits, GPT-2 would merge "213"). The end
marker is a newline, not ".", because the decimal OOD split has "." inside its answers.

Teacher tokens: digits -> themselves, `" +"` -> "+", the `" "` framing piece -> "_", `" ="` -> the
compute marker "=", answer digits -> themselves, the end piece -> ".". The `=` IS the compute marker
(the original code never mapped it, so its answer variable was always 0: tests check ours).

Teacher program (causal, categorical, 7 layers for 3-digit operands):

    plus_pos, eq_pos   = index of "+" / "=" (attention copies of `indices`)             layer 0
    a{j}_pos, b{j}_pos = where the digit of place j of a / b sits ("+" when absent)      layer 0 MLP
    answer_step        = index - eq_pos  (0 at "=", 1 at the first answer digit, ...)   layer 0 MLP
    a{j}, b{j}         = token at those positions (attention)                            layer 1
    pair{j}            = value(a{j}) + value(b{j})   ("+" counts as 0)                   layer 1 MLP
    place1             = (digit, carry-out) of place 1 = f(pair1, pair0)                 layer 2 MLP
    top                = pair2 + carry into place 2  (0..19: the sum's leading part)     layer 3 MLP
    emit_top, emit1    = per-answer-step state: a resolved token, a pointer to a lower
                         place, or "still stripping leading zeros"                       layers 4-5
    answer             = the token to emit: (sum digits + end)[answer_step]              layer 6 MLP

so at "=" it holds the first digit of the sum, at each answer digit the next one, after the last
digit the end marker. Every MLP is a small per-value table (at most a few hundred neurons).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from tracr.rasp import rasp

from jinject.tasks.base import Task
from jinject.tasks.registry import register_task

DIGITS = tuple("0123456789")
MAX_DIGITS = 6


def make_intsum_program(n_digits: int = 3, marker: str = "=", plus: str = "+", gap: int = 1,
                        end: str = ".", filler: str = "_") -> rasp.SOp:
    """Causal next-token program for `a + b` with operands of up to `n_digits` digits.

    Layout of the teacher tokens: a's digits, `plus`, `gap` framing tokens, b's digits, `marker`, answer.
    """
    D = n_digits
    tok, idx = rasp.tokens, rasp.indices
    far = D + 2  # answer_step value for "not in the answer"

    plus_pos = rasp.Aggregate(rasp.Select(tok, tok, lambda k, q: k == plus), idx).named("plus_pos")
    eq_pos = rasp.Aggregate(rasp.Select(tok, tok, lambda k, q: k == marker), idx).named("eq_pos")
    step = rasp.SequenceMap(lambda i, e: min(i - e, far) if i >= e else far, idx, eq_pos).named("answer_step")

    def value(t):  # digit tokens -> their value; the "+" (fetched for absent digits) -> 0
        return int(t) if t in DIGITS else 0

    # Digits are fetched as tokens (not via a digit-value Map) and both fetch positions are computed
    # by MLPs, so that tracr packs positions into layer 0 and fetches + pair sums into layer 1.
    pairs = []
    for j in range(D):
        a_pos = rasp.Map(lambda p, j=j: p - 1 - j if p - 1 - j >= 0 else p, plus_pos).named(f"a{j}_pos")
        b_pos = rasp.SequenceMap(lambda p, e, j=j: e - 1 - j if e - 1 - j >= p + 1 + gap else p,
                                 plus_pos, eq_pos).named(f"b{j}_pos")
        at = lambda k, q: q is not None and k == q
        a_j = rasp.Aggregate(rasp.Select(idx, a_pos, at), tok).named(f"a{j}")
        b_j = rasp.Aggregate(rasp.Select(idx, b_pos, at), tok).named(f"b{j}")
        pairs.append(rasp.SequenceMap(lambda x, y: value(x) + value(y), a_j, b_j).named(f"pair{j}"))

    # Carries. place{j} = (digit of the sum at place j, carry out of place j) for 1 <= j <= D-2.
    places: dict[int, rasp.SOp] = {}
    if D == 1:
        top = pairs[0]
    elif D == 2:
        top = rasp.SequenceMap(lambda t1, t0: t1 + (t0 >= 10), pairs[1], pairs[0]).named("top")
    else:
        def first_place(t1, t0):
            v = t1 + (t0 >= 10)
            return (v % 10, v >= 10)

        places[1] = rasp.SequenceMap(first_place, pairs[1], pairs[0]).named("place1")
        for j in range(2, D - 1):
            places[j] = rasp.SequenceMap(lambda t, u: ((t + u[1]) % 10, t + u[1] >= 10),
                                         pairs[j], places[j - 1]).named(f"place{j}")
        top = rasp.SequenceMap(lambda t, u: t + u[1], pairs[D - 1], places[D - 2]).named("top")

    # Emission: walk the sum's places from the top, tracking what answer step `r` must emit.
    # States: ("tok", token) resolved; ("ptr", k) = the k-th remaining place below; ("strip", r) =
    # only zeros so far (leading zeros are not printed), r = steps still to skip after the first digit.
    def resolve(state, last):
        if not last:
            return state
        kind, v = state
        if kind == "tok":
            return v
        return end if v == 0 else filler

    def head(r, hi, last):
        if r >= far:
            state = ("tok", filler)
        elif last:  # no lower places: hi is the whole sum
            toks = [*str(hi), end]
            state = ("tok", toks[r] if r < len(toks) else filler)
        else:
            h = str(hi) if hi > 0 else ""
            if h:
                state = ("tok", h[r]) if r < len(h) else ("ptr", r - len(h))
            else:
                state = ("strip", r)
        return state if not last else state[1]

    def step_fn(last):
        def f(state, d):
            kind, v = state
            if kind == "tok":
                new = state
            elif kind == "ptr":
                new = ("tok", str(d)) if v == 0 else ("ptr", v - 1)
            elif d == 0 and not last:
                new = state
            else:
                new = ("tok", str(d)) if v == 0 else ("ptr", v - 1)
            return resolve(new, last)

        return f

    if D == 1:
        return rasp.categorical(rasp.SequenceMap(lambda r, hi: head(r, hi, True), step, top)).named("answer")
    state = rasp.SequenceMap(lambda r, hi: head(r, hi, False), step, top).named("emit_top")
    for j in range(D - 2, 0, -1):
        f = step_fn(False)
        state = rasp.SequenceMap(lambda s, u, f=f: f(s, u[0]), state, places[j]).named(f"emit{j}")
    f0 = step_fn(True)
    return rasp.categorical(rasp.SequenceMap(lambda s, t0: f0(s, t0 % 10), state, pairs[0])).named("answer")


class IntSum(Task):
    """a + b with non-negative integer operands of up to `n_digits` digits."""

    name = "int-sum"
    splits = ("train", "test", "ood-carry", "ood-decimal", "ood-4digit")
    marker = "="
    end_token = "."
    end_piece = "\n"
    frame_pieces = ("What", " is", " the", " sum", ":", " ")  # "What is the sum: 213 + 391 ="

    def __init__(self, n_digits: int = 3, max_operand: int = 450, frame: bool = False, bos: bool = False):
        for key, v in (("n_digits", n_digits), ("max_operand", max_operand)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"int-sum option {key}={v!r} must be an integer")
        if not 1 <= n_digits <= MAX_DIGITS:
            raise ValueError(f"int-sum option n_digits={n_digits} is out of range [1, {MAX_DIGITS}]: the teacher "
                             f"grows with it (3 digits: 7 layers; 5: 11 layers, 10 M parameters, ~2 min and 1 GB to "
                             f"compile on 2 CPU cores) and beyond {MAX_DIGITS} compiling takes many minutes and GBs")
        if not 1 <= max_operand <= 10**n_digits:
            raise ValueError(f"int-sum needs 1 <= max_operand <= 10**n_digits = {10**n_digits}, "
                             f"got max_operand={max_operand}")
        self.n_digits, self.max_operand = n_digits, max_operand
        self.frame, self.bos = frame, bos
        # prefix, a, "+", " ", b, "=", up to n_digits + 1 answer digits, end
        self.default_max_seq_len = self.prefix_len + 2 * n_digits + 3 + (n_digits + 1) + 1

    def _operands(self, problem: str) -> tuple[str, str]:
        problem = "".join(problem.split())  # "213 + 391" (the README's spaced form) is "213+391"
        for ch in problem:
            if ch not in "0123456789+.":
                raise ValueError(f"symbol {ch!r} is not one of the int-sum symbols 0-9, '+', '.'")
        parts = problem.split("+")
        if len(parts) != 2 or not all(parts) or any(p.count(".") > 1 or p in (".",) for p in parts):
            why = ("it has no '+'" if len(parts) == 1 else f"it has {len(parts) - 1} '+'" if len(parts) > 2
                   else "an operand is missing" if not all(parts) else "an operand is not a number")
            raise ValueError(f"int-sum problems look like '213+391' (two numbers and one '+'), not {problem!r}: {why}")
        return parts[0], parts[1]

    def symbols(self, problem: str) -> list[str]:
        a, b = self._operands(problem)
        return [*a, "+", *b]

    def prompt_units(self, problem: str) -> list[tuple[str, str]]:
        a, b = self._operands(problem)
        digit = lambda c: (c, c) if c != "." else (".", "dot")  # "dot": outside the teacher vocab
        return [*self.prefix_units(), *map(digit, a), (" +", "+"), (" ", self.filler), *map(digit, b),
                (" =", self.marker)]

    def answer_units(self, answer: str) -> list[tuple[str, str]]:
        return [(c, c) if c != "." else (".", "dot") for c in answer]

    def solve(self, problem: str) -> str:
        a, b = self._operands(problem)
        if "." in a or "." in b:
            s = Decimal(a) + Decimal(b)
            places = max(len(x.split(".")[1]) if "." in x else 0 for x in (a, b))
            return f"{s:.{places}f}"
        return str(int(a) + int(b))

    def program(self, max_seq_len: int) -> rasp.SOp:
        return make_intsum_program(self.n_digits, self.marker, "+", 1, self.end_token, self.filler)

    def teacher_vocab(self) -> frozenset[str]:
        return frozenset({*DIGITS, "+", self.marker, self.end_token, self.filler})

    def teacher_limit(self, problem: str) -> str | None:
        a, b = self._operands(problem)
        if "." in a + b:
            return "the int-sum teacher adds integers; decimal problems are for evaluating the student"
        if max(len(a), len(b)) > self.n_digits:
            return (f"the int-sum teacher adds operands of up to {self.n_digits} digits; "
                    f"use get_task('int-sum', n_digits={max(len(a), len(b))})")
        return None

    def mlp_exactness(self, max_seq_len: int) -> float:
        return 100.0  # no numerical MLPs and no SelectorWidth

    def generate(self, split: str, rng: np.random.Generator) -> str:
        D = self.n_digits
        if split in ("train", "test"):
            a, b = rng.integers(0, self.max_operand, size=2)
            return f"{a}+{b}"
        if split == "ood-carry":  # a + b = k * 100 with a carry out of every lower place
            top = 10**D - 1
            while True:
                k = int(rng.integers(1, 2 * 10 ** (D - 1)))
                lo, hi = max(1, 100 * k - top), min(100 * k - 1, top)
                if lo > hi:
                    continue
                a = int(rng.integers(lo, hi + 1))
                if a % 10 != 0:
                    return f"{a}+{100 * k - a}"
        if split == "ood-decimal":
            x, z = rng.integers(0, 10, size=2)
            yy, ww = rng.integers(0, 100, size=2)
            return f"{x}.{yy:02d}+{z}.{ww:02d}"
        if split == "ood-4digit":
            a, b = rng.integers(10**D, 10 ** (D + 1), size=2)
            return f"{a}+{b}"
        raise ValueError(f"unknown split {split!r}")

    def min_seq_len(self) -> int | None:
        return self.prefix_len + 7  # "0", "+", " ", "0", "=", "0", end

    def max_problem_len(self, split: str) -> int | None:
        if split not in ("train", "test"):
            return None
        m = self.max_operand - 1
        return self.prefix_len + 2 * len(str(m)) + 3 + len(str(2 * m)) + 1

    def edge_cases(self, max_seq_len: int) -> list[str]:
        top = 10**self.n_digits - 1
        cases = ["0+0", "0+5", "5+0", "9+9", "99+1", "1+99", f"{top}+1", f"1+{top}", f"{top}+{top}",
                 "450+450", "449+449", "500+500", "100+900", "10+0", "0+10", "5+7", "50+50", "305+695"]
        out = []
        for c in cases:
            a, b = c.split("+")
            if int(a) <= top and int(b) <= top and self.seq_len(c) <= max_seq_len:
                out.append(c)
        return out


register_task("int-sum", IntSum)
