"""Fault injection on real training runs (tiny student, tiny tracr teacher): kills, damaged checkpoints,
deleted checkpoints, two trainers on one directory, non-finite numbers. Every run is checked against an
uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from flax import nnx

from jinject import cli, rundir
from jinject import trainer as trainer_mod
from jinject.trainer import TrainingDiverged, load_run, train

TESTS = Path(__file__).parent
STEPS, EVERY = 10, 3  # checkpoints at 3, 6, 9 and 10; orbax keeps the newest 2
CFG = dict(steps=STEPS, checkpoint_every=EVERY, log_every=1)


@pytest.fixture(scope="module")
def comps():
    return tiny.components()


@pytest.fixture(scope="module")
def straight(comps, tmp_path_factory):
    """The uninterrupted run every faulty one must reproduce exactly."""
    out = tmp_path_factory.mktemp("straight")
    run = train(tiny.config(**CFG), out, components=comps, progress=False)
    return out, run


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(out: Path, run, straight) -> None:
    """Bit-identical parameters and adapter, the same final state digest (params, adapter, AdamW moments,
    step) and the same metrics log, every step once."""
    s_out, s_run = straight
    assert run.step == s_run.step
    jax.tree.map(np.testing.assert_array_equal, nnx.split(run.model)[1], nnx.split(s_run.model)[1])
    jax.tree.map(np.testing.assert_array_equal, run.adapter, s_run.adapter)
    final = rundir.read_digests(out / "checkpoints")[STEPS]
    assert final == rundir.read_digests(s_out / "checkpoints")[STEPS]
    got, want = metrics(out), metrics(s_out)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
    assert strip(got) == strip(want)


KILL_WORKER = """
import os, signal, sys, threading
sys.path.insert(0, {tests!r})
import tiny
from jinject.trainer import train
kill_at, delay = {kill_at}, {delay}
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
def on_step(step, record):
    if step == kill_at:
        if delay == 0:
            die()
        threading.Timer(delay, die).start()
train(tiny.config(**{cfg!r}), {out!r}, components=tiny.components(), on_step=on_step, progress=False)
die()  # never a clean exit: the kill lands after the last step at the latest
"""


def kill_run(out: Path, kill_at: int, delay: float) -> subprocess.CompletedProcess:
    code = KILL_WORKER.format(tests=str(TESTS), kill_at=kill_at, delay=delay, cfg=CFG, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_points_then_resume_is_bit_identical(seed, tmp_path, comps, straight):
    # seed 0 kills inside the on_step callback of a checkpoint step, while orbax writes that step in the
    # background; the others kill from a timer a few milliseconds after a random step (anywhere: a step, a
    # metrics write, a digest write, a checkpoint write)
    rng = np.random.default_rng(seed)
    kill_at = EVERY * 2 if seed == 0 else int(rng.integers(1, STEPS - 1))
    delay = 0 if seed == 0 else float(rng.uniform(0.0, 0.05))
    out = tmp_path / "killed"
    kill_run(out, kill_at, delay)
    committed = rundir.checkpoint_steps(out / "checkpoints")
    assert not committed or max(committed) <= STEPS
    if seed == 0:  # the kill really landed inside the write: step 6 is an uncommitted orbax temporary
        assert kill_at not in committed and list((out / "checkpoints").glob(f"{kill_at}.orbax-checkpoint-tmp*"))
    resumed = train(tiny.config(**CFG), out, components=comps, progress=False)
    assert_same_run(out, resumed, straight)


def biggest_data_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(step_dir: Path) -> None:
    f = biggest_data_file(step_dir)
    os.truncate(f, f.stat().st_size // 2)


def scribble(step_dir: Path) -> None:
    """Random bytes in the middle of the largest array file: orbax reads this back without complaint."""
    f = biggest_data_file(step_dir)
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size // 3)
        fh.write(np.random.default_rng(0).bytes(64))


def partial_run(tmp_path: Path, comps, steps: int) -> Path:
    out = tmp_path / "run"
    train(tiny.config(**{**CFG, "steps": steps}), out, components=comps, progress=False)
    return out


@pytest.mark.parametrize("damage", [truncate, scribble], ids=["truncated", "random-bytes"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(damage, tmp_path, comps, straight, capsys):
    out = partial_run(tmp_path, comps, 9)  # checkpoints 6 and 9
    assert rundir.checkpoint_steps(out / "checkpoints") == [6, 9]
    damage(out / "checkpoints" / "9")
    # a reader (eval/decode while training) falls back without touching the directory
    run = load_run(out, components=comps)
    assert run.step == 6
    err = capsys.readouterr().err
    assert "checkpoint step 9" in err and "using step 6" in err and len(err.strip().splitlines()) == 1
    assert (out / "checkpoints" / "9").exists()
    # the trainer resumes from step 6, keeps the damaged step aside and says so in one line
    resumed = train(tiny.config(**CFG), out, components=comps, progress=False)
    err = capsys.readouterr().err
    assert "checkpoint step 9 is" in err and "resuming from step 6" in err and "corrupt-9" in err
    assert (out / "checkpoints" / "corrupt-9").is_dir()
    assert_same_run(out, resumed, straight)


def test_every_checkpoint_damaged_is_refused_in_one_line(tmp_path, comps, capsys):
    out = partial_run(tmp_path, comps, 9)
    for step in (6, 9):
        truncate(out / "checkpoints" / str(step))
    with pytest.raises(rundir.CheckpointError, match=r"no usable checkpoint .*step 9: unreadable.*step 6: unreadable"):
        train(tiny.config(**CFG), out, components=comps, progress=False)
    assert rundir.checkpoint_steps(out / "checkpoints") == [6, 9]  # nothing moved or deleted
    assert [r["step"] for r in metrics(out)] == list(range(1, 10))  # the log is untouched
    with pytest.raises(rundir.CheckpointError) as e:
        load_run(out, components=comps)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_deleted_checkpoints_never_destroy_the_history(how, tmp_path, comps, capsys):
    out = tmp_path / "run"
    train(tiny.config(**{**CFG, "steps": 7}), out, components=comps, progress=False)
    old_log = (out / "metrics.jsonl").read_text()
    assert len(old_log.splitlines()) == 7
    shutil.rmtree(out / "checkpoints")
    if how == "emptied":
        (out / "checkpoints").mkdir()
    train(tiny.config(**{**CFG, "steps": 2}), out, components=comps, progress=False)
    err = capsys.readouterr().err
    kept = out / "metrics.before-restart-1.jsonl"
    assert kept.read_text() == old_log  # the whole old history, byte for byte
    assert "logged steps 1-7 but no checkpoint" in err and str(kept) in err
    assert [r["step"] for r in metrics(out)] == [1, 2]


HOLD_WORKER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import tiny
from jinject.trainer import train
flag = Path({flag!r})
def on_step(step, record):
    if step == 1:
        flag.write_text("holding")
        time.sleep(600)  # killed by the test
train(tiny.config(steps=5, checkpoint_every=1, log_every=1), {out!r}, components=tiny.components(),
      on_step=on_step, progress=False)
"""


