"""A run directory's integrity: one writer at a time, a metrics log that is never lost, checkpoints that
are checked before they are written and before they are trusted.

- `run_lock(out)`: `OUT/.lock` held with `fcntl.flock` for the whole of `jinject train`. A second trainer on
  the same directory is refused at once, naming the holder; the kernel drops the lock when the holder
  dies, so a crashed run never blocks the next one.
- `state_summary(state)`: one small jitted reduction over the state (run only at checkpoint time, never
  inside the train step): whether every value is finite, and a 32-bit digest per array. The digest of
  every saved step goes to `checkpoints/jinject-digests.json`; a restored checkpoint must reproduce it,
  which catches damage orbax itself reads without complaint (random bytes inside a raw chunk).
- `restore_newest_readable`: newest step first; a checkpoint that fails to restore, does not match its
  digest, or holds non-finite values is skipped with a one-line reason.
- `check_disk`: a checkpoint is written only when the disk holds it (a full disk mid-save leaves a
  half-written step and a flood of tensorstore errors); `jinject train` refuses at the start when not even
  one fits and warns when the run's checkpoints will not.
- `prepare_metrics`: keeps `metrics.jsonl` consistent with the checkpoint a run resumes from without ever
  dropping a history it cannot redo: when a run restarts from step 0 over an old log, the old log is kept
  aside under a new name and the user is told.
- `record_environment`: every train call appends what it ran on to `environment.jsonl` (versions, device,
  XLA flags, threads). XLA on a CPU rounds differently across thread settings and machines, so a seed's
  numbers reproduce only on the same setting, and this is how a reader finds out which setting that was.

Longer than most modules (~470 lines) on purpose: every rule that keeps a run directory trustworthy lives
here, each with its own failure message, so a reader checks the integrity story in one place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

# JAX is imported inside the functions that need it: the command line reads run directories and refuses bad
# input through this module before paying for a JAX start-up.

LOCK_NAME = ".lock"
DIGESTS_NAME = "jinject-digests.json"
CORRUPT_PREFIX = "corrupt-"

Say = Callable[[str], None]


def say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class RunLocked(ValueError):
    """Another process is training into the same run directory."""


class CheckpointError(ValueError):
    """No checkpoint of a run directory can be restored."""


class NotEnoughDisk(OSError):
    """The disk cannot hold the next checkpoint."""


# ------------------------------------------------------------------------------------------------ disk

CHECKPOINT_METADATA = 1 << 20  # orbax's JSON and OCDBT manifests: tens of kB for a small model


def checkpoint_bytes(state: Any) -> int:
    """An upper bound on the disk one checkpoint of `state` takes: its arrays' bytes plus the metadata
    (orbax's OCDBT files are smaller than the raw arrays: 1.50 GB for a SmolLM2-135M state of 1.61 GB)."""
    import jax

    return CHECKPOINT_METADATA + sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                                     for x in jax.tree.leaves(state))


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def check_disk(directory: Path, need: int, what: str, after: str) -> None:
    """Raise NotEnoughDisk (saying what needs the space, what was kept, and how to go on) when `directory`'s
    disk has less than `need` bytes free."""
    free = free_bytes(directory)
    if free < need:
        raise NotEnoughDisk(
            f"{what} needs {gigabytes(need)} of disk and {directory} has {gigabytes(free)} free; {after}. Free "
            f"space (a finished run needs only its newest checkpoint) or lower --keep-checkpoints, then run "
            f"the same command again: it resumes")


# ------------------------------------------------------------------------------------------------ lock


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[Path]:
    """Hold `out/.lock` (pid, host, start time inside) for the duration of the block; refuse at once when
    another live process holds it. flock locks die with their process, so a stale file never blocks."""
    import fcntl

    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip()
        os.close(fd)
        raise RunLocked(f"{out} is in use by another `jinject train` ({holder or 'holder unknown'}); two trainers "
                        "in one run directory would corrupt its checkpoints and metrics: wait for it to finish or "
                        "use another --out") from None
    try:
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {stamp}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock


# ------------------------------------------------------------------------------------- state summary


