"""jinject: inject RASP algorithms, compiled by tracr, into pre-trained language models in JAX/Flax.

The public names are imported lazily so that `import jinject` stays fast (no JAX start-up) and a
command such as `jinject --help` answers at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "get_task": "jinject.tasks",
    "Task": "jinject.tasks",
    "Example": "jinject.tasks",
    "rasp_task": "jinject.tasks",
    "compile_teacher": "jinject.compiler",
    "Teacher": "jinject.teacher",
    "load_model": "jinject.loading",
    "generate": "jinject.generation",
    "export_model": "jinject.export",
    "TrainConfig": "jinject.config",
    "init_state": "jinject.step",
    "make_train_step": "jinject.step",
    "train": "jinject.trainer",
    "load_run": "jinject.trainer",
    "evaluate_run": "jinject.evaluate",
}

__all__ = sorted(_PUBLIC)


def lazy_exports(package: str, public: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's `__getattr__` and `__dir__` that import each public name's module on first use
    (`public`: name -> module path; a path starting with "." is relative to `package`)."""

    def get(name: str) -> Any:
        if name in public:
            module = public[name]
            try:
                return getattr(importlib.import_module(package + module if module.startswith(".") else module), name)
            except (ImportError, AttributeError):
                from jinject.versions import check_flax_imports

                check_flax_imports()  # a flax that does not import beside jax: say so and how to fix it
                raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def names() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(public))

    return get, names


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
