"""Input validation below the command line: TrainConfig field types, problem strings, teacher sizes, task
options, corpora, JSON output, the run lock. Every refusal must name the field/value and the reason."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest

from jinject import rundir
from jinject.compiler import compile_teacher
from jinject.config import TrainConfig
from jinject.data import load_corpus, split_corpus
from jinject.tasks import get_task
from jinject.tasks.fit import check_teacher_size

# ------------------------------------------------------------------------------------------ TrainConfig

INT_FIELDS = ["steps", "batch_size", "text_batch_size", "text_seq_len", "n_train", "seed", "layer_offset",
              "layer_stride", "warmup_steps", "adapter_warmup_steps", "mesh_data", "mesh_fsdp", "checkpoint_every",
              "keep_checkpoints", "log_every"]
FLOAT_FIELDS = ["align_weight", "kl_weight", "marker_weight", "lr", "adapter_lr", "weight_decay", "intervene_gate"]
BOOL_FIELDS = ["baseline", "align", "intervene", "per_layer_adapter", "align_per_variable", "remat"]
OPTIONAL = {"teacher_max_seq_len": 8, "intervene_at": 3, "corpus": "text.txt", "grad_clip": 1.0,
            "align_exclude": ("indices",)}


def test_every_field_has_a_type_check():
    checked = set(INT_FIELDS + FLOAT_FIELDS + BOOL_FIELDS + list(OPTIONAL) + ["task", "model", "task_options",
                                                                                  "schedule", "dtype"])
    assert checked == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [2.5, "4", True, None, 4.0])
def test_integer_fields_refuse_floats_strings_booleans_and_none(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be an integer.*got {value!r}"):
        TrainConfig(**{name: value})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_float_fields_accept_integers_and_refuse_strings_and_non_finite(name):
    assert getattr(TrainConfig(**{name: 1}), name) == 1
    assert type(getattr(TrainConfig(**{name: np.float32(0.5)}), name)) is float  # numpy scalars become Python
    for bad, why in [("1e-4", "a number"), (True, "a number"), (None, "a number"), (math.nan, "a finite number"),
                     (math.inf, "a finite number")]:
        with pytest.raises(ValueError, match=rf"^{name} must be {why}"):
            TrainConfig(**{name: bad})


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_boolean_fields_refuse_non_booleans(name):
    for bad in (1, "true", None):
        with pytest.raises(ValueError, match=rf"^{name} must be true or false"):
            TrainConfig(**{name: bad})
    assert getattr(TrainConfig(**{name: np.bool_(False)}), name) is False


def test_optional_fields_take_none_or_their_type():
    for name, good in OPTIONAL.items():
        assert getattr(TrainConfig(**{name: None}), name) is None
        assert getattr(TrainConfig(**{name: good}), name) == good
    with pytest.raises(ValueError, match=r"^teacher_max_seq_len must be an integer or None, got 8.5"):
        TrainConfig(teacher_max_seq_len=8.5)
    with pytest.raises(ValueError, match=r"^corpus must be a string or None"):
        TrainConfig(corpus=3)
    with pytest.raises(ValueError, match=r"^task_options must be a dict"):
        TrainConfig(task_options=[("max_len", 3)])
    with pytest.raises(ValueError, match=r"^task_options must be a dict"):
        TrainConfig(task_options={"max_len": math.nan})  # config.json would not be standard JSON


def test_range_checks_name_the_value_and_the_reason():
    cases = [(dict(lr="1e-4"), r"lr must be a number, got '1e-4'"),
             (dict(grad_clip=-1.0), r"grad_clip must be > 0 \(a negative bound flips the sign"),
             (dict(teacher_max_seq_len=0), r"teacher_max_seq_len must be >= 1 \(None: the task's default\)"),
             (dict(n_train=10**9), r"n_train=1,000,000,000 is above the limit of 1,000,000"),
             (dict(seed=-1), r"seed must be >= 0"), (dict(seed=2**40), r"seed must be below 2\*\*31"),
             (dict(mesh_data=0), r"mesh_data must be >= 1 \(or -1"), (dict(model=""), r"model must be a model name")]
    for kwargs, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            TrainConfig(**kwargs)
    assert TrainConfig(grad_clip=0.0).grad_clip == 0.0  # 0 keeps its old meaning: no clipping


def test_config_json_problems_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{task: "x"}')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON \(Expecting property name"):
        TrainConfig.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{path} holds a JSON list"):
        TrainConfig.load(path)
    path.write_text(json.dumps({**json.loads(TrainConfig().to_json()), "steps": "ten"}))
    with pytest.raises(ValueError, match=rf"{path}: steps must be an integer"):
        TrainConfig.load(path)
    TrainConfig(steps=7).save(path)
    assert TrainConfig.load(path).steps == 7 and not list(tmp_path.glob(".config.json.tmp*"))


# ------------------------------------------------------------------------------------- problem strings


@pytest.mark.parametrize("task_name, text, pattern", [
    ("shuffle-dyck", "ab", r"symbol 'a' is not one of the shuffle-dyck symbols"),
    ("shuffle-dyck", "( [ x ?", r"symbol 'x' is not one of the shuffle-dyck symbols"),
    ("shuffle-dyck", "   ", r"problem is empty \(only whitespace\)"),
    ("shuffle-dyck", "", r"problem is empty$"),
    ("shuffle-dyck", "(\u00e9)", r"character '\u00e9' \(U\+00E9\) .* is not ASCII"),
    ("shuffle-dyck", "(\x07)", r"control character"),
    ("count", "x y q =", r"symbol 'q' is not one of the count symbols"),
    ("int-sum", "213 391", r"not '213391': it has no '\+'"),
    ("int-sum", "1+2+3", r"it has 2 '\+'"),
    ("int-sum", "12+", r"an operand is missing"),
    ("int-sum", "1.2.3+4", r"an operand is not a number"),
    ("int-sum", "-1+2", r"symbol '-' is not one of the int-sum symbols"),
])
def test_problem_errors_give_the_parsers_real_reason(task_name, text, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_task(task_name).parse(text)


@pytest.mark.parametrize("task_name, text, problem", [
    ("int-sum", "213 + 391 =", "213+391"), ("int-sum", "213 + 391", "213+391"), ("int-sum", "213+391", "213+391"),
    ("shuffle-dyck", " ( [ ) ] ?", "([)]"), ("shuffle-dyck", "([)]", "([)]"), ("shuffle-dyck", " ?", ""),
    ("count", "x y x =", "xyx"), ("count", "xyx", "xyx"),
])
def test_compact_spaced_and_prompt_forms_all_parse(task_name, text, problem):
    task = get_task(task_name)
    assert task.parse(text) == problem
    assert task.parse(task.prompt(problem)) == problem


def test_a_symbol_outside_the_teacher_vocabulary_is_not_called_too_long():
    dyck, count, intsum = get_task("shuffle-dyck"), get_task("count"), get_task("int-sum")
    assert "'<', '>' are not in the teacher's vocabulary" in dyck.teacher_misfit("(<>)", 43)
    assert "'z' is not in the teacher's vocabulary" in count.teacher_misfit("xzx", 125)
    assert "needs 53 teacher positions" in dyck.teacher_misfit("()" * 25, 43)
    assert "decimal problems" in intsum.teacher_misfit("1.5+2.25", 14)
    assert dyck.teacher_misfit("([])", 43) is None


# -------------------------------------------------------------------------------- sizes and task options


def test_teacher_sizes_that_cannot_work_are_refused_at_once():
    dyck = get_task("shuffle-dyck")
    t0 = time.process_time()  # CPU seconds: robust to a machine shared with other jobs
    for size, pattern in [(0, r"max_seq_len must be >= 1"), (1, r"holds no problem at all: .* needs 3 positions"),
                          (2.5, r"max_seq_len must be an integer"), (True, r"max_seq_len must be an integer"),
                          (100_000, r"max_seq_len=100000 is above the limit of 96: tracr's compile time")]:
        with pytest.raises(ValueError, match=pattern):
            compile_teacher(dyck, size)
    with pytest.raises(ValueError, match=r"above the limit of 512"):
        check_teacher_size(get_task("count"), 10_000)
    with pytest.raises(ValueError, match=r"needs 8 positions"):  # with the host's BOS piece in front
        check_teacher_size(get_task("int-sum", bos=True), 7)
    assert check_teacher_size(dyck, None) == 43
    assert time.process_time() - t0 < 2.0  # refused before anything is compiled


@pytest.mark.parametrize("options, pattern", [
    (dict(max_len=12.5), r"max_len=12.5 must be an integer like its default 30"),
    (dict(max_len="12"), r"max_len='12' must be an integer"),
    (dict(frame=1), r"frame=1 must be true or false"),
    (dict(max_len=100_000), r"max_len=100000 is out of range \[0, 8192\]"),
    (dict(min_len=9, max_len=5), r"needs 0 <= min_len <= max_len <= max_input_len, got min_len=9, max_len=5"),
    (dict(ood_max_len=20), r"ood_max_len > max_len"),
    (dict(nope=1), r"has no option 'nope'"),
])
def test_task_options_are_type_and_range_checked(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_task("shuffle-dyck", **options)


def test_int_sum_sizes():
    with pytest.raises(ValueError, match=r"n_digits=7 is out of range \[1, 6\]"):
        get_task("int-sum", n_digits=7)
    with pytest.raises(ValueError, match=r"max_operand <= 10\*\*n_digits = 100, got max_operand=101"):
        get_task("int-sum", n_digits=2, max_operand=101)


# ---------------------------------------------------------------------------------------- corpus, JSON


def test_a_corpus_without_blank_lines_is_split_by_lines(tmp_path):
    lines = [f"line {i} of a corpus written without any blank line between paragraphs." for i in range(60)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    train_text, held = split_corpus(load_corpus(str(path)))
    assert train_text.count("\n") == 53 and held.count("\n") == 5  # 54 lines to train, 6 held out
    one_line = " ".join(lines)
    a, b = split_corpus(one_line)
    assert a + b == one_line and len(a) > 8 * len(b) > 0
    # a corpus with paragraphs splits exactly as before (the built-in corpus's batches do not change)
    paras = "\n\n".join(lines)
    assert split_corpus(paras) == ("\n\n".join(lines[:54]), "\n\n".join(lines[54:]))


def test_json_output_is_standard(tmp_path):
    rec = {"step": 1, "loss": math.nan, "nested": {"x": [1.0, math.inf, -math.inf]}, "ok": 0.5}
    line = rundir.json_line(rec)
    assert json.loads(line) == {"step": 1, "loss": None, "nested": {"x": [1.0, None, None]}, "ok": 0.5}
    assert "NaN" not in line and "Infinity" not in line


# ------------------------------------------------------------------------------------------------- lock


def test_the_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    with rundir.run_lock(tmp_path):
        assert "pid" in (tmp_path / ".lock").read_text()
        with pytest.raises(rundir.RunLocked, match=r"in use by another `jinject train` \(pid \d+ on .*started"):
            with rundir.run_lock(tmp_path):
                pass
    with rundir.run_lock(tmp_path):  # released: the next holder gets it
        pass
