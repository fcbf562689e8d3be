"""Reading a compiled teacher: residual vectors -> RASP variable values, and the teacher's greedy answer
(run on its own outputs until the end token). Used by `Teacher`'s convenience methods and `jinject.verify`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from jinject.teacher import Teacher, VarInfo

__all__ = ["decode_indices", "decode", "greedy", "answers", "variables"]


def decode_indices(var_info: dict[str, VarInfo], resid: Any) -> dict[str, np.ndarray]:
    """Categorical vars: index into `var_info[v].values` (-1 where the one-hot is empty); numerical: the value.
    `resid` is `[..., D]`; every result is `[...]`."""
    r = np.asarray(resid, dtype=np.float32)
    out = {}
    for name, v in var_info.items():
        x = r[..., v.dims]
        if v.categorical:
            i = np.argmax(x, axis=-1)
            out[name] = np.where(np.max(x, axis=-1) > 0.5, i, -1)
        else:
            out[name] = x[..., 0]
    return out


def decode(var_info: dict[str, VarInfo], resid: Any) -> dict[str, np.ndarray]:
    """Every variable's value from residual vectors `[..., D]` (object arrays for categorical; None where the
    one-hot is empty, e.g. an aggregate that selected nothing)."""
    out = {}
    for name, idx in decode_indices(var_info, resid).items():
        v = var_info[name]
        if v.categorical:
            table = np.empty(len(v.values) + 1, dtype=object)
            table[:-1] = v.values
            table[-1] = None
            out[name] = table[idx]
        else:
            out[name] = idx
    return out


def greedy(teacher: Teacher, prompts: Sequence[Sequence[str]], max_new: int | None = None) -> list[list[str]]:
    """Greedy answer tokens (end marker excluded) for teacher-token prompts, batched: each step runs the
    teacher on every unfinished row and appends the answer variable's value at its last position."""
    seqs = [list(p) for p in prompts]
    done = [False] * len(seqs)
    outs: list[list[str]] = [[] for _ in seqs]
    n = teacher.max_seq_len
    for _ in range(max_new or n):
        active = [i for i, d in enumerate(done) if not d and len(seqs[i]) < n]
        if not active:
            break
        ids = teacher.batch([seqs[i] for i in active], length=teacher.n_positions)
        ans = teacher.decode_indices(np.asarray(teacher.run(ids)[-1]))[teacher.answer_var]
        for row, i in enumerate(active):
            j = ans[row, len(seqs[i])]  # BOS shift: last token sits at position len(seq)
            nxt = teacher.answer_values[j] if j >= 0 else None
            if nxt is None or nxt == teacher.task.end_token or nxt not in teacher.token_to_id:
                done[i] = True
                continue
            seqs[i].append(nxt)
            outs[i].append(nxt)
        for i in range(len(seqs)):
            if not done[i] and len(seqs[i]) >= n:
                raise ValueError(
                    f"{teacher.task.name}: the answer does not fit in max_seq_len={n} "
                    f"(no end marker after {len(outs[i])} answer tokens); compile a larger teacher"
                )
    return outs


def answers(teacher: Teacher, prompts: Sequence[str]) -> list[str]:
    """The teacher's semantic answer to each prompt text (== task.solve when the teacher is right); a
    prompt the teacher cannot run with its answer is refused (`Teacher.misfit`)."""
    task = teacher.task
    toks = []
    for p in prompts:
        ex = task.example(task.parse(p))
        why = teacher.misfit(ex)
        if why is not None:
            teacher.refuse(why)
        toks.append(ex.prompt_teacher_tokens)
    return [task.answer_from_tokens(o) for o in greedy(teacher, toks)]


def variables(teacher: Teacher, prompt: str, with_answer: bool = False) -> dict[str, list]:
    """Every RASP variable's value at every teacher position of the prompt (BOS excluded); with
    `with_answer=True` the teacher's own answer tokens are appended first."""
    toks = list(teacher.task.example(teacher.task.parse(prompt)).prompt_teacher_tokens)
    if with_answer:
        toks += greedy(teacher, [toks])[0]
    dec = teacher.variables_from_ids(teacher.batch([toks], length=teacher.n_positions))
    return {k: v[0, 1: len(toks) + 1].tolist() for k, v in dec.items()}
