"""Evaluation metrics on runs with known answers.

The synthetic run: a hand-written "teacher" over {a, b} (layer 0: tokens; layer 1: running parity of the
number of a's, the answer variable; layer 2: running fraction of a's, a number) and a "student" whose hidden
states are that teacher's residuals through an orthonormal embedding E. With the adapter A = E^T the
student decodes at 100%; the student answers by reading the parity dimensions, so noise in the answer
subspace breaks it while noise in a random subspace of the same dimension does not.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jinject import evaluate as ev
from jinject.config import TrainConfig
from jinject.data import PieceEncoder, encode_examples

PIECES = ["a", "b", "=", "0", "1", "."]  # student/teacher ids 1..6; 0 = padding; 7 = teacher BOS
ID = {p: i + 1 for i, p in enumerate(PIECES)}
BOS = 7
LABELS = ["one"] + [f"tokens:{p}" for p in PIECES] + ["parity:0", "parity:1", "frac_a"]
D_T, D_S = len(LABELS), 256


def fake_residuals(t_ids: jax.Array) -> jax.Array:
    """[3, B, T+1, D_T]: embeddings; + running parity of a's; + running fraction of a's."""
    onehot = jax.nn.one_hot(t_ids - 1, len(PIECES)) * (t_ids != BOS)[..., None]
    is_a = (t_ids == ID["a"]).astype(jnp.float32)
    count = jnp.cumsum(is_a, axis=-1)
    parity = jax.nn.one_hot(jnp.mod(count, 2).astype(jnp.int32), 2)
    frac = count / jnp.arange(1, t_ids.shape[-1] + 1)
    one = jnp.ones(t_ids.shape + (1,))
    zeros2, zeros1 = jnp.zeros_like(parity), jnp.zeros_like(one)
    r0 = jnp.concatenate([one, onehot, zeros2, zeros1], -1)
    r1 = jnp.concatenate([one, onehot, parity, zeros1], -1)
    r2 = jnp.concatenate([one, onehot, parity, frac[..., None]], -1)
    return jnp.stack([r0, r1, r2])


class FakeTeacher:
    n_layers, d_model, max_seq_len = 2, D_T, 8
    labels = LABELS
    var_info = {  # like jinject.teacher.VarInfo: the layer that writes each variable
        "tokens": SimpleNamespace(encoding="categorical", dims=np.arange(1, 7), layer=0),
        "parity": SimpleNamespace(encoding="categorical", dims=np.array([7, 8]), layer=1),
        "frac_a": SimpleNamespace(encoding="numerical", dims=np.array([9]), layer=2),
    }
    answer_var = "parity"
    answer_dims = np.array([7, 8])
    pad_id, bos_id = 0, BOS
    params: dict = {}

    def residuals(self, params, ids):
        return fake_residuals(ids)

    def encode(self, tokens):
        return [BOS] + [ID[t] for t in tokens]

    def misfit(self, example):
        n = len(example.teacher_tokens)
        return None if n <= self.max_seq_len else f"it needs {n} teacher positions"

    def decode(self, resid):
        resid = np.asarray(resid)
        return {
            "one": resid[..., 0],
            "tokens": np.array(PIECES)[np.argmax(resid[..., 1:7], -1)],
            "parity": np.argmax(resid[..., 7:9], -1),
            "frac_a": resid[..., 9],
        }


class FakeStudent(nnx.Module):
    """Hidden states = teacher residuals @ E (orthonormal rows); reads its answer from the parity dims."""

    def __init__(self, seed: int = 0, scale: float = 1.0):
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D_S, D_T)))
        self.E = nnx.Param(jnp.asarray(q.T * scale, jnp.float32))  # [D_T, D_S]
        self.config = SimpleNamespace(n_layers=3, d_model=D_S)

    def __call__(self, ids, intervene=None, intervene_at=None):
        t_ids = jnp.concatenate([jnp.full((ids.shape[0], 1), BOS, ids.dtype), ids], axis=1)
        r = fake_residuals(t_ids)[:, :, 1:]
        e = self.E[...]
        hidden = [r[0] @ e, r[1] @ e, r[2] @ e]
        h = hidden[2]
        if intervene is not None:
            assert intervene_at == 2
            h = intervene(h)
        hidden.append(h)  # block 2 is the identity; the final residual carries the intervention
        return SimpleNamespace(logits=self.unembed(self.final_norm(h)), hidden_states=jnp.stack(hidden))

    def final_norm(self, h):
        return h

    def unembed(self, h):
        """Reads the token and the parity back in teacher coordinates: after "=" the parity, then "."."""
        read = h @ self.E[...].T
        tok = jnp.argmax(read[..., 1:7], -1) + 1
        is_eq = (tok == ID["="])[..., None]
        is_ans = ((tok == ID["0"]) | (tok == ID["1"]))[..., None]
        parity_logits = jnp.zeros(h.shape[:-1] + (8,)).at[..., ID["0"]].set(read[..., 7]).at[..., ID["1"]].set(
            read[..., 8])
        end_logits = jax.nn.one_hot(ID["."], 8) * 10.0
        other = jax.nn.one_hot(ID["a"], 8) * 10.0
        return jnp.where(is_eq, parity_logits * 10.0, jnp.where(is_ans, end_logits, other))


@dataclass
class Ex:
    problem: str

    @property
    def prompt_pieces(self):
        return tuple(self.problem) + ("=",)

    @property
    def answer_pieces(self):
        return (str(self.problem.count("a") % 2), ".")

    @property
    def teacher_tokens(self):
        return self.prompt_pieces + self.answer_pieces

    @property
    def prompt(self):
        return "".join(self.prompt_pieces)

    @property
    def answer(self):
        return "".join(self.answer_pieces)


class FakeTask:
    name = "parity"
    splits = ("train", "test", "ood_long")

    def pieces(self, problem):
        if set(problem) - {"a", "b"}:
            raise ValueError(f"not a parity problem: {problem!r}")
        return Ex(problem).prompt_pieces, Ex(problem).answer_pieces

    def parse(self, prompt):
        problem = prompt.removesuffix("=")
        if set(problem) - {"a", "b"}:
            raise ValueError(f"not a parity problem: {prompt!r}")
        return problem

    def teacher_tokens(self, problem):
        return Ex(problem).teacher_tokens

    def example(self, problem, split=""):
        return Ex(problem)

    def solve(self, problem):
        return Ex(problem).answer

    def examples(self, split, n, seed, max_seq_len=None):
        rng = np.random.default_rng([seed, len(split)])
        lo, hi = (2, 6) if split != "ood_long" else (8, 12)
        return [Ex("".join(rng.choice(["a", "b"], size=rng.integers(lo, hi + 1)))) for _ in range(n)]


class FakeTokenizer:
    def decode(self, ids):
        return "".join(PIECES[i - 1] for i in ids)

    def encode(self, text):
        if text in ID:
            return [ID[text]]
        return [(ord(c) % 6) + 1 for c in text]


_FORWARD = {}


def fake_generate(model, prompts, max_new_tokens, stop_ids=(), **_):
    """Plain greedy decoding without a cache, on a fixed padded length (one compilation; causal model)."""
    if id(model) not in _FORWARD:
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda st, ids: nnx.merge(graphdef, st)(ids).logits)
        _FORWARD[id(model)] = lambda ids: fn(state, ids)
    forward = _FORWARD[id(model)]
    outs = []
    for p in prompts:
        ids, new = list(p), []
        for _ in range(max_new_tokens):
            padded = np.zeros((1, 32), np.int32)
            padded[0, : len(ids)] = ids
            nxt = int(np.argmax(np.asarray(forward(padded)[0, len(ids) - 1])))
            new.append(nxt)
            ids.append(nxt)
            if nxt in stop_ids:
                break
        outs.append(new)
    return outs


def identity_adapter(student: FakeStudent) -> dict:
    w = np.asarray(student.E[...]).T  # [D_S, D_T]: E^T inverts the embedding
    return {"w": w[None], "b": np.zeros((1, D_T), np.float32)}


@pytest.fixture(scope="module")
def setup():
    student, teacher, task = FakeStudent(), FakeTeacher(), FakeTask()
    encoder = PieceEncoder(FakeTokenizer())
    test = [e for e in task.examples("test", 64, 0) if ev.fits_teacher(e, teacher)]
    arrays = encode_examples(test, encoder, teacher)
    return student, teacher, task, encoder, arrays


def test_variable_bookkeeping_from_labels():
    dims = ev.variable_dims(LABELS)
    np.testing.assert_array_equal(dims["parity"], [7, 8])
    np.testing.assert_array_equal(dims["frac_a"], [9])
    kinds = ev.variable_kinds(LABELS)
    assert kinds == {"one": "numerical", "tokens": "categorical", "parity": "categorical", "frac_a": "numerical"}
    grid = ev.value_grid(np.array([0.0, 0.5000004, 1.0, 1.0, 0.5]))  # tracr's ~1e-6 noise is one value
    np.testing.assert_array_equal(grid, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ev.nearest(grid, np.array([-3.0, 0.2, 0.3, 0.74, 0.76, 9.0])), [0, 0, 1, 1, 2, 2])
    # a constant is right within half of max(|v|, 1)
    np.testing.assert_array_equal(ev.nearest(np.array([1.0]), np.array([1.4, 0.6, 1.6])), [0, 0, -1])


def test_one_equality_rule_with_its_tolerance():
    same = ev.same_value
    assert same("x", "x", "categorical") and not same("x", None, "categorical") and same(None, None, "categorical")
    # relative tolerance (verify: 1e-3; the decode table: 10% of max(|reference|, 1))
    assert same(2.0015, 2.0, "numerical", rtol=1e-3) and not same(2.0025, 2.0, "numerical", rtol=1e-3)
    assert same(0.09, 0.0, "numerical", rtol=0.1) and not same(0.11, 0.0, "numerical", rtol=0.1)
    # the grid of values a variable takes: nearer to the reference than to any other value
    grid = np.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(same(np.array([0.2, 0.3, 0.9]), np.array([0.0, 0.0, 1.0]), "numerical", grid=grid),
                                  [True, False, True])
    for tolerances in ({}, {"rtol": 0.1, "grid": grid}):
        with pytest.raises(ValueError, match="exactly one tolerance"):
            same(1.0, 1.0, "numerical", **tolerances)


def test_cli_eval_defaults_are_the_eval_config():
    from jinject import cli

    args = cli.build_parser().parse_args(["eval", "DIR"])
    e = ev.EvalConfig()
    assert (args.n, args.n_decode, args.n_causal, args.n_text, args.text_seq_len, tuple(args.noise_norms),
            tuple(args.relative_noise), args.splits, args.batch_size, args.eval_seed) == (
        e.n_examples, e.n_decode, e.n_causal, e.n_text_windows, e.text_seq_len, e.noise_norms, e.relative_noise,
        e.splits, e.batch_size, e.seed)


def test_exact_match_stops_at_end_marker():
    end = 6
    assert ev.exact_match([4, 6], [4, 6], end)
    assert ev.exact_match([4, 6, 1, 1], [4, 6], end)  # what follows the end marker never counts
    assert not ev.exact_match([5, 6], [4, 6], end)
    assert not ev.exact_match([4, 4], [4, 6], end)  # never stopped
    assert not ev.exact_match([4, 1, 6], [4, 6], end)


def test_decoding_is_perfect_through_the_known_map(setup):
    student, teacher, _, _, arrays = setup
    res = ev.decoding_accuracy(student, teacher, identity_adapter(student), np.array([0, 1, 2]), arrays,
                               batch_size=16)
    v = res["variables"]
    assert "one" not in v  # the constant direction is not a variable
    assert v["tokens"]["per_layer"] == [1.0, 1.0, 1.0]
    # parity is written by layer 1 and frac_a by layer 2: earlier layers are not scored
    assert v["parity"]["per_layer"] == [None, 1.0, 1.0] and v["parity"]["first_layer"] == 1
    assert v["frac_a"]["per_layer"] == [None, None, 1.0] and v["frac_a"]["kind"] == "numerical"
    assert res["mean"] == 1.0
    assert res["n_positions"] == int(arrays.real_mask.sum())


def test_decoding_detects_a_wrong_map(setup):
    student, teacher, _, _, arrays = setup
    adapter = identity_adapter(student)
    w = adapter["w"].copy()
    w[0][:, [7, 8]] = w[0][:, [8, 7]]  # the map reads parity backwards
    res = ev.decoding_accuracy(student, teacher, {"w": w, "b": adapter["b"]}, np.array([0, 1, 2]), arrays)
    assert res["variables"]["parity"]["per_layer"][1:] == [0.0, 0.0]
    assert res["variables"]["tokens"]["mean"] == 1.0
    # a numerical variable off by more than half the gap to the next value counts as wrong
    shifted = {"w": adapter["w"], "b": adapter["b"] + np.eye(D_T, dtype=np.float32)[9] * 0.3}
    res = ev.decoding_accuracy(student, teacher, shifted, np.array([0, 1, 2]), arrays)
    frac = res["variables"]["frac_a"]
    assert frac["n_values"] > 5 and frac["final"] < 0.05
    assert frac["mean_abs_error"][2] == pytest.approx(0.3, abs=1e-4)


def test_decoding_is_calibrated_for_the_free_length_of_the_cosine_map(setup):
    """The cosine loss leaves |A h| free: a map 3x too long, or with a length that changes per position,
    still decodes at 100% once calibrated; uncalibrated, the numbers are wrong."""
    student, teacher, _, _, arrays = setup
    adapter = identity_adapter(student)
    long = {"w": adapter["w"] * 3.0, "b": adapter["b"]}
    res = ev.decoding_accuracy(student, teacher, long, np.array([0, 1, 2]), arrays)
    assert res["mean"] == 1.0 and res["calibrated"]
    raw = ev.decoding_accuracy(student, teacher, long, np.array([0, 1, 2]), arrays, calibrated=False)
    assert raw["variables"]["frac_a"]["final"] < 0.5 and raw["variables"]["parity"]["final"] == 1.0
    mapped = np.asarray(fake_residuals(jnp.asarray(arrays.teacher_ids)))[:, :, 1:]
    lengths = np.random.default_rng(0).uniform(0.2, 20.0, size=mapped.shape[1:-1] + (1,))
    real = arrays.real_mask > 0
    np.testing.assert_allclose(ev.calibrate(teacher, mapped * lengths)[:, real], mapped[:, real], rtol=1e-5, atol=1e-6)


def test_causal_test_noise_zero_is_a_no_op_and_answer_subspace_matters(setup):
    student, teacher, task, encoder, _ = setup
    arrays = encode_examples(task.examples("test", 200, 1), encoder, None)
    clean = ev.teacher_forced_exact(student, arrays)
    assert clean == 1.0
    res = ev.causal_test(student, identity_adapter(student), teacher.answer_dims, 2, 2, arrays,
                         norms=(0.0, 1.0, 10.0), batch_size=64)
    assert res["dim"] == 2 and res["n"] == 200
    assert res["answer_subspace"][0] == clean and res["random_subspace"][0] == clean
    assert res["answer_subspace"][2] < 0.8  # the answer lives there
    assert res["random_subspace"][2] > res["answer_subspace"][2] + 0.15
    assert res["answer_subspace"][1] >= res["answer_subspace"][2]


def test_causal_test_noise_relative_to_the_residual_norm(setup):
    student, teacher, task, encoder, arrays = setup
    res = ev.causal_test(student, identity_adapter(student), teacher.answer_dims, 2, 2, arrays,
                         norms=(0.0,), relative=(0.0, 0.5, 3.0), batch_size=64)
    rel = res["relative"]
    # the student's hidden state 2 is E·r_2: its norm is the teacher residual's norm
    r2 = np.asarray(fake_residuals(jnp.asarray(arrays.teacher_ids)))[2, :, 1:]
    real = arrays.real_mask > 0
    assert rel["mean_norm"] == pytest.approx(float(np.linalg.norm(r2[real], axis=-1).mean()), rel=1e-4)
    assert rel["median_norm"] == pytest.approx(float(np.median(np.linalg.norm(r2[real], axis=-1))), rel=1e-4)
    np.testing.assert_allclose(rel["norms"], [0.0, 0.5 * rel["median_norm"], 3.0 * rel["median_norm"]], rtol=1e-6)
    assert rel["answer_subspace"][0] == rel["random_subspace"][0] == 1.0
    assert rel["answer_subspace"][2] < rel["random_subspace"][2] - 0.15
    for bad in ((float("nan"),), (-1.0,)):
        with pytest.raises(ValueError, match="finite and >= 0"):
            ev.causal_test(student, identity_adapter(student), teacher.answer_dims, 2, 2, arrays, norms=bad)


def test_interchange_follows_the_donor_exactly_where_the_answer_lives(setup):
    """The fake student reads its answer from the parity dimensions: swapping the answer subspace hands it the
    donor's answer; a random subspace of the same dimension and the complement leave its own."""
    student, teacher, task, encoder, _ = setup
    arrays = encode_examples(task.examples("test", 200, 1), encoder, None)
    receivers, donors = ev.interchange_pairs(arrays, seed=0)
    marker = arrays.answer_index[:, 0]
    first = arrays.targets[np.arange(len(arrays)), marker]
    assert 150 <= len(receivers) <= 200  # a row of a length with only one answer has no partner
    assert np.all(marker[receivers] == marker[donors]) and np.all(first[receivers] != first[donors])
    res = ev.interchange_test(student, identity_adapter(student), teacher.answer_dims, 2, 2, arrays, batch_size=64)
    assert res["n_pairs"] == len(receivers) and res["dim"] == 2 and res["n"] == 200
    assert res["clean"] == {"receiver": 1.0, "donor": 0.0}
    for site in ("prompt", "marker"):
        assert res[site]["answer"] == {"donor": 1.0, "receiver": 0.0}
        assert res[site]["complement"] == {"donor": 0.0, "receiver": 1.0}
        assert res[site]["random"]["receiver"] > 0.8
    # the student is an isometry of the teacher: at the marker the parity one-hot has norm 1 and two different
    # parities differ by norm sqrt(2); the residual's median norm is the noise test's
    norms = res["norms"]
    assert norms["answer_part_at_marker"] == pytest.approx(1.0, rel=1e-5)
    assert norms["answer_swap_at_marker"] == pytest.approx(np.sqrt(2), rel=1e-5)
    assert norms["median_residual"] == pytest.approx(ev.residual_norms(student, arrays, 2)[0], rel=1e-5)
    assert norms["random_swap_at_marker"] < 0.5 * norms["answer_swap_at_marker"]
    # the student answers every example right, so pairing by its predictions is pairing by the answers
    by_pred = ev.interchange_test(student, identity_adapter(student), teacher.answer_dims, 2, 2, arrays,
                                  batch_size=64, by="prediction")
    assert {k: v for k, v in by_pred.items() if k != "by"} == {k: v for k, v in res.items() if k != "by"}


