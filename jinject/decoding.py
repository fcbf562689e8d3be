"""Read the RASP variables out of a trained student, token by token (`jinject decode`).

For one problem, the student runs on its prompt followed by the oracle answer (teacher-forced, as in
training); at the aligned layer chosen (default: the top one, where the teacher holds every variable) the
adapter maps each token's hidden state to teacher space (divided by its length in teacher units, which
the cosine objective leaves free) and the teacher's decoder reads every variable.
Beside it stands the teacher's own value at that layer, so a researcher sees where the student agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from jinject.data import PieceEncoder
from jinject.evaluate.readout import SKIP_VARIABLES, calibrate_layer, mapped_and_teacher, same_value, variable_kinds

if TYPE_CHECKING:
    from jinject.trainer import Run

NUMERIC_DISPLAY_TOL = 0.1  # the table's tolerance for numbers: within 10% of max(|teacher's value|, 1)


def display_same(a: Any, b: Any, kind: str) -> bool:
    """Whether the student's value `a` shows as the teacher's `b` (`same_value` at `NUMERIC_DISPLAY_TOL`)."""
    return bool(same_value(a, b, kind, rtol=NUMERIC_DISPLAY_TOL))


@dataclass
class Decoded:
    """Decoded variables of one problem. `student[var]` / `teacher[var]`: one value per token (student
    position); `teacher` is None when the sequence is longer than the teacher holds."""

    problem: str
    pieces: list[str]  # the student's tokens: prompt pieces then answer pieces
    n_prompt: int
    variables: list[str]
    kinds: dict[str, str]
    student: dict[str, np.ndarray]
    teacher: dict[str, np.ndarray] | None
    layer: int  # teacher layer
    student_layer: int  # student hidden-state index aligned with it
    answer: str  # the oracle's answer
    generated: str | None  # the student's greedy answer (pieces joined)
    teacher_note: str | None = None  # why the teacher has no reference values (when `teacher` is None)

    def agreement(self) -> float | None:
        """Fraction of (token, variable) cells where the student's value equals the teacher's."""
        if self.teacher is None:
            return None
        cells = [display_same(self.student[v][t], self.teacher[v][t], self.kinds[v])
                 for v in self.variables for t in range(len(self.pieces))]
        return float(np.mean(cells)) if cells else None


def format_value(x: Any, kind: str) -> str:
    if kind == "numerical":
        x = float(x)
        return f"{x:.0f}" if abs(x - round(x)) < 1e-6 else f"{x:.2f}"
    if isinstance(x, np.generic):
        x = x.item()
    return str(x)


def student_mapped(run: Run, ids: np.ndarray, layer: int) -> np.ndarray:
    """The student's hidden states aligned with teacher layer `layer`, mapped through the adapter, `[B, T,
    D_teacher]` for token ids `[B, T]`: the student alone, for inputs the teacher cannot read. Per position,
    so right padding leaves a causal model's real positions unchanged."""
    from jinject.objective import adapter_apply

    hidden = run.model(jnp.asarray(ids)).hidden_states[int(run.student_index[layer])]
    return np.asarray(adapter_apply(run.adapter, hidden, layer))


def decode_problem(run: Run, problem: str, layer: int | None = None, with_generation: bool = True) -> Decoded:
    """Decode every variable at every token of `problem` (a compact problem string, e.g. "([)]", or the
    prompt text itself)."""
    if run.config.baseline:
        raise ValueError("this is a baseline run: it has no adapter, so there is nothing to decode through")
    task, teacher = run.task, run.teacher
    n_layers = teacher.n_layers
    layer = n_layers if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise ValueError(f"--layer must be a teacher layer in [0, {n_layers}], got {layer}")
    try:
        try:
            task.pieces(problem)
        except ValueError:
            problem = task.parse(problem)  # the prompt text, spaced or framed, instead of the compact problem
        prompt_pieces, answer_pieces = task.pieces(problem)
        teacher_tokens = task.teacher_tokens(problem)
        answer = task.solve(problem)
    except Exception as e:  # the task's own parser says what is wrong
        raise ValueError(f"{problem!r} is not a {task.name} problem: {e}. Give the compact form, e.g. "
                         f"{task.examples('test', 1, 0)[0].problem!r}") from e
    pieces = list(prompt_pieces) + list(answer_pieces)
    encoder = PieceEncoder(run.tokenizer)
    ids = np.asarray([encoder.encode(pieces)], np.int32)
    why = teacher.misfit(task.example(problem))
    misfit = None if why is None else str(why)
    fits = misfit is None
    t_ids = teacher.encode(list(teacher_tokens)) if fits else [teacher.bos_id] * (teacher.max_seq_len + 1)
    t_ids = np.asarray([t_ids], np.int32)
    index = run.student_index
    if fits:
        mapped, resid = mapped_and_teacher(run.model, teacher, run.adapter, index)(ids, t_ids)
        mapped, resid = np.asarray(mapped)[layer, 0], np.asarray(resid)[layer, 0]
    else:  # the teacher cannot hold it: decode the student alone
        mapped, resid = student_mapped(run, ids, layer)[0], None
    s_vals = teacher.decode(calibrate_layer(teacher, mapped, layer))
    t_vals = teacher.decode(resid) if resid is not None else None
    variables = [v for v in sorted(s_vals) if v not in SKIP_VARIABLES]
    kinds_all = variable_kinds(teacher.labels)
    generated = None
    if with_generation:
        from jinject.generation import generate

        end_id = encoder(answer_pieces[-1])
        out = generate(run.model, [encoder.encode(prompt_pieces)], len(answer_pieces) + 2, stop_ids=(end_id,))[0]
        generated = run.tokenizer.decode(out)
    return Decoded(
        problem=problem,
        pieces=pieces,
        n_prompt=len(prompt_pieces),
        variables=variables,
        kinds={v: kinds_all.get(v, "categorical") for v in variables},
        student={v: np.asarray(s_vals[v]) for v in variables},
        teacher=None if t_vals is None else {v: np.asarray(t_vals[v]) for v in variables},
        layer=layer,
        student_layer=int(index[layer]),
        answer=answer,
        generated=generated,
        teacher_note=misfit,
    )


def format_decoded(d: Decoded, max_width: int = 10) -> str:
    """A table: one row per token, one column per variable; `*` marks a value that differs from the
    teacher's (the teacher's value follows in brackets)."""
    cols = []
    for v in d.variables:
        cells = []
        for t in range(len(d.pieces)):
            s = format_value(d.student[v][t], d.kinds[v])
            if d.teacher is not None and not display_same(d.student[v][t], d.teacher[v][t], d.kinds[v]):
                s = f"{s}*[{format_value(d.teacher[v][t], d.kinds[v])}]"
            cells.append(s)
        width = min(max(len(v), *(len(c) for c in cells)), max(max_width, max(len(c) for c in cells)))
        cols.append((v, cells, width))
    head = f"{'pos':>4} {'token':<8}" + "".join(f" {v[:w]:>{w}}" for v, _, w in cols)
    lines = [
        f"{d.problem!r}: answer {d.answer!r}" + (f", model says {d.generated!r}" if d.generated is not None else ""),
        f"variables decoded through the adapter at teacher layer {d.layer} (student hidden state "
        f"{d.student_layer})" + ("" if d.teacher is not None else
                                 f"; no teacher reference: {d.teacher_note or 'the teacher cannot run it'}"),
        head,
        "-" * len(head),
    ]
    for t, piece in enumerate(d.pieces):
        mark = "|" if t == d.n_prompt else " "
        row = f"{t:>4}{mark}{piece!r:<8}" + "".join(f" {cells[t]:>{w}}" for _, cells, w in cols)
        lines.append(row)
    agree = d.agreement()
    if agree is not None:
        lines.append(f"agreement with the teacher: {agree:.1%} of cells ('*' = differs, numbers by more than "
                     f"{NUMERIC_DISPLAY_TOL:.0%} of max(|value|, 1); the teacher's value in [])")
    lines.append("'|' marks the first answer token (teacher-forced with the oracle's answer)")
    return "\n".join(lines)
