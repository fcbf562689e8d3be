"""`export_model`: write a (fine-tuned) model back to Hugging Face format.

The directory holds config.json + model.safetensors (keys and layouts exactly as transformers' PyTorch
`GPT2LMHeadModel` / `LlamaForCausalLM` expect, tied heads omitted) and the tokenizer (tokenizer.json +
tokenizer_config.json), so both `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` and
`jinject.load_model(out_dir)` read it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
from safetensors.flax import save_file

from jinject.models import CausalLM
from jinject.models.checkpoint import config_to_hf, state_dict_from_model
from jinject.tokenizer import Tokenizer

__all__ = ["export_model"]


def export_model(model: CausalLM, tokenizer: Tokenizer | None, out_dir: str | Path) -> Path:
    """Writes `model` (in its parameter dtype) and `tokenizer` to `out_dir`; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = config_to_hf(model.config)
    if tokenizer is not None:
        if hf.get("bos_token_id") is None:
            hf["bos_token_id"] = tokenizer.bos_id
        if hf.get("eos_token_id") is None:
            hf["eos_token_id"] = tokenizer.eos_id
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    state = {k: jnp.asarray(v) for k, v in state_dict_from_model(model).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(out)
    return out
