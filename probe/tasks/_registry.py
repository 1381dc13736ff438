"""The registry of tasks: name -> the registered :class:`probe.tasks.Task` instance (see :mod:`probe.tasks`).

Kept apart from the package's ``__init__`` so that :mod:`probe.tasks._base` can ask it (which tasks accept an
option) without importing the package that imports it.
"""

from __future__ import annotations

import importlib

#: The task of a job that names none.
DEFAULT = "classification"

#: Built-in task modules, imported when the registry is first asked (order = the order tasks are listed).
_BUILTIN = ("classification", "segmentation", "depth", "identification", "verification", "regression")

_REGISTRY: dict = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _BUILTIN:
            importlib.import_module(f"probe.tasks.{name}")


def add(task, *, replace: bool = False):
    if task.name in _REGISTRY and not replace:
        raise ValueError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    _REGISTRY.pop(name, None)


def get(name: str | None):
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


def all_tasks() -> tuple:
    """Registered tasks."""
    _load_builtins()
    return tuple(_REGISTRY.values())
