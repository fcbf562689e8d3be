"""The train step and loop on a tiny random student and a small real tracr teacher."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from flax import nnx

from jinject.checkpoints import checkpoint_manager
from jinject.data import PieceEncoder, Pipeline, encode_examples
from jinject.models import create_model
from jinject.step import init_state, make_loss_fn, make_train_step
from jinject.trainer import TrainingDiverged, load_run, train

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def comps():
    return tiny.components()


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def frozen_and_trainable(model, teacher, config):
    state = init_state(model, teacher, config)
    graphdef, original = nnx.split(model)
    frozen = {"original": original, "teacher": teacher.params if teacher is not None else {}}
    return graphdef, state.trainable, frozen


def test_injection_learns_task_and_alignment(tmp_path):
    # a GPT-2-style student: its learned position embeddings can hold the teacher's `indices` at layer 0
    # (a RoPE student's embeddings carry no position, a floor of ~0.14 on layer 0 alone). Two blocks more
    # than the teacher: the default intervention sits on the output of the block after the top aligned one.
    comps = tiny.components(d_model=64, family="gpt2", extra_layers=2)
    cfg = tiny.config(steps=400, batch_size=16, checkpoint_every=400, log_every=50, grad_clip=1.0,
                      schedule="cosine", warmup_steps=20)
    train(cfg, tmp_path, components=comps, progress=False)
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs] == list(range(1, 401))
    first = np.mean([r["loss"] for r in recs[:10]])
    last = np.mean([r["loss"] for r in recs[-10:]])
    assert last < 0.1 * first, (first, last)
    per_layer = np.mean([r["align_per_layer"] for r in recs[-10:]], axis=0)
    assert per_layer.max() < 0.05, per_layer  # every teacher layer: mean 1 - cos below 0.05
    summed = np.mean([r["align"] for r in recs[-10:]])
    assert summed < 0.02 * np.mean([r["align"] for r in recs[:5]]), summed  # the summed loss falls > 50x
    assert np.mean([r["answer_acc"] for r in recs[-10:]]) > 0.9


def test_padding_does_not_change_the_loss(comps):
    task, teacher, model, tokenizer = comps
    config = tiny.config()
    examples = [e for e in task.examples("train", 64, 0) if e.n_pieces <= teacher.max_seq_len - 3][:8]
    assert len(examples) == 8
    enc = PieceEncoder(tokenizer)
    short = encode_examples(examples, enc, teacher, seq_len=teacher.max_seq_len - 3)
    long = encode_examples(examples, enc, teacher, seq_len=teacher.max_seq_len)
    graphdef, trainable, frozen = frozen_and_trainable(model, teacher, config)
    loss_fn = jax.jit(make_loss_fn(graphdef, teacher, config, model.config))
    text = Pipeline(config, task, teacher, tokenizer).text.batch(0, 0, 4, 16)
    b_short = {**short.take(np.arange(8)), **text}
    b_long = {**long.take(np.arange(8)), **text}
    # garbage in the teacher's padded positions must not matter either
    pad = b_long["real_mask"] == 0
    b_long["teacher_ids"][:, 1:][pad] = (teacher.bos_id + 1) % 3
    l_short, m_short = loss_fn(trainable, frozen, b_short)
    l_long, m_long = loss_fn(trainable, frozen, b_long)
    np.testing.assert_allclose(l_long, l_short, rtol=1e-5)
    np.testing.assert_allclose(m_long["align_per_layer"], m_short["align_per_layer"], rtol=1e-5)


def test_an_example_the_teacher_cannot_hold_is_refused_by_name(comps):
    task, teacher, _, tokenizer = comps
    too_long = next(e for e in task.examples("ood-length", 200, 0) if e.n_pieces > teacher.max_seq_len)
    fits = task.examples("train", 3, 0)
    name = re.escape(repr(too_long.problem))
    with pytest.raises(ValueError, match=rf"^example {name} does not fit the teacher: it needs "
                                         rf"{too_long.n_pieces} teacher positions.*larger max_seq_len"):
        encode_examples([*fits, too_long], PieceEncoder(tokenizer), teacher)
    assert len(encode_examples(fits, PieceEncoder(tokenizer), teacher)) == 3


def test_teacher_gets_no_gradient_and_baseline_has_no_alignment(comps):
    task, teacher, model, tokenizer = comps
    config = tiny.config()
    batch = Pipeline(config, task, teacher, tokenizer).batch(0)
    graphdef, trainable, frozen = frozen_and_trainable(model, teacher, config)
    loss_fn = make_loss_fn(graphdef, teacher, config, model.config)
    g_frozen = jax.grad(lambda f: loss_fn(trainable, f, batch)[0])(frozen)
    for leaf in jax.tree.leaves(g_frozen["teacher"]):
        np.testing.assert_array_equal(leaf, 0.0)
    # baseline: task + KL only, no teacher needed at all
    base_cfg = tiny.config(baseline=True)
    graphdef, trainable, frozen = frozen_and_trainable(model, None, base_cfg)
    loss, m = make_loss_fn(graphdef, None, base_cfg, model.config)(trainable, frozen, batch)
    assert "align" not in m
    np.testing.assert_allclose(loss, m["task"] + m["kl"], rtol=1e-6)


def test_step_keeps_original_weights_frozen_and_donates_state(comps):
    task, teacher, model, tokenizer = comps
    config = tiny.config()
    before = jax.tree.map(np.array, nnx.split(model)[1])
    step = make_train_step(model, teacher, config)
    state = init_state(model, teacher, config)
    pipeline = Pipeline(config, task, teacher, tokenizer)
    old_params = state.params
    for i in range(3):
        state, metrics = step(state, pipeline.batch(i))
    assert int(state.step) == 3
    assert jax.tree.leaves(old_params)[0].is_deleted()  # donated: no second copy of the state
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, step.frozen["original"]), before)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, before))
    assert max(moved) > 0


def test_bfloat16_runs_keep_float32_weights_so_small_updates_land(tmp_path, comps):
    """--dtype bfloat16 computes in bfloat16 but keeps float32 weights: at the original's lr 1e-6, bfloat16
    weights would round nearly every update away (2% of the weights moved in 3 steps) and train nothing."""
    from jinject.export import export_model
    from jinject.trainer import build

    host = export_model(comps[2], comps[3], tmp_path / "host")
    config = tiny.config(model=str(host), dtype="bfloat16", lr=1e-6, steps=3, checkpoint_every=3)
    task, teacher, model, tokenizer = build(config)
    assert (model.config.dtype, model.config.param_dtype) == ("bfloat16", "float32")
    assert model(jnp.ones((1, 4), jnp.int32)).hidden_states.dtype == jnp.bfloat16
    before = jax.tree.map(np.array, nnx.split(model)[1])
    run = train(config, tmp_path / "run", components=(task, teacher, model, tokenizer), progress=False)
    changed = total = 0
    for (path, new), old in zip(jax.tree_util.tree_leaves_with_path(nnx.split(run.model)[1]),
                                jax.tree.leaves(before), strict=True):
        if "kernel" in jax.tree_util.keystr(path):
            changed += int((np.asarray(new) != old).sum())
            total += old.size
    assert changed / total > 0.99
    # and a run whose checkpoint holds bfloat16 weights (written before this rule) still loads, as float32
    bf16 = create_model(model.config.replace(param_dtype="bfloat16"), 0)
    train(config, tmp_path / "old", components=(task, teacher, bf16, tokenizer), progress=False)
    old_run = load_run(tmp_path / "old")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(old_run.model, nnx.Param)))


def test_batches_are_deterministic_in_seed_and_step(comps):
    task, teacher, _, tokenizer = comps
    a = Pipeline(tiny.config(), task, teacher, tokenizer)
    b = Pipeline(tiny.config(), task, teacher, tokenizer)
    for k, v in a.batch(7).items():
        np.testing.assert_array_equal(v, b.batch(7)[k])
    assert not np.array_equal(a.batch(7)["inputs"], a.batch(8)["inputs"])


KILL_WORKER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import tiny
from jinject.trainer import train
def kill(step, record):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
train(tiny.config(steps=12, checkpoint_every=4, log_every=2), {out!r}, components=tiny.components(),
      on_step=kill, progress=False)
"""


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, comps):
    cfg = tiny.config(steps=12, checkpoint_every=4, log_every=2)
    straight = train(cfg, tmp_path / "straight", components=comps, progress=False)

    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_WORKER.format(tests=str(TESTS), kill_at=10, out=str(out))],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    # orbax saves asynchronously: the step-8 save may not have committed before the kill at step 10
    assert checkpoint_manager(out, cfg).latest_step() in (4, 8)
    resumed = train(cfg, out, components=comps, progress=False)
    assert resumed.step == 12
    a, b = nnx.split(straight.model)[1], nnx.split(resumed.model)[1]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), straight.adapter, resumed.adapter)
    # metrics.jsonl holds every step once: the steps redone after the kill replace the lost ones
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 13))
    straight_loss = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    np.testing.assert_allclose([r["loss"] for r in read_metrics(out)], straight_loss, rtol=1e-5)
    # each train call records what it ran on (numbers reproduce only on the same setting)
    calls = [json.loads(line) for line in (out / "environment.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and calls[0]["start_step"] == 0 and calls[1]["start_step"] in (4, 8)
    assert all(c["jax"] == jax.__version__ and c["backend"] == "cpu" and "XLA_FLAGS" in c for c in calls)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, comps):
    task, teacher, model, tokenizer = comps
    good = train(tiny.config(steps=5), tmp_path, components=comps, progress=False)
    broken = tiny.broken_teacher(teacher)
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 6.*last good checkpoint \(step 5, checked finite"):
        train(tiny.config(steps=10), tmp_path, components=(task, broken, model, tokenizer), progress=False)
    assert checkpoint_manager(tmp_path, tiny.config()).latest_step() == 5
    restored = load_run(tmp_path, components=comps)
    assert restored.step == 5
    jax.tree.map(np.testing.assert_array_equal, nnx.split(restored.model)[1], nnx.split(good.model)[1])


def rewrite_as_old_baseline(src: Path, dst: Path, config, comps) -> None:
    """dst: the baseline run in src with every checkpoint in the layout jinject wrote before TrainState: a
    zero placeholder adapter {"w": [1, 1, 1], "b": [1, 1]} with zero AdamW moments (its gradient was 0)."""
    import shutil

    import orbax.checkpoint as ocp

    from jinject import checkpoints, rundir
    from jinject.step import make_optimizer

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints"))
    placeholder = {"w": jnp.zeros((1, 1, 1)), "b": jnp.zeros((1, 1))}
    template = init_state(comps[2], None, config)
    old, new = checkpoint_manager(dst, config), checkpoint_manager(src, config)
    for step in new.all_steps():
        state, _ = checkpoints.restore(new, template, src / "checkpoints", config, step)
        saved = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)}
        fill = lambda p, x, saved=saved: saved.get(jax.tree_util.keystr(p), jnp.zeros_like(x))
        opt = jax.tree_util.tree_map_with_path(fill, make_optimizer(config).init({"params": state.params,
                                                                                  "adapter": placeholder}))
        tree = {"params": state.params, "adapter": placeholder, "opt_state": opt, "step": state.step}
        rundir.record_digest(dst / "checkpoints", step, rundir.state_summary(tree).digest)
        old.save(step, args=ocp.args.StandardSave(tree))
        old.wait_until_finished()
    old.close()
    new.close()


