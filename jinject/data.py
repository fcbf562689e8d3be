"""Batches for the train step: task examples -> student ids, teacher ids and masks; text windows; and
`Pipeline`, the two together for one run.

Every batch is a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jinject.config import TrainConfig
from jinject.tasks.base import BOS_PIECE

if TYPE_CHECKING:
    from jinject.tasks import Example, Task
    from jinject.teacher import Teacher
    from jinject.tokenizer import Tokenizer

STREAM_TASK, STREAM_TEXT = 0, 1


class PieceEncoder:
    """Encodes task pieces one by one, refusing any piece that is not exactly one student token."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[str, int] = {}

    def __call__(self, piece: str) -> int:
        if piece not in self._ids:
            if piece == BOS_PIECE:
                if self.tokenizer.bos_id is None:
                    raise ValueError("the task starts with the host's BOS token (task option bos=true) but this "
                                     "tokenizer has none; use bos=false")
                self._ids[piece] = self.tokenizer.bos_id
                return self._ids[piece]
            ids = self.tokenizer.encode(piece)
            if len(ids) != 1:
                raise ValueError(
                    f"task piece {piece!r} encodes to {len(ids)} student tokens {ids}; every task symbol must be "
                    "exactly one token. Change the task's pieces for this tokenizer (e.g. add or drop a leading "
                    "space) or pick another model."
                )
            self._ids[piece] = ids[0]
        return self._ids[piece]

    def encode(self, pieces: Sequence[str]) -> list[int]:
        return [self(p) for p in pieces]


@dataclass(frozen=True)
class TaskArrays:
    """A padded, tokenised set of task examples (numpy, host side).

    inputs/targets [N, T]: student ids and next-token targets; answer_mask [N, T]: positions whose target
    is an answer piece; real_mask [N, T]: non-padding positions; teacher_ids [N, T+1]: BOS + teacher tokens.
    """

    inputs: np.ndarray
    targets: np.ndarray
    answer_mask: np.ndarray
    real_mask: np.ndarray
    teacher_ids: np.ndarray
    answer_index: np.ndarray  # [N, K]: the answer positions of each row (0-padded), so the step computes
    answer_valid: np.ndarray  # [N, K]  vocabulary logits only there, not at every position

    def __len__(self) -> int:
        return len(self.inputs)

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "inputs": self.inputs[idx],
            "targets": self.targets[idx],
            "answer_mask": self.answer_mask[idx],
            "real_mask": self.real_mask[idx],
            "teacher_ids": self.teacher_ids[idx],
            "answer_index": self.answer_index[idx],
            "answer_valid": self.answer_valid[idx],
        }


def round_up(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


def encode_examples(
    examples: Sequence[Example], encoder: PieceEncoder, teacher: Teacher | None, seq_len: int | None = None
) -> TaskArrays:
    """Tokenise examples piece by piece. An example longer than `seq_len` (or than the teacher can hold)
    is an error, never truncated: truncation silently dropped answers in the original code."""
    if not examples:
        raise ValueError("no examples to encode")
    for e in examples if teacher is not None else ():
        why = teacher.misfit(e)  # the one fit rule: length with the answer, vocabulary, the task's own limit
        if why is not None:
            fix = ("; compile the teacher with a larger max_seq_len or generate shorter examples"
                   if not (why.limit or why.unknown) else "")
            raise ValueError(f"example {e.problem!r} does not fit the teacher: {why}{fix}")
    longest = max(len(e.prompt_pieces) + len(e.answer_pieces) for e in examples)
    if seq_len is None:  # round up for fewer recompiles, but never past what the teacher's positions hold
        seq_len = round_up(longest) if teacher is None else min(round_up(longest), teacher.max_seq_len)
    if longest > seq_len:
        raise ValueError(f"an example has {longest} tokens but the padded length is {seq_len}")
    n = len(examples)
    inputs = np.zeros((n, seq_len), np.int32)
    targets = np.zeros((n, seq_len), np.int32)
    answer_mask = np.zeros((n, seq_len), np.float32)
    real_mask = np.zeros((n, seq_len), np.float32)
    pad = teacher.pad_id if teacher is not None else 0
    teacher_ids = np.full((n, seq_len + 1), pad, np.int32)
    k_max = max(len(e.answer_pieces) for e in examples)
    answer_index = np.zeros((n, k_max), np.int32)
    answer_valid = np.zeros((n, k_max), np.float32)
    for k, e in enumerate(examples):
        ids = encoder.encode(list(e.prompt_pieces) + list(e.answer_pieces))
        m, p = len(ids), len(e.prompt_pieces)
        inputs[k, :m] = ids
        targets[k, : m - 1] = ids[1:]
        answer_mask[k, p - 1 : m - 1] = 1.0
        answer_index[k, : m - p] = np.arange(p - 1, m - 1)
        answer_valid[k, : m - p] = 1.0
        real_mask[k, :m] = 1.0
        if teacher is not None:
            t_ids = teacher.encode(list(e.teacher_tokens))
            if len(t_ids) != m + 1:
                raise ValueError(
                    f"teacher tokens of {e.problem!r} give {len(t_ids)} ids, expected {m + 1} (BOS + one per piece)"
                )
            teacher_ids[k, : m + 1] = t_ids
    return TaskArrays(inputs, targets, answer_mask, real_mask, teacher_ids, answer_index, answer_valid)


def batch_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, stream])


