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
import inspect
import math
import zlib
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from tracr.rasp import rasp

from jinject.tasks import rasp_lib

__all__ = ["Example", "Task", "RaspTask", "rasp_task", "get_task", "register_task", "TASKS", "BOS_PIECE",
           "MAX_PROBLEM_LEN", "check_teacher_size"]

# The student's beginning-of-sequence token as a piece: the piece encoder maps it to the tokenizer's BOS id.
# It is not text, so prompt texts leave it out.
BOS_PIECE = "<|bos|>"


def join_text(pieces: Iterable[str]) -> str:
    """The text of some pieces (the BOS piece is a token, not text)."""
    return "".join(p for p in pieces if p != BOS_PIECE)

TEST_POOL_MOD = 8  # a problem belongs to the test pool iff crc32(problem) % 8 == 0 (train/test disjoint)


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
    def predict_positions(self) -> range:
        """Student positions t whose next piece t + 1 is an answer piece (where the task loss applies)."""
        p = len(self.prompt_pieces)
        return range(p - 1, p + len(self.answer_pieces) - 1)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Deterministic per (seed, split); independent streams for different splits."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode())])


def in_test_pool(problem: str) -> bool:
    return zlib.crc32(problem.encode()) % TEST_POOL_MOD == 0


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

    def teacher_misfit(self, problem: str, max_seq_len: int) -> str | None:
        """Why a teacher of this size cannot run `problem` with its answer, in words (None: it can)."""
        limit = self.teacher_limit(problem)
        if limit:
            return limit
        toks = self.teacher_tokens(problem)
        unknown = sorted(set(toks) - self.teacher_vocab())
        if unknown:
            return (f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not in the teacher's "
                    f"vocabulary (an out-of-distribution symbol the teacher was never compiled for)")
        if len(toks) > max_seq_len:
            return (f"it needs {len(toks)} teacher positions with its answer, the teacher holds "
                    f"max_seq_len={max_seq_len}")
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

    # ---- derived -----------------------------------------------------------------------------------
    def units(self, problem: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        prompt = self.prompt_units(problem)
        answer = [*self.answer_units(self.solve(problem)), (self.end_piece, self.end_token)]
        return prompt, answer

    def pieces(self, problem: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(prompt_pieces, answer_pieces); every piece is one student token when encoded alone."""
        prompt, answer = self.units(problem)
        return tuple(p for p, _ in prompt), tuple(p for p, _ in answer)

    def prompt(self, problem: str) -> str:
        return join_text(p for p, _ in self.prompt_units(problem))

    def teacher_tokens(self, problem: str) -> tuple[str, ...]:
        """One teacher token per piece of prompt + answer (BOS not included)."""
        prompt, answer = self.units(problem)
        return tuple(t for _, t in prompt) + tuple(t for _, t in answer)

    def prompt_teacher_tokens(self, prompt: str) -> tuple[str, ...]:
        """Teacher tokens of a prompt text (what `Teacher.answer` feeds the teacher)."""
        return tuple(t for _, t in self.prompt_units(self.parse(prompt)))

    def seq_len(self, problem: str) -> int:
        """Teacher positions the problem needs with its answer (BOS not included)."""
        return len(self.teacher_tokens(problem))

    def fits(self, problem: str, max_seq_len: int) -> bool:
        """Whether a teacher of this size and vocabulary can hold the problem with its answer."""
        toks = self.teacher_tokens(problem)
        return len(toks) <= max_seq_len and set(toks) <= self.teacher_vocab() and not self.teacher_limit(problem)

    def check_teacher_tokens(self, tokens: Sequence[str], max_seq_len: int) -> None:
        """Raise a clear ValueError if a teacher of this size cannot encode `tokens`."""
        vocab = self.teacher_vocab()
        for t in tokens:
            if t not in vocab:
                raise ValueError(
                    f"symbol {t!r} is not in the {self.name} teacher's vocabulary {sorted(vocab)}"
                )
        if len(tokens) > max_seq_len:
            raise ValueError(
                f"{self.name}: {len(tokens)} teacher positions needed (prompt + answer, BOS not counted) but this "
                f"teacher holds at most max_seq_len={max_seq_len}; compile a larger one with "
                f"compile_teacher(task, max_seq_len={len(tokens)})"
            )

    def example(self, problem: str, split: str = "") -> Example:
        prompt, answer = self.units(problem)
        return Example(
            problem=problem,
            prompt=join_text(p for p, _ in prompt),
            answer=self.solve(problem),
            prompt_pieces=tuple(p for p, _ in prompt),
            answer_pieces=tuple(p for p, _ in answer),
            teacher_tokens=tuple(t for _, t in prompt) + tuple(t for _, t in answer),
            split=split,
        )

    def examples(self, split: str, n: int, seed: int = 0, max_seq_len: int | None = None) -> list[Example]:
        """`n` examples of `split`, deterministic in (split, n, seed).

        train/test: every example fits a teacher of `max_seq_len` (default `default_max_seq_len`)
        with its answer and is in that teacher's vocabulary; a configuration that cannot guarantee
        this raises ValueError up front (nothing is truncated or dropped silently). train and test
        are disjoint (a fixed hash splits the problem space). OOD splits ignore the teacher: they are
        for evaluating the student, which has no length limit (use `task.fits` to select the ones a
        teacher can also run).
        """
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} for task {self.name}; splits: {self.splits}")
        limit = self.default_max_seq_len if max_seq_len is None else int(max_seq_len)
        in_dist = split in ("train", "test")
        if in_dist:
            need = self.max_problem_len(split)
            if need is not None and need > limit:
                raise ValueError(
                    f"{self.name} {split} problems need up to {need} teacher positions but the teacher "
                    f"holds max_seq_len={limit}; shorten the task's lengths or use max_seq_len>={need}"
                )
        rng = split_rng(seed, split)
        out = []
        for _ in range(n):
            for _attempt in range(10_000):
                problem = self.generate(split, rng)
                if not in_dist or in_test_pool(problem) == (split == "test"):
                    break
            else:  # pragma: no cover - only for degenerate user generators
                raise ValueError(f"{self.name}: could not draw a {split} problem outside the other pool")
            ex = self.example(problem, split)
            if in_dist and not self.fits(problem, limit):
                raise ValueError(
                    f"{self.name}: generated {split} problem {problem!r} needs {len(ex.teacher_tokens)} "
                    f"teacher positions in vocabulary {sorted(self.teacher_vocab())}; limit {limit}"
                )
            out.append(ex)
        return out

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


# ---------------------------------------------------------------------------------------------------
# User tasks
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    TASKS[name] = factory


def get_task(name: str, **options) -> Task:
    """A built-in task by name ("shuffle-dyck", "count", "int-sum"); options override its sizes."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    params = inspect.signature(TASKS[name]).parameters
    for key, value in options.items():
        if key not in params:
            raise ValueError(f"task {name!r} has no option {key!r}; options: {', '.join(params)}")
        default = params[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"task option {key}={value!r} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"task option {key}={value!r} must be an integer like its default {default!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"task option {key}={value!r} must be a finite number like its default {default!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"task option {key}={value!r} must be a string like its default {default!r}")
    return TASKS[name](**options)


def check_length_option(task: str, **values: int) -> None:
    """Length options of the built-in tasks: integers in [0, MAX_PROBLEM_LEN] (checked before anything is
    generated or compiled)."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{task} option {key}={v!r} must be an integer")
        if not 0 <= v <= MAX_PROBLEM_LEN:
            raise ValueError(f"{task} option {key}={v} is out of range [0, {MAX_PROBLEM_LEN}]: no supported host "
                             f"reads more than {MAX_PROBLEM_LEN} positions (SmolLM2's context; GPT-2 has 1024)")


def check_teacher_size(task: Task, max_seq_len: int | None) -> int:
    """The teacher size `compile_teacher` would build (None: the task's default), refused with the limit and
    the reason when it is not a positive integer, cannot hold even the task's shortest problem, or is beyond
    what tracr compiles in reasonable time and memory. Cheap: nothing is compiled."""
    n = task.default_max_seq_len if max_seq_len is None else max_seq_len
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise ValueError(f"max_seq_len must be an integer (None: the task's default), got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"max_seq_len must be >= 1 (None: the task's default {task.default_max_seq_len}), got {n}")
    shortest = task.min_seq_len() if hasattr(task, "min_seq_len") else None
    if shortest is not None and n < shortest:
        raise ValueError(f"a {task.name} teacher with max_seq_len={n} holds no problem at all: the shortest one needs "
                         f"{shortest} positions with its answer; use max_seq_len >= {shortest} "
                         f"(default {task.default_max_seq_len})")
    cap = getattr(task, "max_teacher_seq_len", None)
    if cap is not None and n > cap:
        why = getattr(task, "teacher_size_reason", "")
        raise ValueError(f"a {task.name} teacher with max_seq_len={n} is above the limit of {cap}: {why}; "
                         f"shorten the task's lengths (--task-option) or --max-seq-len")
    return n


# The longest problem any length option may ask for: the largest context of the supported hosts.
MAX_PROBLEM_LEN = 8192
