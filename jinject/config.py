"""Training configuration: one frozen dataclass, saved as `config.json` in every run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Above this the training pool (Python objects, generated and tokenised one by one) costs minutes and
# gigabytes for nothing: batches are drawn with replacement from it.
MAX_N_TRAIN = 1_000_000


def _opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
         flag: str | None = None, aliases: tuple[str, ...] = (), choices: tuple[str, ...] = (),
         metavar: str | None = None, fallback: str | None = None, required: bool = False) -> Any:
    """A TrainConfig field that carries its `jinject train` option in `metadata` (read by jinject.config_flags):
    `help`; `flag` where it is not `--field-name` (`--no-field-name` for a boolean that defaults to true), and
    `aliases`; `choices` (TrainConfig itself refuses other values too); `metavar`; `fallback`: the field whose
    value the option takes when it is not given; `required`: the command line has no default."""
    spec = dict(help=help, flag=flag, aliases=aliases, choices=choices, metavar=metavar, fallback=fallback,
                required=required)
    return field(default=default, default_factory=factory, metadata=spec)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run. Defaults follow the original work where it said (docs/method.md).
    Every field is also a `jinject train` option; its help text and flag live in the field's metadata."""

    task: str = _opt("shuffle-dyck", "shuffle-dyck | count | int-sum", required=True)
    # get_task(task, **task_options): lengths etc.
    task_options: dict[str, Any] = _opt(
        factory=dict, flag="--task-option", metavar="KEY=VALUE",
        help="task option, repeatable (e.g. max_len=12 max_input_len=12 frame=true bos=true)")
    model: str = _opt("smollm2-135m", "smollm2-135m (offline default), a HF id, or a local HF dir")
    # sets align = intervene = False
    baseline: bool = _opt(False, "task + KL only: no alignment, no intervention")
    # the alignment term λ·Σ_i (1 - cos(A·h_i, r_i))
    align: bool = _opt(True, "no alignment term (intervention only)")
    # detach-and-roll on the answer subspace during training
    intervene: bool = _opt(True, "no detach-and-roll intervention (alignment only)")
    teacher_max_seq_len: int | None = _opt(None, "teacher max_seq_len (default: task's)", flag="--max-seq-len")
    # data
    steps: int = _opt(1000, "optimiser steps")
    batch_size: int = _opt(8, "task examples per step")
    text_batch_size: int = _opt(8, "text windows per step for the KL term (default: --batch-size)",
                                fallback="batch_size")
    text_seq_len: int = _opt(32, "tokens per text window of the KL term")
    n_train: int = _opt(20_000, "size of the training example pool")  # drawn from task.examples("train")
    corpus: str | None = _opt(None, "plain-text file for the KL regulariser (default: built-in)")
    seed: int = _opt(0, "seed of the training pool, the batches and the adapter's initialisation")
    # objective
    align_weight: float = _opt(1.0, "λ: total = task + KL + λ·alignment", aliases=("--multiplier",))
    kl_weight: float = _opt(1.0, "weight of the KL term")
    layer_offset: int = _opt(0, "student hidden index aligned with teacher layer 0")
    layer_stride: int = _opt(1, "student layers per teacher layer")
    per_layer_adapter: bool = _opt(False, "one map per aligned layer")  # instead of one shared map
    # student hidden-state index of the intervention; None = the output of the block whose input is aligned
    # with the teacher's top layer (student_index[-1] + 1), where the original code hooked it
    intervene_at: int | None = _opt(
        None, metavar="HIDDEN_INDEX", help="student hidden-state index of the intervention (default: the output of "
        "the block after the top aligned layer, the original's placement)")
    # the intervention acts on a batch only when the aligned answer subspace already holds the answer there;
    # without the intervention (align-only, baseline) there is nothing to gate
    intervene_gate: float = _opt(
        0.0, metavar="FRACTION", help="intervene on a batch only when the answer read through the adapter at the "
        "intervention site, at the marker, is the teacher's for at least this fraction of its examples (0: always)")
    # teacher residual dimensions left out of the alignment: "VAR" (every layer) or "VAR@LAYER" (one teacher
    # layer), VAR a residual label's variable ("indices", "need", ...); None = "auto" (see objective.auto_exclude)
    align_exclude: tuple[str, ...] | None = _opt(
        None, metavar="VAR[@LAYER]", help="teacher variables left out of the alignment, at every layer or one (e.g. "
        "indices@0); default: auto (indices on hosts without absolute position embeddings); no value: none")
    marker_weight: float = _opt(1.0, "weight of the marker position (last prompt token) in the alignment mean")
    align_per_variable: bool = _opt(False, "one cosine per RASP variable (mean over variables) instead of one per "
                                           "residual vector")
    # optimiser (AdamW; original: student 1e-6, adapter 1e-4, weight decay 0.01)
    lr: float = _opt(1e-6, "student learning rate")
    adapter_lr: float = _opt(1e-4, "adapter learning rate")
    weight_decay: float = _opt(0.01, "AdamW weight decay")
    warmup_steps: int = _opt(0, "steps of linear learning-rate warm-up from 0")
    # the student is frozen (learning rate 0) for these first steps; needs align
    adapter_warmup_steps: int = _opt(0, "train only the adapter (student frozen) for the first N steps")
    schedule: str = _opt("constant", "learning rate after warm-up: constant, or cosine decay to 0 at --steps",
                         choices=("constant", "cosine"))  # "constant" is the original's
    grad_clip: float | None = _opt(None, "clip the global gradient norm to this (default or 0: no clipping)")
    # numerics and scale-out
    dtype: str = _opt("float32", "student compute dtype (weights and optimizer state stay float32)",
                      choices=("float32", "bfloat16"))
    remat: bool = _opt(False, "gradient checkpointing per block")
    mesh_data: int = _opt(-1, "devices on the data mesh axis (default -1: all that --fsdp leaves)")
    mesh_fsdp: int = _opt(1, "devices on the fsdp mesh axis", flag="--fsdp")
    # bookkeeping
    checkpoint_every: int = _opt(200, "steps between checkpoints (and one at the end)")
    keep_checkpoints: int = _opt(2, "newest checkpoints kept on disk")
    log_every: int = _opt(10, "steps between metric fetches; without a terminal, one plain progress line each")

    def __post_init__(self) -> None:
        self._check_types()
        if self.baseline:
            object.__setattr__(self, "align", False)
            object.__setattr__(self, "intervene", False)
        object.__setattr__(self, "baseline", not (self.align or self.intervene))
        positive = ("steps", "batch_size", "text_batch_size", "text_seq_len", "n_train", "layer_stride",
                    "checkpoint_every", "log_every", "keep_checkpoints", "mesh_fsdp")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "adapter_lr", "weight_decay", "align_weight", "kl_weight", "warmup_steps",
                     "adapter_warmup_steps", "marker_weight", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.seed >= 2**31:
            raise ValueError(f"seed must be below 2**31, got {self.seed}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be > 0 (a negative bound flips the sign of every gradient; "
                             f"None or 0: no clipping), got {self.grad_clip}")
        if self.teacher_max_seq_len is not None and self.teacher_max_seq_len < 1:
            raise ValueError(f"teacher_max_seq_len must be >= 1 (None: the task's default), got "
                             f"{self.teacher_max_seq_len}")
        if self.n_train > MAX_N_TRAIN:
            raise ValueError(f"n_train={self.n_train:,} is above the limit of {MAX_N_TRAIN:,}: the pool is generated "
                             f"and tokenised in Python and held in memory (~0.5 ms and ~2.5 KB per example on 2 CPU "
                             f"cores, so {MAX_N_TRAIN:,} already take minutes and ~2.5 GB); batches are drawn with "
                             "replacement, so a larger pool adds little")
        if self.mesh_data != -1 and self.mesh_data < 1:
            raise ValueError(f"mesh_data must be >= 1 (or -1: every device the fsdp axis leaves), got {self.mesh_data}")
        if self.layer_offset < 0:
            raise ValueError(f"layer_offset must be >= 0, got {self.layer_offset}")
        if self.intervene_at is not None and self.intervene_at < 0:
            raise ValueError(f"intervene_at must be a student hidden-state index >= 0, got {self.intervene_at}")
        if not 0.0 <= self.intervene_gate <= 1.0:
            raise ValueError(f"intervene_gate is a fraction of a batch's examples, 0..1 (0: always intervene), "
                             f"got {self.intervene_gate}")
        if self.intervene_gate and self.intervene and not self.align:
            raise ValueError("intervene_gate reads the answer through the adapter, which only the alignment trains: "
                             "with --no-align, drop --intervene-gate")
        if self.adapter_warmup_steps and self.adapter_warmup_steps >= self.steps:
            raise ValueError(f"adapter_warmup_steps={self.adapter_warmup_steps} leaves no step for the student "
                             f"(steps={self.steps})")
        decay_steps = self.steps - (self.adapter_warmup_steps if self.align else 0)  # the student's schedule
        if self.schedule == "cosine" and self.warmup_steps >= decay_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} leaves no step for the cosine decay: the student's "
                             f"schedule has {decay_steps} steps (steps={self.steps}, adapter_warmup_steps="
                             f"{self.adapter_warmup_steps}); lower warmup_steps or use schedule 'constant'")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be {' or '.join(map(repr, choices))}, got {getattr(self, f.name)!r}")
        if not self.task:
            raise ValueError("task must be a task name, e.g. 'shuffle-dyck', got an empty string")
        if not self.model:
            raise ValueError("model must be a model name or path, e.g. 'smollm2-135m', got an empty string")

    def _check_types(self) -> None:
        """Every field against its annotation, so that a wrong type fails here with the field's name and not
        later as a comparison error or a traceback deep inside a compile. Integers refuse floats and strings,
        floats accept integers (and must be finite), booleans refuse anything else, `None` only where
        Optional. numpy scalars are accepted and stored as Python numbers (config.json stays plain JSON)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = FIELD_KINDS[f.name]
            if value is None:
                if optional:
                    continue
                raise ValueError(f"{f.name} must be {_KIND_WORDS[kind]}, got None")
            fixed = _coerce(kind, value)
            if fixed is _BAD:
                raise ValueError(f"{f.name} must be {_KIND_WORDS[kind]}{' or None' if optional else ''}, "
                                 f"got {value!r} ({type(value).__name__})")
            if kind == "float" and not math.isfinite(fixed):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)

    @property
    def variant(self) -> str:
        """"injected", "baseline", "align-only" or "intervene-only"."""
        if self.align and self.intervene:
            return "injected"
        return "align-only" if self.align else "intervene-only" if self.intervene else "baseline"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        """Written atomically (a reader never sees half a file, a crash never leaves one)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config.json; every problem (unreadable, not JSON, a wrong field) names the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not a text file ({e.reason}); it should hold the run's TrainConfig "
                             "as JSON") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); it should "
                             "hold the run's TrainConfig: repair it, or train into a new --out") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a TrainConfig object")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from None


