"""Drawing a task's examples: deterministic per (seed, split), train and test disjoint by a hash of the problem,
train/test guaranteed to fit the teacher size they are drawn for (refused up front, never truncated)."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jinject.tasks.base import Example, Task

__all__ = ["split_rng", "in_test_pool", "draw_examples", "TEST_POOL_MOD"]

TEST_POOL_MOD = 8  # a problem belongs to the test pool iff crc32(problem) % 8 == 0 (train/test disjoint)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Deterministic per (seed, split); independent streams for different splits."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode())])


def in_test_pool(problem: str) -> bool:
    return zlib.crc32(problem.encode()) % TEST_POOL_MOD == 0


def draw_examples(task: Task, split: str, n: int, seed: int = 0, max_seq_len: int | None = None) -> list[Example]:
    """`Task.examples` (see there for the contract)."""
    if split not in task.splits:
        raise ValueError(f"unknown split {split!r} for task {task.name}; splits: {task.splits}")
    limit = task.default_max_seq_len if max_seq_len is None else int(max_seq_len)
    in_dist = split in ("train", "test")
    if in_dist:
        need = task.max_problem_len(split)
        if need is not None and need > limit:
            raise ValueError(
                f"{task.name} {split} problems need up to {need} teacher positions but the teacher "
                f"holds max_seq_len={limit}; shorten the task's lengths or use max_seq_len>={need}"
            )
    rng = split_rng(seed, split)
    out = []
    for _ in range(n):
        for _attempt in range(10_000):
            problem = task.generate(split, rng)
            if not in_dist or in_test_pool(problem) == (split == "test"):
                break
        else:  # pragma: no cover - only for degenerate user generators
            raise ValueError(f"{task.name}: could not draw a {split} problem outside the other pool")
        ex = task.example(problem, split)
        if in_dist and task.misfit(ex, limit) is not None:
            raise ValueError(
                f"{task.name}: generated {split} problem {problem!r} needs {len(ex.teacher_tokens)} "
                f"teacher positions in vocabulary {sorted(task.teacher_vocab())}; limit {limit}"
            )
        out.append(ex)
    return out
