"""GPT-2-shaped hosts with random weights and GPT-2's own tokenizer, for timing where the weights cannot be had.

    python experiments/random_host.py gpt2-large /tmp/gpt2-large-random   # a Hugging Face directory

No machine here reaches a model hub, yet the `paper` preset and the original code use gpt2-large. A step's
time and memory do not depend on the weights' values, so a random model of the same shape (and GPT-2's
exact tokenizer, which ships offline) measures the original protocol's cost. Accuracy numbers from such a
host mean nothing: it has no language to keep and no pre-training to build on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# (d_model, n_layers, n_heads) of the released GPT-2 checkpoints.
GPT2_SHAPES = {"gpt2-small": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
               "gpt2-xl": (1600, 48, 25)}


def random_gpt2(shape: str, dtype: str = "float32", seed: int = 0):
    """(model, tokenizer): `shape` from GPT2_SHAPES, random float32 weights computing in `dtype` (as training
    loads a host)."""
    from jinject.models import ModelConfig, create_model
    from jinject.tokenizer import gpt2_tokenizer

    if shape not in GPT2_SHAPES:
        raise SystemExit(f"random_host: unknown shape {shape!r} (known: {sorted(GPT2_SHAPES)})")
    d, n_layers, n_heads = GPT2_SHAPES[shape]
    config = ModelConfig(family="gpt2", vocab_size=50257, d_model=d, n_layers=n_layers, n_heads=n_heads,
                         max_position_embeddings=1024, bos_token_id=50256, eos_token_id=50256,
                         dtype=dtype, param_dtype="float32")
    return create_model(config, seed), gpt2_tokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(GPT2_SHAPES))
    parser.add_argument("out", help="directory to write (config.json, model.safetensors, tokenizer files)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jinject.export import export_model

    model, tokenizer = random_gpt2(args.shape, seed=args.seed)
    print(export_model(model, tokenizer, args.out))


if __name__ == "__main__":
    main()
