"""Tasks as objects: one module per task behind one protocol (:class:`Task`), found by name in a registry.

Everything outside a task's own module asks the registry::

    from probe import tasks
    task = tasks.get("regression")        # UsageError naming the known tasks otherwise
    task.headline, task.metric("rmse").higher_is_better, task.default_probes

Adding a task is adding one module that subclasses :class:`Task` and calls :func:`register` (a test may register
a toy task at run time). The built-in tasks are registered when the registry is first asked.
"""

from __future__ import annotations

import importlib

from ._base import (GROUP_KEY, UNITS, Job, Metric, Request, Task, evaluation_label, mean_metric, root_mean_metric,
                    scalar_metric)

__all__ = ["Task", "Metric", "Request", "Job", "GROUP_KEY", "UNITS", "register", "unregister", "get", "names",
           "all_tasks", "evaluation_label", "mean_metric", "root_mean_metric", "scalar_metric", "DEFAULT"]

#: The task of a job that names none.
DEFAULT = "classification"

#: Built-in task modules, imported when the registry is first asked (order = the order tasks are listed).
_BUILTIN = ("classification", "segmentation", "depth", "identification", "verification", "regression")

_REGISTRY: dict[str, Task] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _BUILTIN:
            importlib.import_module(f"{__name__}.{name}")


def register(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` (an instance of a :class:`Task` subclass) to the registry under ``task.name``."""
    if not isinstance(task, Task) or not task.name or not task.metrics:
        raise TypeError("register() takes a Task instance with a name and at least one metric")
    if task.name in _REGISTRY and not replace:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    _REGISTRY.pop(name, None)


def get(name: str | None) -> Task:
    """The task called ``name`` (the default task for None); a UsageError naming the known tasks otherwise."""
    _load_builtins()
    key = name or DEFAULT
    task = _REGISTRY.get(key)
    if task is None:
        from .._errors import UsageError

        raise UsageError(f"unknown task {key!r}; tasks are {', '.join(_REGISTRY)}")
    return task


def names() -> tuple[str, ...]:
    """Registered task names (built-ins first, in their order)."""
    _load_builtins()
    return tuple(_REGISTRY)


def all_tasks() -> tuple[Task, ...]:
    """Registered tasks."""
    _load_builtins()
    return tuple(_REGISTRY.values())
