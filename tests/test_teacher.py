"""Compiled teachers: forward == tracr, next-token invariant, verification, cache, decoding, bad input.

Small teachers (max_seq_len 11-18) compiled once per session into a temporary cache directory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tracr.rasp import rasp

from jinject.compiler import compile_teacher, teacher_fingerprint
from jinject.tasks import get_task, rasp_task
from jinject.verify import verify_teacher

SMALL = {
    "shuffle-dyck": {"min_len": 0, "max_len": 8, "max_input_len": 8, "ood_max_len": 12},  # n = 11
    "count": {"min_len": 1, "max_len": 14, "max_input_len": 14, "ood_max_len": 20},  # n = 18, 2-digit counts
    "int-sum": {},  # the original size: 3-digit operands, n = 14
}


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="session")
def teachers(cache):
    out = {}
    for name, opts in SMALL.items():
        task = get_task(name, **opts)
        out[name] = (task, compile_teacher(task, cache_path=cache))
    return out


def first_symbol_program(max_seq_len: int) -> rasp.SOp:
    """User-program example: "what was the first symbol?", as a causal next-token predictor."""
    tok, idx = rasp.tokens, rasp.indices
    first = rasp.Aggregate(rasp.Select(idx, idx, lambda k, q: k == 0), tok).named("first")
    seen = rasp.categorical(rasp.SelectorWidth(rasp.Select(tok, tok, lambda k, q: k == "?"))).named("seen_marker")
    where = rasp.SequenceMap(lambda s, t: "mark" if t == "?" else ("answer" if s > 0 else "input"),
                             seen, tok).named("where")
    return rasp.SequenceMap(lambda f, w: f if w == "mark" else ("." if w == "answer" else "_"), first, where)


def first_symbol_task():
    return rasp_task("first-symbol", first_symbol_program, vocab="abc", answer_tokens="abc",
                     max_seq_len=9, min_len=1)


@pytest.mark.parametrize("name", list(SMALL))
def test_residuals_equal_tracr_forward(teachers, name):
    task, t = teachers[name]
    assert t.build.tracr_model is not None and not t.build.from_cache
    exs = task.examples("train", 8, 1, max_seq_len=t.max_seq_len)
    ids = t.batch([e.teacher_tokens for e in exs], length=t.n_positions)
    out = jax.jit(t.build.tracr_model.forward)(t.build.tracr_model.params, jnp.asarray(ids)).transformer_output
    want = np.stack([out.input_embeddings, *out.residuals])
    got = np.asarray(t.residuals(t.params, ids, sublayers=True))
    np.testing.assert_allclose(got, want, atol=1e-4)
    res = jax.jit(t.residuals)(t.params, jnp.asarray(ids))  # params as an argument, not a constant
    assert res.shape == (t.n_layers + 1, len(exs), t.n_positions, t.d_model) and res.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(res), got[::2], atol=1e-6)
    assert t.d_model == len(t.labels) and t.param_count < t.build.tracr_param_count


@pytest.mark.parametrize("name", list(SMALL))
def test_next_token_invariant(teachers, name):
    """Answer variable at teacher position t+1 == teacher token of piece t+1 at every predicting t."""
    task, t = teachers[name]
    exs = task.examples("train", 150, 2, max_seq_len=t.max_seq_len) + task.examples(
        "test", 50, 2, max_seq_len=t.max_seq_len)
    ids = t.batch([e.teacher_tokens for e in exs], length=t.n_positions)
    ans = t.variables_from_ids(ids)[t.answer_var]
    for b, e in enumerate(exs):
        for pos in e.predict_positions:
            assert ans[b, pos + 1] == e.teacher_tokens[pos + 1], (e.problem, pos)
    assert set(t.answer_dims) == set(t.var_info[t.answer_var].dims) and len(t.answer_dims) > 2


@pytest.mark.parametrize("name", list(SMALL))
def test_verify_against_interpreter_and_oracle(teachers, name):
    task, t = teachers[name]
    report = verify_teacher(t, n_random=40, seed=1)
    assert report.ok, report.summary()
    assert report.n_edge >= 5 and set(report.var_total) == set(t.var_info)


def test_intsum_equals_is_the_marker_and_answer_holds_the_digits(teachers):
    """The original defect: `=` never mapped to the marker, answer variable always 0."""
    task, t = teachers["int-sum"]
    for problem, digits in [("213+391", "604"), ("999+1", "1000"), ("450+450", "900"), ("0+0", "0")]:
        ex = task.example(problem)
        m = len(ex.prompt_pieces)  # the marker is teacher token m-1, at teacher position m
        assert ex.prompt_pieces[-1] == " =" and ex.teacher_tokens[m - 1] == "="
        ans = t.variables_from_ids(t.batch([ex.teacher_tokens]))["answer"][0]
        assert "".join(ans[m: m + len(digits)]) == digits and ans[m + len(digits)] == "."
        assert t.answer(ex.prompt) == digits
        assert t.variables(ex.prompt)["answer"][-1] == digits[0]
    assert not task.fits("1000+1", t.max_seq_len)  # short enough, but 4 digits: refused, not wrong
    with pytest.raises(ValueError, match="up to 3 digits"):
        t.answer("1000 + 1 =")


def test_answer_variables_and_decode(teachers):
    task, t = teachers["count"]
    prompt = task.prompt("xxyxxxxxxxxxy")
    assert t.answer(prompt) == "11" == task.solve("xxyxxxxxxxxxy")
    v = t.variables(prompt)
    assert set(v) == set(t.variable_names) and all(len(x) == 14 for x in v.values())
    assert v["n_x"] == [1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 11] and v["tokens"][-1] == "="
    full = t.variables(prompt, with_answer=True)
    assert full["tokens"][-2:] == ["1", "1"] and full["answer"][-1] == "."
    # decode a hand-made residual: one-hot of answer:"7"
    r = np.zeros(t.d_model, np.float32)
    r[t.answer_dims[t.answer_values.index("7")]] = 1.0
    assert t.decode(r)["answer"] == "7" and t.decode_indices(r)["n_x"] == -1
    dyck_task, d = teachers["shuffle-dyck"]
    assert d.answers([dyck_task.prompt(p) for p in ["([)]", "())(", ""]]) == ["yes", "no", "yes"]
    info = d.var_info["any_unmatched"]
    assert not info.categorical and info.layer == 3 and d.var_info["tokens"].layer == 0


def test_bad_input_raises_clear_errors(teachers):
    task, t = teachers["count"]
    with pytest.raises(ValueError, match="'z'"):
        t.answer(task.prompt("xzx"))
    with pytest.raises(ValueError, match="max_seq_len=18"):
        t.answer(task.prompt("x" * 16))
    with pytest.raises(ValueError, match="max_seq_len"):
        t.encode(["x"] * 19)
    with pytest.raises(ValueError, match="'q'"):
        t.answer(" x q =")


def test_cache_second_call_loads_same_teacher(teachers, cache):
    task, t = teachers["shuffle-dyck"]
    again = compile_teacher(get_task("shuffle-dyck", **SMALL["shuffle-dyck"]), cache_path=cache)
    assert again.build.from_cache and again.build.fingerprint == t.build.fingerprint and again.labels == t.labels
    assert again.build.load_seconds < t.build.compile_seconds
    for a, b in zip(jax.tree_util.tree_leaves(again.params), jax.tree_util.tree_leaves(t.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the key depends on the program's behaviour, not on object identities or creation order
    assert teacher_fingerprint(first_symbol_task()) == teacher_fingerprint(first_symbol_task())
    other = rasp_task("first-symbol", lambda n: rasp.SequenceMap(lambda a, b: a, rasp.tokens, rasp.indices),
                      vocab="abc", answer_tokens="abc", max_seq_len=9)
    assert teacher_fingerprint(other) != teacher_fingerprint(first_symbol_task())
    assert teacher_fingerprint(task, 12) != t.build.fingerprint


def test_user_rasp_task(cache):
    task = first_symbol_task()
    assert task.solve("bca") == "b"  # the RASP interpreter is the oracle
    ex = task.example("bca")
    assert ex.prompt == " b c a ?" and ex.answer_pieces == (" b", ".")
    assert ex.teacher_tokens == ("b", "c", "a", "?", "b", ".")
    t = compile_teacher(task, cache_path=cache)
    assert t.answer(" c a b ?") == "c"
    report = verify_teacher(t, n_random=30)
    assert report.ok, report.summary()
    with pytest.raises(ValueError, match="'d'"):
        task.prompt("abd")
