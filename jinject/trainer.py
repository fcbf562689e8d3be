"""The train loop: state, the single jit-compiled step, meshes, orbax checkpoints and resume.

Python users drive it directly:

    model, tokenizer = load_model("smollm2-135m")
    teacher = compile_teacher(get_task("shuffle-dyck"))
    state = init_state(model, teacher, config)
    step = make_train_step(model, teacher, config)
    state, metrics = step(state, batch)   # batch from Pipeline(...).batch(i)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jinject import objective as obj
from jinject import rundir
from jinject.config import TrainConfig
from jinject.data import (
    PieceEncoder,
    TaskArrays,
    TextStream,
    encode_examples,
    load_corpus,
    sample_task_batch,
    split_corpus,
)
from jinject.run_log import RunLog
from jinject.rundir import check_out_dir, read_run_config  # noqa: F401  (public here too)

State = dict[str, Any]  # {"params": nnx.State, "adapter": Adapter, "opt_state": ..., "step": int32[]}
Batch = dict[str, Any]


# Settings a resumed run may change without changing the trajectory of the steps already taken.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints"})


class TrainingDiverged(RuntimeError):
    """A loss or the state became NaN/inf; the run stopped before that state could reach a checkpoint."""


# ------------------------------------------------------------------------------------- mesh/shardings


def make_mesh(config: TrainConfig, devices: list | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over the local/global devices (Auto axes: tracr's gather needs them)."""
    devices = devices if devices is not None else jax.devices()
    n = len(devices)
    fsdp = config.mesh_fsdp
    if fsdp > n or n % fsdp:
        raise ValueError(f"--fsdp {fsdp} needs a multiple of {fsdp} devices, but {n} {devices[0].platform} device"
                         f"{'s are' if n != 1 else ' is'} available; use --fsdp 1 or a divisor of {n}")
    data = config.mesh_data if config.mesh_data > 0 else n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} available devices exactly")
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard a parameter's largest axis that divides evenly over the fsdp axis; replicate the rest."""
    if fsdp > 1 and shape:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % fsdp == 0:
                spec = [None] * len(shape)
                spec[axis] = "fsdp"
                return P(*spec)
    return P()


def param_shardings(tree: Any, mesh: Mesh) -> Any:
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp)), tree)


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    for k, v in batch.items():
        if np.shape(v)[0] % n:
            raise ValueError(f"batch field {k!r} has {np.shape(v)[0]} rows, not divisible by the {n} devices; "
                             "choose --batch-size (and text batch size) as a multiple of the device count")
    return {k: NamedSharding(mesh, P(("data", "fsdp"))) for k in batch}


def shard_batch(batch: Batch, shardings: Batch) -> Batch:
    """Global arrays from a host batch that every process builds identically (it is a function of
    (seed, step)): each process hands over only the rows its own devices hold, so this also works
    multi-host."""
    return {k: jax.make_array_from_callback(np.shape(v), shardings[k], lambda idx, v=v: v[idx])
            for k, v in batch.items()}


# --------------------------------------------------------------------------------------------- state


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


def n_adapter_maps(config: TrainConfig, teacher: Any) -> int:
    return teacher.n_layers + 1 if config.per_layer_adapter else 1


@dataclass(frozen=True)
class ObjectivePlan:
    """Where the objective acts in the student: static numbers the jitted step closes over."""

    student_index: np.ndarray  # student hidden state aligned with each teacher layer 0..L_t
    intervene_at: int  # student hidden state of the detach-and-roll (also used by the causal test)
    dim_weights: np.ndarray  # [L_t + 1, D_t] 0/1: teacher dimensions the alignment compares
    excluded: tuple[str, ...]  # the resolved align_exclude entries


def objective_plan(config: TrainConfig, teacher: Any, model_config: Any) -> ObjectivePlan:
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
    return ObjectivePlan(index, at, weights, excluded)


