"""The injection objective as pure functions: adapter, layer map, alignment, intervention, losses.

Shapes: student hidden states `h` [L_s+1, B, T, D_s]; teacher residuals `r` [L_t+1, B, T+1, D_t]
(teacher BOS first, so student position t <-> teacher position t+1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def map_index(adapter: Adapter, layer: int) -> int:
    """Which of the adapter's maps serves teacher layer `layer` (the one map when it is shared)."""
    return layer if adapter["w"].shape[0] > 1 else 0


def adapter_apply(adapter: Adapter, h: jax.Array, layer: int = 0) -> jax.Array:
    """Map student vectors [..., D_s] to teacher space [..., D_t] with the map of teacher layer `layer`."""
    m = map_index(adapter, layer)
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


def intervention_index(student_index: np.ndarray, n_student_layers: int, at: int | None = None) -> int:
    """Student hidden-state index of the intervention.

    Default: the OUTPUT of the block whose input is aligned with the teacher's top layer
    (`student_index[-1] + 1`), where the original code hooked it, so the student has one block after the
    last aligned state to write the answer into its subspace. A top layer aligned with the final hidden
    state leaves no block after it: the intervention then sits on that state itself.
    """
    if at is None:
        return min(int(student_index[-1]) + 1, n_student_layers)
    if not 0 <= at <= n_student_layers:
        raise ValueError(f"intervene_at={at} is not a student hidden-state index: the student has "
                         f"{n_student_layers} blocks, so use 0..{n_student_layers}")
    return int(at)


def parse_exclusions(entries: Sequence[str], labels: Sequence[str], n_layers: int) -> list[tuple[str, int | None]]:
    """`"VAR"` / `"VAR@LAYER"` -> (VAR, layer or None for every layer), checked against the teacher."""
    names = {lab.partition(":")[0] for lab in labels}
    out: list[tuple[str, int | None]] = []
    for entry in entries:
        var, sep, layer = entry.partition("@")
        if var not in names:
            raise ValueError(f"align_exclude entry {entry!r}: the teacher has no variable {var!r}; "
                             f"its residual variables are {sorted(names)}")
        if sep and not (layer.isdigit() and int(layer) <= n_layers):
            raise ValueError(f"align_exclude entry {entry!r}: the layer must be a teacher layer 0..{n_layers}")
        out.append((var, int(layer) if sep else None))
    return out


def auto_exclude(has_absolute_positions: bool) -> tuple[str, ...]:
    """Teacher dimensions a host cannot represent: tracr's one-hot `indices` is an INPUT embedding of the
    teacher; a host without absolute position embeddings (RoPE) has no such input, so those dimensions
    are left out of the alignment on such hosts (GPT-2 keeps them)."""
    return () if has_absolute_positions else ("indices",)


def alignment_dim_weights(labels: Sequence[str], n_layers: int,
                          exclusions: Sequence[tuple[str, int | None]]) -> np.ndarray:
    """[L_t + 1, D_t] 0/1: which teacher residual dimensions the alignment compares at each layer."""
    w = np.ones((n_layers + 1, len(labels)), np.float32)
    var_of = np.array([lab.partition(":")[0] for lab in labels])
    for var, layer in exclusions:
        w[slice(None) if layer is None else layer, var_of == var] = 0.0
    return w


