"""`rasp_task`: a `Task` from a user's own RASP program, with the RASP interpreter (causal) as its oracle."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tracr.rasp import rasp

from jinject.tasks import rasp_lib
from jinject.tasks.base import Task, check_problem_text

__all__ = ["RaspTask", "rasp_task"]


class RaspTask(Task):
    """A task from a user's RASP program; the RASP interpreter (causal) is its oracle.

    The program is a next-token predictor over the teacher tokens (like the built-in ones): given
    symbols + marker (+ the answer so far) its output at the last position is the next answer token,
    and `end_token` once the answer is complete. `solve` runs the interpreter autoregressively.
    """

    def __init__(
        self,
        name: str,
        program: rasp.SOp | Callable[[int], rasp.SOp],
        vocab: Iterable[str],
        *,
        answer_tokens: Iterable[str],
        max_seq_len: int,
        min_len: int = 1,
        max_len: int | None = None,
        prefix_pieces: Sequence[str] = (),
        symbol_piece: str = " {}",
        marker: str = "?",
        marker_piece: str | None = None,
        answer_piece: str = " {}",
        end_token: str = ".",
        end_piece: str = ".",
        filler: str = "_",
        generators: dict[str, Callable[[np.random.Generator], str]] | None = None,
        mlp_exactness: float | None = None,
        max_answer_len: int = 8,
    ):
        self.name = name
        self._program = program
        self.symbol_set = tuple(vocab)
        self.answer_token_set = tuple(answer_tokens)
        self.default_max_seq_len = int(max_seq_len)
        self.marker, self.end_token, self.end_piece, self.filler = marker, end_token, end_piece, filler
        self.marker_piece = marker_piece if marker_piece is not None else f" {marker}"
        self.prefix_pieces = tuple(prefix_pieces)
        self.symbol_piece, self.answer_piece = symbol_piece, answer_piece
        self.min_len = min_len
        self.max_answer_len = max_answer_len
        room = self.default_max_seq_len - len(self.prefix_pieces) - 2 - max_answer_len
        self.max_len = max_len if max_len is not None else max(min_len, room)
        self._generators = dict(generators or {})
        self.splits = ("train", "test", *self._generators)
        self._mlp_exactness = mlp_exactness
        self._multichar = any(len(s) != 1 for s in self.symbol_set)
        self._oracle_program: rasp.SOp | None = None
        self._solved: dict[str, str] = {}

    def program(self, max_seq_len: int) -> rasp.SOp:
        prog = self._program(max_seq_len) if callable(self._program) and not isinstance(
            self._program, rasp.RASPExpr) else self._program
        if prog.name != self.answer_var:
            prog = prog.named(self.answer_var)
        return prog

    def teacher_vocab(self) -> frozenset[str]:
        extra = {self.marker, self.end_token}
        if self.prefix_pieces:
            extra.add(self.filler)
        return frozenset(self.symbol_set) | frozenset(self.answer_token_set) | extra

    def symbols(self, problem: str) -> list[str]:
        syms = problem.split() if self._multichar else list(problem)
        for s in syms:
            if s not in self.symbol_set:
                raise ValueError(f"symbol {s!r} is not one of the {self.name} symbols {sorted(self.symbol_set)}")
        return syms

    def prompt_units(self, problem: str) -> list[tuple[str, str]]:
        units = [(p, self.filler) for p in self.prefix_pieces]
        units += [(self.symbol_piece.format(s), s) for s in self.symbols(problem)]
        return [*units, (self.marker_piece, self.marker)]

    def answer_units(self, answer: str) -> list[tuple[str, str]]:
        toks = answer.split() if self._multichar or " " in answer else list(answer)
        return [(self.answer_piece.format(t), t) for t in toks]

    def answer_from_tokens(self, tokens: Sequence[str]) -> str:
        return (" " if self._multichar else "").join(tokens)

    def solve(self, problem: str) -> str:
        if problem not in self._solved:
            self._solved[problem] = self._solve(problem)
        return self._solved[problem]

    def _solve(self, problem: str) -> str:
        if self._oracle_program is None:
            self._oracle_program = self.program(self.default_max_seq_len)
        toks = [t for _, t in self.prompt_units(problem)]
        out: list[str] = []
        for _ in range(self.max_answer_len + 1):
            nxt = rasp_lib.causal_eval_all(self._oracle_program, toks + out)[self._oracle_program.label][-1]
            if nxt == self.end_token:
                return self.answer_from_tokens(out)
            if nxt not in self.answer_token_set:
                raise ValueError(f"{self.name}: the RASP program produced {nxt!r}, not an answer token")
            out.append(nxt)
        raise ValueError(f"{self.name}: no end token within {self.max_answer_len} answer tokens")

    def parse(self, prompt: str) -> str:
        check_problem_text(prompt, self.name)
        head = "".join(self.prefix_pieces)
        if not (prompt.startswith(head) and prompt.endswith(self.marker_piece)):
            problem = prompt.strip()  # the compact form: symbols (space-separated when they are words)
            if problem.endswith(self.marker):
                problem = problem[: -len(self.marker)].strip()
            if not self._multichar:
                problem = "".join(problem.split())
            self.symbols(problem)
            return " ".join(problem.split()) if self._multichar else problem
        body = prompt[len(head): len(prompt) - len(self.marker_piece)]
        pieces = sorted(((self.symbol_piece.format(s), s) for s in self.symbol_set), key=lambda x: -len(x[0]))
        syms = []
        while body:
            for p, s in pieces:
                if body.startswith(p):
                    syms.append(s)
                    body = body[len(p):]
                    break
            else:
                raise ValueError(f"{self.name}: cannot read {body!r}: it starts with no symbol of "
                                 f"{sorted(self.symbol_set)}")
        return (" " if self._multichar else "").join(syms)

    def generate(self, split: str, rng: np.random.Generator) -> str:
        if split in self._generators:
            return self._generators[split](rng)
        n = int(rng.integers(self.min_len, self.max_len + 1))
        syms = [self.symbol_set[i] for i in rng.integers(0, len(self.symbol_set), size=n)]
        return (" " if self._multichar else "").join(syms)

    def edge_cases(self, max_seq_len: int) -> list[str]:
        j = " " if self._multichar else ""
        out = []
        for s in self.symbol_set:
            out += [j.join([s] * self.min_len), j.join([s] * self.max_len)]
        return out

    def max_problem_len(self, split: str) -> int | None:
        return None

    def min_seq_len(self) -> int | None:
        return len(self.prefix_pieces) + self.min_len + 2  # prefix, symbols, marker, (answer), end

    def mlp_exactness(self, max_seq_len: int) -> float:
        if self._mlp_exactness is not None:
            return float(self._mlp_exactness)
        if rasp_lib.has_selector_width(self.program(max_seq_len)):
            return super().mlp_exactness(max_seq_len)
        return 100.0


def rasp_task(
    name: str,
    program: rasp.SOp | Callable[[int], rasp.SOp],
    vocab: Iterable[str],
    *,
    answer_tokens: Iterable[str],
    max_seq_len: int,
    **kwargs,
) -> RaspTask:
    """Build a `Task` from your own RASP program (see `RaspTask` for the conventions and options).

    `program` (or `program(max_seq_len)`) must be a causal next-token predictor over the teacher
    tokens: input symbols, then `marker` (default "?"), then the answer tokens; at the marker it
    outputs the first answer token, at each answer token the next one, and `end_token` (default ".")
    after the last. Prompt text = prefix pieces + `symbol_piece.format(s)` per symbol + marker piece.
    """
    return RaspTask(name, program, vocab, answer_tokens=answer_tokens, max_seq_len=max_seq_len, **kwargs)

