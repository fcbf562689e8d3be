"""shuffle-dyck: are the brackets `()[]{}` balanced (each pair's running count never negative, ends at 0)?

Student text: `" ( [ ) ] ?"` -> `" yes."` / `" no."` (pieces `" ("`, ..., `" ?"`, then `" yes"`, `"."`).

Two teacher programs (task option `program`); both causal next-token predictors, verified against the oracle.

`program="counts"` (default; all categorical except two 0/1 attention averages; 4 layers):

    need, have = two query-dependent counts (tracr SelectorWidth, layer 0):
        at a closing bracket c:  need = #c so far,        have = #partner(c) so far
        at the marker `?`:        need = #openers so far,  have = #closers so far
        elsewhere: need = 0
    unmatched   = need > have                      (layer 1 MLP; True where a bracket is unmatched)
    any_unmatched = mean over the prefix of 1, restricted to `unmatched` positions  (layer 2 attention)
    rejected    = any_unmatched > 0.5              (layer 2 MLP)
    answer      = at `?`: "no" if rejected else "yes"; at "yes"/"no": "."; else "_"   (layer 3 MLP)

Why it is exact: a string is shuffle-balanced iff no closing bracket ever exceeds its openers (the
first violation always happens AT a closing bracket) and, with no violation, the totals of openers and
closers are equal (each pair has closers <= openers, so equal sums force equal pairs).
The pairwise comparison `need > have` costs one (n+1)^2-neuron MLP; everything else is O(n).

`program="balance"` (8 layers): the original work's per-pair running balances as attention averages,
see `make_dyck_balance_program`.
"""

from __future__ import annotations

import numpy as np
from tracr.rasp import rasp

from jinject.tasks import rasp_lib
from jinject.tasks.base import Task, split_symbols
from jinject.tasks.registry import check_length_option, register_task

PAIRS = ("()", "[]", "{}")
OOD_PAIR = "<>"


def is_balanced(s: str, pairs: tuple[str, ...] = PAIRS + (OOD_PAIR,)) -> bool:
    """Shuffle-Dyck oracle: every pair's running count never negative and zero at the end."""
    depth = {p: 0 for p in pairs}
    opens = {p[0]: p for p in pairs}
    closes = {p[1]: p for p in pairs}
    for ch in s:
        if ch in opens:
            depth[opens[ch]] += 1
        elif ch in closes:
            depth[closes[ch]] -= 1
            if depth[closes[ch]] < 0:
                return False
        else:
            raise ValueError(f"symbol {ch!r} is not a bracket of {''.join(pairs)}")
    return all(v == 0 for v in depth.values())


def make_dyck_program(pairs: tuple[str, ...] = PAIRS, marker: str = "?", yes: str = "yes", no: str = "no",
                      end: str = ".", filler: str = "_") -> rasp.SOp:
    """The causal shuffle-Dyck next-token program described in the module docstring."""
    openers = {p[0] for p in pairs}
    closers = {p[1] for p in pairs}
    partner = {p[1]: p[0] for p in pairs}

    def need_pred(k, q):
        if q in partner:
            return k == q
        return q == marker and k in openers

    def have_pred(k, q):
        if q in partner:
            return k == partner[q]
        return q == marker and k in closers

    tok = rasp.tokens
    need = rasp_lib.count_where(None, "need", query_pred=need_pred)
    have = rasp_lib.count_where(None, "have", query_pred=have_pred)
    unmatched = rasp.categorical(rasp.SequenceMap(lambda n, h: n > h, need, have)).named("unmatched")
    one = rasp.numerical(rasp.Map(lambda t: 1, tok)).named("one_value")
    pick = rasp.Select(unmatched, tok, lambda k, q: k is True).named("select_unmatched")
    any_unmatched = rasp.numerical(rasp.Aggregate(pick, one, default=0)).named("any_unmatched")
    rejected = rasp.categorical(rasp.Map(lambda x: x > 0.5, any_unmatched)).named("rejected")
    return _answer(rejected, marker, yes, no, end, filler)