def test_a_baseline_saved_with_the_old_placeholder_adapter_loads_and_resumes(tmp_path, comps):
    cfg = tiny.config(steps=4, checkpoint_every=2, log_every=2, baseline=True)
    train(cfg, tmp_path / "new", components=comps, progress=False)
    rewrite_as_old_baseline(tmp_path / "new", tmp_path / "old", cfg, comps)
    notes = []
    a, b = (load_run(tmp_path / d, components=comps, say=notes.append) for d in ("new", "old"))
    assert a.step == b.step == 4 and a.adapter is None and b.adapter is None and notes == []
    jax.tree.map(np.testing.assert_array_equal, nnx.split(a.model)[1], nnx.split(b.model)[1])
    longer = tiny.config(steps=6, checkpoint_every=2, log_every=2, baseline=True)
    a, b = (train(longer, tmp_path / d, components=comps, progress=False, say=notes.append) for d in ("new", "old"))
    jax.tree.map(np.testing.assert_array_equal, nnx.split(a.model)[1], nnx.split(b.model)[1])
    strip = lambda d: [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(tmp_path / d)]
    assert strip("old") == strip("new") and notes == []
    assert load_run(tmp_path / "old", step=4, components=comps).step == 4  # an old-layout step beside a new one


def test_resume_refuses_a_different_config(tmp_path, comps):
    train(tiny.config(steps=2), tmp_path, components=comps, progress=False)
    with pytest.raises(ValueError, match="different config.*lr"):
        train(tiny.config(steps=2, lr=1.0), tmp_path, components=comps, progress=False)


