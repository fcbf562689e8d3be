"""The public names users rely on resolve to the right objects, whatever was imported first."""

import importlib
import subprocess
import sys

import jinject


def test_lazy_public_names_are_functions_even_after_submodule_imports():
    importlib.import_module("jinject.trainer")
    importlib.import_module("jinject.generation")
    for name in ("get_task", "compile_teacher", "load_model", "train", "generate", "init_state", "make_train_step",
                 "load_run", "evaluate_run", "rasp_task", "export_model"):
        obj = getattr(jinject, name)
        assert callable(obj) and not isinstance(obj, type(jinject)), name
    from jinject import generate, train

    assert train.__module__ == "jinject.trainer" and generate.__module__ == "jinject.generation"


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "jinject.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("compile", "train", "eval", "decode"):
        assert command in out.stdout


def test_compilation_cache_setting(tmp_path, monkeypatch):
    import jax

    from jinject.compilation import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    try:
        monkeypatch.setenv("JINJECT_XLA_CACHE", "off")
        assert enable_compilation_cache() is None and jax.config.jax_compilation_cache_dir == before
        monkeypatch.setenv("JINJECT_XLA_CACHE", str(tmp_path / "xla"))
        assert enable_compilation_cache() == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