def test_second_trainer_on_the_same_directory_is_refused_at_once(tmp_path, comps, capsys):
    out, flag = tmp_path / "run", tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WORKER.format(tests=str(TESTS), flag=str(flag),
                                                                        out=str(out))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not flag.exists():
            assert holder.poll() is None, holder.stderr.read()[-3000:]
            assert time.time() < deadline, "the holder never started"
            time.sleep(0.2)
        t0 = time.process_time()  # CPU seconds: the machine may be shared with other jobs
        with pytest.raises(rundir.RunLocked, match=rf"in use by another `jinject train` \(pid {holder.pid} on "):
            train(tiny.config(steps=5, checkpoint_every=1, log_every=1), out, components=comps, progress=False)
        assert time.process_time() - t0 < 2.0
        # the command line: exit 2 and one line naming the holder, before any model is loaded
        args = ["train", "--task", "shuffle-dyck", "--model", "/nonexistent-model", "--out", str(out)]
        args += [a for k, v in tiny.OPTIONS.items() for a in ("--task-option", f"{k}={v}")]
        t0 = time.process_time()
        assert cli.main(args) == 2
        assert time.process_time() - t0 < 2.0
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("jinject train: error:") and f"pid {holder.pid}" in err[-1]
    finally:
        holder.kill()  # a crashed holder: its lock dies with it
        holder.wait()
    resumed = train(tiny.config(steps=5, checkpoint_every=1, log_every=1), out, components=comps, progress=False)
    assert resumed.step == 5
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]  # one writer: every step once, in order


def test_huge_learning_rate_never_writes_a_non_finite_checkpoint(tmp_path, comps):
    # lr 1e39 is a finite Python float but overflows float32: the first update makes the parameters inf/NaN
    # while the loss of step 1 (computed before the update) is still finite
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"parameters.* became non-finite by step 1 .*no checkpoint had been"):
        train(tiny.config(steps=4, checkpoint_every=1, lr=1e39), out, components=comps, progress=False)
    assert rundir.checkpoint_steps(out / "checkpoints") == []
    assert not (out / "config.json").exists()  # a failed start leaves nothing that binds the directory
    assert all(np.isfinite(r["loss"]) for r in metrics(out))


