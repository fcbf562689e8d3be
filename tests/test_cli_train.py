"""`jinject train` end to end through the command line, on a tiny model saved in Hugging Face format."""

from __future__ import annotations

import json

import pytest
import tiny

from jinject import cli
from jinject.export import export_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    _, _, model, tokenizer = tiny.components(d_model=32, family="gpt2")
    return str(export_model(model, tokenizer, tmp_path_factory.mktemp("tiny_gpt2")))


def task_args() -> list[str]:
    return ["--task", "shuffle-dyck"] + [a for k, v in tiny.OPTIONS.items() for a in ("--task-option", f"{k}={v}")]


def test_train_resume_and_extend_from_the_command_line(tmp_path, model_dir, capsys):
    out = tmp_path / "run"
    common = task_args() + ["--model", model_dir, "--batch-size", "4", "--text-seq-len", "16", "--n-train", "64",
                            "--lr", "1e-3", "--checkpoint-every", "2", "--log-every", "1", "--out", str(out)]
    assert cli.main(["train", *common, "--steps", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task_options"] == tiny.OPTIONS and config["steps"] == 3
    # a longer run in the same directory resumes at step 3 instead of starting over
    assert cli.main(["train", *common, "--steps", "5"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
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
