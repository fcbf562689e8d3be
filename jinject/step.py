"""One training step: the optimizer, the typed train state, the objective as a pure loss, and the single
`jax.jit` that runs teacher + student + losses + AdamW with the state donated.

    state = init_state(model, teacher, config)
    step = make_train_step(model, teacher, config)
    state, metrics = step(state, batch)   # batch from jinject.data.Pipeline(...).batch(i)

Nothing in the step calls back to Python; the frozen arrays (original weights, teacher parameters) are
arguments of the jitted function, never constants baked into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jinject import objective as obj
from jinject.config import TrainConfig
from jinject.sharding import batch_shardings, param_shardings

if TYPE_CHECKING:
    from jinject.teacher import Teacher

Batch = dict[str, Any]
Frozen = dict[str, Any]  # {"original": the untrained model's params (KL reference), "teacher": params or {}}
Residuals = Callable[[Any, Batch], jax.Array]  # (teacher params, batch) -> teacher residuals [L_t+1, B, T+1, D_t]


@flax.struct.dataclass
class TrainState:
    """Everything a step updates (a pytree; donated to the step)."""

    params: nnx.State  # the student's parameters (a copy of the model's: those stay the KL reference)
    adapter: obj.Adapter | None  # student -> teacher map; None for the baseline, which has none
    opt_state: optax.OptState  # AdamW moments of params and adapter (`make_optimizer`)
    step: jax.Array  # int32 []: steps taken

    @property
    def trainable(self) -> dict[str, Any]:
        """The tree the loss differentiates and the optimizer updates: {"params", "adapter"}."""
        return {"params": self.params, "adapter": self.adapter}


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with its own learning rate for the model and for the adapter (original: 1e-6 / 1e-4).

    With `adapter_warmup_steps` = N the model's learning rate is 0 for the first N steps (the adapter
    learns alone, so the student never chases a near-random map), then its own schedule starts. Without
    alignment the adapter learns nothing, so there is nothing to warm up: the model trains from step 0
    (a baseline with the injected run's settings keeps all its steps).
    """

    def schedule(lr: float, steps: int) -> optax.Schedule:
        if config.schedule == "cosine":
            return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, max(steps, 1))
        if config.warmup_steps:
            return optax.linear_schedule(0.0, lr, config.warmup_steps)
        return optax.constant_schedule(lr)

    def adamw(lr: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.weight_decay)

    frozen_for = config.adapter_warmup_steps if config.align else 0
    model_lr = schedule(config.lr, config.steps - frozen_for)
    if frozen_for:
        model_lr = optax.join_schedules([optax.constant_schedule(0.0), model_lr], [frozen_for])
    labels = lambda tree: {"params": jax.tree.map(lambda _: "model", tree["params"]),
                           "adapter": jax.tree.map(lambda _: "adapter", tree["adapter"])}
    tx = optax.multi_transform({"model": adamw(model_lr), "adapter": adamw(schedule(config.adapter_lr, config.steps))},
                               labels)
    if config.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx


def n_adapter_maps(config: TrainConfig, teacher: Teacher) -> int:
    return teacher.n_layers + 1 if config.per_layer_adapter else 1


@dataclass(frozen=True)
class ObjectivePlan:
    """Where the objective acts in the student: static numbers the jitted step closes over."""

    student_index: np.ndarray  # student hidden state aligned with each teacher layer 0..L_t
    intervene_at: int  # student hidden state of the detach-and-roll (also used by the causal test)
    dim_weights: np.ndarray  # [L_t + 1, D_t] 0/1: teacher dimensions the alignment compares
    excluded: tuple[str, ...]  # the resolved align_exclude entries
    blocks: tuple[np.ndarray, np.ndarray] | None  # per-variable alignment: `objective.variable_blocks`


def objective_plan(config: TrainConfig, teacher: Teacher, model_config: Any) -> ObjectivePlan:
    """Resolve the layer map, the intervention site and the alignment's left-out dimensions; every
    inconsistency (teacher deeper than the host, a bad index, an unknown variable) is refused here."""
    n_student = model_config.n_layers
    index = obj.layer_map(teacher.n_layers, n_student, config.layer_offset, config.layer_stride)
    at = obj.intervention_index(index, n_student, config.intervene_at)
    excluded = (config.align_exclude if config.align_exclude is not None
                else obj.auto_exclude(model_config.absolute_positions))
    excluded = tuple(e for e in excluded if config.align_exclude is not None
                     or e.partition("@")[0] in {lab.partition(":")[0] for lab in teacher.labels})
    weights = obj.alignment_dim_weights(teacher.labels, teacher.n_layers,
                                        obj.parse_exclusions(excluded, teacher.labels, teacher.n_layers))
    if not weights.any(axis=1).all():
        raise ValueError(f"align_exclude {list(excluded)} leaves some teacher layer with no dimension to align")
    blocks = None
    if config.align_per_variable:
        categorical = [(v.dims, v.layer) for v in teacher.var_info.values() if v.categorical]
        blocks = obj.variable_blocks(teacher.d_model, categorical, teacher.n_layers)
    return ObjectivePlan(index, at, weights, excluded, blocks)


