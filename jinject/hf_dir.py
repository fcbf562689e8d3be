"""A local Hugging Face model directory as a model source: config.json, the safetensors weights (one file
or a sharded index) and the tokenizer files, every failure naming the file at fault."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jinject.models import ModelConfig
from jinject.models.checkpoint import config_from_hf
from jinject.tokenizer import Tokenizer, gpt2_tokenizer, tokenizer_from_dir

__all__ = ["read_json_file", "read_hf_config", "read_state_dict", "dir_tokenizer"]


def read_json_file(path: Path, what: str) -> Any:
    """json.loads of a file, every failure naming the file (a bare JSONDecodeError names no file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} ({what}) is not a text file: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} ({what}) is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def read_hf_config(path: Path, **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """(config.json as a dict, the ModelConfig built from it with `overrides`); a missing file, a missing or
    mistyped key names the file."""
    file = path / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model directory)")
    hf = read_json_file(file, "the model's Hugging Face config")
    if not isinstance(hf, dict):
        raise ValueError(f"{file} holds a JSON {type(hf).__name__}, not a Hugging Face config object")
    try:
        return hf, config_from_hf(hf, **overrides)
    except KeyError as e:
        raise ValueError(f"{file} lacks the key {e.args[0]!r} that a {hf.get('model_type')} config needs") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    # framework="flax" reads bfloat16 too (numpy's reader cannot); np.asarray then gives ml_dtypes arrays.
    try:
        with safe_open(str(path), framework="flax") as f:
            for k in f.keys():
                out[k] = np.asarray(f.get_tensor(k))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(e).split())[:160]}); it is "
                         "damaged or truncated: download or export the model again") from None
    return out


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The directory's weights as one Hugging Face state dict: model.safetensors or every shard of
    model.safetensors.index.json."""
    if (path / "model.safetensors").exists():
        return _read_safetensors(path / "model.safetensors")
    if (path / "model.safetensors.index.json").exists():
        index = read_json_file(path / "model.safetensors.index.json", "the index of the weight shards")
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"{path / 'model.safetensors.index.json'} has no 'weight_map' object")
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{path / shard} (a weight shard listed in model.safetensors.index.json) "
                                        "is missing")
            state.update(_read_safetensors(path / shard))
        return state
    if any(path.glob("*.bin")):
        raise NotImplementedError(f"{path} holds only PyTorch .bin weights; convert them to safetensors first")
    raise FileNotFoundError(f"{path} has no model.safetensors or model.safetensors.index.json")


def dir_tokenizer(path: Path, hf: dict[str, Any]) -> Tokenizer:
    """The directory's tokenizer; a full-size GPT-2 without tokenizer files gets GPT-2's own (offline) BPE.
    `hf` is the directory's config.json."""
    tokenizer = tokenizer_from_dir(path, hf)
    if tokenizer is None and hf.get("model_type") == "gpt2" and hf.get("vocab_size", 0) >= 50257:
        tokenizer = gpt2_tokenizer()
    if tokenizer is None:
        raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    return tokenizer
