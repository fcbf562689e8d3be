"""Check a compiled teacher against the RASP interpreter and the task's plain-Python oracle.

Three independent agreements, on edge cases plus random problems from every split that the teacher
can hold (vocabulary and length):

1. every variable at every position: compiled teacher (decoded from the last residual) == tracr's RASP
   interpreter with causal selectors (what a causal model can compute);
2. the next-token invariant the training relies on: at every answer-predicting position the teacher's
   answer variable == the next teacher token, and so does the interpreter's (program == oracle);
3. end to end: `teacher.answers(prompts)` (greedy, on its own outputs) == `task.solve(problem)`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jinject.evaluate.readout import same_value
from jinject.tasks import Task, rasp_lib
from jinject.tasks.sampling import split_rng

VERIFY_RTOL = 1e-3  # a numerical variable: the teacher's float32 arithmetic against the interpreter's exact value

__all__ = ["VerifyReport", "verify_teacher", "verification_problems"]


@dataclasses.dataclass
class VerifyReport:
    task: str
    max_seq_len: int
    n_edge: int = 0
    n_random: int = 0
    n_positions: int = 0
    answers_ok: int = 0
    program_ok: int = 0  # problems where the RASP program's next tokens == the oracle's
    invariant_ok: int = 0
    invariant_total: int = 0
    var_ok: dict[str, int] = dataclasses.field(default_factory=dict)
    var_total: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_problems(self) -> int:
        return self.n_edge + self.n_random

    @property
    def ok(self) -> bool:
        return (
            self.n_problems > 0
            and self.answers_ok == self.n_problems
            and self.program_ok == self.n_problems
            and self.invariant_ok == self.invariant_total
            and all(self.var_ok[k] == self.var_total[k] for k in self.var_total)
        )

    def summary(self) -> str:
        lines = [
            f"verified on {self.n_problems} inputs ({self.n_edge} edge cases + {self.n_random} random), "
            f"{self.n_positions} positions, {self.seconds:.1f} s:",
            f"  teacher answer == oracle            {self.answers_ok}/{self.n_problems}",
            f"  RASP program == oracle              {self.program_ok}/{self.n_problems}",
            f"  next-token invariant (teacher)      {self.invariant_ok}/{self.invariant_total}",
            "  variables, teacher == RASP interpreter at every position:",
        ]
        for k in self.var_total:
            lines.append(f"    {k:<24} {self.var_ok[k]}/{self.var_total[k]}")
        lines.append("  RESULT: " + ("OK, all agree" if self.ok else "MISMATCH"))
        lines += [f"  ! {f}" for f in self.failures[:10]]
        return "\n".join(lines)


def verification_problems(task: Task, max_seq_len: int, n_random: int, seed: int = 0) -> tuple[list, list]:
    """(edge cases, random problems) that a teacher of `max_seq_len` can hold.

    Half the random problems come from "train", the rest from the other splits in turn (OOD problems
    the teacher cannot hold are skipped and replaced by train problems).
    """
    edge = list(dict.fromkeys(p for p in task.edge_cases(max_seq_len) if task.fits(p, max_seq_len)))
    rngs = {s: split_rng(seed + 7919, s) for s in task.splits}
    others = [s for s in task.splits if s != "train"]
    out: list[str] = []
    misses = 0
    while len(out) < n_random:
        i = len(out) + misses
        split = "train" if (i % 2 == 0 or not others or misses > 50 * n_random) else others[(i // 2) % len(others)]
        p = task.generate(split, rngs[split])
        if task.fits(p, max_seq_len):
            out.append(p)
        else:
            misses += 1
            if misses > 1000 * max(1, n_random):
                raise ValueError(f"{task.name}: no generated problem fits max_seq_len={max_seq_len}")
    return edge, out


def verify_teacher(teacher, n_random: int = 200, seed: int = 0, batch_size: int = 64) -> VerifyReport:
    """Run the three checks above; returns a report (`report.ok`, `report.summary()`)."""
    t0 = time.perf_counter()
    task: Task = teacher.task
    n = teacher.max_seq_len
    edge, rand = verification_problems(task, n, n_random, seed)
    problems = edge + rand
    rep = VerifyReport(task=task.name, max_seq_len=n, n_edge=len(edge), n_random=len(rand))
    program = teacher.program
    vars_ = list(teacher.var_info.values())
    for v in vars_:
        rep.var_ok[v.name] = rep.var_total[v.name] = 0
    ans = teacher.var_info[teacher.answer_var]

    for start in range(0, len(problems), batch_size):
        chunk = [task.example(p) for p in problems[start: start + batch_size]]
        ids = teacher.batch([e.teacher_tokens for e in chunk], length=teacher.n_positions)
        res = teacher.run(ids)
        dec = teacher.decode_indices(np.asarray(res[-1]))
        for b, ex in enumerate(chunk):
            toks = list(ex.teacher_tokens)
            interp = rasp_lib.causal_eval_all(program, toks)
            rep.n_positions += len(toks)
            for v in vars_:
                iv = interp[v.label]
                col = dec[v.name][b, 1: len(toks) + 1]
                bad = 0
                for pos in range(len(toks)):
                    tv = (v.values[col[pos]] if col[pos] >= 0 else None) if v.categorical else col[pos]
                    want = iv[pos] if v.categorical or iv[pos] is not None else 0.0  # tracr's None number: 0
                    if not same_value(tv, want, v.encoding, rtol=VERIFY_RTOL):
                        bad += 1
                        if bad == 1:
                            rep.failures.append(
                                f"{ex.problem!r}: {v.name} at position {pos} teacher {tv!r} != interpreter {iv[pos]!r}")
                rep.var_ok[v.name] += len(toks) - bad
                rep.var_total[v.name] += len(toks)
            prog_ok = True
            for t in ex.predict_positions:
                want = toks[t + 1]
                j = dec[teacher.answer_var][b, t + 1]
                got = ans.values[j] if j >= 0 else None
                rep.invariant_total += 1
                if got == want:
                    rep.invariant_ok += 1
                else:
                    rep.failures.append(f"{ex.problem!r}: teacher predicts {got!r} at piece {t}, next is {want!r}")
                if interp[program.label][t] != want:
                    prog_ok = False
            if prog_ok:
                rep.program_ok += 1
            else:
                rep.failures.append(f"{ex.problem!r}: the RASP program disagrees with the oracle {ex.answer!r}")

    for start in range(0, len(problems), batch_size):
        chunk = problems[start: start + batch_size]
        got = teacher.answers([task.prompt(p) for p in chunk])
        for p, g in zip(chunk, got, strict=True):
            want = task.solve(p)
            if g == want:
                rep.answers_ok += 1
            else:
                rep.failures.append(f"{p!r}: teacher.answer {g!r} != oracle {want!r}")
    rep.seconds = time.perf_counter() - t0
    return rep