@pytest.mark.parametrize("at", [1, 2])  # 2 = the final residual: the full-logits path
def test_interchange_of_the_whole_space_is_the_donors_own_forward_pass(at):
    """With an adapter whose answer rows span the whole residual, the prompt swap replaces the receiver's
    state by the donor's: the prediction is the donor's clean prediction, on a real (random) model."""
    from jinject.models import ModelConfig, create_model

    cfg = ModelConfig(family="gpt2", vocab_size=8, d_model=16, n_layers=2, n_heads=2, max_position_embeddings=32)
    model = create_model(cfg, 1)
    # weights 6x their initial size, so that the predictions depend on the input (at init they are all alike)
    nnx.update(model, jax.tree.map(lambda x: 6 * x, nnx.state(model, nnx.Param)))
    arrays = encode_examples(FakeTask().examples("test", 60, 3), PieceEncoder(FakeTokenizer()), None)
    receivers, donors = ev.interchange_pairs(arrays, seed=0)
    logits = np.asarray(model(jnp.asarray(arrays.inputs)).logits)
    marker = arrays.answer_index[:, 0]
    clean_pred = logits[np.arange(len(arrays)), marker].argmax(-1)
    first = arrays.targets[np.arange(len(arrays)), marker]
    whole = {"w": np.eye(16, dtype=np.float32)[None], "b": np.zeros((1, 16), np.float32)}
    res = ev.interchange_test(model, whole, np.arange(16), 0, at, arrays, batch_size=16)
    assert res["clean"]["receiver"] == pytest.approx(np.mean(clean_pred[receivers] == first[receivers]))
    assert res["prompt"]["answer"]["donor"] == pytest.approx(np.mean(clean_pred[donors] == first[donors]))
    assert res["prompt"]["complement"]["receiver"] == res["clean"]["receiver"]  # nothing outside the whole space
    # paired by the model's own predictions: the whole-space swap hands over the donor's prediction, always
    by_pred = ev.interchange_test(model, whole, np.arange(16), 0, at, arrays, batch_size=16, by="prediction")
    receivers, donors = ev.interchange_pairs(arrays, seed=0, first=clean_pred)
    assert by_pred["by"] == "prediction" and by_pred["n_pairs"] == len(receivers) > 10
    assert np.all(clean_pred[receivers] != clean_pred[donors])
    assert by_pred["clean"] == {"receiver": 1.0, "donor": 0.0}
    assert by_pred["prompt"]["answer"] == {"donor": 1.0, "receiver": 0.0}
    assert by_pred["prompt"]["complement"] == {"donor": 0.0, "receiver": 1.0}
    with pytest.raises(ValueError, match="'answer' or 'prediction'"):
        ev.interchange_test(model, whole, np.arange(16), 0, at, arrays, by="label")


