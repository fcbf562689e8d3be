"""Evaluation of a trained run: accuracy, language retention, decoding accuracy, causal test -> eval.json.

The four measurements (docs/method.md, Evaluation):

- **accuracy**: exact match of the greedy answer (jitted, KV-cached `jinject.generation.generate`) on the
  test split and on every OOD split. The prompt is encoded piece by piece, as in training.
- **retention**: perplexity of the original and of the trained model on held-out text (the corpus
  paragraphs training never sampled), and KL(original || trained) per token on the same windows.
- **decoding**: every RASP variable read from the student through the adapter at every aligned layer
  (`teacher.decode(A_i h_{student_index[i]})`) against the teacher's own value at that layer
  (`teacher.decode(r_i)`), at every real position of held-out examples the teacher can hold. A variable
  is scored only from the layer that writes it on (`teacher.var_info[v].layer`; for a teacher without
  it, the first layer where its residual dimensions are non-zero): before that there is nothing to read.
  The cosine objective leaves the length of A·h free, so each mapped vector is first divided by its
  length in teacher units, estimated from the structure of tracr residuals (`structural_scale`). Categorical: the same
  value (an empty one-hot reads as None on both sides); numerical: the decoded number is nearer to the
  true value than to any other value the variable takes on the held-out set (values read to 3 decimals);
  the mean absolute error is reported too.
- **causal**: noise of a fixed L2 norm added at every position of the student residual where training
  intervened (hidden index `student_index[-1]`), inside the answer subspace (the row space of the adapter
  restricted to the answer dimensions) vs inside a random subspace of the same dimension. Accuracy here
  is the teacher-forced exact match (every answer token is the argmax given the right prefix), which is
  the same event as greedy exact match, and lets one forward pass carry fresh noise at every position.

A baseline run has no adapter: its decoding and causal entries are `None` (absent, not zero).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jinject import objective as obj
from jinject.data import PieceEncoder, TaskArrays, encode_examples, load_corpus, split_corpus

NOISE_NORMS = (0.0, 5.0, 10.0, 30.0)
RELATIVE_NOISE = (0.1, 0.3, 0.5, 1.0)  # noise norms as fractions of the median residual norm at the intervened layer
EVAL_SEED = 0  # the same held-out examples for every run, so injected and baseline face the same test
SKIP_VARIABLES = ("one",)  # tracr's constant direction: always 1, nothing to decode


# ------------------------------------------------------------------------------------------ helpers


def _jit_model(model: nnx.Module, fn: Callable) -> Callable:
    """`fn(model, *args)` jitted over the model's pure state (nnx.split outside jit, merge inside)."""
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: jitted(state, *args)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pad the first axis to `size` rows (repeat row 0) so every batch has one shape: one compilation."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])


# ----------------------------------------------------------------------------------------- accuracy


def exact_match(generated: Sequence[int], answer_ids: Sequence[int], end_id: int) -> bool:
    """True when the greedy answer is the right answer up to and including the end marker.

    Accepts generators that return the end marker and ones that drop it: what follows the first end
    marker (padding, more tokens) never counts.
    """
    gen = list(generated)
    if end_id in gen:
        gen = gen[: gen.index(end_id) + 1]
        return gen == list(answer_ids)
    # no end marker produced: right only if the generator stopped on it and dropped it
    return False


def generation_accuracy(
    model: nnx.Module,
    encoder: PieceEncoder,
    examples: Sequence[Any],
    *,
    batch_size: int = 32,
    generate_fn: Callable | None = None,
    return_outputs: bool = False,
) -> dict[str, Any]:
    """Greedy exact-match accuracy of `model` on `examples` (prompt pieces -> answer pieces + end)."""
    if generate_fn is None:
        from jinject.generation import generate as generate_fn
    if not examples:
        return {"accuracy": None, "n": 0}
    end_id = encoder(examples[0].answer_pieces[-1])
    prompts = [encoder.encode(e.prompt_pieces) for e in examples]
    answers = [encoder.encode(e.answer_pieces) for e in examples]
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths batch together
    outputs: list[list[int]] = [[] for _ in examples]
    max_new = max(len(a) for a in answers)  # one value for every batch: one compilation per length bucket
    for sl in _batches(len(examples), batch_size):
        rows = list(order[sl])
        batch = [prompts[i] for i in rows]
        batch += [batch[0]] * (batch_size - len(batch))  # constant batch shape
        gens = generate_fn(model, batch, max_new, stop_ids=(end_id,))
        for i, g in zip(rows, gens, strict=False):
            outputs[i] = list(g)
    correct = [exact_match(g, a, end_id) for g, a in zip(outputs, answers, strict=True)]
    result: dict[str, Any] = {"accuracy": float(np.mean(correct)), "n": len(examples)}
    if return_outputs:
        result["outputs"] = outputs
        result["correct"] = correct
    return result