def _leaf_digest(x: Any) -> Any:
    """A 32-bit digest of an array's bits: position-weighted, wrapping sum (order-independent, so it does
    not depend on how a sharded reduction is split)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ravel(x)
    size = x.dtype.itemsize
    if size == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif size == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif size == 8:
        bits = jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))
    else:
        bits = x.astype(jnp.uint32)
    bits = bits ^ (bits >> 15)
    pos = jnp.arange(bits.shape[0], dtype=jnp.uint32)
    weights = pos * jnp.uint32(2654435761) + jnp.uint32(0x9E3779B9)
    return jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.uint32(bits.shape[0] & 0xFFFFFFFF)


@cache
def _leaf_summary() -> Any:
    """The jitted `x -> uint32 [2]`: (1 if every value is finite, digest). Jitted per leaf, not over the whole
    state: a model has few distinct parameter shapes, so a handful of tiny programs serve every leaf (one
    program over 800 leaves took minutes to compile)."""
    import jax
    import jax.numpy as jnp

    def summary(x: Any) -> Any:
        finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
        return jnp.stack([finite.astype(jnp.uint32), _leaf_digest(x)])

    return jax.jit(summary)


@dataclass(frozen=True)
class StateSummary:
    finite: bool
    digest: str  # hex of the per-array digests

    @property
    def short(self) -> str:
        return self.digest[:12]


def state_summary(state: Any) -> StateSummary:
    """Whether every float in the state is finite, and its digest (per leaf: dispatched asynchronously,
    fetched to the host in one go; two numbers per array)."""
    import jax

    fn = _leaf_summary()
    rows = np.asarray(jax.device_get([fn(x) for x in jax.tree.leaves(state)]), np.uint32)
    return StateSummary(bool(rows[:, 0].all()), rows[:, 1].tobytes().hex())


def non_finite_parts(state: Any) -> list[str]:
    """Top-level parts of the state that hold a NaN/inf (for the message; host-side, only on failure)."""
    import jax

    bad = []
    for key in ("params", "adapter", "opt_state"):
        if key in state and not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(state[key])
                                    if np.issubdtype(np.asarray(x).dtype, np.inexact)):
            bad.append({"params": "parameters", "adapter": "adapter", "opt_state": "optimizer state"}[key])
    return bad


# ---------------------------------------------------------------------------------------- checkpoints


def checkpoint_steps(ckpt_dir: Path) -> list[int]:
    """Committed step directories (as orbax names them: the bare step number), ascending."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_digests(ckpt_dir: Path) -> dict[int, str]:
    path = ckpt_dir / DIGESTS_NAME
    try:
        raw = json.loads(path.read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError):
        return {}  # missing (runs from before digests) or damaged: checkpoints are then checked for finiteness only


def record_digest(ckpt_dir: Path, step: int, digest: str) -> None:
    """Remember what step `step` holds. Entries of steps older than every step on disk (pruned by orbax) are
    dropped; newer ones may still be in flight (saves are asynchronous) and stay. Atomic."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    present = set(checkpoint_steps(ckpt_dir))
    newest = max(present, default=-1)
    digests = {s: d for s, d in read_digests(ckpt_dir).items() if s in present or s > newest}
    digests[step] = digest
    tmp = ckpt_dir / f".{DIGESTS_NAME}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({str(s): d for s, d in sorted(digests.items())}, indent=1) + "\n")
    os.replace(tmp, ckpt_dir / DIGESTS_NAME)


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    text = text.split(". See full TensorStore details")[0]  # the rest is a dump of the TensorStore spec
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Restored:
    state: Any
    step: int
    skipped: list[tuple[int, str]]  # newer steps that could not be used, with the reason


def restore_newest_readable(manager: Any, abstract: Any, ckpt_dir: Path, step: int | None = None) -> Restored:
    """Restore the newest checkpoint that reads back whole, matches its recorded digest and is finite.

    `abstract`: the tree to restore into, or a function step -> that tree (steps saved in different layouts).
    `step` restores that step only. Raises CheckpointError (one line, every step and its reason) when none
    can be used. Never changes the directory: the caller decides what to do with the skipped steps.
    """
    import logging

    import orbax.checkpoint as ocp

    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if step is not None and step not in manager.all_steps():
        raise CheckpointError(f"{ckpt_dir} has no checkpoint of step {step}; "
                              f"it holds steps {sorted(manager.all_steps())}")
    digests = read_digests(ckpt_dir)
    skipped: list[tuple[int, str]] = []
    absl = logging.getLogger("absl")
    for s in steps:
        level = absl.level
        absl.setLevel(logging.CRITICAL)  # orbax logs every failed read at length; our one line says it all
        try:
            state = manager.restore(s, args=ocp.args.StandardRestore(abstract(s) if callable(abstract) else abstract))
        except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a damaged file
            skipped.append((s, f"unreadable: {_one_line(e)}"))
            state = None
        finally:
            absl.setLevel(level)
        if state is None:
            _collect_quietly()
            continue
        summary = state_summary(state)
        if s in digests and digests[s] != summary.digest:
            skipped.append((s, "damaged: its contents differ from what was saved (digest mismatch)"))
            continue
        if not summary.finite:
            skipped.append((s, f"holds non-finite values ({', '.join(non_finite_parts(state)) or 'state'})"))
            continue
        return Restored(state, s, skipped)
    detail = "; ".join(f"step {s}: {why}" for s, why in skipped)
    raise CheckpointError(f"no usable checkpoint in {ckpt_dir} ({detail}); move the damaged step directories away to "
                          "start over, or restore them from a copy")


def _collect_quietly() -> None:
    """A failed orbax read leaves its other pending read coroutines behind; finalise them now without the
    'Exception ignored in <coroutine>' tracebacks Python would print for each (the one line said it all)."""
    import gc

    hook = sys.unraisablehook
    sys.unraisablehook = lambda _unraisable: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


def move_aside(ckpt_dir: Path, step: int) -> Path:
    """Rename a damaged step directory to `corrupt-<step>` (orbax ignores it; nothing is deleted)."""
    target = ckpt_dir / f"{CORRUPT_PREFIX}{step}"
    n = 1
    while target.exists():
        n += 1
        target = ckpt_dir / f"{CORRUPT_PREFIX}{step}.{n}"
    os.replace(ckpt_dir / str(step), target)
    return target


def check_out_dir(out: Path) -> None:
    """`out` must be a directory or not exist yet, and creatable (checked before anything is loaded)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file, not a run directory; choose a directory path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, so no directory can be made under it")
            if not os.access(parent, os.W_OK) and not out.exists():
                raise ValueError(f"--out {out}: no permission to create a directory in {parent}")
            break


