"""The Llama family's Hugging Face format (llama, mistral): the checkpoint key table and the config.json
mapping (RoPE scaling included), next to each other (registered in `models/checkpoint.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinject.models.config import ModelConfig
from jinject.models.convert import HFFormat, Rule, transpose

LLAMA_TYPES = ("llama", "mistral")

# torch Linear stores [out, in]; our kernels are [in, out].
_LLAMA_LINEARS = [
    ("self_attn.q_proj", "self_attn.q_proj"),
    ("self_attn.k_proj", "self_attn.k_proj"),
    ("self_attn.v_proj", "self_attn.v_proj"),
    ("self_attn.o_proj", "self_attn.o_proj"),
    ("mlp.gate_proj", "mlp.gate_proj"),
    ("mlp.up_proj", "mlp.up_proj"),
    ("mlp.down_proj", "mlp.down_proj"),
]
LLAMA_TABLE = (
    Rule("model.embed_tokens.weight", "embed_tokens.embedding"),
    *(Rule(f"model.layers.{{i}}.{s}.weight", f"blocks.{{i}}.{t}.kernel", transpose, transpose)
      for s, t in _LLAMA_LINEARS),
    *(Rule(f"model.layers.{{i}}.{s}.bias", f"blocks.{{i}}.{t}.bias") for s, t in _LLAMA_LINEARS),
    Rule("model.layers.{i}.input_layernorm.weight", "blocks.{i}.input_layernorm.scale"),
    Rule("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.post_attention_layernorm.scale"),
    Rule("model.norm.weight", "norm.scale"),
    Rule("lm_head.weight", "lm_head.kernel", transpose, transpose),
    Rule("model.layers.{i}.self_attn.rotary_emb.inv_freq", None),
)


def llama_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig keyword arguments of a llama or mistral config.json."""
    mt = hf.get("model_type")
    rope_params = dict(hf.get("rope_scaling") or {}, **(hf.get("rope_parameters") or {}))
    rope_type = rope_params.get("rope_type") or rope_params.get("type") or "default"
    rope_scaling = None
    if rope_type == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        rope_scaling = (*((k, float(rope_params[k])) for k in keys), ("rope_type", "llama3"))
    elif rope_type != "default":
        raise NotImplementedError(f"RoPE scaling {rope_type!r} is not supported (default, llama3)")
    if mt == "mistral" and hf.get("sliding_window") and hf["sliding_window"] < hf["max_position_embeddings"]:
        raise NotImplementedError("sliding-window attention is not supported")
    return dict(
        family="llama",
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim"),
        max_position_embeddings=hf["max_position_embeddings"],
        d_ff=hf["intermediate_size"],
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=hf.get("hidden_act", "silu"),
        rope_theta=float(rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scaling=rope_scaling,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def _rope_scaling_to_hf(c: ModelConfig) -> dict[str, Any]:
    d = dict(c.rope_scaling or ())
    if "original_max_position_embeddings" in d:
        d["original_max_position_embeddings"] = int(d["original_max_position_embeddings"])
    return d


def llama_config_to_hf(c: ModelConfig) -> dict[str, Any]:
    """The Llama part of config.json (what transformers' LlamaForCausalLM reads)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_size,
        "intermediate_size": c.ff_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.norm_eps,
        "hidden_act": c.activation,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta, **_rope_scaling_to_hf(c)},
        "attention_bias": c.attention_bias,
        "mlp_bias": c.mlp_bias,
    }


LLAMA_FORMAT = HFFormat(
    family="llama",
    model_types=LLAMA_TYPES,
    table=LLAMA_TABLE,
    config_from_hf=llama_config_from_hf,
    config_to_hf=llama_config_to_hf,
    tied_keys=("lm_head.weight",),  # some tied checkpoints store the (identical) head anyway
)