def _answers_right(m: nnx.Module, ids: jax.Array, targets: jax.Array, index: jax.Array, valid: jax.Array,
                   intervene: Callable | None, at: int | None) -> jax.Array:
    """[B] bool: every answer token is the argmax given the right prefix.

    The vocabulary projection runs only at the answer positions (gathered final residuals), unless the
    intervention sits on the final residual itself (the recorded hidden state predates it) or the model
    has no separate `unembed`.
    """
    out = m(ids, intervene=intervene, intervene_at=at if intervene is not None else None)
    n_layers = m.config.n_layers
    if hasattr(m, "unembed") and hasattr(m, "final_norm") and not (intervene is not None and at == n_layers):
        h = jnp.take_along_axis(out.hidden_states[-1], index[..., None], axis=1)
        logits = m.unembed(m.final_norm(h))
    else:
        logits = jnp.take_along_axis(out.logits, index[..., None], axis=1)
    tg = jnp.take_along_axis(targets, index, axis=1)
    correct = (jnp.argmax(logits, -1) == tg) | (valid == 0)
    return jnp.all(correct, axis=-1)


def _answer_arrays(arrays: TaskArrays) -> tuple[np.ndarray, np.ndarray]:
    """(answer_index, answer_valid) [N, K] of the data pipeline, or rebuilt from answer_mask."""
    if hasattr(arrays, "answer_index"):
        return arrays.answer_index, arrays.answer_valid
    k = int(arrays.answer_mask.sum(-1).max())
    index = np.zeros((len(arrays), k), np.int32)
    valid = np.zeros((len(arrays), k), np.float32)
    for r, row in enumerate(arrays.answer_mask):
        pos = np.flatnonzero(row)
        index[r, : len(pos)], valid[r, : len(pos)] = pos, 1.0
    return index, valid


def _exact_over_batches(run: Callable, arrays: TaskArrays, batch_size: int, key: jax.Array, *extra: Any) -> float:
    index, valid = _answer_arrays(arrays)
    hits = []
    for b, sl in enumerate(_batches(len(arrays), batch_size)):
        rows = sl.stop - sl.start
        cols = [_pad_rows(x[sl], batch_size) for x in (arrays.inputs, arrays.targets, index, valid)]
        hits.append(np.asarray(run(*cols, *extra, jax.random.fold_in(key, b)))[:rows])
    return float(np.concatenate(hits).mean())


def teacher_forced_exact(
    model: nnx.Module,
    arrays: TaskArrays,
    *,
    batch_size: int = 32,
    intervene: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    intervene_at: int | None = None,
    key: jax.Array | None = None,
) -> float:
    """Fraction of examples whose every answer token is the argmax given the right prefix (the same event
    as a greedy exact match). With `intervene(h, key) -> h` the hook gets a fresh key per batch."""

    def fwd(m: nnx.Module, ids, targets, index, valid, k):
        hook = None if intervene is None else (lambda h: intervene(h, k))
        return _answers_right(m, ids, targets, index, valid, hook, intervene_at)

    key = jax.random.key(0) if key is None else key
    return _exact_over_batches(_jit_model(model, fwd), arrays, batch_size, key)


# ---------------------------------------------------------------------------------------- retention


def text_windows(text: str, tokenizer: Any, seq_len: int, n_windows: int) -> np.ndarray:
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

    orig_fn = _jit_model(original, nll_sum)
    new_fn = _jit_model(trained, nll_sum)

    @jax.jit
    def kl_fn(p: jax.Array, q: jax.Array) -> jax.Array:  # per window: summed per-token KL(p || q)
        p_log, q_log = jax.nn.log_softmax(p, -1), jax.nn.log_softmax(q, -1)
        return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=(-2, -1))

    tot_o = tot_n = tot_kl = 0.0
    n_pred = n_kl = 0
    for sl in _batches(len(windows), batch_size):
        rows = sl.stop - sl.start
        ids = _pad_rows(windows[sl], batch_size)
        so, lo = orig_fn(ids)
        sn, ln = new_fn(ids)
        kl = kl_fn(lo, ln)  # per window: sum over positions of per-token KL
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