MESH_WORKER = """
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np, tiny
from jinject.data import Pipeline
from jinject.sharding import batch_shardings, make_mesh, param_shardings, shard_batch
from jinject.step import init_state, make_train_step
assert jax.device_count() == 4, jax.devices()
task, teacher, model, tokenizer = tiny.components()
losses = {{}}
for name, data, fsdp, devices in [("one", 1, 1, jax.devices()[:1]), ("mesh", 2, 2, jax.devices())]:
    cfg = tiny.config(mesh_data=data, mesh_fsdp=fsdp)
    pipe = Pipeline(cfg, task, teacher, tokenizer)
    mesh = make_mesh(cfg, devices)
    step = make_train_step(model, teacher, cfg, mesh=mesh, example_batch=pipe.batch(0))
    state = init_state(model, teacher, cfg)
    state = jax.device_put(state, param_shardings(state, mesh))
    out = []
    for i in range(4):
        batch = shard_batch(pipe.batch(i), batch_shardings(pipe.batch(i), mesh))
        assert len(batch["inputs"].sharding.device_set) == len(devices)
        state, m = step(state, batch)
        out.append([float(m[k]) for k in ("loss", "task", "kl", "align")])
    losses[name] = np.array(out)
    if name == "mesh":
        spec = [s.spec for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, state.params))]
        assert any("fsdp" in str(s) for s in spec), spec
print(losses["one"].tolist()); print(losses["mesh"].tolist())
np.testing.assert_allclose(losses["mesh"], losses["one"], rtol=2e-4, atol=1e-5)
print("MESH OK")
"""


@pytest.mark.multidevice
def test_sharded_step_on_four_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MESH_WORKER.format(tests=str(TESTS))], env=env,
                          capture_output=True, text=True, timeout=900)
    assert "MESH OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
