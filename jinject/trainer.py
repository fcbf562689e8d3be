"""A training run: build its parts, train (or resume) into a run directory, load it back.

    run = train(config, "runs/x")      # metrics.jsonl, config.json and orbax checkpoints in runs/x
    run = load_run("runs/x")           # the same Run, from the newest usable checkpoint

The step itself is jinject.step; placement jinject.sharding; the checkpoint layout jinject.checkpoints;
the refusals before a model load jinject.preflight; the directory's integrity jinject.rundir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx

from jinject import checkpoints, rundir
from jinject.config import TrainConfig
from jinject.data import Pipeline
from jinject.preflight import check_before_load, check_memory
from jinject.run_log import RunLog
from jinject.sharding import batch_shardings, make_mesh, param_shardings, shard_batch
from jinject.step import ObjectivePlan, TrainState, init_state, make_train_step, objective_plan

if TYPE_CHECKING:
    from jinject.tasks import Task
    from jinject.teacher import Teacher
    from jinject.tokenizer import Tokenizer

# Settings a resumed run may change without changing the trajectory of the steps already taken.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "checkpoint_every", "keep_checkpoints"})


class TrainingDiverged(RuntimeError):
    """A loss or the state became NaN/inf; the run stopped before that state could reach a checkpoint."""


@dataclass
class Run:
    """Everything a finished (or running) training run is made of."""

    config: TrainConfig
    task: Task
    teacher: Teacher
    model: nnx.Module  # the trained student
    tokenizer: Tokenizer
    adapter: dict | None  # None for the baseline, which has no adapter
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
    # --dtype is the compute dtype; weights, optimizer moments and updates stay float32 (mixed precision).
    # bfloat16 weights would round most updates away at the original's learning rate (1e-6 against a
    # spacing of ~1e-4 for weights of ~0.02): the run would look fine and train almost nothing.
    model, tokenizer = load_model(config.model, dtype=config.dtype, param_dtype="float32")
    if config.remat:
        model.config = dataclasses.replace(model.config, remat=True)
    if not config.baseline:
        objective_plan(config, teacher, model.config)
    return task, teacher, model, tokenizer


def _run_from(config: TrainConfig, components: tuple, state: TrainState) -> Run:
    """The Run of a trained state (the tail `train` and `load_run` share)."""
    task, teacher, model, tokenizer = components
    trained = nnx.merge(nnx.graphdef(model), state.params)
    return Run(config, task, teacher, trained, tokenizer, jax.device_get(state.adapter), int(state.step), model)


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
    rundir.check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    # one lock per run directory: the processes of a multi-host run share it, the first one holds it
    lock = rundir.run_lock(out) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_locked(config, out, on_step, progress, components, say, tensorboard)


def _train_locked(config: TrainConfig, out: Path, on_step, progress: bool, components, say, tensorboard) -> Run:
    _binding_config(out, config, say)
    if components is None:
        check_before_load(config)
    mesh = make_mesh(config)
    components = components if components is not None else build(config, say)
    task, teacher, model, tokenizer = components
    teacher_for_step = None if config.baseline else teacher
    if config.n_train >= 100_000:
        say(f"jinject train: generating and tokenising {config.n_train:,} training examples "
            f"(~0.5 ms each on 2 CPU cores: about {config.n_train * 5e-4:.0f} s) ...")
    pipeline = Pipeline(config, task, teacher_for_step, tokenizer)
    check_memory(config, model.config, pipeline.task_arrays.inputs.shape[1])  # before any batch is built
    example = pipeline.batch(0)
    step_fn = make_train_step(model, teacher_for_step, config, mesh=mesh, example_batch=example)
    manager = checkpoints.checkpoint_manager(out, config)

    state = init_state(model, teacher_for_step, config)
    state = jax.device_put(state, param_shardings(state, mesh))
    try:
        manager, state, start, verified = checkpoints.resume(manager, state, out, config, say)
        _check_disk_for_checkpoints(out, state, start, config, say)
    except BaseException:
        manager.close()
        raise
    batch_sh = batch_shardings(example, mesh)

    log = RunLog(config.steps, start, config.log_every, progress=progress, tensorboard=tensorboard)
    rundir.prepare_metrics(out / "metrics.jsonl", start, say)  # steps after the checkpoint are redone
    rundir.record_environment(out, start)
    metrics_file = open(out / "metrics.jsonl", "a")
    pending: list[tuple[int, dict, float]] = []
    t_last = time.perf_counter()
    unbound: TrainConfig | None = config  # written to config.json at this call's first checkpoint

    def flush() -> list[dict]:
        records = [_to_record(s, jax.device_get(m), dt) for s, m, dt in pending]
        pending.clear()
        _check_finite(records, verified, out)
        for rec in records:
            metrics_file.write(rundir.json_line(rec))
        metrics_file.flush()
        log.write(records)
        return records

    # A run holds ~250,000 long-lived Python objects (jax, flax, tracr, orbax) that every full garbage
    # collection would scan: 0.1 s pauses in the loop (experiments/bench_gc.py). Frozen, they are skipped
    # (refcounting still frees them); a caller's own freeze is left as it was.
    caller_froze = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        for i in range(start, config.steps):
            batch = shard_batch(pipeline.batch(i), batch_sh)
            state, metrics = step_fn(state, batch)
            if i == start:
                gc.freeze()  # and what the first call's compile left behind
            now = time.perf_counter()
            pending.append((i + 1, metrics, now - t_last))
            t_last = now
            log.step()
            done = i + 1
            records = None
            checkpoint_due = _due(done, config.checkpoint_every, config.steps)
            if _due(done, config.log_every, config.steps) or checkpoint_due:
                records = flush()
            if checkpoint_due:
                _save_checkpoint(manager, state, done, out, verified, unbound)
                verified, unbound = done, None
            if on_step is not None:
                on_step(done, records[-1] if records else None)
        manager.wait_until_finished()
    finally:
        if not caller_froze:
            gc.unfreeze()
        log.close()
        metrics_file.close()
        manager.close()
    return _run_from(config, components, state)


def _due(done: int, every: int, last: int) -> bool:
    """A cadence: every `every` steps, and at the last step."""
    return done % every == 0 or done == last


def _save_checkpoint(manager: Any, state: TrainState, done: int, out: Path, verified: int | None,
                     unbound: TrainConfig | None) -> None:
    """Check the state finite (one reduction, outside the step), write config.json when `unbound` (the
    directory binds its config from its first checkpoint on), record the state's digest, start the save."""
    tree = checkpoints.state_tree(state)
    summary = rundir.state_summary(tree)
    if not summary.finite:
        parts = ", ".join(rundir.non_finite_parts(tree)) or "the state"
        raise TrainingDiverged(
            f"{parts} became non-finite by step {done} although the logged losses were finite (an "
            f"update overflowed); stopped before saving it, {_last_good(verified, out)}. Try a lower "
            "--lr / --adapter-lr or --grad-clip.")
    rundir.check_disk(out, rundir.checkpoint_bytes(tree), f"the checkpoint of step {done}",
                      f"training stopped before writing it, {_last_good(verified, out)}")
    if unbound is not None:
        unbound.save(out / "config.json")
    rundir.record_digest(out / "checkpoints", done, summary.digest)
    checkpoints.save(manager, done, state)


