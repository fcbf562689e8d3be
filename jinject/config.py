"""Training configuration: one frozen dataclass, saved as `config.json` in every run directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run. Defaults follow the original work where it said (docs/method.md)."""

    task: str = "shuffle-dyck"
    task_options: dict[str, Any] = field(default_factory=dict)  # get_task(task, **task_options): lengths etc.
    model: str = "smollm2-135m"
    baseline: bool = False  # task + KL only: no alignment, no intervention (sets align = intervene = False)
    align: bool = True  # the alignment term λ·Σ_i (1 - cos(A·h_i, r_i))
    intervene: bool = True  # detach-and-roll on the answer subspace during training
    teacher_max_seq_len: int | None = None  # None: the task's default for its options
    # data
    steps: int = 1000
    batch_size: int = 8
    text_batch_size: int = 8
    text_seq_len: int = 32
    n_train: int = 20_000  # size of the training pool drawn from task.examples("train")
    corpus: str | None = None  # text file for the KL regulariser; None = the built-in corpus
    seed: int = 0
    # objective
    align_weight: float = 1.0  # λ in task + KL + λ·alignment
    kl_weight: float = 1.0
    layer_offset: int = 0  # student hidden index aligned with teacher layer 0
    layer_stride: int = 1  # student layers per teacher layer
    per_layer_adapter: bool = False  # one map per aligned layer instead of one shared map
    # student hidden-state index of the intervention; None = the output of the block whose input is aligned
    # with the teacher's top layer (student_index[-1] + 1), where the original code hooked it
    intervene_at: int | None = None
    # teacher residual dimensions left out of the alignment: "VAR" (every layer) or "VAR@LAYER" (one teacher
    # layer), VAR a residual label's variable ("indices", "need", ...); None = "auto" (see objective.auto_exclude)
    align_exclude: tuple[str, ...] | None = None
    marker_weight: float = 1.0  # weight of the marker position (the last prompt token) in the alignment mean
    # optimiser (AdamW; original: student 1e-6, adapter 1e-4, weight decay 0.01)
    lr: float = 1e-6
    adapter_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    adapter_warmup_steps: int = 0  # the student is frozen (learning rate 0) for these first steps
    schedule: str = "constant"  # after warmup: "constant" (the original) or "cosine" decay to 0 at `steps`
    grad_clip: float | None = None
    # numerics and scale-out
    dtype: str = "float32"  # student compute dtype: float32 | bfloat16
    remat: bool = False
    mesh_data: int = -1  # devices on the data axis; -1 = all that fsdp leaves
    mesh_fsdp: int = 1
    # bookkeeping
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.baseline:
            object.__setattr__(self, "align", False)
            object.__setattr__(self, "intervene", False)
        object.__setattr__(self, "baseline", not (self.align or self.intervene))
        if self.align_exclude is not None:
            if isinstance(self.align_exclude, str):
                raise ValueError(f"align_exclude must be a list of 'VAR' or 'VAR@LAYER' entries, "
                                 f"got the string {self.align_exclude!r}")
            object.__setattr__(self, "align_exclude", tuple(self.align_exclude))
        positive = ("steps", "batch_size", "text_batch_size", "text_seq_len", "n_train", "layer_stride",
                    "checkpoint_every", "log_every", "keep_checkpoints", "mesh_fsdp")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "adapter_lr", "weight_decay", "align_weight", "kl_weight", "warmup_steps",
                     "adapter_warmup_steps", "marker_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.layer_offset < 0:
            raise ValueError(f"layer_offset must be >= 0, got {self.layer_offset}")
        if self.intervene_at is not None and self.intervene_at < 0:
            raise ValueError(f"intervene_at must be a student hidden-state index >= 0, got {self.intervene_at}")
        if self.adapter_warmup_steps and self.adapter_warmup_steps >= self.steps:
            raise ValueError(f"adapter_warmup_steps={self.adapter_warmup_steps} leaves no step for the student "
                             f"(steps={self.steps})")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

    @property
    def variant(self) -> str:
        """"injected", "baseline", "align-only" or "intervene-only"."""
        if self.align and self.intervene:
            return "injected"
        return "align-only" if self.align else "intervene-only" if self.intervene else "baseline"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