# ----------------------------------------------------------------------------------------- decoding


def variable_dims(labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Residual dimensions of each variable, from tracr's labels (`"var:value"` or `"var"` for numbers)."""
    dims: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        dims.setdefault(lab.split(":", 1)[0], []).append(i)
    return {k: np.asarray(v) for k, v in dims.items()}


def variable_kinds(labels: Sequence[str]) -> dict[str, str]:
    """"numerical" for a one-dimensional variable without a value in its label, else "categorical"."""
    kinds: dict[str, str] = {}
    for lab in labels:
        name, sep, _ = lab.partition(":")
        kinds[name] = "categorical" if sep else kinds.get(name, "numerical")
    return kinds


NUMERIC_DECIMALS = 3  # tracr's numerical MLPs leave ~1e-6 noise: true values are read to 3 decimals


def value_grid(true_values: np.ndarray) -> np.ndarray:
    """The distinct values a numerical variable takes (rounded to `NUMERIC_DECIMALS`), sorted."""
    return np.unique(np.round(np.asarray(true_values, np.float64), NUMERIC_DECIMALS))


def nearest(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to each x."""
    x = np.asarray(x, np.float64)
    if len(grid) == 1:  # a constant: its neighbours are taken to lie max(|v|, 1) away on either side
        v = grid[0]
        return np.where(np.abs(x - v) < 0.5 * max(abs(v), 1.0), 0, -1)
    i = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
    left, right = grid[i - 1], grid[i]
    return np.where(np.abs(x - left) <= np.abs(right - x), i - 1, i)


def _values_equal(a: np.ndarray, b: np.ndarray, kind: str, grid: np.ndarray | None) -> np.ndarray:
    """Categorical: the same value. Numerical: the decoded number is nearer to the true value than to any
    other value the variable takes (snap both to the grid of true values)."""
    if kind == "numerical":
        return nearest(grid, a) == nearest(grid, b)
    return np.asarray(a == b, bool)


class DecodingCollector:
    """Accumulates decoded values (student through adapter vs teacher) over batches, then scores them."""

    def __init__(self, teacher: Any, n_layers: int):
        self.teacher = teacher
        self.n_layers = n_layers
        info = getattr(teacher, "var_info", None)
        if info:  # the teacher knows its variables: dims, encoding, and the layer that writes each
            self.dims = {k: np.asarray(v.dims) for k, v in info.items()}
            self.kinds = {k: v.encoding for k, v in info.items()}
            self.first_layer = {k: int(v.layer) for k, v in info.items()}
        else:  # read them off tracr's labels; the first layer is then found from the residuals
            self.dims = variable_dims(teacher.labels)
            self.kinds = variable_kinds(teacher.labels)
            self.first_layer = {}
        self.student: dict[str, list[list[np.ndarray]]] = {}
        self.truth: dict[str, list[list[np.ndarray]]] = {}
        self.present: dict[str, np.ndarray] = {}
        self.n_positions = 0

    def add(self, mapped: np.ndarray, resid: np.ndarray, real: np.ndarray) -> None:
        """mapped/resid [L+1, B, T, Dt] (student through adapter, teacher without its BOS); real [B, T]."""
        sel = np.asarray(real) > 0
        self.n_positions += int(sel.sum())
        for i in range(self.n_layers):
            m, r = mapped[i][sel], resid[i][sel]  # [P, Dt]
            dm, dr = self.teacher.decode(m), self.teacher.decode(r)
            for var, tv in dr.items():
                if var in SKIP_VARIABLES or var not in dm:
                    continue
                self.student.setdefault(var, [[] for _ in range(self.n_layers)])[i].append(np.asarray(dm[var]))
                self.truth.setdefault(var, [[] for _ in range(self.n_layers)])[i].append(np.asarray(tv))
                present = self.present.setdefault(var, np.zeros(self.n_layers, bool))
                if var in self.first_layer:
                    present[i] = i >= self.first_layer[var]
                elif var in self.dims and r.size:
                    present[i] |= bool(np.any(np.abs(r[:, self.dims[var]]) > 1e-6))
                elif var not in self.dims:
                    present[i] = True

    def result(self, student_index: Sequence[int]) -> dict[str, Any]:
        variables: dict[str, Any] = {}
        for var in self.truth:
            kind = self.kinds.get(var, "categorical")
            truth_all = [np.concatenate(t) for t in self.truth[var]]
            grid = None
            if kind == "numerical":
                grid = value_grid(np.concatenate([t for t, p in zip(truth_all, self.present[var], strict=True) if p]
                                                 or truth_all))
            per_layer: list[float | None] = []
            mae: list[float | None] = []
            for i in range(self.n_layers):
                if not self.present[var][i]:
                    per_layer.append(None)
                    mae.append(None)
                    continue
                s = np.concatenate(self.student[var][i])
                per_layer.append(float(_values_equal(s, truth_all[i], kind, grid).mean()))
                if kind == "numerical":
                    mae.append(float(np.mean(np.abs(s.astype(np.float64) - truth_all[i].astype(np.float64)))))
            scored = [a for a in per_layer if a is not None]
            first = next((i for i, a in enumerate(per_layer) if a is not None), None)
            variables[var] = {
                "kind": kind,
                "first_layer": first,
                "per_layer": per_layer,
                "mean": float(np.mean(scored)) if scored else None,
                "final": per_layer[-1],
                "written": per_layer[first] if first is not None else None,  # at the layer that writes it
            }
            if kind == "numerical":
                variables[var]["n_values"] = int(len(grid))
                variables[var]["mean_abs_error"] = mae
        return {
            "student_index": [int(s) for s in student_index],
            "n_positions": self.n_positions,
            "variables": dict(sorted(variables.items())),
            "mean": _mean([v["mean"] for v in variables.values()]),
        }


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def mapped_and_teacher(
    model: nnx.Module, teacher: Any, adapter: dict, student_index: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]]:
    """A jitted `(inputs, teacher_ids) -> (A_i h_{index[i]} [L+1,B,T,Dt], r_i without BOS [L+1,B,T,Dt])`."""
    index = np.asarray(student_index)
    adapter = jax.tree.map(jnp.asarray, adapter)

    def fn(m: nnx.Module, ids: jax.Array, t_ids: jax.Array, adapter: dict, t_params: Any):
        hidden = m(ids).hidden_states
        mapped = jnp.stack([obj.adapter_apply(adapter, hidden[s], i) for i, s in enumerate(index)])
        with jax.default_matmul_precision("highest"):
            resid = teacher.residuals(t_params, t_ids)[:, :, 1:]
        return mapped, resid.astype(jnp.float32)

    run = _jit_model(model, fn)
    return lambda ids, t_ids: run(ids, t_ids, adapter, teacher.params)


def structural_scale(teacher: Any, mapped: np.ndarray, layer: int) -> np.ndarray:
    """Per-position length of A·h in teacher units [...], from the known shape of a tracr residual.

    The alignment loss is a cosine: it fixes the direction of A·h but leaves its length free (it varies
    10x and more between positions). In the teacher, tracr's `one` direction is 1 and every categorical
    variable already written has one dimension at 1; the mean of those maxima in A·h estimates the
    length, without looking at the teacher's answer for this input. Numerical values and the "empty
    one-hot" threshold are read after dividing by it (categorical argmaxes do not depend on it).
    """
    info = getattr(teacher, "var_info", None)
    if not info:
        return np.ones(mapped.shape[:-1])
    maxima = [mapped[..., v.dims].max(-1) for v in info.values() if v.encoding == "categorical" and v.layer <= layer]
    if "one" in teacher.labels:
        maxima.append(mapped[..., teacher.labels.index("one")])
    if not maxima:
        return np.ones(mapped.shape[:-1])
    c = np.mean(maxima, axis=0)
    return np.where(c > 1e-6, c, 1.0)


def calibrate(teacher: Any, mapped: np.ndarray) -> np.ndarray:
    """Divide each layer's mapped vectors [L+1, ..., Dt] by their `structural_scale`."""
    return np.stack([mapped[i] / structural_scale(teacher, mapped[i], i)[..., None] for i in range(len(mapped))])


def decoding_accuracy(
    model: nnx.Module,
    teacher: Any,
    adapter: dict,
    student_index: np.ndarray,
    arrays: TaskArrays,
    *,
    batch_size: int = 16,
    calibrated: bool = True,
) -> dict[str, Any]:
    """Per variable and aligned layer: how often the value read through the adapter equals the teacher's.

    With `calibrated` (default) each mapped vector is first divided by its length in teacher units
    (`structural_scale`).
    """
    run = mapped_and_teacher(model, teacher, adapter, student_index)
    collector = DecodingCollector(teacher, len(student_index))
    at_marker = DecodingCollector(teacher, len(student_index))
    marker_mask = np.zeros_like(arrays.real_mask)
    marker_mask[np.arange(len(arrays)), arrays.answer_index[:, 0]] = 1.0  # the last prompt token
    for sl in _batches(len(arrays), batch_size):
        rows = sl.stop - sl.start
        ids = _pad_rows(arrays.inputs[sl], batch_size)
        t_ids = _pad_rows(arrays.teacher_ids[sl], batch_size)
        mapped, resid = run(ids, t_ids)
        mapped = np.asarray(mapped)[:, :rows]
        if calibrated:
            mapped = calibrate(teacher, mapped)
        resid = np.asarray(resid)[:, :rows]
        collector.add(mapped, resid, arrays.real_mask[sl])
        at_marker.add(mapped, resid, marker_mask[sl])
    result = collector.result(student_index)
    result["marker"] = at_marker.result(student_index)["variables"]  # the same scores at the marker only
    result["n_examples"] = len(arrays)
    result["calibrated"] = calibrated
    return result


# ------------------------------------------------------------------------------------------- causal


def random_basis(key: jax.Array, d: int, k: int) -> jax.Array:
    """A random orthonormal basis [d, k] (QR of a Gaussian matrix)."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (d, k), jnp.float32), mode="reduced")
    return q


def subspace_noise(h: jax.Array, basis: jax.Array, norm: jax.Array, key: jax.Array) -> jax.Array:
    """h + noise of L2 norm `norm` at every position, in a uniformly random direction of span(basis)."""
    z = jax.random.normal(key, h.shape[:-1] + (basis.shape[1],), jnp.float32)
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    noise = jnp.einsum("...k,dk->...d", z, basis, precision="highest") * norm
    return (h.astype(jnp.float32) + noise).astype(h.dtype)


def causal_test(
    model: nnx.Module,
    adapter: dict,
    answer_dims: np.ndarray,
    top_layer: int,
    at: int,
    arrays: TaskArrays,
    *,
    norms: Sequence[float] = NOISE_NORMS,
    relative: Sequence[float] = RELATIVE_NOISE,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy under noise in the answer subspace vs in a random subspace of equal dimension.

    `norms` are absolute L2 norms; `relative` are fractions of the median L2 norm of the clean residual at
    hidden state `at` over real positions, which makes runs and hosts of different scales comparable. The
    median, not the mean: the first token of an LM (its attention sink) carries a massive activation, 60x
    the other positions' norm deep in SmolLM2, which would make the mean a statement about one token.
    """
    for x in (*norms, *relative):
        if not (math.isfinite(x) and x >= 0):
            raise ValueError(f"noise norms must be finite and >= 0, got {x}")
    answer_basis = obj.answer_subspace_basis(jax.tree.map(jnp.asarray, adapter), np.asarray(answer_dims), top_layer)
    d, k = answer_basis.shape
    key = jax.random.key(seed)
    rand_basis = random_basis(jax.random.fold_in(key, 1), d, k)

    def fwd(m: nnx.Module, ids, targets, index, valid, basis, norm, nkey):
        hook = lambda h: subspace_noise(h, basis, norm, nkey)
        return _answers_right(m, ids, targets, index, valid, hook, at)

    run = _jit_model(model, fwd)

    def acc(basis: jax.Array, norm: float, salt: int) -> float:
        return _exact_over_batches(run, arrays, batch_size, jax.random.fold_in(key, salt), basis, jnp.float32(norm))

    def curves(values: Sequence[float], salt: int) -> tuple[list[float], list[float]]:
        pairs = [(acc(answer_basis, v, salt + j), acc(rand_basis, v, salt + 100 + j)) for j, v in enumerate(values)]
        return [a for a, _ in pairs], [r for _, r in pairs]

    answer_acc, random_acc = curves(norms, 100)
    result = {
        "norms": [float(x) for x in norms],
        "answer_subspace": answer_acc,
        "random_subspace": random_acc,
        "dim": int(k),
        "student_index": int(at),
        "n": len(arrays),
    }
    if relative:
        median, mean = residual_norms(model, arrays, at, batch_size)
        rel_norms = [float(r) * median for r in relative]
        rel_answer, rel_random = curves(rel_norms, 1000)
        result["relative"] = {"fractions": [float(r) for r in relative], "median_norm": median, "mean_norm": mean,
                              "norms": rel_norms, "answer_subspace": rel_answer, "random_subspace": rel_random}
    return result


def residual_norms(model: nnx.Module, arrays: TaskArrays, at: int, batch_size: int = 32) -> tuple[float, float]:
    """(median, mean) L2 norm of the student's hidden state `at` over the real positions of `arrays`."""
    norms = _jit_model(model, lambda m, ids: jnp.linalg.norm(m(ids).hidden_states[at].astype(jnp.float32), axis=-1))
    values = []
    for sl in _batches(len(arrays), batch_size):
        rows = sl.stop - sl.start
        n = np.asarray(norms(_pad_rows(arrays.inputs[sl], batch_size)))[:rows]
        values.append(n[arrays.real_mask[sl] > 0])
    values = np.concatenate(values)
    return float(np.median(values)), float(np.mean(values))


# -------------------------------------------------------------------------------------------- a run


def fits_teacher(example: Any, teacher: Any) -> bool:
    """Whether the teacher can run the example with its answer (`Teacher.misfit`: length, vocabulary — an OOD
    split may bring symbols the teacher never had — and the task's own limits)."""
    return teacher.misfit(example) is None


def split_examples(task: Any, split: str, n: int, seed: int, teacher: Any | None) -> list[Any]:
    """`task.examples`, with train/test drawn for the run's teacher size (as training drew them)."""
    if teacher is not None and split in ("train", "test"):
        try:
            return task.examples(split, n, seed, max_seq_len=teacher.max_seq_len)
        except TypeError:  # a task whose examples() takes no max_seq_len
            pass
    return task.examples(split, n, seed)


def evaluate_run(
    run: Any,
    *,
    n_examples: int = 500,
    n_decode: int = 200,
    n_causal: int | None = None,
    n_text_windows: int = 32,
    text_seq_len: int = 64,
    noise_norms: Sequence[float] = NOISE_NORMS,
    relative_noise: Sequence[float] = RELATIVE_NOISE,
    splits: Sequence[str] | None = None,
    batch_size: int = 32,
    seed: int = EVAL_SEED,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All four measurements for a `jinject.trainer.Run`; writes `out/eval.json` when `out` is given.

    `n_examples` per split for accuracy (test and each OOD split); `n_decode` test examples that fit the
    teacher for decoding accuracy; `n_causal` (default `n_examples`) for the causal test.
    """
    say = progress or (lambda _msg: None)
    config, task, teacher, tokenizer = run.config, run.task, run.teacher, run.tokenizer
    encoder = PieceEncoder(tokenizer)
    splits = [s for s in task.splits if s != "train"] if splits is None else list(splits)
    results: dict[str, Any] = {
        "run": {"task": config.task, "model": config.model, "baseline": bool(config.baseline),
                "variant": config.variant, "seed": config.seed, "step": int(run.step)},
        "settings": {"n_examples": n_examples, "n_decode": n_decode, "n_text_windows": n_text_windows,
                     "text_seq_len": text_seq_len, "eval_seed": seed},
    }

    accuracy = {}
    test_examples = None
    for split in splits:
        say(f"accuracy on {split}")
        examples = split_examples(task, split, n_examples, seed, teacher)
        if split == "test":
            test_examples = examples
        accuracy[split] = generation_accuracy(run.model, encoder, examples, batch_size=batch_size)
    results["accuracy"] = accuracy

    if run.original is not None:
        say("language retention")
        heldout = split_corpus(load_corpus(config.corpus))[1]
        windows = text_windows(heldout, tokenizer, text_seq_len, n_text_windows)
        results["retention"] = retention(run.original, run.model, windows, batch_size=min(batch_size, 8))
    else:
        results["retention"] = None

    if config.baseline or teacher is None:
        results["decoding"] = None
        results["causal"] = None
    else:
        if test_examples is None:
            test_examples = split_examples(task, "test", max(n_examples, n_decode), seed, teacher)
        fitting = [e for e in test_examples if fits_teacher(e, teacher)]
        if not fitting:
            raise ValueError(f"no test example fits the teacher's max_seq_len={teacher.max_seq_len}")
        index = run.student_index
        say("decoding accuracy")
        dec_arrays = encode_examples(fitting[:n_decode], encoder, teacher)
        results["decoding"] = decoding_accuracy(run.model, teacher, run.adapter, index, dec_arrays,
                                                batch_size=min(batch_size, 16))
        results["decoding"]["answer_var"] = teacher.answer_var
        say("causal test")
        n_c = n_causal if n_causal is not None else n_examples
        causal_arrays = encode_examples(test_examples[:n_c], encoder, None)
        results["causal"] = causal_test(run.model, run.adapter, teacher.answer_dims, teacher.n_layers,
                                        run.intervene_at, causal_arrays, norms=noise_norms,
                                        relative=relative_noise, batch_size=batch_size, seed=seed)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        from jinject.rundir import finite_or_none

        # standard JSON only: a NaN/inf measurement is written as null, never as a bare NaN
        (Path(out) / "eval.json").write_text(json.dumps(finite_or_none(results), indent=2, allow_nan=False) + "\n")
    return results


# ---------------------------------------------------------------------------------------------- table


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(results: dict[str, Any]) -> str:
    """The human-readable report of `evaluate_run`'s dict (what `jinject eval` prints)."""
    r = results.get("run", {})
    kind = r.get("variant") or ("baseline" if r.get("baseline") else "injected")
    lines = [f"{r.get('task', '?')} on {r.get('model', '?')} ({kind}, seed {r.get('seed', '?')}, "
             f"step {r.get('step', '?')})", ""]
    lines.append("exact-match accuracy (greedy)")
    lines.append(f"  {'split':<24}{'n':>6}{'accuracy':>10}")
    for split, a in results.get("accuracy", {}).items():
        lines.append(f"  {split:<24}{a['n']:>6}{_fmt(a['accuracy']):>10}")
    ret = results.get("retention")
    lines.append("")
    if ret:
        lines.append(f"language retention (held-out text, {ret['n_tokens']} tokens)")
        lines.append(f"  perplexity original {ret['ppl_original']:.2f} -> trained {ret['ppl_trained']:.2f}   "
                     f"KL(original || trained) {ret['kl']:.4f} nats/token")
    else:
        lines.append("language retention: not measured (no original model)")
    dec = results.get("decoding")
    lines.append("")
    if dec is None:
        lines.append("decoding accuracy: n/a (baseline run: no adapter)")
    else:
        idx = dec["student_index"]
        lines.append(f"decoding accuracy through the adapter ({dec['n_examples']} test examples, "
                     f"{dec['n_positions']} positions; '-' = variable not yet computed by the teacher)")
        head = "".join(f"{f't{i}/s{s}':>9}" for i, s in enumerate(idx))
        marker = dec.get("marker", {})
        lines.append(f"  {'variable':<22}{'kind':<6}{head}{'mean':>8}{'written':>9}{'marker':>8}")
        for var, v in dec["variables"].items():
            cells = "".join(f"{_fmt(a):>9}" for a in v["per_layer"])
            at_marker = marker.get(var, {}).get("written")
            lines.append(f"  {var[:21]:<22}{v['kind'][:4]:<6}{cells}{_fmt(v['mean']):>8}{_fmt(v.get('written')):>9}"
                         f"{_fmt(at_marker):>8}")
        lines.append(f"  mean over variables: {_fmt(dec['mean'])}   (written: at the layer that writes the variable; "
                     "marker: the same at the last prompt token only)")
    cau = results.get("causal")
    lines.append("")
    if cau is None:
        lines.append("causal test: n/a (baseline run: no answer subspace)")
    else:
        lines.append(f"causal test: noise added at student hidden state {cau['student_index']} inside a "
                     f"{cau['dim']}-dim subspace ({cau['n']} test examples, teacher-forced exact match)")
        lines.append(f"  {'noise norm':>10}{'answer subspace':>18}{'random subspace':>18}")
        for n, a, b in zip(cau["norms"], cau["answer_subspace"], cau["random_subspace"], strict=True):
            lines.append(f"  {n:>10g}{_fmt(a):>18}{_fmt(b):>18}")
        rel = cau.get("relative")
        if rel:
            lines.append(f"  relative to the median residual norm there ({rel['median_norm']:.1f}; mean "
                         f"{rel['mean_norm']:.1f}):")
            for f, n, a, b in zip(rel["fractions"], rel["norms"], rel["answer_subspace"], rel["random_subspace"],
                                  strict=True):
                lines.append(f"  {f:>5g} x = {n:<7.1f}{_fmt(a):>15}{_fmt(b):>18}")
    return "\n".join(lines)