def test_decoding_at_the_marker_and_at_the_written_layer(setup):
    student, teacher, _, _, arrays = setup
    adapter = identity_adapter(student)
    w = adapter["w"].copy()
    w[0][:, [7, 8]] = w[0][:, [8, 7]]
    res = ev.decoding_accuracy(student, teacher, {"w": w, "b": adapter["b"]}, np.array([0, 1, 2]), arrays)
    assert res["variables"]["parity"]["written"] == 0.0 and res["variables"]["tokens"]["written"] == 1.0
    marker = res["marker"]
    assert marker["parity"]["per_layer"] == [None, 0.0, 0.0] and marker["tokens"]["final"] == 1.0
    good = ev.decoding_accuracy(student, teacher, adapter, np.array([0, 1, 2]), arrays)
    assert good["marker"]["frac_a"]["written"] == 1.0


def test_generation_accuracy_and_retention(setup):
    student, _, task, encoder, _ = setup
    examples = task.examples("ood_long", 12, 0)  # longer than the teacher holds: fine for accuracy
    res = ev.generation_accuracy(student, encoder, examples, batch_size=5, generate_fn=fake_generate)
    assert res == {"accuracy": 1.0, "n": 12}
    windows = ev.text_windows("ab=01." * 200, FakeTokenizer(), 16, 5)
    assert windows.shape == (5, 16)
    same = ev.retention(student, student, windows, batch_size=2)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6)
    assert same["ppl_original"] == pytest.approx(same["ppl_trained"])
    other = ev.retention(student, FakeStudent(seed=1, scale=0.5), windows, batch_size=2)
    assert other["kl"] > 1e-3 and other["ppl_original"] == pytest.approx(same["ppl_original"])


