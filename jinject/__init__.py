"""jinject: inject RASP algorithms, compiled by tracr, into pre-trained language models in JAX/Flax.

The public names are imported lazily so that `import jinject` stays fast (no JAX start-up) and a
command such as `jinject --help` answers at once.
"""

from __future__ import annotations

import importlib
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


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'jinject' has no attribute {name!r}")
