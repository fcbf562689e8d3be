"""Regenerates tests/assets/: tiny random GPT-2 / Llama checkpoints saved by transformers' PyTorch
classes, plus their reference logits and hidden states, so that CI can check parity without torch.

    .venv/bin/pip install torch==2.13.0   # CPU build; only this script and `pytest -m torch` need it
    .venv/bin/python experiments/make_model_assets.py

Each asset directory holds config.json + model.safetensors (as written by `save_pretrained`), a tiny
tokenizer.json (one token per character, jinject.tokenizer.make_test_tokenizer) and reference.safetensors
with `ids` [2, 12] int32, `logits` [2, 12, V] and `hidden_states` [n_layers + 1, 2, 12, D] (transformers'
convention: the last entry is AFTER the final norm). Weights are re-drawn with a larger scale than the
default init so the activations are O(1) and the parity check is not trivially satisfied.
"""

from __future__ import annotations

import shutil
import string
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jinject.tokenizer import make_test_tokenizer  # noqa: E402

ASSETS = ROOT / "tests" / "assets"
VOCAB = 64
PIECES = list(string.ascii_lowercase + string.digits + " .,;:!?()[]{}<>+-=*/'\"") [: VOCAB - 4]

CONFIGS = {
    # GPT-2 always ties its unembedding.
    "gpt2_tiny": GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2
    ),
    # GQA (4 query heads over 2 KV heads), untied lm_head, Llama 3 RoPE scaling (with these numbers one
    # frequency is in the smoothed band and one is divided by the factor).
    "llama_gqa_untied": LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    ),
    # Multi-query (1 KV head), head_dim * n_heads != hidden_size, tied embeddings, SmolLM2's RoPE base.
    "llama_mqa_tied": LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=6, max_position_embeddings=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    ),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = CONFIGS[name]
    cfg._attn_implementation = "eager"
    model = (GPT2LMHeadModel if cfg.model_type == "gpt2" else LlamaForCausalLM)(cfg).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and ("ln" in pname or "norm" in pname) and pname.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def main() -> None:
    for name in CONFIGS:
        out = ASSETS / name
        shutil.rmtree(out, ignore_errors=True)
        model = build(name)
        model.save_pretrained(out, safe_serialization=True)
        (out / "generation_config.json").unlink(missing_ok=True)
        make_test_tokenizer(PIECES).save(out)
        g = np.random.default_rng(0)
        ids = g.integers(0, VOCAB, size=(2, 12)).astype(np.int32)
        with torch.no_grad():
            res = model(torch.from_numpy(ids).long(), output_hidden_states=True)
        save_file(
            {
                "ids": ids,
                "logits": res.logits.float().numpy(),
                "hidden_states": torch.stack(res.hidden_states).float().numpy(),
            },
            str(out / "reference.safetensors"),
        )
        sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
        print(name, sizes)


if __name__ == "__main__":
    main()