def _fake_run(baseline: bool):
    student = FakeStudent()
    config = TrainConfig(task="parity", model="fake", baseline=baseline)
    return SimpleNamespace(config=config, task=FakeTask(), teacher=FakeTeacher(), model=student,
                           tokenizer=FakeTokenizer(), adapter=identity_adapter(student), step=7,
                           original=student, student_index=np.array([0, 1, 2]), intervene_at=2)


def test_evaluate_run_writes_eval_json_and_table(tmp_path, monkeypatch):
    import jinject.generation

    monkeypatch.setattr(jinject.generation, "generate", fake_generate, raising=False)
    start = time.perf_counter()
    res = ev.evaluate_run(_fake_run(False), n_examples=10, n_decode=10, n_text_windows=2, text_seq_len=16,
                          noise_norms=(0.0, 30.0), out=tmp_path)
    wall = time.perf_counter() - start
    saved = json.loads((tmp_path / "eval.json").read_text())
    # where the evaluation's time went, one entry per stage, adding up to no more than its wall time
    assert list(saved["seconds"]) == ["accuracy/test", "accuracy/ood_long", "retention", "decoding", "causal",
                                      "interchange"]
    assert all(t > 0 for t in saved["seconds"].values()) and sum(saved["seconds"].values()) <= wall
    assert saved["accuracy"]["test"]["accuracy"] == 1.0 and saved["accuracy"]["ood_long"]["n"] == 10
    assert saved["decoding"]["mean"] == 1.0
    assert saved["causal"]["answer_subspace"][0] == 1.0
    assert saved["interchange"]["prompt"]["answer"]["donor"] == 1.0
    assert saved["retention"]["kl"] == pytest.approx(0.0, abs=1e-6)
    table = ev.format_table(res)
    assert "ood_long" in table and "parity" in table and "answer subspace" in table
    assert "  answer              1.000 / 0.000           1.000 / 0.000" in table
    assert "median swap at the marker: answer subspace 1.41, random" in table
    del res["interchange"]["norms"]  # an eval.json from before the sizes were reported still prints
    assert "median swap" not in ev.format_table(res) and "complement" in ev.format_table(res)

    base = ev.evaluate_run(_fake_run(True), n_examples=6, n_text_windows=2, text_seq_len=16)
    assert base["decoding"] is None and base["causal"] is None and base["interchange"] is None
    assert list(base["seconds"]) == ["accuracy/test", "accuracy/ood_long", "retention"]
    assert "n/a (baseline" in ev.format_table(base)


def test_plots_write_pngs(tmp_path):
    from jinject import plots

    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "task": 1.0 / s, "kl": 0.01, "align": 1.0 / s,
                                           "answer_acc": min(1.0, s / 10)}) + "\n" for s in range(1, 11)))
    assert [r["step"] for r in plots.read_metrics(metrics.parent)] == list(range(1, 11))
    res = {"run": {"task": "parity", "baseline": False},
           "accuracy": {"test": {"accuracy": 0.9, "n": 10}, "ood": {"accuracy": 0.5, "n": 10}},
           "decoding": {"student_index": [0, 1], "variables": {"x": {"per_layer": [None, 1.0]},
                                                                "y": {"per_layer": [0.5, 0.75]}}},
           "causal": {"norms": [0, 5], "answer_subspace": [0.9, 0.4], "random_subspace": [0.9, 0.9], "dim": 2,
                      "student_index": 1}}
    written = plots.plot_eval(res, tmp_path / "plots", metrics)
    assert {p.name for p in written} == {"training_curves.png", "accuracy.png", "decoding_accuracy.png",
                                         "causal.png"}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    base = {**res, "run": {"baseline": True}, "accuracy": {"test": {"accuracy": 0.7, "n": 10}}}
    fig = plots.plot_ood_accuracy({"injected": [res, res], "baseline": [base]}, tmp_path / "ood.png")
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars[:2] == [0.9, 0.5] and bars[2] == 0.7 and np.isnan(bars[3])  # baseline has no "ood" split


def test_answer_readout_plot(tmp_path):
    """The readout curve is a moving mean of the logged readout; the gate panel the running fraction cut;
    plot_eval adds the figure only for a run that logged the readout."""
    from jinject import plots

    run = tmp_path / "run"
    run.mkdir()
    readout = [0.0, 0.5, 1.0, 1.0, 1.0]
    cut = [0.0, 0.0, 1.0, 1.0, 1.0]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s + 1, "loss": 1.0, "task": 1.0, "kl": 0.01, "answer_acc": 0.5, "answer_readout": r,
                    "intervened": c}) + "\n" for s, (r, c) in enumerate(zip(readout, cut, strict=True))))
    fig = plots.plot_answer_readout({"gated": run}, window=2)
    left, right = fig.axes
    np.testing.assert_allclose(left.lines[0].get_ydata(), [0.0, 0.25, 0.75, 1.0, 1.0])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [0.0, 0.0, 1 / 3, 0.5, 0.6])
    read_once = plots.plot_answer_readout({"gated": plots.read_metrics(run)}, window=2)  # records, not a path
    np.testing.assert_allclose(read_once.axes[0].lines[0].get_ydata(), left.lines[0].get_ydata())
    res = {"run": {"task": "parity", "baseline": False}, "accuracy": {"test": {"accuracy": 0.9, "n": 10}}}
    written = plots.plot_eval(res, tmp_path / "plots", run / "metrics.jsonl")
    assert tmp_path / "plots" / "answer_readout.png" in written
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "task": 1.0}) + "\n")
    assert not plots.plot_answer_readout(run).axes[0].lines  # a placeholder, not an empty plot
    assert tmp_path / "plots2" / "answer_readout.png" not in plots.plot_eval(res, tmp_path / "plots2",
                                                                              run / "metrics.jsonl")


