"""The Hugging Face format of every model family, by family: the one registry (`FORMATS`) and the four
conversions that go through it (config.json <-> ModelConfig, state dict <-> parameters).

Adding a family: its `models/<family>_params.py` declares an `HFFormat`; list it in `FORMATS` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jinject.models.base import CausalLM
from jinject.models.config import ModelConfig
from jinject.models.convert import HFFormat, fill_params, to_state_dict
from jinject.models.gpt2_params import GPT2_FORMAT
from jinject.models.llama_params import LLAMA_FORMAT

__all__ = ["FORMATS", "config_from_hf", "config_to_hf", "params_from_state_dict", "state_dict_from_model"]

FORMATS: dict[str, HFFormat] = {f.family: f for f in (GPT2_FORMAT, LLAMA_FORMAT)}


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict; the family is decided by `model_type`."""
    mt = hf.get("model_type")
    fmt = next((f for f in FORMATS.values() if mt in f.model_types), None)
    if fmt is None:
        known = ", ".join(t for f in FORMATS.values() for t in f.model_types)
        raise NotImplementedError(f"model_type {mt!r} is not supported ({known})")
    cfg = fmt.config_from_hf(hf)
    eos = hf.get("eos_token_id")
    cfg.update(bos_token_id=hf.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json dict that transformers' PyTorch classes load."""
    common = {
        "vocab_size": c.vocab_size,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": c.param_dtype,
    }
    return {**FORMATS[c.family].config_to_hf(c), **common}


def params_from_state_dict(model: CausalLM, state: Mapping[str, Any]) -> CausalLM:
    """Fills `model`'s parameters (in place; returned for chaining) from a Hugging Face state dict."""
    return fill_params(model, state, FORMATS[model.config.family])


def state_dict_from_model(model: CausalLM) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of `model` (inverse of params_from_state_dict; float32 or bf16 numpy)."""
    return to_state_dict(model, FORMATS[model.config.family])