def variable_blocks(teacher_dim: int, categorical: Sequence[tuple[np.ndarray, int]],
                    n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """The blocks of the per-variable alignment: ([V, D_t] 0/1 membership, [L_t + 1, V] 0/1 written by layer i).

    `categorical` is (dims, first layer) of each categorical variable: each is its own block, from the layer
    that writes it. Every other dimension (tracr's `one`, the numerical variables, `indices`) forms one block
    of scalars from layer 0 on: a one-dimensional block's cosine would only be its sign.
    """
    member = np.zeros((len(categorical) + 1, teacher_dim), np.float32)
    present = np.zeros((n_layers + 1, len(categorical) + 1), np.float32)
    for v, (dims, layer) in enumerate(categorical):
        member[v, np.asarray(dims)] = 1.0
        present[layer:, v] = 1.0
    member[-1] = 1.0 - member[:-1].sum(axis=0)
    present[:, -1] = float(member[-1].any())
    return member, present


def block_cosine_distance(a: jax.Array, b: jax.Array, member: jax.Array,
                          eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """(1 - cos per block [..., V], whether the target block is non-zero [..., V]) for `a`, `b` [..., D] and
    block membership `member` [V, D]. A zero target block (a variable not written yet, an aggregate that
    selected nothing, a left-out dimension) has no direction to match."""
    dot = (a * b) @ member.T
    sq_b = (b * b) @ member.T
    # the clamp sits inside the square root: sqrt'(0) is infinite, and inf * 0 would put NaN in the gradient
    norms = jnp.sqrt(jnp.maximum(((a * a) @ member.T) * sq_b, eps * eps))
    return 1.0 - dot / norms, sq_b > eps


def alignment_position_weights(real_mask: jax.Array, marker_index: jax.Array, marker_weight: float) -> jax.Array:
    """[B, T]: 1 at real positions, `marker_weight` at each row's marker position (the last prompt token)."""
    if marker_weight == 1.0:
        return real_mask
    at_marker = jnp.arange(real_mask.shape[1])[None, :] == marker_index[:, None]
    return jnp.where(at_marker, marker_weight, 1.0) * real_mask


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` weighted by `mask` (0/1 or weights); 0 (not NaN) when the mask is empty."""
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
    dim_weights: np.ndarray | None = None,
    blocks: tuple[np.ndarray, np.ndarray] | None = None,
) -> jax.Array:
    """Per-teacher-layer masked cosine distance between A·h_{map(i)} and r_i: shape [L_t + 1].

    `mask` [B, T] weighs student positions (0 at padding: padding never counts). `dim_weights`
    [L_t + 1, D_t] (0/1) leaves teacher dimensions out of layer i's cosine, on both sides. With `blocks`
    (`variable_blocks`) each variable's block has its own cosine and the layer's loss is their mean over
    positions and the blocks written there, so a variable of a few dimensions weighs as much as a wide one.
    """
    teacher = teacher_resid[:, :, 1:].astype(jnp.float32)  # drop teacher BOS: position t+1 <-> t
    losses = []
    for i, s in enumerate(student_index):
        mapped, target = adapter_apply(adapter, student_hidden[s], i), teacher[i]
        if dim_weights is not None:
            mapped, target = mapped * dim_weights[i], target * dim_weights[i]
        if blocks is None:
            losses.append(masked_mean(cosine_distance(mapped, target), mask))
        else:
            member, present = blocks
            dist, live = block_cosine_distance(mapped, target, jnp.asarray(member))
            losses.append(masked_mean(dist, mask[..., None] * live * jnp.asarray(present[i])))
    return jnp.stack(losses)


def answer_subspace_basis(adapter: Adapter, answer_dims: np.ndarray, layer: int) -> jax.Array:
    """Orthonormal basis [D_s, k] of the student directions the adapter reads the answer from.

    That is the row space of A restricted to the teacher's answer dimensions. The basis is treated as a
    constant (stop_gradient): the adapter is shaped by the alignment loss, not by the task loss.
    """
    rows = jax.lax.stop_gradient(adapter["w"][map_index(adapter, layer)][:, np.asarray(answer_dims)])  # [D_s, k]
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


def marker_readout(adapter: Adapter, h: jax.Array, answer_dims: np.ndarray, layer: int, marker: jax.Array,
                   teacher_top: jax.Array, valid: jax.Array) -> jax.Array:
    """Fraction of examples whose answer, read through the adapter's map `layer` from `h` [B, T, D_s] at each
    row's marker, is the teacher's (`teacher_top` [B, T+1, D_t], BOS first): the argmax over the answer's
    one-hot. This is what the layers after the intervention can read; `valid` [B] weighs the rows."""
    rows = jnp.arange(h.shape[0])
    dims = np.asarray(answer_dims)
    mapped = adapter_apply(adapter, h[rows, marker], layer)[:, dims]
    target = teacher_top[rows, marker + 1][:, dims]
    return masked_mean((mapped.argmax(-1) == target.argmax(-1)).astype(jnp.float32), valid)


def answer_cross_entropy(logits: jax.Array, targets: jax.Array, answer_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over answer positions only (0 when there are none)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return masked_mean(nll, answer_mask)


def answer_correct(logits: jax.Array, targets: jax.Array, answer_mask: jax.Array) -> jax.Array:
    """[B, K] bool: the argmax is the target at each answer position; True where the mask is 0 (no answer)."""
    return (jnp.argmax(logits, axis=-1) == targets) | (answer_mask == 0)


def answer_accuracy(logits: jax.Array, targets: jax.Array, answer_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(token accuracy over answer positions, fraction of examples with every answer token right)."""
    correct = answer_correct(logits, targets, answer_mask)
    token_acc = masked_mean(correct.astype(jnp.float32), answer_mask)
    has_answer = jnp.any(answer_mask > 0, axis=-1)
    exact = masked_mean(jnp.all(correct, axis=-1).astype(jnp.float32), has_answer)
    return token_acc, exact


def kl_to_original(original_logits: jax.Array, student_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """KL(original || student) per token, averaged over real text positions."""
    return masked_mean(token_kl(original_logits, student_logits), mask)


def token_kl(original_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
    """KL(original || student) at each position [...] (logits [..., V], in float32)."""
    p_log = jax.nn.log_softmax(original_logits.astype(jnp.float32), axis=-1)
    q_log = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)
