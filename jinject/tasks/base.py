"""`Task` and `Example`: what the student reads, what the teacher computes, and the data splits.

Vocabulary of the two sides (one piece <-> one teacher token; docs/method.md):

- a *problem* is a compact string (`"([)]{}"`, `"xyxxy"`, `"213+391"`);
- the student sees *pieces*: short strings that each encode as ONE token of the student tokenizer
  when encoded on their own. `prompt = "".join(prompt_pieces)`; `answer_pieces` end with the task's
  end marker piece (`task.end_piece`) so greedy generation knows where to stop;
- the teacher sees one token per piece (`teacher_tokens`): task symbols map to themselves, the last
  prompt piece to the compute marker (`task.marker`), framing pieces to `task.filler`, answer pieces to
  themselves (teacher forcing) and the end piece to `task.end_token`. `Teacher.encode` prepends BOS,
  so student position t <-> teacher position t + 1.

The teacher program is a causal next-token predictor: its answer variable (`task.answer_var`) at the
position of teacher token i holds teacher token i + 1 for every position from the marker to the last
answer token. This is the invariant the training objective relies on; tests check it per task.

Answers: `task.solve(problem)` is the semantic answer (`"yes"`, `"12"`, `"604"`); `Example.answer` is
the same string, `Example.answer_text` the student-side continuation (`" yes."`, `"12."`,
`"604\\n"`), and `task.parse_answer(text)` turns generated text back into a semantic answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from tracr.rasp import rasp

from jinject.tasks import fit
from jinject.tasks.sampling import draw_examples

__all__ = ["Example", "Task", "BOS_PIECE", "join_text", "check_problem_text", "split_symbols"]

# The student's beginning-of-sequence token as a piece: the piece encoder maps it to the tokenizer's BOS id.
# It is not text, so prompt texts leave it out.
BOS_PIECE = "<|bos|>"


def join_text(pieces: Iterable[str]) -> str:
    """The text of some pieces (the BOS piece is a token, not text)."""
    return "".join(p for p in pieces if p != BOS_PIECE)


@dataclasses.dataclass(frozen=True)
class Example:
    """One problem with everything the student and the teacher need."""

    problem: str
    prompt: str
    answer: str  # semantic answer, == task.solve(problem)
    prompt_pieces: tuple[str, ...]
    answer_pieces: tuple[str, ...]  # ends with the end-marker piece
    teacher_tokens: tuple[str, ...]  # one per piece of prompt + answer, BOS not included
    split: str = ""

    @property
    def answer_text(self) -> str:
        """The continuation the student must generate (answer pieces joined, end marker included)."""
        return join_text(self.answer_pieces)

    @property
    def n_pieces(self) -> int:
        return len(self.prompt_pieces) + len(self.answer_pieces)

    @property
    def prompt_teacher_tokens(self) -> tuple[str, ...]:
        """The teacher tokens of the prompt pieces (what the teacher reads before it answers)."""
        return self.teacher_tokens[: len(self.prompt_pieces)]

    @property
    def predict_positions(self) -> range:
        """Student positions t whose next piece t + 1 is an answer piece (where the task loss applies)."""
        p = len(self.prompt_pieces)
        return range(p - 1, p + len(self.answer_pieces) - 1)


class Task:
    """Base class. Subclasses set the attributes in `__init__` and implement the hooks below."""

    name: str = "task"
    splits: tuple[str, ...] = ("train", "test")
    default_max_seq_len: int = 0  # teacher positions, BOS not included
    marker: str = "="  # teacher compute marker (the last prompt piece maps to it)
    end_token: str = "."  # teacher token of the end-marker piece
    end_piece: str = "."  # student piece that ends every answer
    filler: str = "_"  # teacher token for framing pieces
    answer_var: str = "answer"  # name of the program's output S-Op
    frame_pieces: tuple[str, ...] = ()  # the task's question in words (each one student token), before the symbols
    frame: bool = False  # put the question in words before the symbols (teacher: filler)
    bos: bool = False  # start with the student's BOS token (teacher: filler)
    # Largest teacher max_seq_len compile_teacher accepts, and why: tracr's compile time and memory grow
    # with it (SelectorWidth and pairwise SequenceMaps build MLPs with O(n^2) neurons).
    max_teacher_seq_len: int = 512
    teacher_size_reason: str = ("tracr's compile time and memory grow at least quadratically with max_seq_len "
                                "(SelectorWidth and pairwise maps build O(n^2)-neuron MLPs)")

    # ---- framing -----------------------------------------------------------------------------------
    def prefix_units(self) -> list[tuple[str, str]]:
        """(piece, teacher token) before the problem's symbols: the host's BOS and the question in words,
        when switched on; the teacher reads them all as its filler token."""
        units = [(BOS_PIECE, self.filler)] if self.bos else []
        return units + [(w, self.filler) for w in (self.frame_pieces if self.frame else ())]

    @property
    def prefix_len(self) -> int:
        return len(self.prefix_units())

    # ---- hooks -------------------------------------------------------------------------------------
    def symbols(self, problem: str) -> list[str]:
        """The problem's symbols; raises ValueError naming any symbol the task does not know."""
        raise NotImplementedError

    def prompt_units(self, problem: str) -> list[tuple[str, str]]:
        """(piece, teacher token) for every prompt piece; the last one is (marker piece, marker)."""
        raise NotImplementedError

    def answer_units(self, answer: str) -> list[tuple[str, str]]:
        """(piece, teacher token) for the answer, WITHOUT the end marker (added by the base class)."""
        raise NotImplementedError

    def solve(self, problem: str) -> str:
        """Plain-Python oracle: the semantic answer."""
        raise NotImplementedError

    def parse(self, prompt: str) -> str:
        """The problem a prompt text was made from (inverse of `prompt`); the compact form ("([)]",
        "213+391") is accepted too. Spaces are dropped, the symbols validated by `symbols`, and every
        error names the real reason (empty input, a non-ASCII character, a symbol outside the task's
        alphabet, a malformed problem)."""
        body = check_problem_text(prompt, self.name).strip()
        frame = join_text(self.frame_pieces).strip()
        if frame and body.startswith(frame):
            body = body[len(frame):]
        if body.endswith(self.marker):
            body = body[: -len(self.marker)]
        problem = "".join(body.split())
        self.symbols(problem)
        return problem

    def min_seq_len(self) -> int | None:
        """Teacher positions the shortest problem needs with its answer (None: unknown)."""
        return None

    def program(self, max_seq_len: int) -> rasp.SOp:
        """The RASP program (compiled causally); its output S-Op is named `answer_var`."""
        raise NotImplementedError

    def teacher_vocab(self) -> frozenset[str]:
        """Teacher input tokens (BOS / pad excluded)."""
        raise NotImplementedError

    def generate(self, split: str, rng: np.random.Generator) -> str:
        """One random problem of a split."""
        raise NotImplementedError

    def edge_cases(self, max_seq_len: int) -> list[str]:
        """Problems worth checking a teacher of this size on (shortest, longest, degenerate, ...)."""
        return []

    def max_problem_len(self, split: str) -> int | None:
        """Largest number of teacher tokens a problem of `split` can need (None: unknown)."""
        return None

    def teacher_limit(self, problem: str) -> str | None:
        """Why the teacher program cannot handle `problem` whatever its size (None: it can)."""
        return None

    def mlp_exactness(self, max_seq_len: int) -> float:
        """tracr's `mlp_exactness`. SelectorWidth needs L >= 2n(n+1) to tell 1/n from 1/(n+1) apart."""
        n = max_seq_len
        return float(4 * n * (n + 1))

    def answer_from_tokens(self, tokens: Sequence[str]) -> str:
        """Semantic answer from the teacher's answer tokens (end marker excluded)."""
        return "".join(tokens)

    def parse_answer(self, text: str) -> str:
        """Semantic answer from generated text: everything before the end marker, stripped."""
        i = text.find(self.end_piece)
        if i >= 0:
            text = text[:i]
        return text.strip()

    # ---- derived: every view of a problem comes from its one `Example` ----------------------------
    def example(self, problem: str, split: str = "") -> Example:
        """The problem with everything the student and the teacher need (the one place it is built)."""
        prompt = self.prompt_units(problem)
        answer = self.solve(problem)
        units = [*prompt, *self.answer_units(answer), (self.end_piece, self.end_token)]
        prompt_pieces = tuple(p for p, _ in prompt)
        return Example(
            problem=problem,
            prompt=join_text(prompt_pieces),
            answer=answer,
            prompt_pieces=prompt_pieces,
            answer_pieces=tuple(p for p, _ in units[len(prompt):]),
            teacher_tokens=tuple(t for _, t in units),
            split=split,
        )

    def pieces(self, problem: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(prompt_pieces, answer_pieces); every piece is one student token when encoded alone."""
        ex = self.example(problem)
        return ex.prompt_pieces, ex.answer_pieces

    def prompt(self, problem: str) -> str:
        return self.example(problem).prompt

    def teacher_tokens(self, problem: str) -> tuple[str, ...]:
        """One teacher token per piece of prompt + answer (BOS not included)."""
        return self.example(problem).teacher_tokens

    def seq_len(self, problem: str) -> int:
        """Teacher positions the problem needs with its answer (BOS not included)."""
        return self.example(problem).n_pieces

    def misfit(self, example: Example, max_seq_len: int) -> fit.Misfit | None:
        """Why a teacher of this size, compiled from this task, cannot run `example` with its answer (None: it
        can). `Teacher.misfit` is the same rule with the compiled teacher's own vocabulary and size."""
        return fit.misfit(example.teacher_tokens, self.teacher_vocab(), max_seq_len,
                          self.teacher_limit(example.problem))

    def teacher_misfit(self, problem: str, max_seq_len: int) -> str | None:
        """Why a teacher of this size cannot run `problem` with its answer, in words (None: it can)."""
        why = self.misfit(self.example(problem), max_seq_len)
        return None if why is None else str(why)

    def fits(self, problem: str, max_seq_len: int) -> bool:
        """Whether a teacher of this size and vocabulary can hold the problem with its answer."""
        return self.misfit(self.example(problem), max_seq_len) is None

    def examples(self, split: str, n: int, seed: int = 0, max_seq_len: int | None = None) -> list[Example]:
        """`n` examples of `split`, deterministic in (split, n, seed).

        train/test: every example fits a teacher of `max_seq_len` (default `default_max_seq_len`)
        with its answer and is in that teacher's vocabulary; a configuration that cannot guarantee
        this raises ValueError up front (nothing is truncated or dropped silently). train and test
        are disjoint (a fixed hash splits the problem space). OOD splits ignore the teacher: they are
        for evaluating the student, which has no length limit (use `task.fits` to select the ones a
        teacher can also run).
        """
        return draw_examples(self, split, n, seed, max_seq_len)

    def __repr__(self) -> str:
        return f"<Task {self.name} splits={self.splits} default_max_seq_len={self.default_max_seq_len}>"


def check_problem_text(text: str, task: str) -> str:
    """Refuse what no task reads, with the reason: not a string, empty / whitespace only, non-ASCII or
    control characters."""
    if not isinstance(text, str):
        raise ValueError(f"a {task} problem must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"the {task} problem is empty{' (only whitespace)' if text else ''}")
    for ch in text:
        if not ch.isascii():
            raise ValueError(f"character {ch!r} (U+{ord(ch):04X}) in {text!r} is not ASCII; {task} problems are "
                             "written in ASCII symbols")
        if not ch.isprintable() and ch not in " \t\n":
            raise ValueError(f"control character {ch!r} in {text!r}; {task} problems are written in printable "
                             "symbols")
    return text


def split_symbols(problem: str, alphabet: Iterable[str], task: str) -> list[str]:
    """Characters of a compact problem string, each checked against the task's alphabet."""
    alphabet = set(alphabet)
    for ch in problem:
        if ch not in alphabet:
            raise ValueError(f"symbol {ch!r} is not one of the {task} symbols {sorted(alphabet)}")
    return list(problem)