def test_decoded_table_and_heatmap(tmp_path):
    from jinject import plots
    from jinject.decoding import Decoded, format_decoded

    d = Decoded(problem="ab", pieces=["a", "b", "=", "1", "."], n_prompt=3, variables=["frac_a", "parity"],
                kinds={"frac_a": "numerical", "parity": "categorical"},
                student={"frac_a": np.array([1.0, 0.5, 0.33, 0.25, 0.2]), "parity": np.array([1, 1, 1, 0, 1])},
                teacher={"frac_a": np.array([1.0, 0.5, 0.33, 0.25, 0.2]), "parity": np.array([1, 1, 1, 1, 1])},
                layer=2, student_layer=2, answer="1.", generated="1.")
    assert d.agreement() == pytest.approx(9 / 10)
    table = format_decoded(d)
    assert "0*[1]" in table and "agreement with the teacher: 90.0%" in table
    assert len(table.splitlines()) == 4 + 5 + 2
    fig = plots.plot_decoded(d, tmp_path / "decoded.png")
    assert (tmp_path / "decoded.png").stat().st_size > 5000
    assert len(fig.axes[0].patches) == 1  # one red frame: the single disagreeing cell


def _experiment(name: str):
    """experiments/<name>.py as a module (the folder on sys.path: the scripts import each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    if str(experiments) not in sys.path:
        sys.path.insert(0, str(experiments))
    spec = importlib.util.spec_from_file_location(f"jinject_{name}", experiments / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_batched_student_decoding_equals_jinject_decode(tmp_path):
    """experiments/new_pair_errors.py decodes many problems at once, right-padded, from the student alone;
    every variable at every token must read as `jinject decode` reads it one problem at a time."""
    import tiny

    from jinject.decoding import decode_problem
    from jinject.trainer import train

    npe = _experiment("new_pair_errors")
    run = train(tiny.config(steps=2, checkpoint_every=2, log_every=1), tmp_path / "run",
                components=tiny.components(), progress=False)
    problems = ["()", "([)]", "(((", "{}[](", "]"]  # mixed lengths: batches of 3 pad the shorter ones
    vectors = npe.student_vectors(run, [run.task.example(p) for p in problems], batch=3)
    for problem, vector in zip(problems, vectors, strict=True):
        d = decode_problem(run, problem, with_generation=False)
        got = run.teacher.decode(vector)
        assert len(vector) == len(d.pieces)
        for var in d.variables:
            if d.kinds[var] == "numerical":
                np.testing.assert_allclose(got[var].astype(float), d.student[var].astype(float), atol=1e-4)
            else:
                assert list(got[var]) == list(d.student[var]), (problem, var)


def test_new_pair_patching_restores_exactly_where_the_forward_pass_says(tmp_path):
    """experiments/new_pair_patching.py writes the clean twin's hidden state k into the forward pass. Its
    three exact cases: every position at k = 0 is the clean run (restored 1); the marker's last hidden state
    alone sets the answer logits (restored 1), and the new pair's last hidden states cannot reach them
    (restored 0). In between, patching the new pair early changes the answer."""
    import tiny

    from jinject.trainer import train

    npp = _experiment("new_pair_patching")
    run = train(tiny.config(steps=2, checkpoint_every=2, log_every=1), tmp_path / "run",
                components=tiny.components(), progress=False)
    assert npp.clean_twin("(<[>])<>") == "(([)])()"
    res = npp.patching_curves(run, ["(<>)", "<>[]", "<<>>"])
    n = run.model.config.n_layers
    assert res["n"] == 3 and len(res["curves"]["all"]) == n + 1
    np.testing.assert_allclose(res["curves"]["all"][0][0], 1.0, atol=1e-4)
    np.testing.assert_allclose(res["curves"]["marker"][n][0], 1.0, atol=1e-4)
    np.testing.assert_allclose(res["curves"]["new pair"][n][0], 0.0, atol=1e-4)
    assert abs(res["curves"]["new pair"][0][0]) > 0.01  # the unseen tokens' embeddings do matter
    parts = res["marker_parts"]  # at the aligned hidden states: the adapter's span, its complement, random
    assert [p["k"] for p in parts] == [int(k) for k in run.student_index]
    assert all(0 < p["dim"] <= run.model.config.d_model for p in parts)  # tiny: D_t > D_s, the whole space
    np.testing.assert_allclose([parts[0][s][0] for s in ("program", "complement", "random")], 0.0, atol=1e-6)
    assert npp.patching_curves(run, []) == {"n": 0}


def test_interchange_script_caches_per_split_and_refuses_a_baseline(tmp_path, monkeypatch, capsys):
    """experiments/interchange.py reruns the test on an evaluated run's own examples (its n and seed), caches
    them per split, and reads the cache without loading the run again."""
    ich = _experiment("interchange")
    run_dir = tmp_path / "parity-s0"
    run_dir.mkdir()
    (run_dir / "eval.json").write_text(json.dumps({"settings": {"n_examples": 60, "eval_seed": 3}}))
    monkeypatch.setattr(ich, "load_run", lambda d: _fake_run(False))
    first = ich.run_interchange(run_dir, ["test"])["test"]
    assert first["n"] == 60 and first["prompt"]["answer"]["donor"] == 1.0
    assert ich.columns(first)["margin"] == 1.0 - first["prompt"]["random"]["donor"]

    def no_reload(*_, **__):
        raise AssertionError("a cached split must not be computed again")

    monkeypatch.setattr(ich, "load_run", no_reload)
    monkeypatch.setattr(sys, "argv", ["interchange.py", str(run_dir)])
    ich.main()
    assert "| parity-s0 | 1.000 | " in capsys.readouterr().out
    # a split cached before the test reported its norms gets the norms alone, equal to a full run's
    stale = json.loads((run_dir / ich.CACHE).read_text())
    del stale["test"]["norms"]
    (run_dir / ich.CACHE).write_text(json.dumps(stale))
    monkeypatch.setattr(ich, "load_run", lambda d: _fake_run(False))
    monkeypatch.setattr(ich, "interchange_test", no_reload)
    assert ich.run_interchange(run_dir, ["test"])["test"]["norms"] == pytest.approx(first["norms"])
    # paired by prediction: its own entry beside the by-answer one, which stays
    monkeypatch.setattr(ich, "interchange_test", ev.interchange_test)
    by_pred = ich.run_interchange(run_dir, ["test"], by="prediction")["test"]
    assert by_pred["by"] == "prediction" and by_pred["clean"]["receiver"] == 1.0
    assert set(json.loads((run_dir / ich.CACHE).read_text())) == {"test", "test by prediction"}
    (run_dir / ich.CACHE).unlink()
    monkeypatch.setattr(ich, "load_run", lambda d: SimpleNamespace(**{**vars(_fake_run(True)), "adapter": None}))
    with pytest.raises(SystemExit, match="baseline run has no adapter"):
        ich.run_interchange(run_dir, ["test"])


def test_compare_tables_mean_and_std_over_seeds(tmp_path):
    cmp = _experiment("compare")
    for name in ("cpu", "paper"):  # the presets build valid configs for every task and variant
        preset = cmp.load_preset(name)
        for task in preset["tasks"]:
            for variant in cmp.VARIANTS:
                cfg = cmp.make_config(preset, task, variant, 1)
                assert cfg.task == task and cfg.baseline == (variant == "baseline") and cfg.seed == 1
    assert cmp.load_preset("paper")["train"]["model"] == "gpt2-large"
    assert cmp.make_config(cmp.load_preset("paper"), "count", "injected", 0).steps == 20000

    def fake_eval(variant, seed, acc):
        injected = variant == "injected"
        return {"run": {"task": "parity", "baseline": not injected, "seed": seed, "step": 5,
                        "train_seconds": 16.0, "eval_seconds": 90.0},  # 16 s: a resumed call's own part
                "accuracy": {"test": {"accuracy": acc, "n": 10}, "ood": {"accuracy": acc / 2, "n": 10}},
                "retention": {"ppl_original": 20.0, "ppl_trained": 21.0 + seed, "kl": 0.01, "n_tokens": 64},
                "decoding": {"mean": 0.9, "answer_var": "p", "student_index": [0, 1],
                             "variables": {"p": {"per_layer": [None, 0.8], "final": 0.8}}} if injected else None,
                "causal": {"norms": [0, 5], "answer_subspace": [acc, 0.1], "random_subspace": [acc, acc],
                           "dim": 2, "student_index": 1, "n": 10} if injected else None}

    for variant, accs in (("injected", [0.8, 1.0]), ("baseline", [0.5, 0.7])):
        for seed, acc in enumerate(accs):
            d = cmp.run_dir(tmp_path, "parity", variant, seed)
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps(fake_eval(variant, seed, acc)))
            if variant == "injected":  # the steps of every session, as the trainer logs them
                times = (400.0, 300.0, 152.0 - 4 * seed)
                (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "time": t}) + "\n"
                                                         for i, t in enumerate(times)))
    records = cmp.collect(tmp_path)
    assert len(records) == 4
    rows = {r["metric"]: r for r in cmp.summarise(records)}
    test = rows["accuracy/test"]
    assert test["injected_mean"] == pytest.approx(0.9) and test["injected_std"] == pytest.approx(np.sqrt(0.02))
    assert test["baseline_mean"] == pytest.approx(0.6) and test["baseline_n"] == 2
    assert rows["decoding/p (answer) at top layer"]["injected_mean"] == pytest.approx(0.8)
    assert "baseline_mean" not in rows["causal/noise 5: answer subspace"]
    (tmp_path / "notes.md").write_text("Status: two of three seeds.\n")
    md = cmp.write_tables(tmp_path, records, cmp.load_preset("cpu")).read_text()
    assert "Status: two of three seeds." in md
    assert "seeds: [0, 1]; trained steps: [5]" in md  # what the runs did, whatever the preset says
    assert "| accuracy/test | 0.900 ± 0.141 (n=2) | 0.600 ± 0.141 (n=2) |" in md
    assert "| causal/noise 5: answer subspace | 0.100 ± 0.000 (n=2) | — |" in md
    # the training time counts every session of a resumed run (from metrics.jsonl), not the last call's
    assert "| time/train seconds | 850 ± 3 (n=2) | 16 ± 0 (n=2) |" in md
    assert "| time/eval seconds | 90 ± 0 (n=2) | 90 ± 0 (n=2) |" in md
    assert (tmp_path / "ood_parity.png").exists()
    import csv

    summary = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert {r["metric"] for r in summary} == set(rows)
    assert len(list(csv.DictReader(open(tmp_path / "runs.csv")))) == sum(len(r["metrics"]) for r in records)


def test_compare_tables_sum_the_time_and_list_the_setting_each_run_trained_under(tmp_path):
    """The preset's budget is its summed wall time; a seed's numbers reproduce only under the same XLA setting."""
    cmp = _experiment("compare")
    single = {"jax": "0.10.2", "cpus_usable": 1, "XLA_FLAGS": cmp.SINGLE_THREAD_XLA, "OMP_NUM_THREADS": "1"}
    for seed, env in enumerate((single, single, None)):
        d = cmp.run_dir(tmp_path, "parity", "baseline", seed)
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps({
            "run": {"task": "parity", "baseline": True, "seed": seed, "step": 5, "train_seconds": 3000.0,
                    "eval_seconds": 600.0}, "accuracy": {"test": {"accuracy": 1.0, "n": 10}}}))
        if env is not None:  # a resumed run: two calls under one setting count once
            lines = "".join(json.dumps({"start_step": s, **env}) + "\n" for s in (0, 3))
            (d / "environment.jsonl").write_text(lines + '{"start_step": 6, "ja')  # a kill cut the last line
    md = cmp.write_tables(tmp_path, cmp.collect(tmp_path)).read_text()
    assert ("3 runs: 9000 s training + 1800 s evaluation = 3.00 h of one core, about 1.50 h with `--jobs 2`"
            in md)
    assert (f"- jax=0.10.2, jaxlib=None, device=None, cpu=None, cpus_usable=1, XLA_FLAGS={cmp.SINGLE_THREAD_XLA}, "
            "OMP_NUM_THREADS=1: 2 runs (parity baseline s0, parity baseline s1)") in md
    assert "- not recorded: 1 run (parity baseline s2)" in md


def test_ablation_configs_and_table(tmp_path, capsys):
    abl = _experiment("ablation")
    cmp = _experiment("compare")
    preset = abl.load_preset("cpu")
    for name in abl.CONFIGS:  # every configuration is a valid TrainConfig on the cpu preset's dyck run
        cfg = abl.make_config(preset, name, 0)
        assert cfg.task == "shuffle-dyck" and cfg.task_options["max_len"] == 12
    assert abl.make_config(preset, "today", 0).intervene_at == 4
    assert abl.make_config(preset, "+frame-bos", 1).task_options["bos"] is True
    assert abl.make_config(preset, "baseline", 0).variant == "baseline"
    assert abl.make_config(preset, "today", 0).layer_stride == 1  # the ablation starts from before the choice
    offset6 = abl.make_config(preset, "all-fixes+stride2+offset6", 0)
    for lam in ("0.3", "3", "10"):  # the align-weight rows: only λ differs from offset 6
        assert abl.make_config(preset, f"all-fixes+stride2+offset6+align{lam}", 0) == replace(
            offset6, align_weight=float(lam))
    # on another task: the chosen settings with one part taken out; the dyck-bound rows refuse with the fix
    count = abl.make_config(preset, "all-fixes+stride2-intervene", 0, "count")
    assert (count.task, count.intervene, count.align, count.layer_stride) == ("count", False, True, 2)
    assert count.task_options["bos"] is True and count.task_options["max_len"] == preset["tasks"]["count"][
        "task_options"]["max_len"]
    assert abl.make_config(preset, "all-fixes+stride2-warmup", 0, "count").adapter_warmup_steps == 0
    assert abl.make_config(preset, "all-fixes+stride2+gate", 0, "int-sum").intervene_gate == 0.95
    assert abl.make_config(preset, abl.CHOSEN, 1, "count") == cmp.make_config(preset, "count", "injected", 1)
    for name in ("today", "+stride2", "all-fixes+stride2+balance"):
        with pytest.raises(ValueError, match="tied to the shuffle-dyck teacher.*all-fixes\\+stride2-align"):
            abl.make_config(preset, name, 0, "count")
    with pytest.raises(SystemExit):
        abl.main(["--task", "count", "--configs", "today", "--aggregate-only", "--out", str(tmp_path / "c")])
    assert "tied to the shuffle-dyck teacher" in capsys.readouterr().err
    # the preset runs exactly the chosen configuration, and its baseline the matching ablation baseline
    assert abl.make_config(preset, abl.CHOSEN, 2) == cmp.make_config(preset, "shuffle-dyck", "injected", 2)
    assert abl.make_config(preset, "baseline+frame-bos", 2) == cmp.make_config(preset, "shuffle-dyck", "baseline", 2)
    from jinject.demo import DEMO, DEMO_EVAL, demo_config

    assert demo_config() == DEMO and demo_config(20).adapter_warmup_steps == 2  # `--steps 20` stays valid

    assert DEMO == cmp.make_config(preset, "shuffle-dyck", "injected", 0)  # `make demo` is the preset's seed 0
    assert DEMO_EVAL == {**preset["eval"], "noise_norms": tuple(float(x) for x in preset["eval"]["noise_norms"])}

    def fake(seed, acc, marker):
        return {"run": {"task": "shuffle-dyck", "seed": seed, "step": 300, "train_seconds": 600.0,
                        "eval_seconds": 90.0},
                "accuracy": {"test": {"accuracy": acc, "n": 200}},
                "decoding": {"mean": 0.9, "student_index": [0, 1], "answer_var": "answer",
                             "variables": {"need": {"per_layer": [None, 0.8], "final": 0.8, "written": 0.8}},
                             "marker": {"need": {"per_layer": [None, marker], "final": marker, "written": marker}}},
                "causal": {"norms": [0], "answer_subspace": [acc], "random_subspace": [acc], "dim": 4,
                           "relative": {"fractions": [0.5], "norms": [100.0], "median_norm": 200.0, "mean_norm": 210.0,
                                        "answer_subspace": [0.2], "random_subspace": [0.9]}}}

    for seed, acc, marker in ((0, 0.9, 0.5), (1, 1.0, 0.7)):
        d = tmp_path / "runs" / f"today-s{seed}"
        d.mkdir(parents=True)
        (d / "eval.json").write_text(json.dumps(fake(seed, acc, marker)))
        gate = [{"answer_readout": 0.5, "intervened": 0.0}, {"answer_readout": 1.0, "intervened": 1.0}][:2 - seed]
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "align_per_layer": [0.1, 0.3], **g}) + "\n"
                                                 for i, g in enumerate(gate)))
    md = abl.write_tables(tmp_path, abl.collect(tmp_path)).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| today | 0.950"))
    assert "0.950 ± 0.071" in row
    assert "| today | 0.800 ± 0.000 | 0.600 ± 0.141 |" in md  # dec need, dec@? need
    assert "0.200 ± 0.000 | 0.900 ± 0.000" in md and "| 0.400 ± 0.000 |" in md  # causal; align sum
    # the marker readout over the last steps and the fraction of steps the (gated) intervention cut
    assert "| today | 0.625 ± 0.177 | 0.250 ± 0.354 |" in md
    assert abl.write_readout_figure(tmp_path).read_bytes()[:4] == b"\x89PNG"  # both runs logged the readout
    # a step-budget override shows in the title; a step count below 1 is refused before any work
    assert abl.main(["--aggregate-only", "--steps", "900", "--out", str(tmp_path)]) == 0
    title = (tmp_path / "results.md").read_text().splitlines()[0]
    assert title.startswith("# shuffle-dyck ablation (cpu preset: smollm2-135m, 900 steps")
    with pytest.raises(SystemExit):
        abl.main(["--steps", "0", "--aggregate-only", "--out", str(tmp_path)])
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_the_committed_results_page_carries_the_committed_notes():
    """results.md is what readers open; after editing notes.md the tables must be rebuilt
    (`python experiments/compare.py --preset cpu --aggregate-only`), or the page says something stale."""
    from pathlib import Path

    out = Path(__file__).resolve().parents[1] / "results" / "cpu"
    if not (out / "notes.md").exists():
        pytest.skip("no committed cpu results")
    assert (out / "notes.md").read_text().strip() in (out / "results.md").read_text()


def test_compare_keeps_only_the_final_checkpoint_of_an_evaluated_run(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for name in ("50", "100", "corrupt-100"):
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "data").write_bytes(b"x")
    (ckpt / "jinject-digests.json").write_text("{}")
    _experiment("compare").keep_final_checkpoint(ckpt, 100)
    # the final step and the evidence (digests, a damaged step kept aside) stay
    assert sorted(p.name for p in ckpt.iterdir()) == ["100", "corrupt-100", "jinject-digests.json"]
    assert (ckpt / "100" / "data").read_bytes() == b"x"


def test_a_run_killed_without_a_traceback_is_named_in_the_log():
    """The out-of-memory killer's SIGKILL leaves no traceback: the queue's line has to say what happened."""
    import subprocess
    import sys

    cmp = _experiment("compare")
    killed = subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    why = cmp.describe_exit(killed.returncode)
    assert why.startswith("killed by SIGKILL") and "out-of-memory" in why and "resumes" in why
    assert cmp.describe_exit(subprocess.run([sys.executable, "-c", "raise SystemExit(2)"]).returncode) == "exit 2"


def test_generation_accuracy_with_the_real_kv_cached_generate():
    """On a random tiny Llama, the jitted KV-cached generate and a plain argmax loop score the same answers
    (batching sorts prompts by length and pads the last batch: neither may change a row's output)."""
    from jinject.models import ModelConfig, create_model

    cfg = ModelConfig(family="llama", vocab_size=8, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      activation="silu", max_position_embeddings=64)
    model = create_model(cfg, 3)
    task, encoder = FakeTask(), PieceEncoder(FakeTokenizer())
    examples = task.examples("test", 6, 0) + task.examples("ood_long", 5, 0)
    real = ev.generation_accuracy(model, encoder, examples, batch_size=4, return_outputs=True)
    plain = ev.generation_accuracy(model, encoder, examples, batch_size=4, generate_fn=fake_generate,
                                   return_outputs=True)
    assert real["outputs"] == plain["outputs"]
    assert real["accuracy"] == plain["accuracy"]
    # the random model's answers are scored as the exact-match rule says
    answers = [encoder.encode(e.answer_pieces) for e in examples]
    assert real["correct"] == [ev.exact_match(g, a, ID["."]) for g, a in zip(real["outputs"], answers, strict=True)]


@pytest.mark.parametrize("at", [1, 2])  # 2 = the final residual: the full-logits path
def test_teacher_forced_exact_on_a_real_model_matches_full_logits(at):
    from jinject.models import ModelConfig, create_model

    cfg = ModelConfig(family="gpt2", vocab_size=8, d_model=16, n_layers=2, n_heads=2, max_position_embeddings=32)
    model = create_model(cfg, 1)
    arrays = encode_examples(FakeTask().examples("test", 40, 3), PieceEncoder(FakeTokenizer()), None)
    # make some answers right: targets = the model's own argmax at the first answer position
    logits = np.asarray(model(jnp.asarray(arrays.inputs)).logits)
    targets = arrays.targets.copy()
    for r in range(0, 40, 2):
        pos = np.flatnonzero(arrays.answer_mask[r])
        targets[r, pos] = logits[r, pos].argmax(-1)
    arrays = type(arrays)(**{**arrays.__dict__, "targets": targets})
    right = np.all((logits.argmax(-1) == targets) | (arrays.answer_mask == 0), axis=-1)
    assert 0.4 <= right.mean() < 1.0
    assert ev.teacher_forced_exact(model, arrays, batch_size=16) == pytest.approx(right.mean())
    adapter = {"w": np.asarray(jax.random.normal(jax.random.key(0), (1, 16, 6))), "b": np.zeros((1, 6))}
    res = ev.causal_test(model, adapter, np.array([2, 3]), 0, at, arrays, norms=(0.0, 100.0), batch_size=16)
    assert res["answer_subspace"][0] == pytest.approx(right.mean())
    assert res["random_subspace"][0] == pytest.approx(right.mean())
    assert res["answer_subspace"][1] < right.mean()  # huge noise where the model reads does change answers


def test_cli_eval_and_decode(tmp_path, monkeypatch, capsys):
    import jinject.compiler
    import jinject.generation
    import jinject.rundir
    import jinject.tasks
    import jinject.trainer
    from jinject import cli

    monkeypatch.setattr(jinject.generation, "generate", fake_generate, raising=False)
    # the command line reads the run directory and checks its options before loading: fake each stage
    monkeypatch.setattr(jinject.rundir, "read_run_config", lambda d: _fake_run(False).config)
    monkeypatch.setattr(jinject.tasks, "get_task", lambda name, **_: FakeTask())
    monkeypatch.setattr(jinject.compiler, "compile_teacher", lambda *a, **k: FakeTeacher())
    monkeypatch.setattr(jinject.trainer, "build", lambda config, say=None: (FakeTask(), FakeTeacher(), None, None))
    monkeypatch.setattr(jinject.trainer, "load_run", lambda d, **_: _fake_run(False))
    assert cli.main(["eval", str(tmp_path), "--n", "8", "--n-decode", "8", "--n-text", "2", "--text-seq-len", "16",
                     "--noise-norms", "0", "10"]) == 0
    out = capsys.readouterr().out
    assert "exact-match accuracy" in out and "causal test" in out
    assert json.loads((tmp_path / "eval.json").read_text())["causal"]["norms"] == [0.0, 10.0]
    assert (tmp_path / "plots" / "decoding_accuracy.png").exists()
    png = tmp_path / "decoded.png"
    assert cli.main(["decode", str(tmp_path), "abab", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "answer '0.', model says '0.'" in out and "agreement with the teacher: 100.0%" in out
    assert png.stat().st_size > 5000
    assert cli.main(["decode", str(tmp_path), "abc"]) == 2  # a clear one-line error, not a traceback
    assert "is not a parity problem" in capsys.readouterr().err


def test_offset_sweep_reads_the_criteria_seed_by_seed(tmp_path, capsys):
    """experiments/offset_sweep.py: each offset row against the baseline of the same seed, by the criteria set
    before the runs (new pair within 0.02 on every seed; almost-balanced >= the baseline and +0.05 in the mean;
    test within 0.02; the causal margin >= 0.20 in the mean)."""
    sweep = _experiment("offset_sweep")
    assert sweep.offset_rows() == {0: "all-fixes+stride2", 6: "all-fixes+stride2+offset6",
                                   10: "all-fixes+stride2+offset10", 14: "all-fixes+stride2+offset14"}

    def write(name, seed, test, ab, new_pair, ans=None, rand=None):
        d = tmp_path / "runs" / f"{name}-s{seed}"
        d.mkdir(parents=True)
        acc = {"test": test, "ood-length": 1.0, "ood-almost-balanced": ab, "ood-new-pair": new_pair}
        res = {"run": {"task": "shuffle-dyck", "seed": seed}, "accuracy": {k: {"accuracy": v, "n": 200}
                                                                           for k, v in acc.items()}}
        if ans is not None:
            res["causal"] = {"norms": [0.0], "answer_subspace": [test], "random_subspace": [test], "dim": 4,
                             "relative": {"fractions": [0.3, 1.0], "norms": [60.0, 200.0], "median_norm": 200.0,
                                          "mean_norm": 210.0, "answer_subspace": [0.9, ans],
                                          "random_subspace": [0.9, rand]}}
        (d / "eval.json").write_text(json.dumps(res))

    for seed, base_ab, base_np in ((1, 0.70, 0.975), (2, 0.80, 0.995)):
        write("baseline+frame-bos", seed, 0.99, base_ab, base_np)
        write("all-fixes+stride2", seed, 0.995, base_ab + 0.2, 0.78, ans=0.5, rand=0.8)  # loses the new pair
        # offset 10: new pair exactly 4 of 200 below (0.955 - 0.975 is -0.0200...02 in floats: still within 0.02),
        # +0.05 on almost-balanced, causal margin 0.25 / 0.15 (mean 0.20)
        write("all-fixes+stride2+offset10", seed, 0.99, base_ab + 0.05, {1: 0.955, 2: 0.975}[seed], ans=0.5,
              rand=0.75 if seed == 1 else 0.65)
    write("all-fixes+stride2+offset14", 1, 0.99, 0.9, 0.99, ans=0.7, rand=0.7)  # one seed only: not read
    rows, baselines = sweep.sweep(tmp_path)
    assert sorted(rows) == [0, 10, 14] and sorted(rows[14]) == [1]
    assert rows[10][1]["causal margin"] == pytest.approx(0.25)
    assert np.isnan(baselines[1]["causal margin"])  # a baseline has no causal test; a run without one fails (4)
    assert sweep.criteria(baselines, baselines)["causal"] is False
    assert sweep.criteria(rows[10], baselines) == {"new pair": True, "almost-balanced": True,
                                                   "in distribution": True, "causal": True}
    assert sweep.criteria(rows[0], baselines) == {"new pair": False, "almost-balanced": True,
                                                  "in distribution": True, "causal": True}
    worse = {s: {**r, "ood-almost-balanced": baselines[s]["ood-almost-balanced"] + (0.2 if s == 1 else -0.01)}
             for s, r in rows[10].items()}  # +0.095 in the mean, but below on seed 2
    assert sweep.criteria(worse, baselines)["almost-balanced"] is False
    weak = {s: {**r, "causal margin": 0.19} for s, r in rows[10].items()}
    assert sweep.criteria(weak, baselines)["causal"] is False
    lost = {s: {**r, "ood-new-pair": r["ood-new-pair"] - 0.005} for s, r in rows[10].items()}  # 5 of 200 below
    assert sweep.criteria(lost, baselines)["new pair"] is False
    with pytest.raises(ValueError, match="the same seeds"):
        sweep.criteria(rows[14], baselines)
    assert sweep.main([str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "| 10 | [1, 2] | 0.990 / 0.990 (0.990 / 0.990) |" in md
    assert "| 0.250 / 0.150 (—) | met | met | met | met |" in md
    assert (tmp_path / "offsets.png").read_bytes()[:4] == b"\x89PNG"
    for d in (tmp_path / "runs").glob("all-fixes+stride2*"):
        (d / "eval.json").unlink()
    with pytest.raises(SystemExit, match="holds no evaluated offset row"):
        sweep.sweep(tmp_path)
