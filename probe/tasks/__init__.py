"""Tasks as objects: one module per task behind one protocol (:class:`Task`), found by name in a registry.

Everything outside a task's own module asks the registry::

    from probe import tasks
    task = tasks.get("regression")        # UsageError naming the known tasks otherwise
    task.headline, task.metric("rmse").higher_is_better, task.default_probes

Adding a task is adding one module that subclasses :class:`Task` and calls :func:`register` (a test may register
a toy task at run time). The built-in tasks are registered when the registry is first asked.
"""

from __future__ import annotations

from . import _registry
from ._base import (GROUP_KEY, UNITS, Job, Metric, Request, Task, evaluation_label, mean_metric, root_mean_metric,
                    scalar_metric)
__all__ = ["Task", "Metric", "Request", "Job", "GROUP_KEY", "UNITS", "register", "unregister", "get", "names",
           "all_tasks", "evaluation_label", "mean_metric", "root_mean_metric", "scalar_metric", "DEFAULT"]

from ._registry import DEFAULT, all_tasks, get, names, unregister


def register(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` (an instance of a :class:`Task` subclass) to the registry under ``task.name``."""
    if not isinstance(task, Task) or not task.name or not task.metrics:
        raise TypeError("register() takes a Task instance with a name and at least one metric")
    return _registry.add(task, replace=replace)
