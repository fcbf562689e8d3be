"""The objective's switches: alignment and intervention apart, the intervention site and its gate, left-out teacher
dimensions, the marker weight, the adapter-only warm-up, and the framed/BOS prompts."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny
from flax import nnx

from jinject import objective as obj
from jinject.config import TrainConfig
from jinject.data import PieceEncoder, Pipeline
from jinject.models.base import CausalLM
from jinject.step import init_state, make_loss_fn, make_train_step, objective_plan
from jinject.tasks import BOS_PIECE, get_task


@pytest.fixture(scope="module")
def comps():
    return tiny.components(extra_layers=2)


def loss_and_metrics(comps, batch=None, resid=None, **overrides):
    """The loss of one batch; `resid` replaces the teacher's residual stream when given."""
    task, teacher, model, tokenizer = comps
    config = tiny.config(**overrides)
    batch = batch if batch is not None else Pipeline(config, task, teacher, tokenizer).batch(0)
    state = init_state(model, teacher, config)
    graphdef, original = nnx.split(model)
    frozen = {"original": original, "teacher": teacher.params}
    trainable = state.trainable
    residuals = None if resid is None else (lambda params, batch: resid)
    loss, metrics = make_loss_fn(graphdef, teacher, config, model.config, residuals)(trainable, frozen, batch)
    return float(loss), jax.tree.map(np.asarray, metrics)


def test_config_switches_and_variant_names():
    assert TrainConfig().variant == "injected"
    base = TrainConfig(baseline=True)
    assert (base.align, base.intervene, base.variant) == (False, False, "baseline")
    assert TrainConfig(align=False, intervene=False).baseline  # both off is the baseline
    assert TrainConfig(intervene=False).variant == "align-only"
    assert TrainConfig(align=False).variant == "intervene-only"
    assert TrainConfig.from_dict(TrainConfig(align_exclude=["indices@0"]).__dict__).align_exclude == ("indices@0",)
    with pytest.raises(ValueError, match="list of"):
        TrainConfig(align_exclude="indices")
    with pytest.raises(ValueError, match="marker_weight"):
        TrainConfig(marker_weight=-1.0)
    with pytest.raises(ValueError, match="leaves no step"):
        TrainConfig(steps=10, adapter_warmup_steps=10)


def test_alignment_only_has_no_intervention_and_intervention_only_has_no_alignment(comps):
    base_loss, base = loss_and_metrics(comps, baseline=True)
    _, align_only = loss_and_metrics(comps, intervene=False)
    # no intervention: the task loss is the plain forward's, the baseline's exactly
    np.testing.assert_allclose(align_only["task"], base["task"], rtol=1e-6)
    assert align_only["align"] > 0
    loss, interv_only = loss_and_metrics(comps, align=False)
    assert "align" not in interv_only
    np.testing.assert_allclose(loss, interv_only["task"] + interv_only["kl"], rtol=1e-6)
    assert abs(float(interv_only["task"]) - float(base["task"])) > 1e-4  # the bottleneck changes the answer


def test_intervention_sits_at_the_configured_hidden_index(comps, monkeypatch):
    task, teacher, model, _ = comps
    seen = []
    original_call = CausalLM.__call__

    def spy(self, ids, intervene=None, intervene_at=None):
        if intervene is not None:
            seen.append(intervene_at)
        return original_call(self, ids, intervene=intervene, intervene_at=intervene_at)

    monkeypatch.setattr(CausalLM, "__call__", spy)
    top = teacher.n_layers  # bottom-aligned: the teacher's top layer <-> student hidden state n_layers
    loss_and_metrics(comps)
    loss_and_metrics(comps, intervene_at=2)
    loss_and_metrics(comps, intervene=False)
    assert seen == [top + 1, 2]  # default: the output of the block after the top aligned one
    assert objective_plan(tiny.config(layer_offset=1), teacher, model.config).intervene_at == top + 2
    with pytest.raises(ValueError, match="intervene_at=99"):
        objective_plan(tiny.config(intervene_at=99), teacher, model.config)


def test_marker_readout_compares_the_argmax_of_the_answer_at_each_rows_marker():
    adapter = {"w": jnp.eye(3)[None], "b": jnp.zeros((1, 3))}  # identity: teacher space = student space
    h = jnp.zeros((2, 4, 3)).at[0, 1].set(jnp.array([0.0, 0.2, 0.9])).at[1, 2].set(jnp.array([0.0, 0.9, 0.2]))
    teacher = jnp.zeros((2, 5, 3)).at[0, 2, 2].set(1.0).at[1, 3, 2].set(1.0)  # BOS first: position t+1
    answer_dims, marker = np.array([1, 2]), jnp.array([1, 2])
    both = obj.marker_readout(adapter, h, answer_dims, 0, marker, teacher, jnp.ones(2))
    assert float(both) == 0.5  # row 0 reads the teacher's value, row 1 the other one
    assert float(obj.marker_readout(adapter, h, answer_dims, 0, marker, teacher, jnp.array([1.0, 0.0]))) == 1.0