def test_state_going_non_finite_after_good_checkpoints_stops_before_saving(tmp_path, comps, monkeypatch):
    """The state turns NaN in step 6 while every logged loss stays finite (the loss of a step is computed
    before its update): the save of step 6 is refused, the message names step 3, the last checkpoint that
    was checked finite, and nothing non-finite reaches the disk."""
    real = trainer_mod.make_train_step

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, batch):
            state, m = step(state, batch)
            if int(state.step) == 6:
                state = state.replace(params=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.params))
            return state, m

        return wrapped

    monkeypatch.setattr(trainer_mod, "make_train_step", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"parameters became non-finite by step 6 .*last good checkpoint "
                                               r"\(step 3, checked finite\)"):
        train(tiny.config(**CFG), out, components=comps, progress=False)
    assert rundir.checkpoint_steps(out / "checkpoints") == [3]
    monkeypatch.undo()
    run = load_run(out, components=comps)
    assert run.step == 3
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(nnx.split(run.model)[1]))


def test_non_finite_loss_stops_before_the_next_checkpoint(tmp_path, comps, capsys):
    task, teacher, model, tokenizer = comps
    out = tmp_path / "run"
    train(tiny.config(**{**CFG, "steps": 3}), out, components=comps, progress=False)
    broken = tiny.broken_teacher(teacher)
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite at step 4 .*last good checkpoint \(step 3"):
        train(tiny.config(**CFG), out, components=(task, broken, model, tokenizer), progress=False)
    assert rundir.checkpoint_steps(out / "checkpoints") == [3]
    digests = rundir.read_digests(out / "checkpoints")
    assert set(digests) == {3}
    # through the command line, a non-finite learning rate never gets as far as a run directory
    assert cli.main(["train", "--task", "shuffle-dyck", "--lr", "nan", "--out", str(tmp_path / "nan")]) == 2
    assert "lr must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "nan").exists()


def test_a_kill_mid_line_in_metrics_keeps_the_original_aside(tmp_path, comps, straight, capsys):
    out = partial_run(tmp_path, comps, 6)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 0.12')  # the write a SIGKILL cut short
    resumed = train(tiny.config(**CFG), out, components=comps, progress=False)
    assert "1 unreadable line" in capsys.readouterr().err
    assert (out / "metrics.unreadable-lines-1.jsonl").read_text().endswith('"loss": 0.12')
    assert_same_run(out, resumed, straight)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_a_disk_that_cannot_hold_one_checkpoint_is_refused_before_training(tmp_path, comps, monkeypatch):
    monkeypatch.setattr(rundir, "free_bytes", lambda directory: 1000)
    out = tmp_path / "run"
    with pytest.raises(rundir.NotEnoughDisk, match=r"a checkpoint of this run .* needs \d+\.\d+ GB of disk and .* "
                                                   r"has 0\.00 GB free; nothing was trained\. Free space .*"
                                                   r"--keep-checkpoints") as e:
        train(tiny.config(**CFG), out, components=comps, progress=False)
    assert isinstance(e.value, OSError)  # the command line prints OSErrors as one `error:` line, exit 2
    assert rundir.checkpoint_steps(out / "checkpoints") == []
    assert not (out / "metrics.jsonl").exists() and not (out / "config.json").exists()


def test_disk_filling_mid_run_stops_before_the_save_then_resumes_identically(tmp_path, comps, straight,
                                                                              monkeypatch):
    """Another job fills the disk after step 4: the save of step 6 is refused before anything is written,
    the message names step 3 as the last good checkpoint, and once space is back the same command resumes
    to the uninterrupted run's numbers. The size the check asks for bounds what orbax really writes."""
    free = {"bytes": 1 << 40}
    sizes = []
    real_size = rundir.checkpoint_bytes
    monkeypatch.setattr(rundir, "free_bytes", lambda directory: free["bytes"])
    monkeypatch.setattr(rundir, "checkpoint_bytes", lambda state: sizes.append(real_size(state)) or sizes[-1])

    def fill(step, record):
        if step == 4:
            free["bytes"] = 1000

    out = tmp_path / "run"
    with pytest.raises(rundir.NotEnoughDisk, match=r"the checkpoint of step 6 needs .* training stopped before "
                                                   r"writing it, the last good checkpoint \(step 3"):
        train(tiny.config(**CFG), out, components=comps, on_step=fill, progress=False)
    assert rundir.checkpoint_steps(out / "checkpoints") == [3]
    assert dir_bytes(out / "checkpoints" / "3") <= sizes[0]
    free["bytes"] = 1 << 40
    resumed = train(tiny.config(**CFG), out, components=comps, progress=False)
    assert_same_run(out, resumed, straight)


def test_a_disk_too_small_for_every_kept_checkpoint_is_warned_about(tmp_path, comps, monkeypatch, capsys):
    monkeypatch.setattr(rundir, "checkpoint_bytes", lambda state: 2_000_000_000)
    monkeypatch.setattr(rundir, "free_bytes", lambda directory: 3_000_000_000)  # one fits; 2 kept + 1 written do not
    run = train(tiny.config(**CFG), tmp_path / "run", components=comps, progress=False)
    assert run.step == STEPS
    err = capsys.readouterr().err
    assert "warning: this run's checkpoints will need up to 6.00 GB more disk" in err and "3.00 GB free" in err