def make_dyck_balance_program(pairs: tuple[str, ...] = PAIRS, marker: str = "?", yes: str = "yes", no: str = "no",
                              end: str = ".", filler: str = "_") -> rasp.SOp:
    """The original work's formulation as a causal next-token program (8 layers): per pair, the running
    balance = fraction of openers - fraction of closers so far (an attention average, numerical);
    `negative_i` where it is below 0, `unbalanced_i` where it is not 0; `went_negative_i` = some prefix
    position was negative (an average of `negative_i` > 0); at the marker the answer is "no" if any pair
    went negative or is unbalanced. Every decision is a threshold on an average, the kind of quantity an
    attention layer computes; the `counts` program asks for exact one-hot counts instead."""
    tok = rasp.tokens
    prevs = rasp.Select(tok, tok, rasp.Comparison.TRUE).named("prevs")  # causal: every position so far
    went, unbalanced = [], []
    for i, (o, c) in enumerate(pairs):
        is_o = rasp.numerical(rasp.Map(lambda t, o=o: 1 if t == o else 0, tok)).named(f"is_open{i}")
        is_c = rasp.numerical(rasp.Map(lambda t, c=c: 1 if t == c else 0, tok)).named(f"is_close{i}")
        frac_o = rasp.numerical(rasp.Aggregate(prevs, is_o, default=0)).named(f"frac_open{i}")
        frac_c = rasp.numerical(rasp.Aggregate(prevs, is_c, default=0)).named(f"frac_close{i}")
        balance = rasp.numerical(rasp.LinearSequenceMap(frac_o, frac_c, 1, -1)).named(f"balance{i}")
        negative = rasp.numerical(rasp.Map(lambda x: 1 if x < -1e-9 else 0, balance)).named(f"negative{i}")
        unbalanced.append(rasp.categorical(rasp.Map(lambda x: abs(x) > 1e-9, balance)).named(f"unbalanced{i}"))
        frac_neg = rasp.numerical(rasp.Aggregate(prevs, negative, default=0)).named(f"frac_negative{i}")
        went.append(rasp.categorical(rasp.Map(lambda x: x > 1e-9, frac_neg)).named(f"went_negative{i}"))

    unb = _any(unbalanced, "unbalanced")
    rejected = _any([*went, unb], "rejected")  # a balanced tree of ORs: 8 layers for 3 pairs
    return _answer(rejected, marker, yes, no, end, filler)


def _answer(rejected: rasp.SOp, marker: str, yes: str, no: str, end: str, filler: str) -> rasp.SOp:
    """The next token: the verdict at the marker, the end marker after it, filler elsewhere."""

    def next_token(rej, t):
        if t == marker:
            return no if rej else yes
        if t in (yes, no):
            return end
        return filler

    return rasp.categorical(rasp.SequenceMap(next_token, rejected, rasp.tokens)).named("answer")


def _any(items: list[rasp.SOp], name: str) -> rasp.SOp:
    """Categorical OR of boolean S-Ops as a balanced tree of SequenceMaps (depth log2 of their number)."""
    level = 0
    while len(items) > 1:
        level += 1
        pairs = [items[k:k + 2] for k in range(0, len(items), 2)]
        items = [p[0] if len(p) == 1 else rasp.categorical(rasp.SequenceMap(lambda a, b: bool(a) or bool(b), *p))
                 .named(name if len(pairs) == 1 else f"{name}_{level}_{k}") for k, p in enumerate(pairs)]
    return items[0]


PROGRAMS = {"counts": make_dyck_program, "balance": make_dyck_balance_program}


def random_balanced(n: int, rng: np.random.Generator, pairs: tuple[str, ...]) -> str:
    """A random shuffle-balanced string of even length n."""
    assert n % 2 == 0
    open_count = [0] * len(pairs)
    out = []
    for i in range(n):
        left = n - i
        unclosed = sum(open_count)
        must_close = unclosed >= left  # == left
        can_open = unclosed + 1 <= left - 1
        if unclosed > 0 and (must_close or not can_open or rng.random() < 0.5):
            choices = [j for j, c in enumerate(open_count) if c > 0]
            j = choices[int(rng.integers(len(choices)))]
            open_count[j] -= 1
            out.append(pairs[j][1])
        else:
            j = int(rng.integers(len(pairs)))
            open_count[j] += 1
            out.append(pairs[j][0])
    return "".join(out)


