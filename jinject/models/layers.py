"""Shared building blocks: parameter layers, norms, RoPE and (grouped-query) causal attention.

Parameter layouts follow the math (`x @ kernel`, kernel [in, out]) so the conversion tables in
`jinject.models.*_params` stay one line per tensor. Norms, softmax and RoPE run in float32 whatever the
activation dtype, which is what makes bfloat16 usable and float32 bit-close to PyTorch.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

NEG_INF = -1e30  # finite: a fully masked row (left padding) gives a uniform softmax, never NaN


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype: Any, std: float = 0.02) -> jax.Array:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias); kernel [in, out]."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.kernel = nnx.Param(_normal(rngs, (d_in, d_out), param_dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), param_dtype)) if bias else None
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Embed(nnx.Module):
    """Token (or position) table [num, d]; `attend` is the tied unembedding."""

    def __init__(self, num: int, d: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any):
        self.embedding = nnx.Param(_normal(rngs, (num, d), param_dtype))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, h: jax.Array) -> jax.Array:
        return h.astype(self.dtype) @ self.embedding[...].astype(self.dtype).T


class LayerNorm(nnx.Module):
    def __init__(self, d: int, *, eps: float, dtype: Any, param_dtype: Any):
        self.scale = nnx.Param(jnp.ones((d,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((d,), param_dtype))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm, in the same order as transformers (normalise in f32, cast, then scale)."""

    def __init__(self, d: int, *, eps: float, dtype: Any, param_dtype: Any):
        self.scale = nnx.Param(jnp.ones((d,), param_dtype))
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


def rope_frequencies(hd: int, theta: float, scaling: tuple[tuple[str, Any], ...] | None = None) -> np.ndarray:
    """RoPE inverse frequencies [hd/2] (float32, computed in numpy: constants, not parameters).

    `scaling` ("llama3"): Llama 3.1+'s frequency-dependent rescaling, as in transformers.
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if scaling is not None:
        s = dict(scaling)
        factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old = float(s["original_max_position_embeddings"])
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope(
    x: jax.Array, positions: jax.Array, theta: float, scaling: tuple[tuple[str, Any], ...] | None = None
) -> jax.Array:
    """Rotary embedding, Hugging Face layout (rotate_half: first half pairs with second half).

    x [B, T, H, hd]; positions [B, T] int.
    """
    hd = x.shape[-1]
    inv_freq = jnp.asarray(rope_frequencies(hd, theta, scaling))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class KV(NamedTuple):
    """One layer's cache: k, v [B, S, n_kv_heads, head_dim]."""

    k: jax.Array
    v: jax.Array


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention with grouped-query heads.

    q [B, T, H, hd]; k, v [B, S, KV, hd] with H a multiple of KV; mask [B or 1, T, S] bool (True = may
    attend). Scores and softmax in float32. Returns [B, T, H * hd].
    """
    b, t, h, hd = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, hd)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(
        jnp.float32(hd)
    )
    s = jnp.where(mask[:, None, None, :, :], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bkgts,bskd->btkgd", p, v)
    return o.reshape(b, t, h * hd)


def update_cache(kv: KV | None, k: jax.Array, v: jax.Array, index: jax.Array | None) -> tuple[KV, KV]:
    """Returns (keys/values to attend over, cache to carry on). Without a cache: just this call's k, v."""
    if kv is None:
        return KV(k, v), KV(k, v)
    k_all = jax.lax.dynamic_update_slice(kv.k, k.astype(kv.k.dtype), (0, index, 0, 0))
    v_all = jax.lax.dynamic_update_slice(kv.v, v.astype(kv.v.dtype), (0, index, 0, 0))
    return KV(k_all, v_all), KV(k_all, v_all)