def test_intervention_gate_intervenes_only_on_a_batch_whose_answer_is_read(comps):
    _, always = loss_and_metrics(comps)
    _, align_only = loss_and_metrics(comps, intervene=False)
    readout = float(always["answer_readout"])
    assert 0.0 < readout < 1.0, "precondition: the fresh adapter reads some answers and misses others"
    assert float(always["intervened"]) == 1.0
    np.testing.assert_allclose(align_only["answer_readout"], readout)  # the same state, read before the cut
    _, closed = loss_and_metrics(comps, intervene_gate=min(readout + 0.01, 1.0))
    assert float(closed["intervened"]) == 0.0
    np.testing.assert_allclose(closed["task"], align_only["task"], rtol=1e-6)
    _, opened = loss_and_metrics(comps, intervene_gate=readout)
    assert float(opened["intervened"]) == 1.0
    np.testing.assert_allclose(opened["task"], always["task"], rtol=1e-6)
    assert abs(float(always["task"]) - float(align_only["task"])) > 1e-4  # so the two cases differ


def test_intervention_gate_refuses_what_it_cannot_read(comps):
    _, teacher, model, _ = comps
    info = teacher.var_info[teacher.answer_var]
    numerical = dataclasses.replace(teacher, var_info={**teacher.var_info, teacher.answer_var:
                                                       dataclasses.replace(info, encoding="numerical")})
    with pytest.raises(ValueError, match="is numerical: drop --intervene-gate"):
        make_loss_fn(nnx.graphdef(model), numerical, tiny.config(intervene_gate=0.5), model.config)
    make_loss_fn(nnx.graphdef(model), numerical, tiny.config(), model.config)  # ungated: no readout to refuse
    with pytest.raises(ValueError, match="fraction"):
        TrainConfig(intervene_gate=1.5)
    with pytest.raises(ValueError, match="with --no-align, drop --intervene-gate"):
        TrainConfig(align=False, intervene_gate=0.9)
    assert TrainConfig(baseline=True, intervene_gate=0.9).baseline  # a baseline derived from a gated run
    assert TrainConfig(intervene=False, intervene_gate=0.9).variant == "align-only"


def test_a_left_out_teacher_dimension_does_not_change_the_loss(comps):
    task, teacher, model, tokenizer = comps
    config = tiny.config()
    batch = Pipeline(config, task, teacher, tokenizer).batch(0)
    resid = np.asarray(teacher.run(batch["teacher_ids"]))
    indices = np.array([i for i, lab in enumerate(teacher.labels) if lab.startswith("indices:")])
    assert len(indices) > 0
    other = resid.copy()
    other[..., indices] = np.random.default_rng(0).normal(size=other[..., indices].shape)
    for exclude, same in ((["indices"], True), ([], False)):
        l1, m1 = loss_and_metrics(comps, batch, resid, align_exclude=exclude)
        l2, m2 = loss_and_metrics(comps, batch, other, align_exclude=exclude)
        assert np.allclose(m1["align_per_layer"], m2["align_per_layer"], rtol=1e-6) == same, exclude
    # "VAR@LAYER" leaves it out at that teacher layer only
    _, a = loss_and_metrics(comps, batch, resid, align_exclude=["indices@0"])
    _, b = loss_and_metrics(comps, batch, other, align_exclude=["indices@0"])
    assert a["align_per_layer"][0] == pytest.approx(b["align_per_layer"][0], rel=1e-6)
    assert not np.allclose(a["align_per_layer"][1:], b["align_per_layer"][1:])
    with pytest.raises(ValueError, match="no variable 'nope'"):
        loss_and_metrics(comps, align_exclude=["nope"])
    with pytest.raises(ValueError, match="teacher layer 0..4"):
        loss_and_metrics(comps, align_exclude=["indices@9"])


def test_auto_exclusion_depends_on_the_host_positions(comps):
    _, teacher, model, _ = comps
    rope = objective_plan(tiny.config(), teacher, model.config)
    assert rope.excluded == ("indices",)
    gpt2_like = SimpleNamespace(n_layers=model.config.n_layers, absolute_positions=True)
    gpt2 = objective_plan(tiny.config(), teacher, gpt2_like)
    assert gpt2.excluded == () and gpt2.dim_weights.all()
    assert objective_plan(tiny.config(align_exclude=[]), teacher, model.config).excluded == ()


