"""`ModelConfig` and `ModelOutput`: the static description of a host LM and what a forward returns."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

FAMILIES = ("gpt2", "llama")
DTYPES = ("float32", "bfloat16")
ROPE_TYPES = ("llama3",)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a GPT-2 or Llama-family model; hashable, so it can live in a graphdef.

    `dtype` is the activation dtype and `param_dtype` the parameter dtype (both "float32" or "bfloat16").
    Norms, softmax and RoPE are always computed in float32; logits are returned in float32.
    """

    family: str  # "gpt2" | "llama"
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    max_position_embeddings: int
    d_ff: int | None = None  # default: 4 * d_model (gpt2); required for llama
    n_kv_heads: int | None = None  # grouped-query attention (llama); default n_heads
    head_dim: int | None = None  # default d_model // n_heads
    norm_eps: float = 1e-5
    activation: str | None = None  # default by family: gpt2 "gelu_new" (also gelu, relu); llama "silu"
    rope_theta: float = 10000.0
    # RoPE frequency scaling as sorted (key, value) pairs, e.g. Llama 3's (("factor", 32.0),
    # ("high_freq_factor", 4.0), ("low_freq_factor", 1.0), ("original_max_position_embeddings", 8192.0),
    # ("rope_type", "llama3")); None = plain RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    tie_embeddings: bool = True
    attention_bias: bool = False  # llama only (gpt2 always has biases)
    mlp_bias: bool = False  # llama only
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False  # gradient checkpointing per block (saves memory in training)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if isinstance(self.rope_scaling, dict):  # accept a dict (e.g. from JSON); store it hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        if self.rope_scaling is not None and dict(self.rope_scaling).get("rope_type") not in ROPE_TYPES:
            raise ValueError(f"rope_scaling type must be one of {ROPE_TYPES}, got {self.rope_scaling!r}")
        if self.activation is None:  # resolved here so equal models always have equal configs
            object.__setattr__(self, "activation", "gelu_new" if self.family == "gpt2" else "silu")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.family == "llama" and self.head_size % 2:
            raise ValueError("RoPE needs an even head_dim")
        if self.family == "gpt2" and self.head_size * self.n_heads != self.d_model:
            raise ValueError("gpt2 needs head_dim * n_heads == d_model")

    # Derived values (properties, so the dataclass stays the single source of truth).
    @property
    def absolute_positions(self) -> bool:
        """Whether the embeddings carry the position (GPT-2's learned table; Llama's RoPE acts inside attention)."""
        return self.family == "gpt2"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ff_size(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.family == "llama":
            raise ValueError("llama configs need d_ff")
        return 4 * self.d_model

    @property
    def jnp_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> Any:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if isinstance(d.get("rope_scaling"), list | tuple):
            d["rope_scaling"] = tuple(tuple(kv) for kv in d["rope_scaling"])
        return cls(**d)


class ModelOutput(NamedTuple):
    """What `model(ids)` returns (a pytree, so it can leave a jitted function).

    logits: [B, T, V] float32. hidden_states: [n_layers + 1, B, T, D]; [i] is the residual entering
    block i (before any intervention there), [-1] the final residual before the last norm.
    """

    logits: jax.Array
    hidden_states: jax.Array