def init_state(model: nnx.Module, teacher: Teacher | None, config: TrainConfig) -> TrainState:
    """Fresh trainable state: a copy of the model's parameters, a new adapter (none for the baseline),
    AdamW moments, step 0.

    The copy matters: the step donates this state, while the original weights stay alive as the frozen
    reference of the KL term.
    """
    _, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)
    adapter = None
    if teacher is not None and not config.baseline:
        adapter = obj.init_adapter(jax.random.key(config.seed), model.config.d_model, teacher.d_model,
                                   n_adapter_maps(config, teacher))
    trainable = {"params": params, "adapter": adapter}
    return TrainState(params, adapter, make_optimizer(config).init(trainable), jnp.zeros((), jnp.int32))


def teacher_residuals(teacher: Teacher, params: Any, teacher_ids: jax.Array) -> jax.Array:
    """The frozen teacher's residual stream, in float32 at full matmul precision (tracr needs exact sums)."""
    with jax.default_matmul_precision("highest"):
        return teacher.residuals(params, teacher_ids).astype(jnp.float32)


def answer_logits(student: nnx.Module, out: Any, batch: Batch, use_full_logits: bool = False):
    """(logits [B, K, V], targets [B, K], valid [B, K]) at the answer positions only.

    The vocabulary projection is most of the cost of a small LM's step; the task loss needs it at a few
    answer positions, so it is applied to the gathered final residuals (XLA then drops the unused
    full-sequence logits). When the intervention sits on the final residual itself, the recorded
    hidden state predates it, so the full logits are gathered instead.
    """
    idx = batch["answer_index"]
    targets = jnp.take_along_axis(batch["targets"], idx, axis=1)
    if use_full_logits:
        logits = jnp.take_along_axis(out.logits, idx[..., None], axis=1)
    else:
        h = jnp.take_along_axis(out.hidden_states[-1], idx[..., None], axis=1)
        logits = student.unembed(student.final_norm(h)).astype(jnp.float32)
    return logits, targets, batch["answer_valid"]


