"""Teacher-forced metrics of a trained run on held-out task examples: the same loss terms as training
(answer accuracy, task loss, KL, per-layer alignment), averaged over whole batches. The demo prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.data import PieceEncoder, TextStream, encode_examples, load_corpus, split_corpus
from jinject.step import make_loss_fn

if TYPE_CHECKING:
    from jinject.trainer import Run


def heldout_metrics(run: Run, n: int = 256, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """Teacher-forced answer accuracy, losses and per-layer alignment on held-out task examples."""
    config = run.config
    teacher = None if config.baseline else run.teacher
    examples = run.task.examples(split, n, config.seed + 1, max_seq_len=config.teacher_max_seq_len)
    arrays = encode_examples(examples, PieceEncoder(run.tokenizer), teacher)
    text = TextStream(split_corpus(load_corpus(config.corpus))[1], run.tokenizer)
    graphdef, params = nnx.split(run.model)
    loss_fn = jax.jit(make_loss_fn(graphdef, teacher, config, run.model.config))
    frozen = {"original": nnx.split(run.original)[1] if run.original is not None else params,
              "teacher": teacher.params if (teacher is not None and config.align) else {}}
    trainable = {"params": params, "adapter": jax.tree.map(jnp.asarray, run.adapter)}
    sums: dict[str, Any] = {}
    n_batches = 0
    for start in range(0, len(arrays) - batch_size + 1, batch_size):
        batch = {**arrays.take(np.arange(start, start + batch_size)),
                 **text.batch(config.seed + 1, n_batches, batch_size, config.text_seq_len)}
        _, m = loss_fn(trainable, frozen, batch)
        for k, v in jax.device_get(m).items():
            sums[k] = sums.get(k, 0) + np.asarray(v, np.float64)
        n_batches += 1
    if not n_batches:
        raise ValueError(f"need at least batch_size={batch_size} held-out examples, got {len(arrays)}")
    return {k: (v / n_batches).tolist() for k, v in sums.items()} | {"n_examples": n_batches * batch_size}
