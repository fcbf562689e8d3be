"""Llama family: RoPE, grouped-query attention, RMSNorm, SwiGLU MLP, tied or untied unembedding."""

from __future__ import annotations

import jax
from flax import nnx

from jinject.models.base import CausalLM
from jinject.models.config import ModelConfig
from jinject.models.layers import KV, Embed, Linear, RMSNorm, attend, rope, update_cache


class LlamaAttention(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        kw = dict(rngs=rngs, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, bias=c.attention_bias)
        hd = c.head_size
        self.q_proj = Linear(c.d_model, c.n_heads * hd, **kw)
        self.k_proj = Linear(c.d_model, c.kv_heads * hd, **kw)
        self.v_proj = Linear(c.d_model, c.kv_heads * hd, **kw)
        self.o_proj = Linear(c.n_heads * hd, c.d_model, **kw)
        self.n_heads, self.n_kv_heads, self.head_dim, self.theta = c.n_heads, c.kv_heads, hd, c.rope_theta
        self.rope_scaling = c.rope_scaling

    def __call__(self, x, positions, mask, kv, index):
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        q = rope(q, positions, self.theta, self.rope_scaling)
        k = rope(k, positions, self.theta, self.rope_scaling)
        ctx, new_kv = update_cache(kv, k, v, index)
        return self.o_proj(attend(q, ctx.k, ctx.v, mask)), new_kv


class LlamaMLP(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        if c.activation != "silu":
            raise ValueError(f"llama MLP supports activation 'silu' (SwiGLU), got {c.activation!r}")
        kw = dict(rngs=rngs, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype, bias=c.mlp_bias)
        self.gate_proj = Linear(c.d_model, c.ff_size, **kw)
        self.up_proj = Linear(c.d_model, c.ff_size, **kw)
        self.down_proj = Linear(c.ff_size, c.d_model, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nnx.Module):
    def __init__(self, c: ModelConfig, rngs: nnx.Rngs):
        kw = dict(eps=c.norm_eps, dtype=c.jnp_dtype, param_dtype=c.jnp_param_dtype)
        self.input_layernorm = RMSNorm(c.d_model, **kw)
        self.self_attn = LlamaAttention(c, rngs)
        self.post_attention_layernorm = RMSNorm(c.d_model, **kw)
        self.mlp = LlamaMLP(c, rngs)

    def __call__(self, h, positions, mask, kv: KV | None, index):
        a, kv = self.self_attn(self.input_layernorm(h), positions, mask, kv, index)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class Llama(CausalLM):
    """Llama-family causal LM. Parameter paths mirror the Hugging Face keys (see llama_params.LLAMA_TABLE)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        if config.family != "llama":
            raise ValueError(f"Llama needs family='llama', got {config.family!r}")
        kw = dict(rngs=rngs, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype)
        self.config = config
        self.embed_tokens = Embed(config.vocab_size, config.d_model, **kw)
        self.blocks = nnx.List([LlamaBlock(config, rngs) for _ in range(config.n_layers)])
        self.norm = RMSNorm(
            config.d_model, eps=config.norm_eps, dtype=config.jnp_dtype, param_dtype=config.jnp_param_dtype
        )
        self.lm_head = (
            None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, bias=False, **kw)
        )

    def embed(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
        return self.embed_tokens(ids)

    def final_norm(self, h: jax.Array) -> jax.Array:
        return self.norm(h)

    def unembed(self, h: jax.Array) -> jax.Array:
        return self.embed_tokens.attend(h) if self.lm_head is None else self.lm_head(h)