def read_run_config(out: str | Path) -> Any:
    """The TrainConfig of a run directory, checked without loading anything: the directory, its config.json
    and at least one checkpoint must exist (fast and JAX-free, so the CLI refuses bad input at once)."""
    from jinject.config import TrainConfig

    out = Path(out)
    if not out.exists():
        raise FileNotFoundError(f"run directory {out} does not exist; train one with `jinject train --out {out}`")
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a run directory (from `jinject train --out DIR`)")
    steps = checkpoint_steps(out / "checkpoints")
    if not (out / "config.json").exists():
        if (out / "metrics.jsonl").exists() and not steps:
            raise FileNotFoundError(f"{out} has no checkpoint yet (its training has not reached the first one); "
                                    "wait for it, or resume the training")
        raise FileNotFoundError(f"{out} is not a jinject run directory (no config.json); train one with "
                                "`jinject train --out DIR`")
    config = TrainConfig.load(out / "config.json")
    if not steps:
        raise FileNotFoundError(f"{out} has no checkpoint yet; wait for the first checkpoint or resume training")
    return config


# -------------------------------------------------------------------------------------------- metrics


def read_jsonl(path: Path, key: str) -> tuple[list[dict], int]:
    """(records, number of unreadable lines) of one of a run's .jsonl logs, each record carrying the integer
    `key` (a kill mid-write can cut the last line)."""
    records, bad = [], 0
    if not path.exists():
        return records, bad
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            int(rec[key])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        records.append(rec)
    return records, bad


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of unreadable lines) of a metrics.jsonl."""
    return read_jsonl(path, "step")


def read_environment(out: Path) -> list[dict]:
    """The train calls `record_environment` logged for the run in OUT, oldest first ([] if none)."""
    return read_jsonl(out / "environment.jsonl", "start_step")[0]


def _aside_name(path: Path, tag: str) -> Path:
    n = 1
    while True:
        target = path.with_name(f"{path.stem}.{tag}-{n}{path.suffix}")
        if not target.exists():
            return target
        n += 1


def _write_records(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(json_line(r) for r in records))
    os.replace(tmp, path)


def prepare_metrics(path: Path, start: int, say: Say = say_stderr) -> None:
    """Make `path` hold the steps <= `start` only (the steps after it are redone and logged again).

    Restarting from step 0 over a log of earlier steps means the checkpoints that went with it are gone
    (deleted, or the run stopped before its first one): the old log is renamed, never cut, and `say`
    tells where it went. Unreadable lines (a write cut by a kill) are dropped only after the original is
    kept aside too.
    """
    if not path.exists():
        return
    records, bad = read_metrics(path)
    keep = [r for r in records if int(r["step"]) <= start]
    if start == 0 and records:
        steps = [int(r["step"]) for r in records]
        aside = _aside_name(path, "before-restart")
        os.replace(path, aside)
        say(f"jinject train: note: {path} logged steps {min(steps)}-{max(steps)} but no checkpoint of them "
            f"exists (checkpoints deleted, or the run stopped before its first one): starting at step 0; "
            f"the old log is kept as {aside}")
        return
    if bad:
        aside = _aside_name(path, "unreadable-lines")
        os.replace(path, aside)
        say(f"jinject train: note: {path} had {bad} unreadable line(s) (a write cut short); the original is kept "
            f"as {aside}")
    if bad or len(keep) != len(records):
        _write_records(path, keep)


def finite_or_none(x: Any) -> Any:
    """JSON-safe copy: NaN/inf floats become None (standard JSON has no NaN), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite_or_none(v) for v in x]
    return x


def environment() -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: library versions, device, XLA flags, threads."""
    import platform

    import jax

    from jinject.versions import installed

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
        "python": platform.python_version(),
        **{name: installed(name) for name in ("jax", "jaxlib", "flax", "optax", "tracr-pypi")},
        "backend": jax.default_backend(), "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "cpu": cpu, "cpu_count": os.cpu_count(), "cpus_usable": len(affinity(0)) if affinity else None,
        **{k: os.environ.get(k, "") for k in ("XLA_FLAGS", "OMP_NUM_THREADS")},
    }


def record_environment(out: Path, start_step: int) -> None:
    """Append this train call's `environment()` (and the step it starts from) to OUT/environment.jsonl."""
    with open(out / "environment.jsonl", "a") as f:
        f.write(json_line({"start_step": start_step, **environment()}))


def json_line(record: dict) -> str:
    return json.dumps(finite_or_none(record), allow_nan=False) + "\n"
