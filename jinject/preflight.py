"""Refusals before the expensive part of `jinject train`: bad input, a mesh the devices cannot form,
sequences longer than the host's positions, and sizes that cannot fit in memory.

`preflight` needs no model (a fraction of a second); `check_before_load` adds what the model's metadata
tells before its weights are loaded; `check_memory` runs again once the real padded length is known.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from jinject.config import TrainConfig
from jinject.sharding import make_mesh


def preflight(config: TrainConfig) -> Any:
    """Everything about a config that can be checked without loading a model or compiling a teacher (a
    fraction of a second), so that bad input fails before a long load: the task and its options, the
    teacher size, whether training examples fit it, the corpus (`config.check_inputs`), the device mesh.
    Returns the task."""
    from jinject.config import check_inputs

    task = check_inputs(config)
    mesh = make_mesh(config)
    n_dev = mesh.shape["data"] * mesh.shape["fsdp"]
    for name in ("batch_size", "text_batch_size"):
        if getattr(config, name) % n_dev:
            raise ValueError(f"{name}={getattr(config, name)} is not divisible by the {n_dev} devices of the mesh; "
                             "choose a multiple of the device count")
    return task


def check_before_load(config: TrainConfig) -> None:
    """`preflight`, then the sizes that cannot fit in memory, from the model's metadata (when it has any)."""
    task = preflight(config)  # bad input fails here, before a model load
    from jinject.loading import peek_model_config

    peek = peek_model_config(config.model)
    if peek is not None:
        longest = task.max_problem_len("train")
        from jinject.tasks.fit import check_teacher_size

        n = check_teacher_size(task, config.teacher_max_seq_len)
        check_memory(config, peek, min(longest or n, n))


def estimate_step_memory(config: TrainConfig, model_config: Any, seq_len: int) -> int:
    """A LOWER bound of the bytes one train step needs at once: the student's hidden states for the task
    batch and for the text batch, plus the vocabulary logits of the KL term (student and frozen reference).
    Real use is several times more (attention, MLP activations, gradients); this is only for refusing sizes
    that cannot possibly fit."""
    act = 2 if config.dtype == "bfloat16" else 4
    layers = model_config.n_layers + 1
    hidden = (config.batch_size * seq_len + config.text_batch_size * config.text_seq_len) * model_config.d_model
    logits = 2 * config.text_batch_size * config.text_seq_len * model_config.vocab_size * 4
    return hidden * layers * act + logits


def available_memory() -> tuple[int | None, str]:
    """(bytes, what) of the memory one device may use: the accelerator's limit, else physical RAM."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]), f"the {jax.devices()[0].device_kind} memory"
    except Exception:  # noqa: BLE001 - backends without memory stats
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return None, ""


def check_lengths(config: TrainConfig, model_config: Any, seq_len: int) -> None:
    """Sequences longer than the host's positions: GPT-2 has no embedding for them, a RoPE host was never
    trained on them (its output there is nonsense)."""
    limit = model_config.max_position_embeddings
    for what, n in (("text_seq_len", config.text_seq_len), ("the longest task example (tokens)", seq_len)):
        if n > limit:
            raise ValueError(f"{what}={n} is longer than the model's {limit} positions; use shorter inputs")


def check_memory(config: TrainConfig, model_config: Any, seq_len: int) -> None:
    """`check_lengths`, then refuse a step whose lower-bound memory (`estimate_step_memory`) exceeds the device's."""
    check_lengths(config, model_config, seq_len)
    need = estimate_step_memory(config, model_config, seq_len)
    have, what = available_memory()
    if have is not None and need > have:
        raise ValueError(
            f"batch_size={config.batch_size} x {seq_len} tokens and text_batch_size={config.text_batch_size} x "
            f"text_seq_len={config.text_seq_len} need at least {need / 2**30:.1f} GiB for the activations and "
            f"logits of one step (a lower bound), more than the {have / 2**30:.1f} GiB of {what}; lower "
            "--batch-size / --text-batch-size / --text-seq-len")
