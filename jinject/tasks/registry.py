"""The task registry: `get_task(name, **options)` with the options' types checked, and the length-option
range every built-in task shares."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from jinject.tasks.base import Task

__all__ = ["TASKS", "register_task", "get_task", "check_length_option", "MAX_PROBLEM_LEN"]

# The longest problem any length option may ask for: the largest context of the supported hosts.
MAX_PROBLEM_LEN = 8192

TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str, factory: Callable[..., Task]) -> None:
    TASKS[name] = factory


def get_task(name: str, **options) -> Task:
    """A built-in task by name ("shuffle-dyck", "count", "int-sum"); options override its sizes."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    params = inspect.signature(TASKS[name]).parameters
    for key, value in options.items():
        if key not in params:
            raise ValueError(f"task {name!r} has no option {key!r}; options: {', '.join(params)}")
        default = params[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"task option {key}={value!r} must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"task option {key}={value!r} must be an integer like its default {default!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"task option {key}={value!r} must be a finite number like its default {default!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"task option {key}={value!r} must be a string like its default {default!r}")
    return TASKS[name](**options)


def check_length_option(task: str, **values: int) -> None:
    """Length options of the built-in tasks: integers in [0, MAX_PROBLEM_LEN] (checked before anything is
    generated or compiled)."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{task} option {key}={v!r} must be an integer")
        if not 0 <= v <= MAX_PROBLEM_LEN:
            raise ValueError(f"{task} option {key}={v} is out of range [0, {MAX_PROBLEM_LEN}]: no supported host "
                             f"reads more than {MAX_PROBLEM_LEN} positions (SmolLM2's context; GPT-2 has 1024)")