def _check_disk_for_checkpoints(out: Path, state: TrainState, start: int, config: TrainConfig,
                                say: Callable[[str], None]) -> None:
    """Refuse before training when the disk cannot hold one checkpoint; warn when it cannot hold what the
    run will keep at its peak (`keep_checkpoints` plus the one being written)."""
    size = rundir.checkpoint_bytes(checkpoints.state_tree(state))
    rundir.check_disk(out, size, "a checkpoint of this run (parameters, adapter, optimizer moments)",
                      "nothing was trained")
    saves = sum(_due(d, config.checkpoint_every, config.steps) for d in range(start + 1, config.steps + 1))
    held = len(rundir.checkpoint_steps(out / "checkpoints"))
    peak = min(saves, max(config.keep_checkpoints + 1 - held, 1)) * size
    free = rundir.free_bytes(out)
    if free < peak:
        say(f"jinject train: warning: this run's checkpoints will need up to {rundir.gigabytes(peak)} "
            f"more disk and {out} has {rundir.gigabytes(free)} free; training stops with the last good "
            "checkpoint kept if the next one does not fit (lower --keep-checkpoints to need less)")


def load_run(out: str | Path, step: int | None = None, components: tuple | None = None,
             say: Callable[[str], None] | None = None) -> Run:
    """Rebuild a run from its directory: config, task, teacher, trained model, adapter.

    Read-only (safe while the run still trains): the newest checkpoint that restores whole, matches its
    digest and is finite is used; a newer one that does not (e.g. half-written) is skipped with a note to
    `say` (default stderr). `step` asks for one step exactly.
    """
    say = say or rundir.say_stderr
    out = Path(out)
    config = rundir.read_run_config(out)
    components = components if components is not None else build(config)
    task, teacher, model, tokenizer = components
    manager = checkpoints.checkpoint_manager(out, config)
    if manager.latest_step() is None:
        manager.close()
        raise FileNotFoundError(f"{out} has no checkpoint yet; wait for the first checkpoint or resume training")
    template = init_state(model, None if config.baseline else teacher, config)
    try:
        state, restored = checkpoints.restore(manager, template, out / "checkpoints", config, step)
    finally:
        manager.close()
    for s_, why in restored.skipped:
        say(f"jinject: note: checkpoint step {s_} in {out / 'checkpoints'} is {why}; using step {restored.step}")
    return _run_from(config, components, state)


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
