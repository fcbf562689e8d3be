"""Cross-checks against transformers' PyTorch classes (`pytest -m torch`; needs torch, which CI lacks).

- the stored reference logits are what transformers computes from the stored tiny checkpoints;
- export round trip: a (perturbed, i.e. "fine-tuned") jinject model exported to HF format and loaded by
  transformers gives jinject's logits, for both families, tied and untied;
- the same for the real smollm2-135m (GGUF -> jinject -> HF directory -> transformers).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jinject.export import export_model
from jinject.loading import load_model

pytestmark = pytest.mark.torch
ASSETS = Path(__file__).parent / "assets"
NAMES = ["gpt2_tiny", "llama_gqa_untied", "llama_mqa_tied"]


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _hf_logits(torch, path, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(np.asarray(ids)).long()).logits.numpy()


@pytest.mark.parametrize("name", NAMES)
def test_reference_logits_reproduce(torch, name):
    ref = load_file(str(ASSETS / name / "reference.safetensors"))
    np.testing.assert_allclose(_hf_logits(torch, ASSETS / name, ref["ids"]), ref["logits"], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_in_transformers(torch, name, tmp_path):
    model, tok = load_model(ASSETS / name)
    graphdef, params = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype), params)
    tuned = nnx.merge(graphdef, params)
    ids = load_file(str(ASSETS / name / "reference.safetensors"))["ids"]
    export_model(tuned, tok, tmp_path)
    expect = np.asarray(tuned(jnp.asarray(ids)).logits)
    assert np.abs(expect - np.asarray(model(jnp.asarray(ids)).logits)).max() > 1e-2  # perturbation matters
    assert np.abs(_hf_logits(torch, tmp_path, ids) - expect).max() <= 1e-4


def test_smollm2_export_loads_in_transformers(torch, tmp_path):
    model, tok = load_model("smollm2-135m")
    export_model(model, tok, tmp_path)
    ids = np.array([tok.encode("The capital of France is Paris, a city on the Seine.")], np.int32)
    expect = np.asarray(model(jnp.asarray(ids)).logits)
    got = _hf_logits(torch, tmp_path, ids)
    assert np.abs(got - expect).max() <= 1e-3, np.abs(got - expect).max()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path)).encode("Hello there, 123") == tok.encode("Hello there, 123")
