"""Tiny, fast components for training tests: a small tracr teacher and a tiny random student.

Imported by the tests and by the subprocess workers they start (resume and multi-device tests).
"""

from __future__ import annotations

import string
from functools import cache

from jinject.compiler import compile_teacher
from jinject.config import TrainConfig
from jinject.models import ModelConfig, create_model
from jinject.tasks import get_task
from jinject.tokenizer import make_test_tokenizer

TASK = "shuffle-dyck"
OPTIONS = {"min_len": 2, "max_len": 5, "max_input_len": 5, "ood_max_len": 10}  # teacher max_seq_len 8


@cache
def task_and_teacher(task_name: str = TASK, options: tuple = tuple(OPTIONS.items())):
    task = get_task(task_name, **dict(options))
    return task, compile_teacher(task)


def task_pieces(task) -> list[str]:
    pieces: set[str] = set()
    for split in task.splits:
        for e in task.examples(split, 50, 0):
            pieces.update(e.prompt_pieces)
            pieces.update(e.answer_pieces)
    return sorted(pieces)


def components(d_model: int = 32, extra_layers: int = 1, family: str = "llama", seed: int = 0):
    """(task, teacher, model, tokenizer) with a student one block deeper than the teacher."""
    task, teacher = task_and_teacher()
    # task pieces are single tokens; letters and space let the built-in corpus tokenise char by char
    tokenizer = make_test_tokenizer(task_pieces(task) + list(string.ascii_letters + string.digits + " .,\n"))
    common = dict(vocab_size=tokenizer.vocab_size, d_model=d_model, n_layers=teacher.n_layers + extra_layers,
                  n_heads=4, max_position_embeddings=128)
    if family == "llama":
        cfg = ModelConfig(family="llama", n_kv_heads=2, d_ff=2 * d_model, activation="silu", **common)
    else:
        cfg = ModelConfig(family="gpt2", **common)
    return task, teacher, create_model(cfg, seed), tokenizer


def config(**overrides) -> TrainConfig:
    base = dict(task=TASK, task_options=OPTIONS, model="tiny", steps=20, batch_size=8, text_batch_size=4,
                text_seq_len=16, n_train=256, lr=3e-3, adapter_lr=3e-2, checkpoint_every=5, log_every=5)
    return TrainConfig(**{**base, **overrides})


def broken_teacher(teacher):
    """A copy of `teacher` whose parameters are all NaN: the alignment loss becomes NaN at once."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    return dataclasses.replace(teacher, params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), teacher.params))
