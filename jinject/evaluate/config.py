"""The evaluation's settings and their defaults, in one place: `evaluate_run` and `jinject eval` read them here.

Light on purpose (no JAX): the command line builds its parser from these defaults before anything loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NOISE_NORMS = (0.0, 5.0, 10.0, 30.0)
RELATIVE_NOISE = (0.1, 0.3, 0.5, 1.0)  # noise norms as fractions of the median residual norm at the intervened layer
EVAL_SEED = 0  # the same held-out examples for every run, so injected and baseline face the same test


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate_run` measures on, and how much of it.

    `n_examples` per split for accuracy (test and each OOD split; `splits=None`: every split but train);
    `n_decode` test examples that fit the teacher for decoding accuracy; `n_causal` (None: `n_examples`)
    for the causal test; `n_text_windows` windows of `text_seq_len` tokens of held-out text for retention;
    `noise_norms` absolute and `relative_noise` relative L2 norms of the causal-test noise; `seed` draws the
    evaluation examples.
    """

    n_examples: int = 500
    n_decode: int = 200
    n_causal: int | None = None
    n_text_windows: int = 32
    text_seq_len: int = 64
    noise_norms: Sequence[float] = NOISE_NORMS
    relative_noise: Sequence[float] = RELATIVE_NOISE
    splits: Sequence[str] | None = None
    batch_size: int = 32
    seed: int = EVAL_SEED