def make_loss_fn(graphdef: nnx.GraphDef, teacher: Teacher | None, config: TrainConfig, model_config: Any,
                 residuals: Residuals | None = None) -> Callable:
    """loss(trainable, frozen, batch) -> (total, metrics): the whole objective, pure.

    Alignment and intervention are independent switches (`config.align`, `config.intervene`); the
    baseline has neither. `residuals(teacher_params, batch)` gives the teacher's residual stream; by
    default the frozen teacher runs inside the loss (`teacher_residuals`), so it fuses into the step.
    """
    plan = None if config.baseline else objective_plan(config, teacher, model_config)
    intervened_top = False
    if plan is not None:
        answer_dims = np.asarray(teacher.answer_dims)
        top = teacher.n_layers
        intervened_top = config.intervene and plan.intervene_at == model_config.n_layers
        dim_weights = None if plan.dim_weights.all() else jnp.asarray(plan.dim_weights)
        categorical_answer = teacher.var_info[teacher.answer_var].categorical
        if config.intervene and config.intervene_gate and not categorical_answer:
            raise ValueError(f"intervene_gate reads the answer as the argmax of its one-hot, but this program's "
                             f"answer {teacher.answer_var!r} is numerical: drop --intervene-gate")
    if residuals is None:
        residuals = lambda params, batch: teacher_residuals(teacher, params, batch["teacher_ids"])

    def loss_fn(trainable: dict, frozen: Frozen, batch: Batch) -> tuple[jax.Array, dict]:
        student = nnx.merge(graphdef, trainable["params"])
        metrics: dict[str, jax.Array] = {}
        align = jnp.zeros(())
        hook = {}
        if config.align:
            resid = jax.lax.stop_gradient(residuals(frozen["teacher"], batch))
            marker = batch["answer_index"][:, 0]
            readout = partial(obj.marker_readout, trainable["adapter"], answer_dims=answer_dims, layer=top,
                              marker=marker, teacher_top=resid[top], valid=batch["answer_valid"][:, 0])
        if config.intervene:
            basis = obj.answer_subspace_basis(trainable["adapter"], answer_dims, top)
            roll = obj.make_intervention(basis)
            if config.align and config.intervene_gate:
                # decided on this batch from the state the intervention would cut: no Python, no state
                roll = lambda h, roll=roll: jnp.where(jax.lax.stop_gradient(readout(h)) >= config.intervene_gate,
                                                      roll(h), h)
            hook = {"intervene": roll, "intervene_at": plan.intervene_at}
        out = student(batch["inputs"], **hook)
        if config.align:
            if categorical_answer:
                # the recorded hidden state predates the intervention: the readout the gate saw
                at_site = jax.lax.stop_gradient(readout(out.hidden_states[plan.intervene_at]))
                metrics["answer_readout"] = at_site
                if config.intervene:
                    metrics["intervened"] = (at_site >= config.intervene_gate).astype(jnp.float32)
            weights = obj.alignment_position_weights(batch["real_mask"], marker, config.marker_weight)
            per_layer = obj.alignment_losses(trainable["adapter"], out.hidden_states, resid, plan.student_index,
                                             weights, dim_weights, plan.blocks)
            align = jnp.sum(per_layer)
            metrics["align"] = align
            metrics["align_per_layer"] = per_layer
        logits, targets, valid = answer_logits(student, out, batch, intervened_top)
        task = obj.answer_cross_entropy(logits, targets, valid)
        token_acc, exact = obj.answer_accuracy(logits, targets, valid)
        original = nnx.merge(graphdef, frozen["original"])
        ref_logits = jax.lax.stop_gradient(original(batch["text_ids"]).logits)
        kl = obj.kl_to_original(ref_logits, student(batch["text_ids"]).logits, batch["text_mask"])
        total = task + config.kl_weight * kl + config.align_weight * align
        metrics.update(loss=total, task=task, kl=kl, answer_acc=token_acc, exact_acc=exact)
        return total, metrics

    return loss_fn


def _update(loss_fn: Callable, tx: optax.GradientTransformation, state: TrainState, frozen: Frozen,
            batch: Batch) -> tuple[TrainState, dict]:
    """The step's maths: gradients of the loss, one optimizer update, the step counter."""
    trainable = state.trainable
    grads, metrics = jax.grad(loss_fn, has_aux=True)(trainable, frozen, batch)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return TrainState(trainable["params"], trainable["adapter"], opt_state, state.step + 1), metrics


@dataclass(frozen=True)
class TrainStep:
    """`step(state, batch) -> (state, metrics)`: the jitted update with its frozen arrays bound."""

    jitted: Callable  # (state, frozen, batch) -> (state, metrics); jax.jit, state donated
    frozen: Frozen  # on the mesh's devices when the step has a mesh

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        return self.jitted(state, self.frozen, batch)


def make_train_step(
    model: nnx.Module, teacher: Teacher | None, config: TrainConfig, mesh: Mesh | None = None,
    example_batch: Batch | None = None,
    residuals: Residuals | None = None,
) -> TrainStep:
    """The jitted step `step(state, batch) -> (state, metrics)`, state donated.

    `model` holds the ORIGINAL weights: they become the frozen reference of the KL term. With a mesh (and
    an example batch to read shapes from), inputs and outputs carry explicit shardings: batch over
    ("data", "fsdp"), parameters fully sharded over "fsdp". `residuals`: see `make_loss_fn`.
    """
    graphdef, original = nnx.split(model)
    update = partial(_update, make_loss_fn(graphdef, teacher, config, model.config, residuals),
                     make_optimizer(config))
    frozen = {"original": original, "teacher": teacher.params if (teacher is not None and config.align) else {}}
    if mesh is None:
        return TrainStep(jax.jit(update, donate_argnums=0), frozen)
    if example_batch is None:
        raise ValueError("make_train_step(mesh=...) needs example_batch to derive the batch shardings")
    state_sh = param_shardings(jax.eval_shape(lambda: init_state(model, teacher, config)), mesh)
    frozen_sh = param_shardings(frozen, mesh)
    in_shardings = (state_sh, frozen_sh, batch_shardings(example_batch, mesh))
    jitted = jax.jit(update, donate_argnums=0, in_shardings=in_shardings,
                     out_shardings=(state_sh, NamedSharding(mesh, P())))
    return TrainStep(jitted, jax.device_put(frozen, frozen_sh))
