"""GPT-2's Hugging Face format: the checkpoint key table and the config.json mapping, next to each other so
the whole family's format is one place (registered in `models/checkpoint.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinject.models.config import ModelConfig
from jinject.models.convert import HFFormat, Rule

# Conv1D weights are already [in, out] (no transpose); lm_head is tied to wte.
GPT2_TABLE = (
    Rule("wte.weight", "wte.embedding"),
    Rule("wpe.weight", "wpe.embedding"),
    Rule("h.{i}.ln_1.weight", "blocks.{i}.ln_1.scale"),
    Rule("h.{i}.ln_1.bias", "blocks.{i}.ln_1.bias"),
    Rule("h.{i}.attn.c_attn.weight", "blocks.{i}.attn.c_attn.kernel"),
    Rule("h.{i}.attn.c_attn.bias", "blocks.{i}.attn.c_attn.bias"),
    Rule("h.{i}.attn.c_proj.weight", "blocks.{i}.attn.c_proj.kernel"),
    Rule("h.{i}.attn.c_proj.bias", "blocks.{i}.attn.c_proj.bias"),
    Rule("h.{i}.ln_2.weight", "blocks.{i}.ln_2.scale"),
    Rule("h.{i}.ln_2.bias", "blocks.{i}.ln_2.bias"),
    Rule("h.{i}.mlp.c_fc.weight", "blocks.{i}.mlp.c_fc.kernel"),
    Rule("h.{i}.mlp.c_fc.bias", "blocks.{i}.mlp.c_fc.bias"),
    Rule("h.{i}.mlp.c_proj.weight", "blocks.{i}.mlp.c_proj.kernel"),
    Rule("h.{i}.mlp.c_proj.bias", "blocks.{i}.mlp.c_proj.bias"),
    Rule("ln_f.weight", "ln_f.scale"),
    Rule("ln_f.bias", "ln_f.bias"),
    Rule("h.{i}.attn.bias", None),
    Rule("h.{i}.attn.masked_bias", None),
    Rule("lm_head.weight", None),  # tied
)


def gpt2_config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig keyword arguments of a GPT-2 config.json."""
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise NotImplementedError("GPT-2 variants with non-standard attention scaling are not supported")
    return dict(
        family="gpt2",
        vocab_size=hf["vocab_size"],
        d_model=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        max_position_embeddings=hf["n_positions"],
        d_ff=hf.get("n_inner"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=hf.get("activation_function", "gelu_new"),
        tie_embeddings=True,
    )


def gpt2_config_to_hf(c: ModelConfig) -> dict[str, Any]:
    """The GPT-2 part of config.json (what transformers' GPT2LMHeadModel reads)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_positions": c.max_position_embeddings,
        "n_inner": c.d_ff,
        "layer_norm_epsilon": c.norm_eps,
        "activation_function": c.activation,
    }


GPT2_FORMAT = HFFormat(
    family="gpt2",
    model_types=("gpt2",),
    table=GPT2_TABLE,
    config_from_hf=gpt2_config_from_hf,
    config_to_hf=gpt2_config_to_hf,
    prefixes=("transformer.",),
)
