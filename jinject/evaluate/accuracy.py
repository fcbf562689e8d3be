"""Exact-match accuracy on task examples: greedy generation, and its teacher-forced twin.

- `generation_accuracy`: the greedy answer (jitted, KV-cached `jinject.generation.generate`) must be the
  right answer up to and including the end marker; the prompt is encoded piece by piece, as in training.
- `teacher_forced_exact`: every answer token is the argmax given the right prefix, which is the same event
  as a greedy exact match, and lets one forward pass carry an intervention (fresh noise at every position:
  the causal test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.data import PieceEncoder, TaskArrays
from jinject.evaluate.batching import batches, jit_model, pad_rows
from jinject.objective import answer_correct
from jinject.step import answer_logits


def exact_match(generated: Sequence[int], answer_ids: Sequence[int], end_id: int) -> bool:
    """True when the greedy answer is the right answer up to and including the end marker.

    Accepts generators that return the end marker and ones that drop it: what follows the first end
    marker (padding, more tokens) never counts.
    """
    gen = list(generated)
    if end_id in gen:
        gen = gen[: gen.index(end_id) + 1]
        return gen == list(answer_ids)
    # no end marker produced: right only if the generator stopped on it and dropped it
    return False


def generation_accuracy(
    model: nnx.Module,
    encoder: PieceEncoder,
    examples: Sequence[Any],
    *,
    batch_size: int = 32,
    generate_fn: Callable | None = None,
    return_outputs: bool = False,
) -> dict[str, Any]:
    """Greedy exact-match accuracy of `model` on `examples` (prompt pieces -> answer pieces + end)."""
    if generate_fn is None:
        from jinject.generation import generate as generate_fn
    if not examples:
        return {"accuracy": None, "n": 0}
    end_id = encoder(examples[0].answer_pieces[-1])
    prompts = [encoder.encode(e.prompt_pieces) for e in examples]
    answers = [encoder.encode(e.answer_pieces) for e in examples]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths batch together
    outputs: list[list[int]] = [[] for _ in examples]
    max_new = max(len(a) for a in answers)  # one value for every batch: one compilation per length bucket
    for sl in batches(len(examples), batch_size):
        rows = list(order[sl])
        batch = [prompts[i] for i in rows]
        batch += [batch[0]] * (batch_size - len(batch))  # constant batch shape
        gens = generate_fn(model, batch, max_new, stop_ids=(end_id,))
        for i, g in zip(rows, gens, strict=False):
            outputs[i] = list(g)
    correct = [exact_match(g, a, end_id) for g, a in zip(outputs, answers, strict=True)]
    result: dict[str, Any] = {"accuracy": float(np.mean(correct)), "n": len(examples)}
    if return_outputs:
        result["outputs"] = outputs
        result["correct"] = correct
    return result


def answers_right(m: nnx.Module, ids: jax.Array, targets: jax.Array, index: jax.Array, valid: jax.Array,
                  intervene: Callable | None, at: int | None) -> jax.Array:
    """[B] bool: every answer token is the argmax given the right prefix.

    The vocabulary projection runs only at the answer positions (`jinject.trainer.answer_logits`), unless
    the intervention sits on the final residual itself (the recorded hidden state predates it).
    """
    out = m(ids, intervene=intervene, intervene_at=at if intervene is not None else None)
    full_logits = intervene is not None and at == m.config.n_layers
    batch = {"answer_index": index, "targets": targets, "answer_valid": valid}
    logits, tg, valid = answer_logits(m, out, batch, full_logits)
    return jnp.all(answer_correct(logits, tg, valid), axis=-1)


def exact_over_batches(run: Callable, arrays: TaskArrays, batch_size: int, key: jax.Array, *extra: Any) -> float:
    """Mean of `run(inputs, targets, answer_index, answer_valid, *extra, key_b) -> [B] bool` over batches b."""
    index, valid = arrays.answer_index, arrays.answer_valid
    hits = []
    for b, sl in enumerate(batches(len(arrays), batch_size)):
        rows = sl.stop - sl.start
        cols = [pad_rows(x[sl], batch_size) for x in (arrays.inputs, arrays.targets, index, valid)]
        hits.append(np.asarray(run(*cols, *extra, jax.random.fold_in(key, b)))[:rows])
    return float(np.concatenate(hits).mean())


def teacher_forced_exact(
    model: nnx.Module,
    arrays: TaskArrays,
    *,
    batch_size: int = 32,
    intervene: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    intervene_at: int | None = None,
    key: jax.Array | None = None,
) -> float:
    """Fraction of examples whose every answer token is the argmax given the right prefix (the same event
    as a greedy exact match). With `intervene(h, key) -> h` the hook gets a fresh key per batch."""

    def fwd(m: nnx.Module, ids, targets, index, valid, k):
        hook = None if intervene is None else (lambda h: intervene(h, k))
        return answers_right(m, ids, targets, index, valid, hook, intervene_at)

    key = jax.random.key(0) if key is None else key
    return exact_over_batches(jit_model(model, fwd), arrays, batch_size, key)