def test_marker_weight_counts_the_marker_position_more(comps):
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    w = obj.alignment_position_weights(mask, jnp.array([1]), 5.0)
    np.testing.assert_array_equal(w, [[1.0, 5.0, 1.0, 0.0]])
    x = jnp.array([[0.0, 1.0, 0.0, 7.0]])
    assert float(obj.masked_mean(x, w)) == pytest.approx(5.0 / 7.0)
    _, one = loss_and_metrics(comps)
    _, five = loss_and_metrics(comps, marker_weight=5.0)
    assert not np.allclose(one["align_per_layer"], five["align_per_layer"])


def test_per_variable_alignment_weighs_a_smeared_count_like_any_other_variable():
    """A residual of tokens (4 dims), `one` and a count (8 values): a student that has the tokens right and
    the count smeared over three neighbouring values is almost aligned as a whole vector (the count is a
    small part of its length), but not per variable, where the count's block counts as much as the tokens'."""
    member, present = obj.variable_blocks(13, [(np.arange(0, 4), 0), (np.arange(5, 13), 1)], n_layers=1)
    np.testing.assert_array_equal(member[2], [0, 0, 0, 0, 1] + [0] * 8)  # the rest: `one`
    np.testing.assert_array_equal(present, [[1, 0, 1], [1, 1, 1]])  # the count from layer 1 on
    target = np.zeros(13, np.float32)
    target[[1, 4, 5 + 3]] = [3.0, 3.0, 1.0]  # a token, `one`, count = 3 (tracr scales vary per variable)
    smeared = target.copy()
    smeared[5 + 2: 5 + 5] = [0.45, 0.5, 0.45]
    whole = float(obj.cosine_distance(jnp.asarray(smeared), jnp.asarray(target)))
    dist, live = obj.block_cosine_distance(jnp.asarray(smeared), jnp.asarray(target), jnp.asarray(member))
    assert whole < 0.03 and float(dist[1]) > 0.25 and bool(live.all())
    np.testing.assert_allclose(np.asarray(dist)[[0, 2]], 0.0, atol=1e-6)
    # an empty target block (not written yet / selected nothing) has no direction: left out, whatever the student
    empty = target.copy()
    empty[5:] = 0.0
    _, live = obj.block_cosine_distance(jnp.asarray(smeared), jnp.asarray(empty), jnp.asarray(member))
    np.testing.assert_array_equal(live, [True, False, True])
    # and its gradient stays finite (a square root at 0 would give inf * 0 = NaN), also for an empty student block

    def loss(x, target):
        dist, live = obj.block_cosine_distance(x, target, jnp.asarray(member))
        return jnp.sum(dist * live)

    for x in (smeared, np.where(np.arange(13) >= 5, 0.0, smeared).astype(np.float32)):
        grad = jax.grad(loss)(jnp.asarray(x), jnp.asarray(empty))
        assert np.all(np.isfinite(grad)), grad


def test_per_variable_alignment_in_the_step(comps):
    task, teacher, model, tokenizer = comps
    batch = Pipeline(tiny.config(), task, teacher, tokenizer).batch(0)
    resid = np.asarray(teacher.run(batch["teacher_ids"]))
    _, whole = loss_and_metrics(comps, batch, resid)
    _, per_var = loss_and_metrics(comps, batch, resid, align_per_variable=True)
    assert np.all(np.isfinite(per_var["align_per_layer"]))
    assert not np.allclose(whole["align_per_layer"], per_var["align_per_layer"])
    # a variable before the layer that writes it is not in that layer's loss: changing its block there
    # (where the teacher holds zeros) changes nothing, at its layer it does
    info = next(v for v in teacher.var_info.values() if v.categorical and v.layer >= 1)
    other = resid.copy()
    other[: info.layer][..., info.dims] = 0.0
    _, same = loss_and_metrics(comps, batch, other, align_per_variable=True)
    np.testing.assert_allclose(same["align_per_layer"], per_var["align_per_layer"], rtol=1e-6)
    other[info.layer][..., info.dims] = np.random.default_rng(0).normal(size=other[info.layer][..., info.dims].shape)
    _, moved = loss_and_metrics(comps, batch, other, align_per_variable=True)
    assert not np.isclose(moved["align_per_layer"][info.layer], per_var["align_per_layer"][info.layer])


