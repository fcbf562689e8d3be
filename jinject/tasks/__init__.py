"""Tasks: problems, student pieces, teacher RASP programs, oracles and data splits.

`get_task("shuffle-dyck" | "count" | "int-sum", **options)`, `rasp_task(...)` for your own program.
"""

from jinject.tasks import count, dyck, intsum  # noqa: F401  (registers the built-in tasks)
from jinject.tasks.base import BOS_PIECE, Example, Task
from jinject.tasks.rasp_task import RaspTask, rasp_task
from jinject.tasks.registry import TASKS, get_task, register_task

__all__ = ["BOS_PIECE", "Task", "Example", "RaspTask", "get_task", "rasp_task", "register_task", "TASKS"]