def check_inputs(config: TrainConfig) -> Any:
    """What a config asks for beyond its own fields, checked without JAX, a model or a compiled teacher (well
    under a second): the task and its options, the teacher size, whether training examples fit that teacher,
    the corpus. Returns the task. (`preflight.preflight` adds the device mesh.)"""
    from jinject.data import load_corpus, split_corpus
    from jinject.tasks import get_task
    from jinject.tasks.fit import check_teacher_size

    task = get_task(config.task, **config.task_options)
    n = check_teacher_size(task, config.teacher_max_seq_len)
    for split in ("train", "test"):
        task.examples(split, 1, config.seed, max_seq_len=n)  # the size checks of the real pool, on one example
    train_text, _ = split_corpus(load_corpus(config.corpus))
    if len(train_text) <= config.text_seq_len:
        raise ValueError(f"the corpus's training part has {len(train_text)} characters, not enough for one window "
                         f"of text_seq_len={config.text_seq_len} tokens; give a longer --corpus")
    return task


# ------------------------------------------------------------------------------------------- field types

_BAD = object()
_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "dict": "a dict of task options (name -> number, string or boolean)",
               "strs": "a list of strings ('VAR' or 'VAR@LAYER')"}


def _kind(annotation: str) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'dict' | 'strs', optional) from a field's annotation string."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None")
    kind = {"int": "int", "float": "float", "bool": "bool", "str": "str"}.get(base)
    if kind is None:
        kind = "dict" if base.startswith("dict") else "strs" if base.startswith("tuple[str") else ""
    if not kind:
        raise TypeError(f"TrainConfig: no type check for annotation {annotation!r}")
    return kind, optional


def _coerce(kind: str, value: Any) -> Any:
    """`value` as the field kind wants it (numpy scalars -> Python), or _BAD."""
    if kind == "bool":
        return bool(value) if isinstance(value, bool | np.bool_) else _BAD
    if isinstance(value, bool | np.bool_):
        return _BAD  # True is an int in Python; never a number here
    if kind == "int":
        return (value if type(value) is int else int(value)) if isinstance(value, numbers.Integral) else _BAD
    if kind == "float":
        if not isinstance(value, numbers.Real):
            return _BAD
        return value if type(value) in (int, float) else float(value)
    if kind == "str":
        return value if isinstance(value, str) else os.fspath(value) if isinstance(value, os.PathLike) else _BAD
    if kind == "dict":
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return _BAD
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return _BAD
        return value
    if kind == "strs":
        if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
            return _BAD
        return tuple(value)
    return _BAD


# field name -> (kind, optional): what _check_types enforces and what jinject.config_flags parses
FIELD_KINDS = {f.name: _kind(f.type) for f in dataclasses.fields(TrainConfig)}
