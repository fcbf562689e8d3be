"""The generic half of checkpoint conversion: a key-table row (`Rule`), a family's Hugging Face format
(`HFFormat`), and the two table-driven copies between a state dict and a model's parameters.

jax-ml/bonsai `params.py` style: a family only declares its key table (`models/<family>_params.py`); the
one loop here fills the model, shape-checks every tensor and requires every parameter to be filled, so a
wrong table fails loudly. `models/checkpoint.py` picks the family's format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.models.base import CausalLM
from jinject.models.config import ModelConfig

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch Linear [out, in] <-> our kernel [in, out]."""
    return np.ascontiguousarray(x.T)


@dataclass(frozen=True)
class Rule:
    """One row: Hugging Face key pattern <-> parameter path pattern (`{i}` = layer), transform each way.

    `target=None` marks source keys to skip (buffers such as GPT-2's `attn.bias`).
    """

    source: str
    target: str | None
    to_jax: Transform = identity
    to_hf: Transform = identity

    def _regex(self, pattern: str) -> re.Pattern:
        return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)"))

    def match_source(self, key: str) -> re.Match | None:
        return self._regex(self.source).fullmatch(key)

    def match_target(self, path: str) -> re.Match | None:
        return None if self.target is None else self._regex(self.target).fullmatch(path)


@dataclass(frozen=True)
class HFFormat:
    """How one model family is stored in Hugging Face format.

    `model_types`: the config.json `model_type` values it reads. `config_from_hf(hf)` returns the
    family's ModelConfig keyword arguments (bos/eos and overrides are added by the caller);
    `config_to_hf(c)` the family's part of config.json. `prefixes` are stripped from checkpoint keys;
    `tied_keys` are skipped when the config ties its embeddings (checkpoints that store the tied head anyway).
    """

    family: str
    model_types: tuple[str, ...]
    table: tuple[Rule, ...]
    config_from_hf: Callable[[Mapping[str, Any]], dict[str, Any]]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    prefixes: tuple[str, ...] = ()
    tied_keys: tuple[str, ...] = ()


def _param_vars(model: CausalLM) -> dict[str, nnx.Variable]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(p) for p in path): var for path, var in flat}


def _few(keys: list[str]) -> str:
    return f"{keys[:8]}{' ...' if len(keys) > 8 else ''}"


def fill_params(model: CausalLM, state: Mapping[str, Any], fmt: HFFormat) -> CausalLM:
    """Fills `model`'s parameters (in place; returned for chaining) from a state dict in format `fmt`."""
    c = model.config
    targets = _param_vars(model)
    filled: set[str] = set()
    unknown: list[str] = []
    for key, value in state.items():
        k = key
        for prefix in fmt.prefixes:
            k = k.removeprefix(prefix)
        if c.tie_embeddings and k in fmt.tied_keys:
            continue
        for rule in fmt.table:
            m = rule.match_source(k)
            if m is None:
                continue
            if rule.target is None:
                break
            path = rule.target.replace("{i}", m.groupdict().get("i") or "")
            if path not in targets:
                raise ValueError(f"checkpoint key {key!r} -> {path!r}, which this {c.family} config lacks")
            arr = rule.to_jax(np.asarray(value))
            var = targets[path]
            if tuple(arr.shape) != tuple(var.shape):
                raise ValueError(f"shape mismatch for {key!r} -> {path!r}: {arr.shape} vs model {var.shape}")
            var.set_value(jnp.asarray(arr, dtype=c.jnp_param_dtype))
            filled.add(path)
            break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unrecognised {c.family} checkpoint keys: {_few(unknown)}")
    missing = sorted(set(targets) - filled)
    if missing:
        raise ValueError(f"checkpoint lacks parameters: {_few(missing)}")
    return model


def to_state_dict(model: CausalLM, fmt: HFFormat) -> dict[str, np.ndarray]:
    """The state dict of `model` in format `fmt` (inverse of fill_params; float32 or bf16 numpy)."""
    out: dict[str, np.ndarray] = {}
    for path, var in _param_vars(model).items():
        for rule in fmt.table:
            m = rule.match_target(path)
            if m is not None:
                key = rule.source.replace("{i}", m.groupdict().get("i") or "")
                out[key] = np.ascontiguousarray(rule.to_hf(np.asarray(var.get_value())))
                break
        else:
            raise ValueError(f"no conversion rule for parameter {path!r}")
    return out