def sample_task_batch(arrays: TaskArrays, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
    idx = batch_rng(seed, step, STREAM_TASK).integers(0, len(arrays), size=batch_size)
    return arrays.take(idx)


# ---------------------------------------------------------------------------------------------- text


def builtin_corpus() -> str:
    """Real English prose that ships with Python: the documentation topics of `pydoc_data`."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_corpus(path: str | None) -> str:
    if path is None:
        return builtin_corpus()
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"corpus {path!r} is a directory; pass a plain-text file to --corpus")
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {path!r} does not exist; pass a plain-text file to --corpus")
    raw = p.read_bytes()
    if b"\0" in raw[:65536]:
        raise ValueError(f"corpus {path!r} is a binary file (it holds NUL bytes); pass a plain-text file to --corpus")
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")  # as read_text does
    if len(text.strip()) < 1000:
        raise ValueError(f"corpus {path!r} has only {len(text.strip())} characters; give at least a few pages")
    return text


def split_corpus(text: str, heldout_fraction: float = 0.1) -> tuple[str, str]:
    """(train, held-out) by paragraphs, deterministically: the last paragraphs are held out. A text with no
    blank line is split by lines instead, a single line by characters (never an empty training part)."""
    sep = "\n\n"
    paragraphs = [p for p in text.split(sep) if p.strip()]
    if len(paragraphs) < 2:
        sep = "\n"
        paragraphs = [p for p in text.splitlines() if p.strip()]
    if len(paragraphs) < 2:
        cut = int(len(text) * (1 - heldout_fraction))
        return text[:cut], text[cut:]
    n_held = max(1, int(len(paragraphs) * heldout_fraction))
    return sep.join(paragraphs[:-n_held]), sep.join(paragraphs[-n_held:])


class TextStream:
    """A tokenised corpus; batches are random windows chosen by (seed, step)."""

    def __init__(self, text: str, tokenizer: Tokenizer, max_chars: int = 2_000_000):
        self.ids = np.asarray(tokenizer.encode(text[:max_chars]), np.int32)

    def batch(self, seed: int, step: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        if len(self.ids) <= seq_len:
            raise ValueError(f"the corpus's training part has {len(self.ids)} tokens, not more than text_seq_len="
                             f"{seq_len}; give a longer --corpus or a smaller --text-seq-len")
        starts = batch_rng(seed, step, STREAM_TEXT).integers(0, len(self.ids) - seq_len, size=batch_size)
        ids = np.stack([self.ids[s : s + seq_len] for s in starts])
        return {"text_ids": ids, "text_mask": np.ones_like(ids, np.float32)}


# ------------------------------------------------------------------------------------------ pipeline


class Pipeline:
    """Task pool + text stream for a run; `batch(step)` is deterministic in (seed, step)."""

    def __init__(self, config: TrainConfig, task: Task, teacher: Teacher | None, tokenizer: Tokenizer):
        self.config = config
        self.encoder = PieceEncoder(tokenizer)
        # baseline and injected runs see the same examples: those the configured teacher can hold
        examples = task.examples("train", config.n_train, config.seed, max_seq_len=config.teacher_max_seq_len)
        self.task_arrays: TaskArrays = encode_examples(examples, self.encoder, teacher)
        train_text, self.heldout_text = split_corpus(load_corpus(config.corpus))
        self.text = TextStream(train_text, tokenizer)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The task rows and text windows of step `step` (host numpy arrays)."""
        c = self.config
        return {**sample_task_batch(self.task_arrays, c.seed, step, c.batch_size),
                **self.text.batch(c.seed, step, c.text_batch_size, c.text_seq_len)}
