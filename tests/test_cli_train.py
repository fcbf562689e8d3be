"""`jinject train` end to end through the command line, on a tiny model saved in Hugging Face format."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import tiny
from tb_events import assert_same_scalars, metrics_as_tensorboard, read_events, read_tensorboard

from jinject import cli
from jinject.config import TrainConfig
from jinject.config_flags import config_from_args
from jinject.demo import DEMO
from jinject.export import export_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    _, _, model, tokenizer = tiny.components(d_model=32, family="gpt2")
    return str(export_model(model, tokenizer, tmp_path_factory.mktemp("tiny_gpt2")))


def task_args() -> list[str]:
    return ["--task", "shuffle-dyck"] + [a for k, v in tiny.OPTIONS.items() for a in ("--task-option", f"{k}={v}")]


def test_train_resume_and_extend_from_the_command_line(tmp_path, model_dir, capsys):
    out, tb = tmp_path / "run", tmp_path / "tb"
    common = task_args() + ["--model", model_dir, "--batch-size", "4", "--text-seq-len", "16", "--n-train", "64",
                            "--lr", "1e-3", "--checkpoint-every", "2", "--log-every", "1", "--out", str(out)]
    assert cli.main(["train", *common, "--steps", "3", "--tensorboard", str(tb)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task_options"] == tiny.OPTIONS and config["steps"] == 3
    assert "tensorboard" not in config  # not part of the run's identity: resuming without it is fine
    # a longer run in the same directory resumes at step 3 instead of starting over
    assert cli.main(["train", *common, "--steps", "5", "--tensorboard", str(tb)]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    # pytest's capture is no TTY, like a nohup log: one plain line per --log-every, no carriage returns
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("train step")]
    assert [ln.split(" | ")[0] for ln in lines] == [f"train step {s}/{n}" for s, n in
                                                    [(1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]]
    assert all(f in lines[-1] for f in ("loss ", "task ", "kl ", "align ", "answer_acc ", " s/step", "ETA "))
    # --tensorboard: the same scalars as metrics.jsonl, each step once across the resume
    got = read_tensorboard(tb)
    assert {"loss", "task", "kl", "align", "answer_acc", "align/layer_0", "time"} <= set(got)
    assert_same_scalars(got, metrics_as_tensorboard(out))
    assert [e.step for e in read_events(tb) if e.HasField("session_log")] == [1, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit())[-1] == "5"
    # changing the objective of an existing run is refused with one clear line
    assert cli.main(["train", *common, "--steps", "5", "--align-weight", "3"]) == 2
    assert "different config" in capsys.readouterr().err


def test_train_refuses_bad_input_with_one_line(tmp_path, model_dir, capsys):
    args = ["train", *task_args(), "--steps", "1", "--out", str(tmp_path / "x")]
    assert cli.main([*args, "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("jinject train: error:") and "Traceback" not in err
    assert not (tmp_path / "x" / "config.json").exists()  # a failed start leaves nothing that blocks a retry
    assert cli.main([*args, "--model", model_dir, "--layer-offset", "5"]) == 2
    assert "teacher has 4 layers but the student has only 5 blocks" in capsys.readouterr().err
    assert cli.main([*args, "--model", model_dir, "--task-option", "max_len=oops"]) == 2


# ----------------------------------------------------------------- every TrainConfig field is an option


def train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def train_argv(config: TrainConfig) -> list[str]:
    """`config` as a `jinject train` command line, written from the parser's own options (their first flag)."""
    options = {a.dest: a.option_strings[0] for a in train_parser()._actions}
    argv = []
    for f in dataclasses.fields(TrainConfig):
        value, option = getattr(config, f.name), options[f.name]
        if isinstance(value, bool):
            argv += [option] if value != f.default else []
        elif isinstance(value, dict):
            argv += [a for k, v in value.items() for a in (option, f"{k}={json.dumps(v)}")]
        elif isinstance(value, tuple):
            argv += [option, *value]
        elif value is not None:
            argv += [option, str(value)]
    return argv


def parse_train(argv: list[str]) -> TrainConfig:
    return config_from_args(cli.build_parser().parse_args(["train", *argv]))


EVERY_FIELD = TrainConfig(
    task="count", task_options={"max_len": 5, "frame": True, "name": "w"}, model="gpt2", align=False,
    teacher_max_seq_len=9, steps=7, batch_size=3, text_batch_size=5, text_seq_len=17, n_train=99, corpus="c.txt",
    seed=4, align_weight=2.5, kl_weight=0.5, layer_offset=1, layer_stride=2, per_layer_adapter=True, intervene_at=3,
    align_exclude=("indices", "need@1"), marker_weight=3.0, align_per_variable=True, lr=2e-5, adapter_lr=3e-3,
    weight_decay=0.1, warmup_steps=2, adapter_warmup_steps=1, schedule="cosine", grad_clip=0.5, dtype="bfloat16",
    remat=True, mesh_data=2, mesh_fsdp=2, checkpoint_every=3, keep_checkpoints=5, log_every=2)


def test_every_config_field_is_a_train_option_that_parses_back():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields <= {a.dest for a in train_parser()._actions}
    configs = [EVERY_FIELD, TrainConfig(intervene=False), TrainConfig(baseline=True), TrainConfig(batch_size=16),
               TrainConfig(align_exclude=()), TrainConfig(intervene_gate=0.9), DEMO]
    changed = set()
    for config in configs:
        assert parse_train(train_argv(config)) == config, train_argv(config)
        changed |= {f for f in fields if getattr(config, f) != getattr(TrainConfig(), f)}
    assert changed == fields  # each field was set away from its default at least once


def test_make_demo_is_a_train_command_line():
    argv = train_argv(DEMO)
    assert "--schedule" in argv and parse_train(argv) == DEMO
    # the command line README.md shows for `make demo` is exactly DEMO too
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = re.search(r"^jinject train (.*--out runs/demo)$", readme.replace("\\\n", " "), re.MULTILINE)
    assert command is not None
    assert parse_train(shlex.split(command.group(1))) == DEMO