class ShuffleDyck(Task):
    """shuffle-Dyck-3. Lengths are in brackets; the teacher adds the marker and 2 answer pieces."""

    name = "shuffle-dyck"
    splits = ("train", "test", "ood-length", "ood-almost-balanced", "ood-new-pair")
    marker = "?"
    end_token = "."
    end_piece = "."
    frame_pieces = ("Are", " these", " brackets", " balanced", ":")  # "Are these brackets balanced: ( [ ) ] ?"
    # Measured on 2 CPU cores: max_seq_len 43 compiles in ~6 s, 60 in ~50 s; the time grows about as n^6
    # (the need > have comparison and the discretised average over the prefix have O(n^2) values).
    max_teacher_seq_len = 96
    teacher_size_reason = ("tracr's compile time for shuffle-dyck grows about as max_seq_len^6 (43: ~6 s, 60: "
                           "~50 s on 2 CPU cores; 96: ~15 min)")

    def __init__(self, min_len: int = 5, max_len: int = 30, ood_max_len: int = 90, max_input_len: int = 40,
                 frame: bool = False, bos: bool = False, program: str = "counts"):
        check_length_option(self.name, min_len=min_len, max_len=max_len, ood_max_len=ood_max_len,
                            max_input_len=max_input_len)
        if not 0 <= min_len <= max_len <= max_input_len:
            raise ValueError(f"shuffle-dyck needs 0 <= min_len <= max_len <= max_input_len, got min_len={min_len}, "
                             f"max_len={max_len}, max_input_len={max_input_len}")
        if ood_max_len <= max_len:
            raise ValueError(f"shuffle-dyck needs ood_max_len > max_len (the ood-length split is longer than "
                             f"training), got ood_max_len={ood_max_len}, max_len={max_len}")
        if program not in PROGRAMS:
            raise ValueError(f"shuffle-dyck program {program!r} is unknown; choose one of {sorted(PROGRAMS)}")
        self.program_name = program
        self.min_len, self.max_len, self.ood_max_len = min_len, max_len, ood_max_len
        self.max_input_len = max_input_len
        self.frame, self.bos = frame, bos
        self.default_max_seq_len = self.prefix_len + max_input_len + 3  # prefix, symbols, marker, yes/no, end

    # ---- pieces ------------------------------------------------------------------------------------
    def symbols(self, problem: str) -> list[str]:
        return split_symbols(problem, "".join(PAIRS + (OOD_PAIR,)), self.name)

    def prompt_units(self, problem: str) -> list[tuple[str, str]]:
        return [*self.prefix_units(), *((f" {s}", s) for s in self.symbols(problem)), (f" {self.marker}", self.marker)]

    def answer_units(self, answer: str) -> list[tuple[str, str]]:
        if answer not in ("yes", "no"):
            raise ValueError(f"shuffle-dyck answers are yes/no, not {answer!r}")
        return [(f" {answer}", answer)]

    def solve(self, problem: str) -> str:
        return "yes" if is_balanced(problem) else "no"

    # ---- teacher -----------------------------------------------------------------------------------
    def program(self, max_seq_len: int) -> rasp.SOp:
        return PROGRAMS[self.program_name](PAIRS, self.marker, end=self.end_token, filler=self.filler)

    def teacher_vocab(self) -> frozenset[str]:
        return frozenset("".join(PAIRS)) | {self.marker, "yes", "no", self.end_token, self.filler}

    # ---- data --------------------------------------------------------------------------------------
    def _mixed(self, lo: int, hi: int, rng: np.random.Generator, pairs: tuple[str, ...]) -> str:
        """Half balanced strings, half uniformly random bracket strings, length in [lo, hi]."""
        if rng.random() < 0.5:
            evens = [n for n in range(lo, hi + 1) if n % 2 == 0]
            if evens:
                return random_balanced(int(rng.choice(evens)), rng, pairs)
        n = int(rng.integers(lo, hi + 1))
        alphabet = "".join(pairs)
        return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))

    def generate(self, split: str, rng: np.random.Generator) -> str:
        if split in ("train", "test"):
            return self._mixed(self.min_len, self.max_len, rng, PAIRS)
        if split == "ood-length":
            return self._mixed(self.max_len + 1, self.ood_max_len, rng, PAIRS)
        if split == "ood-almost-balanced":  # balanced minus its last bracket: always "no"
            evens = [n for n in range(max(self.min_len + 1, 2), self.max_len + 2) if n % 2 == 0]
            return random_balanced(int(rng.choice(evens)), rng, PAIRS)[:-1]
        if split == "ood-new-pair":  # strings that use the unseen pair <>
            pairs = PAIRS + (OOD_PAIR,)
            while True:
                s = self._mixed(max(self.min_len, 2), self.max_len, rng, pairs)
                if "<" in s or ">" in s:
                    return s
        raise ValueError(f"unknown split {split!r}")

    def max_problem_len(self, split: str) -> int | None:
        return self.prefix_len + self.max_len + 3 if split in ("train", "test") else None

    def min_seq_len(self) -> int | None:
        return self.prefix_len + 3  # the empty string, "?", yes/no, "."

    def edge_cases(self, max_seq_len: int) -> list[str]:
        n = max_seq_len - 3 - self.prefix_len
        half = n // 2
        cases = ["", "(", ")", "()", ")(", "([)]", "())(", "(()", "{[(])}", "([{}])", "(]"]
        cases += ["(" * n, ")" * n, "[" * n, "}" * n]
        cases += ["(" * half + ")" * half, "[" * half + "]" * half, "{" * half + "}" * half]
        cases += ["()" * half, "([{" * (n // 6) + "}])" * (n // 6), "([{" * (n // 6) + ")]}" * (n // 6)]
        cases += ["(" * half + ")" * (half - 1) + "]", "(" * (half - 1) + ")" * half + "("]
        cases += ["(" * half + ")" * half + ")", "(" * (half - 1) + "]" + ")" * (half - 1)]
        return [c for c in cases if len(c) <= n]


register_task("shuffle-dyck", ShuffleDyck)
