"""Jitted, KV-cached greedy generation for a batch of prompts of different lengths.

Prompts are left-padded to a common length (rounded up to a multiple of `bucket`, so nearby lengths
share one compilation). Padding slots are masked out of attention and every real token gets its true
position (0 for the first prompt token), so GPT-2's learned positions and RoPE both see exactly what an
unpadded, uncached forward sees. The decode loop is a `lax.while_loop` that stops early once every row
has produced a stop id. The result equals a plain argmax loop over `model(ids)` (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.models import CausalLM

__all__ = ["generate"]


def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    include_stop: bool = True,
    intervene: Callable[..., jax.Array] | None = None,
    intervene_at: int | None = None,
    intervene_args: Any = None,
    bucket: int = 8,
) -> list[list[int]]:
    """Greedy continuation of each prompt; returns the NEW tokens only, one list per prompt.

    Each row is cut at its first token in `stop_ids`; the stop token is kept when `include_stop`
    (default) and dropped otherwise. Rows without a stop id get `max_new_tokens` tokens.

    `intervene(h) -> h` is applied to the residual entering block `intervene_at` at every position, in
    the prompt pass and at each generated token (h is [B, T, D] with T = prompt length, then 1). It is a
    static argument of the jitted function: reuse the same callable to avoid recompiling. Data that
    changes between calls (noise, directions) can be passed as `intervene_args`, a pytree traced into
    the jit; the hook is then called as `intervene(h, intervene_args)`.
    """
    if max_new_tokens <= 0 or not prompts:
        return [[] for _ in prompts]
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() == 0:
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    pad_len = -(-int(lengths.max()) // bucket) * bucket
    if int(lengths.max()) + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt ({lengths.max()}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_position_embeddings ({model.config.max_position_embeddings})"
        )
    tokens = np.zeros((len(prompts), pad_len), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, pad_len - len(p) :] = p
    graphdef, state = nnx.split(model)
    out, n_steps = _generate(
        graphdef,
        state,
        jnp.asarray(tokens),
        jnp.asarray(lengths),
        jnp.asarray([int(s) for s in stop_ids] or [-1], jnp.int32),  # traced: new stop ids don't recompile
        intervene_args,
        max_new=int(max_new_tokens),
        intervene=intervene,
        intervene_at=intervene_at,
        with_args=intervene_args is not None,
    )
    out = np.asarray(out)[:, : int(n_steps)]
    stops = set(int(s) for s in stop_ids)
    result = []
    for row in out.tolist():
        for j, t in enumerate(row):
            if t in stops:
                row = row[: j + 1] if include_stop else row[:j]
                break
        result.append(row)
    return result


@partial(jax.jit, static_argnames=("graphdef", "max_new", "intervene", "intervene_at", "with_args"))
def _generate(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    lengths: jax.Array,
    stop_ids: jax.Array,
    intervene_args: Any,
    *,
    max_new: int,
    intervene: Callable | None,
    intervene_at: int | None,
    with_args: bool,
) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    hook = intervene
    if intervene is not None and with_args:
        hook = lambda h: intervene(h, intervene_args)
    b, p = tokens.shape
    s_len = p + max_new
    pad = p - lengths  # [B] left padding per row
    slots = jnp.arange(s_len)
    key_valid = slots[None, :] >= pad[:, None]  # [B, S]; generated slots (>= p) are always valid

    # Prompt pass: fills cache slots [0, p).
    positions = jnp.maximum(jnp.arange(p)[None, :] - pad[:, None], 0)
    mask = (slots[None, None, :] <= jnp.arange(p)[None, :, None]) & key_valid[:, None, :]
    cache = model.init_cache(b, s_len)
    logits, _, cache = model.forward(
        tokens, positions, mask, cache=cache, cache_index=0, intervene=hook, intervene_at=intervene_at
    )
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out0 = jnp.full((b, max_new), -1, jnp.int32)

    def cond(carry):
        step, _, _, _, done = carry
        return (step < max_new) & ~jnp.all(done)

    def body(carry):
        step, tok, cache, out, done = carry
        out = out.at[:, step].set(tok)
        done = done | jnp.isin(tok, stop_ids)
        # Feed `tok` at slot p + step (its position: length + step); needed only if another step follows.
        mask = ((slots <= p + step)[None, None, :]) & key_valid[:, None, :]
        logits, _, cache = model.forward(
            tok[:, None],
            (lengths + step)[:, None],
            mask,
            cache=cache,
            cache_index=p + step,
            intervene=hook,
            intervene_at=intervene_at,
        )
        nxt = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
        return step + 1, nxt, cache, out, done

    init = (jnp.int32(0), first, cache, out0, jnp.zeros((b,), bool))
    step, _, _, out, _ = jax.lax.while_loop(cond, body, init)
    return out, step
