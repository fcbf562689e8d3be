"""Flax NNX host language models (GPT-2 and Llama family) with a shared forward contract.

`model(ids, intervene=None, intervene_at=None) -> ModelOutput(logits, hidden_states)`; see
docs/architecture.md. `create_model(config, rngs)` builds a randomly initialised model (tiny students in
tests); `jinject.loading.load_model` builds one from pre-trained weights.
"""

from __future__ import annotations

from flax import nnx

from jinject.models.base import CausalLM
from jinject.models.config import ModelConfig, ModelOutput
from jinject.models.gpt2 import GPT2
from jinject.models.layers import KV
from jinject.models.llama import Llama

__all__ = ["KV", "GPT2", "CausalLM", "Llama", "ModelConfig", "ModelOutput", "create_model", "abstract_model"]

_FAMILIES = {"gpt2": GPT2, "llama": Llama}


def create_model(config: ModelConfig, rngs: nnx.Rngs | int = 0) -> CausalLM:
    """A randomly initialised model of `config.family` (normal(0.02) weights, unit norms, zero biases)."""
    if isinstance(rngs, int):
        rngs = nnx.Rngs(rngs)
    return _FAMILIES[config.family](config, rngs)


def abstract_model(config: ModelConfig) -> CausalLM:
    """The model's structure with ShapeDtypeStruct leaves (no allocation); loaders fill in the values."""
    return nnx.eval_shape(lambda: create_model(config, nnx.Rngs(0)))
