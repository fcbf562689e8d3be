"""Language retention: what training cost the host on ordinary text.

Perplexity of the original and of the trained model on held-out text (the corpus paragraphs training
never sampled), and KL(original || trained) per token on the same windows (`jinject.objective.token_kl`,
the training objective's own KL).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject.evaluate.batching import batches, jit_model, pad_rows
from jinject.objective import token_kl

if TYPE_CHECKING:
    from jinject.tokenizer import Tokenizer


def text_windows(text: str, tokenizer: Tokenizer, seq_len: int, n_windows: int) -> np.ndarray:
    """Up to `n_windows` consecutive, non-overlapping windows [N, seq_len] of the tokenised text."""
    ids = np.asarray(tokenizer.encode(text[: 40 * seq_len * n_windows + 1000]), np.int32)
    n = min(n_windows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"held-out text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return ids[: n * seq_len].reshape(n, seq_len)


def retention(
    original: nnx.Module, trained: nnx.Module, windows: np.ndarray, *, batch_size: int = 8
) -> dict[str, float]:
    """Perplexity of both models on the windows (next-token, all positions) and KL(original || trained)."""

    def nll_sum(m: nnx.Module, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = m(ids).logits
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
        return jnp.sum(nll, axis=-1), logits

    orig_fn = jit_model(original, nll_sum)
    new_fn = jit_model(trained, nll_sum)
    kl_fn = jax.jit(lambda p, q: jnp.sum(token_kl(p, q), axis=-1))  # per window: summed per-token KL(p || q)

    tot_o = tot_n = tot_kl = 0.0
    n_pred = n_kl = 0
    for sl in batches(len(windows), batch_size):
        rows = sl.stop - sl.start
        ids = pad_rows(windows[sl], batch_size)
        so, lo = orig_fn(ids)
        sn, ln = new_fn(ids)
        kl = kl_fn(lo, ln)
        tot_o += float(np.asarray(so)[:rows].sum())
        tot_n += float(np.asarray(sn)[:rows].sum())
        tot_kl += float(np.asarray(kl)[:rows].sum())
        n_pred += rows * (windows.shape[1] - 1)
        n_kl += rows * windows.shape[1]
    return {
        "ppl_original": math.exp(tot_o / n_pred),
        "ppl_trained": math.exp(tot_n / n_pred),
        "kl": tot_kl / n_kl,
        "n_tokens": int(n_kl),
    }
