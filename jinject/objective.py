"""The injection objective as pure functions: adapter, layer map, alignment, intervention, losses.

Shapes: student hidden states `h` [L_s+1, B, T, D_s]; teacher residuals `r` [L_t+1, B, T+1, D_t]
(teacher BOS first, so student position t <-> teacher position t+1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Adapter = dict[str, jax.Array]  # {"w": [M, D_s, D_t], "b": [M, D_t]}; M = 1 (shared) or L_t + 1


def init_adapter(key: jax.Array, d_student: int, d_teacher: int, n_maps: int = 1) -> Adapter:
    """Like torch.nn.Linear's default init (uniform ±1/sqrt(fan_in)), which the original used."""
    bound = 1.0 / np.sqrt(d_student)
    kw, kb = jax.random.split(key)
    w = jax.random.uniform(kw, (n_maps, d_student, d_teacher), jnp.float32, -bound, bound)
    b = jax.random.uniform(kb, (n_maps, d_teacher), jnp.float32, -bound, bound)
    return {"w": w, "b": b}


def adapter_apply(adapter: Adapter, h: jax.Array, layer: int = 0) -> jax.Array:
    """Map student vectors [..., D_s] to teacher space [..., D_t] with the map of teacher layer `layer`."""
    m = layer if adapter["w"].shape[0] > 1 else 0
    h = h.astype(jnp.float32)
    return jnp.einsum("...s,st->...t", h, adapter["w"][m], precision="highest") + adapter["b"][m]


def layer_map(n_teacher_layers: int, n_student_layers: int, offset: int = 0, stride: int = 1) -> np.ndarray:
    """Student hidden-state index for each teacher residual 0..L_t: `offset + stride * i`.

    Bottom-aligned by default (teacher layer i <-> residual entering student block i). Refuses when the
    teacher does not fit, instead of the original's IndexError deep inside the step.
    """
    idx = offset + stride * np.arange(n_teacher_layers + 1)
    if idx[-1] > n_student_layers:
        raise ValueError(
            f"the teacher has {n_teacher_layers} layers but the student has only {n_student_layers} blocks: "
            f"layer map offset={offset}, stride={stride} needs student hidden state {idx[-1]} "
            f"(at most {n_student_layers}). Use a deeper student model, a smaller layer offset/stride, "
            "or a shallower RASP program."
        )
    return idx


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over positions where `mask` is set; 0 (not NaN) when the mask is empty."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """1 - cos(a, b) along the last axis; finite for zero vectors."""
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))
    return 1.0 - dot / jnp.maximum(norms, eps)


def alignment_losses(
    adapter: Adapter,
    student_hidden: jax.Array,
    teacher_resid: jax.Array,
    student_index: np.ndarray,
    mask: jax.Array,
) -> jax.Array:
    """Per-teacher-layer masked cosine distance between A·h_{map(i)} and r_i: shape [L_t + 1].

    `mask` [B, T] marks real (non-padding) student positions; padding never counts.
    """
    teacher = teacher_resid[:, :, 1:].astype(jnp.float32)  # drop teacher BOS: position t+1 <-> t
    losses = [
        masked_mean(cosine_distance(adapter_apply(adapter, student_hidden[s], i), teacher[i]), mask)
        for i, s in enumerate(student_index)
    ]
    return jnp.stack(losses)


def answer_subspace_basis(adapter: Adapter, answer_dims: np.ndarray, layer: int) -> jax.Array:
    """Orthonormal basis [D_s, k] of the student directions the adapter reads the answer from.

    That is the row space of A restricted to the teacher's answer dimensions. The basis is treated as a
    constant (stop_gradient): the adapter is shaped by the alignment loss, not by the task loss.
    """
    m = layer if adapter["w"].shape[0] > 1 else 0
    rows = jax.lax.stop_gradient(adapter["w"][m][:, np.asarray(answer_dims)])  # [D_s, k]
    q, _ = jnp.linalg.qr(rows.astype(jnp.float32), mode="reduced")
    return q


def project(h: jax.Array, basis: jax.Array) -> jax.Array:
    """Orthogonal projection of h [..., D_s] onto span(basis)."""
    coords = jnp.einsum("...s,sk->...k", h.astype(jnp.float32), basis, precision="highest")
    return jnp.einsum("...k,sk->...s", coords, basis, precision="highest").astype(h.dtype)


def detach_and_roll(h: jax.Array, basis: jax.Array) -> jax.Array:
    """Keep the answer-subspace part of each example; take the rest, gradient-stopped, from the
    previous example in the batch. Later layers can then read the answer only from the subspace."""
    inside = project(h, basis)
    rest = jax.lax.stop_gradient(h - inside)
    return inside + jnp.roll(rest, 1, axis=0)


def make_intervention(basis: jax.Array) -> Callable[[jax.Array], jax.Array]:
    return lambda h: detach_and_roll(h, basis)


def answer_cross_entropy(logits: jax.Array, targets: jax.Array, answer_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over answer positions only (0 when there are none)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return masked_mean(nll, answer_mask)


def answer_accuracy(logits: jax.Array, targets: jax.Array, answer_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(token accuracy over answer positions, fraction of examples with every answer token right)."""
    correct = (jnp.argmax(logits, axis=-1) == targets) | (answer_mask == 0)
    token_acc = masked_mean(correct.astype(jnp.float32), answer_mask)
    has_answer = jnp.any(answer_mask > 0, axis=-1)
    exact = masked_mean(jnp.all(correct, axis=-1).astype(jnp.float32), has_answer)
    return token_acc, exact


def kl_to_original(original_logits: jax.Array, student_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """KL(original || student) per token, averaged over real text positions."""
    p_log = jax.nn.log_softmax(original_logits.astype(jnp.float32), axis=-1)
    q_log = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    kl = jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)
    return masked_mean(kl, mask)
