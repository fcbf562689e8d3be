"""Bad input through the command line, table-driven: every row must exit 2 with ONE error line that names
the problem, no traceback, and (rows marked "pre") fail in under 2 s because it is checked before any model
is loaded or teacher compiled. Train rows must also leave nothing that binds the run directory.

Times are CPU seconds of this process (`time.process_time`), so a machine shared with other jobs does not
make them flaky; wall-clock seconds are printed beside them by the summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import tiny

from jinject import cli
from jinject.export import export_model
from jinject.trainer import train

TASK = ["--task", "shuffle-dyck"] + [a for k, v in tiny.OPTIONS.items() for a in ("--task-option", f"{k}={v}")]
BASE = ["train", *TASK]
TRAIN = [*BASE, "--model", "{model}", "--out", "{fresh}"]

# (id, argv, pattern the error line must match, kind): "pre" = refused before any load (< 2 s);
# "teacher" = after loading the (cached) tiny teacher, still before the model; "load" = at or after the model load
ROWS: list[tuple[str, list[str], str, str]] = [
    # ---- train: numbers
    ("lr-nan", [*TRAIN, "--lr", "nan"], r"lr must be a finite number, got nan", "pre"),
    ("lr-inf", [*TRAIN, "--lr", "inf"], r"lr must be a finite number", "pre"),
    ("lr-negative", [*TRAIN, "--lr=-1e-3"], r"lr must be >= 0", "pre"),
    ("grad-clip-negative", [*TRAIN, "--grad-clip=-1"], r"grad_clip must be > 0 .*flips the sign", "pre"),
    ("kl-weight-nan", [*TRAIN, "--kl-weight", "nan"], r"kl_weight must be a finite number", "pre"),
    ("weight-decay-negative", [*TRAIN, "--weight-decay=-0.1"], r"weight_decay must be >= 0", "pre"),
    ("steps-zero", [*TRAIN, "--steps", "0"], r"steps must be >= 1, got 0", "pre"),
    ("steps-float", [*TRAIN, "--steps", "2.5"], r"argument --steps: invalid int value: '2.5'", "pre"),
    ("batch-zero", [*TRAIN, "--batch-size", "0"], r"batch_size must be >= 1", "pre"),
    ("text-seq-len-zero", [*TRAIN, "--text-seq-len", "0"], r"text_seq_len must be >= 1", "pre"),
    ("checkpoint-every-zero", [*TRAIN, "--checkpoint-every", "0"], r"checkpoint_every must be >= 1", "pre"),
    ("seed-negative", [*TRAIN, "--seed=-1"], r"seed must be >= 0", "pre"),
    ("warmup-negative", [*TRAIN, "--warmup-steps=-5"], r"warmup_steps must be >= 0", "pre"),
    ("adapter-warmup-too-long", [*TRAIN, "--steps", "5", "--adapter-warmup-steps", "5"], r"leaves no step", "pre"),
    ("cosine-warmup-too-long", [*TRAIN, "--steps", "4", "--warmup-steps", "10", "--schedule", "cosine"],
     r"warmup_steps=10 leaves no step for the cosine decay", "pre"),
    ("n-train-huge", [*TRAIN, "--n-train", "1000000000"], r"n_train=1,000,000,000 is above the limit of 1,000,000",
     "pre"),
    ("n-train-zero", [*TRAIN, "--n-train", "0"], r"n_train must be >= 1", "pre"),
    ("max-seq-len-zero", [*TRAIN, "--max-seq-len", "0"], r"teacher_max_seq_len must be >= 1", "pre"),
    ("max-seq-len-huge", [*TRAIN, "--max-seq-len", "100000"], r"max_seq_len=100000 is above the limit of 96: tracr",
     "pre"),
    ("max-seq-len-holds-nothing", [*TRAIN, "--max-seq-len", "2"], r"holds no problem at all: .*needs 3 positions",
     "pre"),
    ("max-seq-len-too-small", [*TRAIN, "--max-seq-len", "5"], r"train problems need up to 8 teacher positions", "pre"),
    ("fsdp-three", [*TRAIN, "--fsdp", "3"], r"--fsdp 3 needs a multiple of 3 devices", "pre"),
    ("fsdp-zero", [*TRAIN, "--fsdp", "0"], r"mesh_fsdp must be >= 1", "pre"),
    ("mesh-data-zero", [*TRAIN, "--mesh-data", "0"], r"mesh_data must be >= 1 \(or -1", "pre"),
    ("keep-checkpoints-zero", [*TRAIN, "--keep-checkpoints", "0"], r"keep_checkpoints must be >= 1, got 0", "pre"),
    ("schedule-unknown", [*TRAIN, "--schedule", "linear"], r"argument --schedule: invalid choice: 'linear'", "pre"),
    ("batch-too-big", [*TRAIN, "--batch-size", "100000000"], r"need at least [\d.]+ GiB .*more than", "pre"),
    ("text-longer-than-host", [*TRAIN, "--text-seq-len", "5000"], r"text_seq_len=5000 is longer than the model's 128",
     "pre"),
    # ---- train: task and task options
    ("task-unknown", ["train", "--task", "nope", "--out", "{fresh}"], r"unknown task 'nope'", "pre"),
    ("option-float-for-int", [*TRAIN, "--task-option", "max_len=4.5"], r"max_len=4.5 must be an integer", "pre"),
    ("option-word-for-int", [*TRAIN, "--task-option", "max_len=oops"], r"max_len='oops' must be an integer", "pre"),
    ("option-unknown", [*TRAIN, "--task-option", "bogus=1"], r"has no option 'bogus'", "pre"),
    ("option-no-value", [*TRAIN, "--task-option", "max_len"], r"--task-option expects KEY=VALUE", "pre"),
    ("option-list", [*TRAIN, "--task-option", "max_len=[4,5]"], r"max_len=\[4,5\]: a value is a number, .*not list",
     "pre"),
    ("option-nan", [*TRAIN, "--task-option", "max_len=NaN"], r"--task-option max_len=NaN is not a finite number",
     "pre"),
    ("option-bool", [*TRAIN, "--task-option", "frame=1"], r"frame=1 must be true or false", "pre"),
    ("option-length-huge", ["train", "--task", "shuffle-dyck", "--task-option", "max_len=100000", "--out",
                            "{fresh}"], r"max_len=100000 is out of range \[0, 8192\]", "pre"),
    ("option-min-above-max", [*TRAIN, "--task-option", "min_len=9"], r"needs 0 <= min_len <= max_len", "pre"),
    ("option-ood-not-longer", [*TRAIN, "--task-option", "ood_max_len=3"], r"ood_max_len > max_len", "pre"),
    ("option-n-digits-huge", ["train", "--task", "int-sum", "--task-option", "n_digits=40", "--out", "{fresh}"],
     r"n_digits=40 is out of range \[1, 6\]", "pre"),
    # ---- train: files
    ("out-is-file", [*TRAIN[:-1], "{file}"], r"--out .* is an existing file, not a run directory", "pre"),
    ("out-under-file", [*TRAIN[:-1], "{file}/run"], r"is a file, so no directory can be made under it", "pre"),
    ("corpus-missing", [*TRAIN, "--corpus", "{tmp}/missing.txt"], r"corpus file .*missing.txt' does not exist", "pre"),
    ("corpus-directory", [*TRAIN, "--corpus", "{tmp}"], r"corpus .* is a directory", "pre"),
    ("corpus-too-short", [*TRAIN, "--corpus", "{short_corpus}"], r"corpus .* has only \d+ characters", "pre"),
    ("corpus-binary", [*TRAIN, "--corpus", "{binary}"], r"corpus .* is a binary file", "pre"),
    ("resume-different-config", [*TRAIN[:-1], "{run}", "--align-weight", "3"], r"different config .*align_weight",
     "pre"),
    ("model-missing", [*BASE, "--model", "{tmp}/no-model", "--out", "{fresh}"],
     r"neither a Hugging Face model directory nor a .gguf file", "pre"),
    ("model-dir-without-config", [*BASE, "--model", "{empty_dir}", "--out", "{fresh}"],
     r"has no config.json \(not a Hugging Face model directory\)", "pre"),
    ("model-config-corrupt", [*BASE, "--model", "{bad_config_model}", "--out", "{fresh}"],
     r"config.json \(the model's Hugging Face config\) is not valid JSON: Expecting property name", "pre"),
    ("layer-offset-too-deep", [*TRAIN, "--layer-offset", "5"], r"teacher has 4 layers but the student has only 5",
     "teacher"),
    ("intervene-at-out-of-range", [*TRAIN, "--intervene-at", "99"], r"intervene_at=99 is not a student hidden-state",
     "teacher"),
    ("align-exclude-unknown", [*TRAIN, "--align-exclude", "nosuchvar"], r"the teacher has no variable 'nosuchvar'",
     "teacher"),
    ("safetensors-random-bytes", [*BASE, "--model", "{random_weights}", "--out", "{fresh}"],
     r"model.safetensors is not a readable safetensors file", "load"),
    ("safetensors-truncated", [*BASE, "--model", "{truncated_weights}", "--out", "{fresh}"],
     r"model.safetensors is not a readable safetensors file", "load"),
    # ---- eval
    ("eval-noise-nan", ["eval", "{run}", "--noise-norms", "nan", "-1"], r"--noise-norms must be finite .*got nan",
     "pre"),
    ("eval-noise-negative", ["eval", "{run}", "--noise-norms", "0", "-1"], r"--noise-norms must be .*>= 0.*got -1",
     "pre"),
    ("eval-relative-noise-negative", ["eval", "{run}", "--relative-noise", "0.3", "-0.5"],
     r"--relative-noise must be finite numbers >= 0 .*got -0.5", "pre"),
    ("eval-n-zero", ["eval", "{run}", "--n", "0"], r"--n must be >= 1, got 0", "pre"),
    ("eval-n-huge", ["eval", "{run}", "--n", "100000000"], r"--n=100,000,000 is above the limit", "pre"),
    ("eval-batch-zero", ["eval", "{run}", "--batch-size", "0"], r"--batch-size must be >= 1", "pre"),
    ("eval-text-longer-than-host", ["eval", "{run}", "--text-seq-len", "5000"],
     r"--text-seq-len 5000 is longer than the model's 128 positions", "pre"),
    ("eval-splits-unknown", ["eval", "{run}", "--splits", "bogus"], r"\['bogus'\] are not splits of shuffle-dyck",
     "pre"),
    ("eval-missing-dir", ["eval", "{tmp}/nowhere"], r"run directory .*nowhere does not exist", "pre"),
    ("eval-file", ["eval", "{file}"], r"is a file, not a run directory", "pre"),
    ("eval-not-a-run", ["eval", "{empty_dir}"], r"is not a jinject run directory \(no config.json\)", "pre"),
    ("eval-config-corrupt", ["eval", "{bad_config_run}"], r"config.json is not valid JSON \(Expecting property name",
     "pre"),
    ("eval-no-checkpoint", ["eval", "{no_checkpoint_run}"], r"has no checkpoint yet", "pre"),
    ("eval-all-checkpoints-damaged", ["eval", "{damaged_run}", "--no-plots"],
     r"no usable checkpoint .*step 2: unreadable", "load"),
    # ---- decode
    ("decode-outside-alphabet", ["decode", "{run}", "ab"], r"symbol 'a' is not one of the shuffle-dyck symbols", "pre"),
    ("decode-whitespace", ["decode", "{run}", "   "], r"problem is empty \(only whitespace\)", "pre"),
    ("decode-non-ascii", ["decode", "{run}", "(\u00e9)"], r"character '\u00e9' \(U\+00E9\) .* is not ASCII", "pre"),
    ("decode-marker-inside", ["decode", "{run}", "(?)"], r"symbol '\?' is not one of the shuffle-dyck symbols", "pre"),
    ("decode-leading-dash", ["decode", "{run}", "-("], r"must come after `--`", "pre"),
    ("decode-layer-too-high", ["decode", "{run}", "()", "--layer", "9"], r"--layer must be a teacher layer in \[0, 4\]",
     "teacher"),
    ("decode-layer-negative", ["decode", "{run}", "()", "--layer=-1"], r"--layer must be a teacher layer", "teacher"),
    ("decode-plot-nowhere", ["decode", "{run}", "()", "--plot", "{tmp}/no/dir/x.png"], r"--plot .* does not exist",
     "pre"),
    ("decode-baseline", ["decode", "{baseline_run}", "()"], r"is a baseline run: it has no adapter", "pre"),
    # ---- compile
    ("compile-holds-nothing", ["compile", "shuffle-dyck", "--max-seq-len", "1"], r"holds no problem at all", "pre"),
    ("compile-zero", ["compile", "count", "--max-seq-len", "0"], r"max_seq_len must be >= 1", "pre"),
    ("compile-huge", ["compile", "count", "--max-seq-len", "100000"], r"above the limit of 512", "pre"),
    ("compile-max-operand", ["compile", "int-sum", "--task-option", "max_operand=0"], r"1 <= max_operand", "pre"),
    ("compile-seed-negative", ["compile", "count", "--seed=-3"], r"--seed must be >= 0", "pre"),
]

TIMES: dict[str, tuple[str, float, float]] = {}  # id -> (kind, CPU seconds, wall seconds)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad_inputs")
    task, teacher, model, tokenizer = comps = tiny.components(d_model=32, family="gpt2")
    model_dir = export_model(model, tokenizer, root / "model")
    run = root / "run"
    cfg = tiny.config(model=str(model_dir), steps=2, checkpoint_every=2, log_every=1, batch_size=4)
    train(cfg, run, components=comps, progress=False)

    def copy_run(name: str) -> Path:
        return Path(shutil.copytree(run, root / name))

    bad_config_run = copy_run("bad_config_run")
    (bad_config_run / "config.json").write_text("{task: 'shuffle-dyck'")
    no_checkpoint_run = copy_run("no_checkpoint_run")
    shutil.rmtree(no_checkpoint_run / "checkpoints")
    damaged_run = copy_run("damaged_run")
    for f in (damaged_run / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 4096:
            os.truncate(f, f.stat().st_size // 2)
    baseline_run = copy_run("baseline_run")
    config = json.loads((baseline_run / "config.json").read_text())
    (baseline_run / "config.json").write_text(json.dumps({**config, "baseline": True}))

    def model_copy(name: str) -> Path:
        return Path(shutil.copytree(model_dir, root / name))

    bad_config_model = model_copy("bad_config_model")
    (bad_config_model / "config.json").write_text("{vocab_size: 3}")
    random_weights = model_copy("random_weights")
    size = (random_weights / "model.safetensors").stat().st_size
    (random_weights / "model.safetensors").write_bytes(os.urandom(size))
    truncated_weights = model_copy("truncated_weights")
    os.truncate(truncated_weights / "model.safetensors", size // 2)
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a directory\n")
    (root / "short.txt").write_text("too short\n")
    (root / "binary.bin").write_bytes(b"\0\1\2" * 1000)
    return {"model": str(model_dir), "run": str(run), "tmp": str(root), "file": str(root / "a_file.txt"),
            "short_corpus": str(root / "short.txt"), "binary": str(root / "binary.bin"),
            "empty_dir": str(root / "empty"), "bad_config_model": str(bad_config_model),
            "random_weights": str(random_weights), "truncated_weights": str(truncated_weights),
            "bad_config_run": str(bad_config_run), "no_checkpoint_run": str(no_checkpoint_run),
            "damaged_run": str(damaged_run), "baseline_run": str(baseline_run)}


def test_the_table_is_large_and_distinct():
    assert len(ROWS) >= 40
    assert len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_with_one_line_naming_the_problem(row, paths, capsys):
    name, argv, pattern, kind = row
    fresh = Path(paths["tmp"]) / f"fresh-{name}"
    argv = [a.format(**paths, fresh=fresh) for a in argv]
    before = {p: p.read_bytes() for p in Path(paths["run"]).rglob("*") if p.is_file()}
    t0, w0 = time.process_time(), time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    seconds = time.process_time() - t0
    err = capsys.readouterr().err
    TIMES[name] = (kind, seconds, time.perf_counter() - w0)
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]
    if kind == "pre":
        assert seconds < 2.0, f"{name} took {seconds:.2f} s: it should fail before anything is loaded"
    elif kind == "teacher":
        assert seconds < 10.0, f"{name} took {seconds:.2f} s"
    if argv[0] == "train":
        assert not (fresh / "config.json").exists()  # a failed start never binds the directory
    after = {p: p.read_bytes() for p in Path(paths["run"]).rglob("*") if p.is_file()}
    assert after == before  # the trained run is never touched by a refused command


def test_timing_summary():
    """Runs last (file order): every row has run, most fail before any load, each in under 2 s."""
    if len(TIMES) < len(ROWS):
        pytest.skip("only part of the table ran")
    pre = [t for kind, t, _ in TIMES.values() if kind == "pre"]
    assert len(pre) >= 0.8 * len(ROWS)
    lines = [f"{name:<32}{kind:<8}{t:7.3f} s CPU {w:7.3f} s wall" for name, (kind, t, w) in TIMES.items()]
    print("\n" + "\n".join(lines))
    print(f"{len(ROWS)} rows: {len(pre)} refused before any load (CPU max {max(pre):.3f} s, "
          f"median {sorted(pre)[len(pre) // 2]:.3f} s)")


def test_decode_names_why_the_teacher_has_no_reference(paths, capsys):
    """A symbol the teacher was never compiled for is reported as such, not as 'too long'."""
    assert cli.main(["decode", paths["run"], "(<>)"]) == 0
    out = capsys.readouterr().out
    assert "no teacher reference: '<', '>' are not in the teacher's vocabulary" in out and "too long" not in out
