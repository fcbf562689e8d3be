"""A run's `TrainState` on disk: the orbax checkpoint manager, the saved layout, save and restore.

The saved layout is the plain dict {"adapter", "opt_state", "params", "step"}; the digests in
`checkpoints/jinject-digests.json` (jinject.rundir) are over its leaves in that order.

One compatibility read, here only: baseline checkpoints written before the baseline state lost its
adapter (jinject 0.1.0 up to the step/trainer split) hold a placeholder adapter {"w": [1, 1, 1],
"b": [1, 1]} of zeros and its AdamW moments. Such a step is restored as saved (its digest covers the
placeholder) and the placeholder is then dropped (`_without_placeholder`); nothing else of it is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jinject import rundir
from jinject.config import TrainConfig
from jinject.step import TrainState, make_optimizer

Tree = dict[str, Any]


def state_tree(state: TrainState) -> Tree:
    """The saved layout of a state (a shallow dict of its fields)."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}


def checkpoint_manager(out: Path, config: TrainConfig) -> Any:
    """The orbax manager of `out/checkpoints`, keeping `config.keep_checkpoints` steps."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    return ocp.CheckpointManager(out.resolve() / "checkpoints", options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def save(manager: Any, step: int, state: TrainState) -> None:
    """Start the (asynchronous) save of `state` as step `step`."""
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave(state_tree(state)))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def _placeholder_target(template: TrainState, config: TrainConfig) -> Tree:
    """The abstract saved tree of an old baseline step: the template plus the placeholder adapter and its
    AdamW moments (those on the template's scalar placement, everything else on the template's)."""
    placeholder = {"w": jnp.zeros((1, 1, 1)), "b": jnp.zeros((1, 1))}
    opt_state = jax.eval_shape(lambda p: make_optimizer(config).init({"params": p, "adapter": placeholder}),
                               template.params)
    tree = {**state_tree(template), "adapter": jax.eval_shape(lambda: placeholder), "opt_state": opt_state}
    placed = {jax.tree_util.keystr(p): x.sharding for p, x in jax.tree_util.tree_leaves_with_path(state_tree(template))}
    scalar = template.step.sharding
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed.get(jax.tree_util.keystr(p), scalar)),
        tree)


def _without_placeholder(restored: Tree, template: TrainState) -> Tree:
    """The template's layout and dtypes filled with the restored leaves of the same path (drops the
    placeholder; a leaf saved in another dtype is cast, see `_saved_target`)."""
    by_path = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(restored)}
    paths, treedef = jax.tree_util.tree_flatten_with_path(state_tree(template))
    return jax.tree_util.tree_unflatten(treedef, [by_path[jax.tree_util.keystr(p)].astype(x.dtype) for p, x in paths])


def _key_names(path: tuple) -> tuple[str, ...]:
    """A tree path as plain names: orbax's metadata spells `.count` and `[0]` as `['count']` and `['0']`."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _saved_target(manager: Any, step: int, template: TrainState, config: TrainConfig) -> Tree:
    """The abstract tree step `step` was saved as, read from its metadata once: the template's layout (or an
    old baseline's, with the placeholder adapter) with each leaf in the dtype it was saved in. A run written
    with bfloat16 weights (before --dtype bfloat16 kept its weights float32) then restores bit for bit, so
    its digest checks; `_without_placeholder` casts to the template afterwards."""
    try:
        saved = manager.item_metadata(step)
    except Exception:  # noqa: BLE001 - a damaged step: the restore itself reports it
        if template.adapter is None:
            raise  # an adapter-less template has to know whether the step holds the placeholder
        saved = None
    holds_placeholder = template.adapter is None and saved is not None and saved.get("adapter") is not None
    target = _placeholder_target(template, config) if holds_placeholder else _abstract(state_tree(template))
    dtypes = {_key_names(p): m.dtype for p, m in jax.tree_util.tree_leaves_with_path(saved or {})
              if getattr(m, "dtype", None) is not None}
    return jax.tree_util.tree_map_with_path(
        lambda p, x: jax.ShapeDtypeStruct(x.shape, dtypes.get(_key_names(p), x.dtype), sharding=x.sharding), target)


def restore(manager: Any, template: TrainState, ckpt_dir: Path, config: TrainConfig,
            step: int | None = None) -> tuple[TrainState, rundir.Restored]:
    """The newest usable checkpoint (or step `step`) restored in the template's layout and placement; see
    `rundir.restore_newest_readable` for what is skipped and when it raises."""
    target: Callable[[int], Tree] = lambda s: _saved_target(manager, s, template, config)
    restored = rundir.restore_newest_readable(manager, target, ckpt_dir, step)
    return TrainState(**_without_placeholder(restored.state, template)), restored


def resume(manager: Any, state: TrainState, out: Path, config: TrainConfig, say: rundir.Say):
    """(manager, state, start step, step checked finite or None): the newest usable checkpoint. Damaged newer
    steps are renamed `checkpoints/corrupt-<step>` (a new save of that step would collide with them) and
    reported; when no step is usable nothing is moved and the run is refused with one line."""
    ckpt_dir = out / "checkpoints"
    if manager.latest_step() is None:
        return manager, state, 0, None
    state, restored = restore(manager, state, ckpt_dir, config)
    if restored.skipped:
        manager.close()
        for step, why in restored.skipped:
            aside = rundir.move_aside(ckpt_dir, step)
            say(f"jinject train: note: checkpoint step {step} is {why}; resuming from step {restored.step} "
                f"instead (the damaged one is kept as {aside})")
        manager = checkpoint_manager(out, config)
    return manager, state, int(state.step), restored.step
