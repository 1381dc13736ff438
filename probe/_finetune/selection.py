"""The rule that picks a fine-tune's epoch on val: one small object with a name and a direction.

As Lightning's ``ModelCheckpoint(monitor="val_miou", mode="max")``, an :class:`EpochRule` names what it monitors
and which way is better; the training loop asks it for a score (higher is better) and keeps the first epoch with
the best score (ties: the earliest). A joint multi-task run is scored by the same object: the mean over its tasks
of each task's monitored metric relative to its value after the first epoch, so every task counts by its relative
improvement whatever its unit.

Each task monitors ``select_metric`` when the task can select on it (:meth:`probe.tasks.Task.selectable`), else
its headline metric (``miou``; ``rmse`` and ``mae``, lower is better); directions come from the task registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .. import tasks as _tasks


@dataclass(frozen=True)
class EpochRule:
    """Which val metric chooses the epoch, per task, and in which direction.

    Attributes
    ----------
    monitor : dict
        Task -> the val metric it monitors.
    """

    monitor: Mapping[str, str]

    @classmethod
    def for_tasks(cls, tasks, select_metric: str) -> "EpochRule":
        """The rule of a run of ``tasks`` (names) whose study selects on ``select_metric``."""
        monitor = {}
        for name in tasks:
            task = _tasks.get(name)
            monitor[name] = select_metric if select_metric in task.selectable() else task.headline
        return cls(monitor)

    @property
    def joint(self) -> bool:
        """True for a multi-task run (scored by the mean relative improvement over its tasks)."""
        return len(self.monitor) > 1

    @property
    def name(self) -> str:
        """The rule in words (the rows' ``select_rule`` param): ``val miou``, or the joint score."""
        if not self.joint:
            (metric,) = self.monitor.values()
            return f"val {metric}"
        return "mean over tasks of val " + ", ".join(self.monitor.values()) + " relative to epoch 1"

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction of the monitored metric (``max`` for the joint score)."""
        if self.joint:
            return "max"
        ((task, metric),) = self.monitor.items()
        return "max" if _tasks.get(task).metric(metric).higher_is_better else "min"

    def score(self, val: Mapping[str, Mapping[str, float]], first: Mapping[str, Mapping[str, float]] | None = None
              ) -> float:
        """The selection score of an epoch, higher is better.

        Parameters
        ----------
        val : dict
            Task -> its val metrics after the epoch.
        first : dict, optional
            Task -> its val metrics after the first epoch (the joint score's reference; default ``val``).
        """
        if not self.joint:
            ((task, metric),) = self.monitor.items()
            value = float(val[task][metric])
            return value if self.mode == "max" else -value
        first = val if first is None else first
        ratios = []
        for task, metric in self.monitor.items():
            now, then = float(val[task][metric]), float(first[task][metric])
            higher = _tasks.get(task).metric(metric).higher_is_better
            ratios.append(now / max(then, 1e-12) if higher else max(then, 1e-12) / max(now, 1e-12))
        return float(np.mean(ratios))
