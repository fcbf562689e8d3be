"""The family-independent part of a causal LM: the block loop, hidden states, interventions, KV cache.

A family supplies `embed(ids, positions)`, `blocks` (each `block(h, positions, mask, kv, index) ->
(h, kv)`), `final_norm` and `unembed(h)`. Everything here is pure given the parameters, so the
training step can `nnx.split` the model outside `jax.jit` and `nnx.merge` it inside.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jinject.models.config import ModelConfig, ModelOutput
from jinject.models.layers import KV

Intervene = Callable[[jax.Array], jax.Array]


class CausalLM(nnx.Module):
    config: ModelConfig
    blocks: nnx.List

    # --- supplied by the family -------------------------------------------------------------
    def embed(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
        raise NotImplementedError

    def final_norm(self, h: jax.Array) -> jax.Array:
        raise NotImplementedError

    def unembed(self, h: jax.Array) -> jax.Array:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    def __call__(
        self, ids: jax.Array, intervene: Intervene | None = None, intervene_at: int | None = None
    ) -> ModelOutput:
        """Causal forward over ids [B, T] (positions 0..T-1; right padding needs no mask)."""
        b, t = ids.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        mask = jnp.tril(jnp.ones((t, t), bool))[None]
        logits, hidden, _ = self.forward(ids, positions, mask, intervene=intervene, intervene_at=intervene_at)
        return ModelOutput(logits, hidden)

    def forward(
        self,
        ids: jax.Array,
        positions: jax.Array,
        mask: jax.Array,
        *,
        cache: tuple[KV, ...] | None = None,
        cache_index: jax.Array | None = None,
        intervene: Intervene | None = None,
        intervene_at: int | None = None,
    ) -> tuple[jax.Array, jax.Array, tuple[KV, ...] | None]:
        """The general forward: explicit positions [B, T], attention mask [B|1, T, S] and optional cache.

        With a cache, this call's keys/values are written at slot `cache_index` and attention runs over
        all S cache slots. Returns (logits f32 [B, T, V], hidden_states [L+1, B, T, D], new cache).
        """
        n = self.config.n_layers
        if intervene is not None and (intervene_at is None or not 0 <= intervene_at <= n):
            raise ValueError(f"intervene needs intervene_at in [0, {n}], got {intervene_at!r}")
        h = self.embed(ids, positions)
        hidden = []
        new_cache = []
        for i, block in enumerate(self.blocks):
            hidden.append(h)
            if intervene is not None and intervene_at == i:
                h = intervene(h)
            if cache is None and self.config.remat:
                h = nnx.remat(_run_block)(block, h, positions, mask)
                kv = None
            else:
                h, kv = block(h, positions, mask, None if cache is None else cache[i], cache_index)
            new_cache.append(kv)
        hidden.append(h)
        if intervene is not None and intervene_at == n:
            h = intervene(h)
        logits = self.unembed(self.final_norm(h)).astype(jnp.float32)
        return logits, jnp.stack(hidden), (tuple(new_cache) if cache is not None else None)

    def init_cache(self, batch: int, length: int) -> tuple[KV, ...]:
        """An empty KV cache of `length` slots (activation dtype)."""
        c = self.config
        shape = (batch, length, c.kv_heads, c.head_size)
        zeros = lambda: jnp.zeros(shape, c.jnp_dtype)
        return tuple(KV(zeros(), zeros()) for _ in range(c.n_layers))




def _run_block(block: nnx.Module, h: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    return block(h, positions, mask, None, None)[0]