def test_adapter_warmup_keeps_the_student_frozen(comps):
    task, teacher, model, tokenizer = comps
    config = tiny.config(adapter_warmup_steps=3, steps=6)
    step = make_train_step(model, teacher, config)
    state = init_state(model, teacher, config)
    params0 = jax.tree.map(np.array, state.params)
    adapter0 = jax.tree.map(np.array, state.adapter)
    pipeline = Pipeline(config, task, teacher, tokenizer)
    for i in range(3):
        state, _ = step(state, pipeline.batch(i))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, state.params), params0)
    assert not np.allclose(np.asarray(state.adapter["w"]), adapter0["w"])
    state, _ = step(state, pipeline.batch(3))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, params0))
    assert max(moved) > 0


def test_adapter_warmup_does_not_freeze_a_run_without_alignment(comps):
    """A baseline run with the injected run's settings trains the model from step 0: there is no adapter
    to warm up, and freezing it would only take steps from the baseline."""
    task, teacher, model, tokenizer = comps
    config = tiny.config(adapter_warmup_steps=3, steps=6, baseline=True)
    step = make_train_step(model, None, config)
    state = init_state(model, None, config)
    params0 = jax.tree.map(np.array, state.params)
    state, _ = step(state, Pipeline(config, task, None, tokenizer).batch(0))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, params0))
    assert max(moved) > 0


@pytest.mark.parametrize("name,problem", [("shuffle-dyck", "([)]"), ("count", "xyx"), ("int-sum", "21+39")])
def test_framed_prompts_with_bos(name, problem):
    plain = get_task(name)
    task = get_task(name, frame=True, bos=True)
    ex, ex0 = task.example(problem), plain.example(problem)
    n = len(task.frame_pieces) + 1
    assert ex.prompt_pieces[0] == BOS_PIECE and ex.prompt_pieces[n:] == ex0.prompt_pieces
    assert ex.teacher_tokens[:n] == (task.filler,) * n and ex.teacher_tokens[n:] == ex0.teacher_tokens
    assert ex.prompt == "".join(task.frame_pieces) + ex0.prompt  # BOS is a token, not text
    assert task.parse(ex.prompt) == problem == task.parse(ex0.prompt)
    assert task.default_max_seq_len == plain.default_max_seq_len + n
    assert ex.answer == ex0.answer
    with pytest.raises(ValueError, match="true or false"):
        get_task(name, frame=1)


def test_bos_piece_is_the_tokenizer_bos_and_every_frame_word_one_token():
    from jinject.loading import load_tokenizer
    from jinject.tokenizer import gpt2_tokenizer, make_test_tokenizer

    for tokenizer in (gpt2_tokenizer(), load_tokenizer("smollm2-135m")):
        enc = PieceEncoder(tokenizer)
        assert enc(BOS_PIECE) == tokenizer.bos_id
        for name in ("shuffle-dyck", "count", "int-sum"):
            enc.encode(get_task(name, frame=True).frame_pieces)  # raises unless every word is one token
    with pytest.raises(ValueError, match="tokenizer has none"):
        PieceEncoder(make_test_tokenizer(["a"], specials=("<pad>",)))(BOS_PIECE)


def test_framed_teacher_answers_like_the_oracle():
    from jinject.compiler import compile_teacher
    from jinject.verify import verify_teacher

    task = get_task("shuffle-dyck", **tiny.OPTIONS, frame=True, bos=True)
    teacher = compile_teacher(task)
    assert teacher.answer(task.prompt(")(")) == "no" and teacher.answer(task.prompt("([)]")) == "yes"
    assert verify_teacher(teacher, n_random=40).ok


def test_balance_program_teacher_agrees_with_the_oracle():
    from jinject.compiler import compile_teacher
    from jinject.verify import verify_teacher

    task = get_task("shuffle-dyck", min_len=2, max_len=4, max_input_len=4, program="balance")
    teacher = compile_teacher(task)
    assert teacher.n_layers == 8 and "balance0" in teacher.var_info and "need" not in teacher.var_info
    assert teacher.answer(task.prompt("(]")) == "no" and teacher.answer(task.prompt("[(])")) == "yes"
    assert teacher.answer(task.prompt("(([")) == "no"  # never negative, but unbalanced at the marker
    assert verify_teacher(teacher, n_random=40).ok
    with pytest.raises(ValueError, match="program 'nope' is unknown"):
        get_task("shuffle-dyck", program="nope")


def test_per_variable_alignment_trains_to_finite_numbers(comps, tmp_path):
    from jinject.trainer import train

    train(tiny.config(steps=3, checkpoint_every=3, log_every=1, align_per_variable=True), tmp_path / "run",
          components=comps, progress=False)  # a NaN anywhere stops the run with TrainingDiverged
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in logged)
