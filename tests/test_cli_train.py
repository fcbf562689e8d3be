"""`jinject train` end to end through the command line, on a tiny model saved in Hugging Face format."""

from __future__ import annotations

import json

import pytest
import tiny
from tb_events import assert_same_scalars, metrics_as_tensorboard, read_events, read_tensorboard

from jinject import cli
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