def init_state(model: nnx.Module, teacher: Any, config: TrainConfig) -> State:
    """Fresh trainable state: a copy of the model's parameters, a new adapter, AdamW moments, step 0.

    The copy matters: the step donates this state, while the original weights stay alive as the frozen
    reference of the KL term.
    """
    _, params = nnx.split(model)
    params = jax.tree.map(jnp.copy, params)
    d_student = model.config.d_model
    if teacher is not None and not config.baseline:
        adapter = obj.init_adapter(jax.random.key(config.seed), d_student, teacher.d_model,
                                   n_adapter_maps(config, teacher))
    else:  # the baseline carries no adapter
        adapter = {"w": jnp.zeros((1, 1, 1)), "b": jnp.zeros((1, 1))}
    trainable = {"params": params, "adapter": adapter}
    return {**trainable, "opt_state": make_optimizer(config).init(trainable), "step": jnp.zeros((), jnp.int32)}


# ---------------------------------------------------------------------------------------------- step


def teacher_residuals(teacher: Any, params: Any, teacher_ids: jax.Array) -> jax.Array:
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


def make_loss_fn(graphdef: nnx.GraphDef, teacher: Any, config: TrainConfig, model_config: Any) -> Callable:
    """loss(trainable, frozen, batch) -> (total, metrics): the whole objective, pure.

    Alignment and intervention are independent switches (`config.align`, `config.intervene`); the
    baseline has neither.
    """
    plan = None if config.baseline else objective_plan(config, teacher, model_config)
    intervened_top = False
    if plan is not None:
        answer_dims = np.asarray(teacher.answer_dims)
        top = teacher.n_layers
        intervened_top = config.intervene and plan.intervene_at == model_config.n_layers
        dim_weights = None if plan.dim_weights.all() else jnp.asarray(plan.dim_weights)

    def loss_fn(trainable: dict, frozen: dict, batch: Batch) -> tuple[jax.Array, dict]:
        student = nnx.merge(graphdef, trainable["params"])
        metrics: dict[str, jax.Array] = {}
        align = jnp.zeros(())
        hook = {}
        if config.intervene:
            basis = obj.answer_subspace_basis(trainable["adapter"], answer_dims, top)
            hook = {"intervene": obj.make_intervention(basis), "intervene_at": plan.intervene_at}
        out = student(batch["inputs"], **hook)
        if config.align:
            if "teacher_resid" in batch:  # computed outside the step (the unfused way, for benchmarks)
                resid = jax.lax.stop_gradient(batch["teacher_resid"])
            else:
                resid = jax.lax.stop_gradient(teacher_residuals(teacher, frozen["teacher"], batch["teacher_ids"]))
            weights = obj.alignment_position_weights(batch["real_mask"], batch["answer_index"][:, 0],
                                                     config.marker_weight)
            per_layer = obj.alignment_losses(trainable["adapter"], out.hidden_states, resid, plan.student_index,
                                             weights, dim_weights)
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


