"""End-to-end checks too slow for CI (`make test-slow`): the original-size teachers, and the real offline
model through the command line: train, resume, eval, decode."""

from __future__ import annotations

import json

import pytest

from jinject import cli, rundir

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


def test_compare_runs_jobs_in_parallel_and_tables_every_run(tmp_path):
    """`compare.py --jobs 2`: two runs at once, each in its own process on its own core; both are trained,
    evaluated and in the table, as with one job."""
    import subprocess
    import sys
    from pathlib import Path

    import tiny

    from jinject.export import export_model

    _, _, model, tokenizer = tiny.components(d_model=32, family="gpt2")
    model_dir = export_model(model, tokenizer, tmp_path / "tiny_gpt2")
    preset = {"seeds": [0], "train": {"model": str(model_dir), "steps": 4, "batch_size": 4, "text_seq_len": 16,
                                      "n_train": 64, "lr": 1e-3, "checkpoint_every": 2, "log_every": 1},
              "tasks": {"shuffle-dyck": {"task_options": tiny.OPTIONS}},
              "eval": {"n_examples": 8, "n_decode": 8, "n_causal": 8, "n_text_windows": 2, "text_seq_len": 16}}
    (tmp_path / "tiny.json").write_text(json.dumps(preset))
    script = Path(__file__).resolve().parents[1] / "experiments" / "compare.py"
    proc = subprocess.run([sys.executable, str(script), "--preset", str(tmp_path / "tiny.json"), "--out",
                           str(tmp_path / "out"), "--jobs", "2"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("injected", "baseline"):
        results = json.loads((tmp_path / "out" / "runs" / f"shuffle-dyck-{variant}-s0" / "eval.json").read_text())
        assert results["run"]["step"] == 4
        run_dir = tmp_path / "out" / "runs" / f"shuffle-dyck-{variant}-s0"
        assert rundir.checkpoint_steps(run_dir / "checkpoints") == [4]  # an evaluated run keeps its final one
    assert "on core" in proc.stdout
    assert "| accuracy/test |" in (tmp_path / "out" / "results.md").read_text()
