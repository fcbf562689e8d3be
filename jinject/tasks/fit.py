"""Capacity: the one rule for "can a teacher of this size and vocabulary run these teacher tokens", and the
check that a requested teacher size makes sense for a task.

Every caller that must know whether a problem fits a teacher (drawing train/test examples, `Task.fits`,
`Teacher.encode` / `Teacher.misfit`, evaluation, decoding) asks `misfit`; it is decided nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jinject.tasks.base import Task

__all__ = ["Misfit", "misfit", "check_teacher_size"]


@dataclasses.dataclass(frozen=True)
class Misfit:
    """Why a teacher cannot run some teacher tokens. `str(m)` is the reason in words."""

    limit: str | None  # the task's program cannot handle the problem at any teacher size
    unknown: tuple[str, ...]  # tokens outside the teacher's vocabulary, in order of first appearance
    needed: int  # teacher positions the tokens need (BOS not counted)
    max_seq_len: int  # positions the teacher holds (BOS not counted)

    def __str__(self) -> str:
        if self.limit:
            return self.limit
        if self.unknown:
            unknown = sorted(self.unknown)
            return (f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not in the teacher's "
                    f"vocabulary (an out-of-distribution symbol the teacher was never compiled for)")
        return (f"it needs {self.needed} teacher positions with its answer, the teacher holds "
                f"max_seq_len={self.max_seq_len}")


def misfit(tokens: Sequence[str], vocab: Collection[str], max_seq_len: int, limit: str | None = None) -> Misfit | None:
    """None when a teacher with input vocabulary `vocab` and `max_seq_len` positions (BOS not counted) can run
    `tokens` (a problem's teacher tokens, answer included); otherwise what is wrong. `limit` is the task's
    size-independent refusal (`Task.teacher_limit`); it takes precedence, then the vocabulary, then the length."""
    unknown = tuple(dict.fromkeys(t for t in tokens if t not in vocab))
    if limit or unknown or len(tokens) > max_seq_len:
        return Misfit(limit or None, unknown, len(tokens), max_seq_len)
    return None


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
    shortest = task.min_seq_len()
    if shortest is not None and n < shortest:
        raise ValueError(f"a {task.name} teacher with max_seq_len={n} holds no problem at all: the shortest one needs "
                         f"{shortest} positions with its answer; use max_seq_len >= {shortest} "
                         f"(default {task.default_max_seq_len})")
    if n > task.max_teacher_seq_len:
        cap = task.max_teacher_seq_len
        raise ValueError(f"a {task.name} teacher with max_seq_len={n} is above the limit of {cap}: "
                         f"{task.teacher_size_reason}; shorten the task's lengths (--task-option) or --max-seq-len")
    return n
