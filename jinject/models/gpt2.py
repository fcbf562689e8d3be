"""GPT-2: learned positions, pre-LayerNorm blocks, fused qkv (Conv1D layout), GELU MLP, tied unembedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jinject.models.base import CausalLM
from jinject.models.config import ModelConfig
from jinject.models.layers import KV, Embed, LayerNorm, Linear, attend, update_cache

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


class GPT2Attention(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype)
        self.c_attn = Linear(c.d_model, 3 * c.d_model, bias=True, **kw)
        self.c_proj = Linear(c.d_model, c.d_model, bias=True, **kw)
        self.n_heads = c.n_heads

    def __call__(self, x, positions, mask, kv, index):
        b, t, d = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (a.reshape(b, t, self.n_heads, d // self.n_heads) for a in (q, k, v))
        ctx, new_kv = update_cache(kv, k, v, index)
        return self.c_proj(attend(q, ctx.k, ctx.v, mask)), new_kv


class GPT2MLP(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype)
        self.c_fc = Linear(c.d_model, c.ff_size, bias=True, **kw)
        self.c_proj = Linear(c.ff_size, c.d_model, bias=True, **kw)
        if c.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported GPT-2 activation {c.activation!r}; known: {sorted(ACTIVATIONS)}")
        self.activation = c.activation

    def __call__(self, x):
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))


class GPT2Block(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        kw = dict(eps=c.norm_eps, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype)
        self.ln_1 = LayerNorm(c.d_model, **kw)
        self.attn = GPT2Attention(c, rngs)
        self.ln_2 = LayerNorm(c.d_model, **kw)
        self.mlp = GPT2MLP(c, rngs)

    def __call__(self, h, positions, mask, kv: KV | None, index):
        a, kv = self.attn(self.ln_1(h), positions, mask, kv, index)
        h = h + a
        return h + self.mlp(self.ln_2(h)), kv


class GPT2(CausalLM):
    """GPT-2 LM head model. Parameter paths mirror the Hugging Face keys (see gpt2_params.GPT2_TABLE)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.family != "gpt2":
            raise ValueError(f"GPT2 needs family='gpt2', got {config.family!r}")
        if not config.tie_embeddings:
            raise ValueError("GPT-2 always ties its unembedding to wte")
        kw = dict(rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
        self.config = config
        self.wte = Embed(config.vocab_size, config.d_model, **kw)
        self.wpe = Embed(config.max_position_embeddings, config.d_model, **kw)
        self.blocks = nnx.List([GPT2Block(config, rngs) for _ in range(config.n_layers)])
        self.ln_f = LayerNorm(
            config.d_model, eps=config.norm_eps, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype
        )

    def embed(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
        if ids.shape[1] > self.config.max_position_embeddings:  # a gather past the table gives NaN
            raise ValueError(
                f"sequence length {ids.shape[1]} exceeds GPT-2's {self.config.max_position_embeddings} positions"
            )
        return self.wte(ids) + self.wpe(positions)

    def final_norm(self, h: jax.Array) -> jax.Array:
        return self.ln_f(h)

    def unembed(self, h: jax.Array) -> jax.Array:
        return self.wte.attend(h)
