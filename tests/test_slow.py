"""End-to-end checks too slow for CI (`make test-slow`): the original-size teachers, and the real offline
model through the command line: train, resume, eval, decode."""

from __future__ import annotations

import json

import pytest

from jinject import cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", ["shuffle-dyck", "count", "int-sum"])
def test_compile_and_verify_original_size_teachers(task, capsys):
    assert cli.main(["compile", task, "--n-check", "100"]) == 0
    out = capsys.readouterr().out
    assert "layers" in out and "parameters" in out


def test_smollm2_train_eval_decode_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--task", "shuffle-dyck", "--task-option", "max_len=8", "--task-option", "max_input_len=8",
            "--batch-size", "4", "--text-seq-len", "16", "--n-train", "64", "--lr", "1e-4", "--adapter-lr", "1e-3",
            "--checkpoint-every", "2", "--log-every", "1", "--out", str(out)]
    assert cli.main([*args, "--steps", "2"]) == 0
    assert cli.main([*args, "--steps", "3"]) == 0  # resumes at step 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(0 <= r["align"] < 10 and r["kl"] >= 0 for r in records)
    assert cli.main(["eval", str(out), "--n", "16", "--n-decode", "8", "--n-text", "4", "--no-plots"]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert set(results["accuracy"]) >= {"test", "ood-length", "ood-almost-balanced", "ood-new-pair"}
    assert 10 < results["retention"]["ppl_original"] < 60
    assert cli.main(["decode", str(out), " ( ) ?", "--plot", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 10_000