def make_train_step(
    model: nnx.Module, teacher: Any, config: TrainConfig, mesh: Mesh | None = None, example_batch: Batch | None = None
) -> Callable[[State, Batch], tuple[State, dict]]:
    """The jitted step `step(state, batch) -> (state, metrics)`, state donated.

    `model` holds the ORIGINAL weights: they become the frozen reference of the KL term. The frozen
    arrays (original weights, teacher parameters) are arguments of the jitted function, never constants
    baked into it. With a mesh (and an example batch to read shapes from), inputs and outputs carry
    explicit shardings: batch over ("data", "fsdp"), parameters fully sharded over "fsdp".
    """
    graphdef, original = nnx.split(model)
    loss_fn = make_loss_fn(graphdef, teacher, config, model.config)
    tx = make_optimizer(config)
    frozen = {"original": original, "teacher": teacher.params if (teacher is not None and config.align) else {}}

    def step_fn(state: State, frozen: dict, batch: Batch) -> tuple[State, dict]:
        trainable = {"params": state["params"], "adapter": state["adapter"]}
        grads, metrics = jax.grad(loss_fn, has_aux=True)(trainable, frozen, batch)
        updates, opt_state = tx.update(grads, state["opt_state"], trainable)
        trainable = optax.apply_updates(trainable, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = {**trainable, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    if mesh is None:
        jitted = jax.jit(step_fn, donate_argnums=0)
    else:
        if example_batch is None:
            raise ValueError("make_train_step(mesh=...) needs example_batch to derive the batch shardings")
        state_shape = jax.eval_shape(lambda: init_state(model, teacher, config))
        state_sh = param_shardings(state_shape, mesh)
        frozen_sh = param_shardings(frozen, mesh)
        batch_sh = batch_shardings(example_batch, mesh)
        replicated = NamedSharding(mesh, P())
        frozen = jax.device_put(frozen, frozen_sh)
        jitted = jax.jit(step_fn, donate_argnums=0, in_shardings=(state_sh, frozen_sh, batch_sh),
                         out_shardings=(state_sh, replicated))

    def step(state: State, batch: Batch) -> tuple[State, dict]:
        return jitted(state, frozen, batch)

    step.jitted = jitted  # type: ignore[attr-defined]
    step.frozen = frozen  # type: ignore[attr-defined]
    return step


# ---------------------------------------------------------------------------------------------- data


class Pipeline:
    """Task pool + text stream for a run; `batch(step)` is deterministic in (seed, step)."""

    def __init__(self, config: TrainConfig, task: Any, teacher: Any, tokenizer: Any):
        self.config = config
        self.encoder = PieceEncoder(tokenizer)
        # baseline and injected runs see the same examples: those the configured teacher can hold
        examples = task.examples("train", config.n_train, config.seed, max_seq_len=config.teacher_max_seq_len)
        self.task_arrays: TaskArrays = encode_examples(examples, self.encoder, teacher)
        train_text, self.heldout_text = split_corpus(load_corpus(config.corpus))
        self.text = TextStream(train_text, tokenizer)

    def batch(self, step: int) -> Batch:
        c = self.config
        return {**sample_task_batch(self.task_arrays, c.seed, step, c.batch_size),
                **self.text.batch(c.seed, step, c.text_batch_size, c.text_seq_len)}


# ----------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything a finished (or running) training run is made of."""

    config: TrainConfig
    task: Any
    teacher: Any
    model: nnx.Module  # the trained student
    tokenizer: Any
    adapter: dict
    step: int
    original: nnx.Module | None = None  # the untrained model, for retention metrics

    @property
    def plan(self) -> ObjectivePlan:
        return objective_plan(self.config, self.teacher, self.model.config)

    @property
    def student_index(self) -> np.ndarray:
        return self.plan.student_index

    @property
    def intervene_at(self) -> int:
        """Where training intervened (or, for an align-only run, would have): the causal test's site."""
        return self.plan.intervene_at


def preflight(config: TrainConfig) -> Any:
    """Everything about a config that can be checked without loading a model or compiling a teacher (a
    fraction of a second), so that bad input fails before a long load: the task and its options, the
    teacher size, whether training examples fit it, the corpus (`config.check_inputs`), the device mesh.
    Returns the task."""
    from jinject.config import check_inputs

    task = check_inputs(config)
    mesh = make_mesh(config)
    n_dev = mesh.shape["data"] * mesh.shape["fsdp"]
    for name in ("batch_size", "text_batch_size"):
        if getattr(config, name) % n_dev:
            raise ValueError(f"{name}={getattr(config, name)} is not divisible by the {n_dev} devices of the mesh; "
                             "choose a multiple of the device count")
    return task


def build(config: TrainConfig, say: Callable[[str], None] | None = None) -> tuple[Any, Any, nnx.Module, Any]:
    """Task, teacher, the pre-trained model and its tokenizer for a config. The layer map and intervention
    site are checked against the model's metadata before its weights are loaded."""
    from jinject.compiler import compile_teacher
    from jinject.loading import load_model, peek_model_config
    from jinject.tasks import get_task

    task = get_task(config.task, **config.task_options)
    teacher = compile_teacher(task, config.teacher_max_seq_len, progress=say)
    if not config.baseline:
        peek = peek_model_config(config.model)
        if peek is not None:
            objective_plan(config, teacher, peek)
    model, tokenizer = load_model(config.model, dtype=config.dtype)
    if config.remat:
        model.config = dataclasses.replace(model.config, remat=True)
    if not config.baseline:
        objective_plan(config, teacher, model.config)
    return task, teacher, model, tokenizer


def checkpoint_manager(out: Path, config: TrainConfig):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    return ocp.CheckpointManager(out.resolve() / "checkpoints", options=options)


def restore_state(manager, abstract_state: State, step: int | None = None) -> State:
    import orbax.checkpoint as ocp

    step = manager.latest_step() if step is None else step
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def _abstract(state: State) -> State:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        state)


def _last_good(verified: int | None, out: Path) -> str:
    if verified is None:
        return "no checkpoint had been written yet"
    return f"the last good checkpoint (step {verified}, checked finite) in {out / 'checkpoints'} is intact"


def _check_finite(records: list[dict], verified: int | None, out: Path) -> None:
    for rec in records:
        bad = [k for k in ("loss", "task", "kl", "align") if k in rec and not math.isfinite(rec[k])]
        if bad:
            raise TrainingDiverged(
                f"loss became non-finite at step {rec['step']} ({', '.join(f'{k}={rec[k]}' for k in bad)}); "
                f"stopped, {_last_good(verified, out)}. Try a lower --lr / --adapter-lr or --grad-clip."
            )


def _to_record(step: int, metrics: dict, seconds: float) -> dict:
    rec: dict[str, Any] = {"step": step}
    for k, v in metrics.items():
        v = np.asarray(v)
        rec[k] = v.tolist() if v.ndim else float(v)
    rec["time"] = seconds
    return rec


def _binding_config(out: Path, config: TrainConfig, say: Callable[[str], None]) -> None:
    """A run directory binds its config once its first checkpoint exists: then a different config is refused
    (only RESUMABLE_CHANGES may differ). Before that (a start that failed) a new config simply replaces it."""
    config_path = out / "config.json"
    steps = rundir.checkpoint_steps(out / "checkpoints")
    if not steps:
        if config_path.exists():
            try:
                same = TrainConfig.load(config_path) == config
            except ValueError:
                same = False
            if not same:
                say(f"jinject train: note: {config_path} belongs to a start that never reached a checkpoint; "
                    "it is replaced by this run's config")
        return
    if not config_path.exists():
        raise ValueError(f"{out} holds checkpoints (steps {steps}) but no config.json, so nothing says which settings "
                         "made them; restore config.json, or use another --out")
    previous = TrainConfig.load(config_path)
    free = RESUMABLE_CHANGES - ({"steps"} if config.schedule == "cosine" else set())  # cosine decays to `steps`
    diff = {f.name: (getattr(previous, f.name), getattr(config, f.name)) for f in dataclasses.fields(config)
            if getattr(previous, f.name) != getattr(config, f.name) and f.name not in free}
    if diff:
        raise ValueError(f"{out} holds a run with a different config {diff} (old, new); "
                         "use another --out, or the same settings to resume it")


def _restore_for_training(manager, state: State, out: Path, config: TrainConfig, say: Callable[[str], None]):
    """(manager, state, start step, step checked finite or None): the newest usable checkpoint. Damaged newer
    steps are renamed `checkpoints/corrupt-<step>` (a new save of that step would collide with them) and
    reported; when no step is usable nothing is moved and the run is refused with one line."""
    ckpt_dir = out / "checkpoints"
    if manager.latest_step() is None:
        return manager, state, 0, None
    restored = rundir.restore_newest_readable(manager, _abstract(state), ckpt_dir)
    if restored.skipped:
        manager.close()
        for step, why in restored.skipped:
            aside = rundir.move_aside(ckpt_dir, step)
            say(f"jinject train: note: checkpoint step {step} is {why}; resuming from step {restored.step} "
                f"instead (the damaged one is kept as {aside})")
        manager = checkpoint_manager(out, config)
    return manager, restored.state, int(restored.state["step"]), restored.step


def estimate_step_memory(config: TrainConfig, model_config: Any, seq_len: int) -> int:
    """A LOWER bound of the bytes one train step needs at once: the student's hidden states for the task
    batch and for the text batch, plus the vocabulary logits of the KL term (student and frozen reference).
    Real use is several times more (attention, MLP activations, gradients); this is only for refusing sizes
    that cannot possibly fit."""
    act = 2 if config.dtype == "bfloat16" else 4
    layers = model_config.n_layers + 1
    hidden = (config.batch_size * seq_len + config.text_batch_size * config.text_seq_len) * model_config.d_model
    logits = 2 * config.text_batch_size * config.text_seq_len * model_config.vocab_size * 4
    return hidden * layers * act + logits


def available_memory() -> tuple[int | None, str]:
    """(bytes, what) of the memory one device may use: the accelerator's limit, else physical RAM."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"]), f"the {jax.devices()[0].device_kind} memory"
    except Exception:  # noqa: BLE001 - backends without memory stats
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return None, ""


def check_lengths(config: TrainConfig, model_config: Any, seq_len: int) -> None:
    """Sequences longer than the host's positions: GPT-2 has no embedding for them, a RoPE host was never
    trained on them (its output there is nonsense)."""
    limit = model_config.max_position_embeddings
    for what, n in (("text_seq_len", config.text_seq_len), ("the longest task example (tokens)", seq_len)):
        if n > limit:
            raise ValueError(f"{what}={n} is longer than the model's {limit} positions; use shorter inputs")


def check_memory(config: TrainConfig, model_config: Any, seq_len: int) -> None:
    check_lengths(config, model_config, seq_len)
    need = estimate_step_memory(config, model_config, seq_len)
    have, what = available_memory()
    if have is not None and need > have:
        raise ValueError(
            f"batch_size={config.batch_size} x {seq_len} tokens and text_batch_size={config.text_batch_size} x "
            f"text_seq_len={config.text_seq_len} need at least {need / 2**30:.1f} GiB for the activations and "
            f"logits of one step (a lower bound), more than the {have / 2**30:.1f} GiB of {what}; lower "
            "--batch-size / --text-batch-size / --text-seq-len")


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    on_step: Callable[[int, dict | None], None] | None = None,
    progress: bool = True,
    components: tuple | None = None,
    say: Callable[[str], None] | None = None,
    tensorboard: str | Path | None = None,
) -> Run:
    """Train (or resume) a run in `out`: metrics.jsonl, config.json and orbax checkpoints live there.

    Resuming needs the same config as the run in `out`; a different one is refused rather than mixed.
    `components` = (task, teacher, model, tokenizer) skips `build(config)` (tests, notebooks).
    `on_step(step, record_or_None)` is called after every step (record when metrics were fetched).
    `say` receives one-line notes (a damaged checkpoint skipped, an old log kept aside); default stderr.
    `progress`: a bar on a terminal, one line per `log_every` steps otherwise (jinject.run_log).
    `tensorboard=DIR` also writes the metrics as TensorBoard events; not part of the config (resume ignores it).

    Reliability: `out/.lock` admits one trainer at a time; config.json binds the directory only once the
    first checkpoint exists; every state is checked finite (and its digest recorded) before it is saved;
    the newest checkpoint that restores whole is used; metrics.jsonl is never cut below its checkpoint.
    """
    say = say or rundir.say_stderr
    out = Path(out)
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    # one lock per run directory: the processes of a multi-host run share it, the first one holds it
    lock = rundir.run_lock(out) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_locked(config, out, on_step, progress, components, say, tensorboard)


def _train_locked(config: TrainConfig, out: Path, on_step, progress: bool, components, say, tensorboard) -> Run:
    _binding_config(out, config, say)
    if components is None:
        task = preflight(config)  # bad input fails here, before a model load
        from jinject.loading import peek_model_config

        peek = peek_model_config(config.model)
        if peek is not None:  # sizes that cannot fit in memory, from the model's metadata
            longest = task.max_problem_len("train") if hasattr(task, "max_problem_len") else None
            from jinject.tasks.fit import check_teacher_size

            n = check_teacher_size(task, config.teacher_max_seq_len)
            check_memory(config, peek, min(longest or n, n))
    mesh = make_mesh(config)
    task, teacher, model, tokenizer = components if components is not None else build(config, say)
    teacher_for_step = None if config.baseline else teacher
    if config.n_train >= 100_000:
        say(f"jinject train: generating and tokenising {config.n_train:,} training examples "
            f"(~0.5 ms each on 2 CPU cores: about {config.n_train * 5e-4:.0f} s) ...")
    pipeline = Pipeline(config, task, teacher_for_step, tokenizer)
    check_memory(config, model.config, pipeline.task_arrays.inputs.shape[1])  # before any batch is built
    example = pipeline.batch(0)
    step_fn = make_train_step(model, teacher_for_step, config, mesh=mesh, example_batch=example)
    manager = checkpoint_manager(out, config)

    state = init_state(model, teacher_for_step, config)
    state = jax.device_put(state, param_shardings(state, mesh))
    try:
        manager, state, start, verified = _restore_for_training(manager, state, out, config, say)
    except BaseException:
        manager.close()
        raise
    batch_sh = batch_shardings(example, mesh)

    log = RunLog(config.steps, start, config.log_every, progress=progress, tensorboard=tensorboard)
    rundir.prepare_metrics(out / "metrics.jsonl", start, say)  # steps after the checkpoint are redone
    metrics_file = open(out / "metrics.jsonl", "a")
    pending: list[tuple[int, dict, float]] = []
    t_last = time.perf_counter()
    config_written = False

    def flush() -> list[dict]:
        records = [_to_record(s, jax.device_get(m), dt) for s, m, dt in pending]
        pending.clear()
        _check_finite(records, verified, out)
        for rec in records:
            metrics_file.write(rundir.json_line(rec))
        metrics_file.flush()
        log.write(records)
        return records

    try:
        for i in range(start, config.steps):
            batch = shard_batch(pipeline.batch(i), batch_sh)
            state, metrics = step_fn(state, batch)
            now = time.perf_counter()
            pending.append((i + 1, metrics, now - t_last))
            t_last = now
            log.step()
            done = i + 1
            records = None
            if done % config.log_every == 0 or done % config.checkpoint_every == 0 or done == config.steps:
                records = flush()
            if done % config.checkpoint_every == 0 or done == config.steps:
                import orbax.checkpoint as ocp

                summary = rundir.state_summary(state)  # outside the step: one reduction, at checkpoint time only
                if not summary.finite:
                    parts = ", ".join(rundir.non_finite_parts(state)) or "the state"
                    raise TrainingDiverged(
                        f"{parts} became non-finite by step {done} although the logged losses were finite (an "
                        f"update overflowed); stopped before saving it, {_last_good(verified, out)}. Try a lower "
                        "--lr / --adapter-lr or --grad-clip.")
                if not config_written:  # the directory binds its config from its first checkpoint on
                    config.save(out / "config.json")
                    config_written = True
                rundir.record_digest(out / "checkpoints", done, summary.digest)
                manager.save(done, args=ocp.args.StandardSave(state))
                verified = done
            if on_step is not None:
                on_step(done, records[-1] if records else None)
        manager.wait_until_finished()
    finally:
        log.close()
        metrics_file.close()
        manager.close()

    trained = nnx.merge(nnx.graphdef(model), state["params"])
    return Run(config, task, teacher, trained, tokenizer, jax.device_get(state["adapter"]), int(state["step"]), model)


def load_run(out: str | Path, step: int | None = None, components: tuple | None = None,
             say: Callable[[str], None] | None = None) -> Run:
    """Rebuild a run from its directory: config, task, teacher, trained model, adapter.

    Read-only (safe while the run still trains): the newest checkpoint that restores whole, matches its
    digest and is finite is used; a newer one that does not (e.g. half-written) is skipped with a note to
    `say` (default stderr). `step` asks for one step exactly.
    """
    say = say or rundir.say_stderr
    out = Path(out)
    config = read_run_config(out)
    task, teacher, model, tokenizer = components if components is not None else build(config)
    manager = checkpoint_manager(out, config)
    if manager.latest_step() is None:
        manager.close()
        raise FileNotFoundError(f"{out} has no checkpoint yet; wait for the first checkpoint or resume training")
    teacher_for_state = None if config.baseline else teacher
    template = init_state(model, teacher_for_state, config)
    try:
        restored = rundir.restore_newest_readable(manager, _abstract(template), out / "checkpoints", step)
    finally:
        manager.close()
    for s_, why in restored.skipped:
        say(f"jinject: note: checkpoint step {s_} in {out / 'checkpoints'} is {why}; using step {restored.step}")
    state = restored.state
    trained = nnx.merge(nnx.graphdef(model), state["params"])
    return Run(config, task, teacher, trained, tokenizer, jax.device_get(state["adapter"]), int(state["step"]), model)


def heldout_metrics(run: Run, n: int = 256, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """Teacher-forced answer accuracy, losses and per-layer alignment on held-out task examples."""
    config = run.config
    teacher = None if config.baseline else run.teacher
    examples = run.task.examples(split, n, config.seed + 1, max_seq_len=config.teacher_max_seq_len)
    arrays = encode_examples(examples, PieceEncoder(run.tokenizer), teacher)
    text = TextStream(split_corpus(load_corpus(config.corpus))[1], run.tokenizer)
    graphdef, params = nnx.split(run.model)
    loss_fn = jax.jit(make_loss_fn(graphdef, teacher, config, run.model.config))
    frozen = {"original": nnx.split(run.original)[1] if run.original is not None else params,
              "teacher": teacher.params if (teacher is not None and config.align) else {}}
    trainable = {"params": params, "adapter": jax.tree.map(jnp.asarray, run.adapter)}
    sums: dict[str, Any] = {}
    n_batches = 0
    for start in range(0, len(arrays) - batch_size + 1, batch_size):
        batch = {**arrays.take(np.arange(start, start + batch_size)),
                 **text.batch(config.seed + 1, n_batches, batch_size, config.text_seq_len)}
        _, m = loss_fn(trainable, frozen, batch)
        for k, v in jax.device_get(m).items():
            sums[k] = sums.get(k, 0) + np.asarray(v, np.float64)
        n_batches += 1
    if not n_batches:
        raise ValueError(f"need at least batch_size={batch_size} held-out examples, got {len(arrays)}")
    return {k: (v / n_batches).tolist() for k, v in sums.items()} | {"n_examples": n_batches * batch_size}


def maybe_initialize_distributed() -> None:
    """Multi-host (TPU pods, multi-node GPU): join the cluster when the environment describes one."""
    if any(os.environ.get(v) for v in ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
                                       "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")):
        try:
            jax.distributed.initialize()
        except RuntimeError as e:  # already initialised
            if "already" not in str(e):
                raise
