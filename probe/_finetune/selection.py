"""The rule that picks a fine-tune's epoch on val: one small object with a name and a direction.

As Lightning's ``ModelCheckpoint(monitor="val_miou", mode="max")``, an :class:`EpochRule` names what it monitors
and which way is better; the training loop asks it for a score (higher is better) and keeps the first epoch with
the best score (ties: the earliest). A joint multi-task run is scored by the same object: the mean over its tasks
of the share of each task's gap to a perfect score closed since the first epoch,

- higher is better, a fraction (mIoU, top-1; perfect = 1): ``(now - first) / (1 - first)``;
- lower is better, an error (RMSE, MAE; perfect = 0): ``(first - now) / first``;
- any other higher-is-better metric: ``(now - first) / |first|``.

Each task's term is at most 1 (perfect) whatever its unit and its first value, so the tasks stay balanced: a
from-scratch run whose first-epoch mIoU is 0.005 does not turn the score into mIoU alone, as a ratio to the first
epoch (``now / first``, the rule before) did. The rule is named in the rows' ``select_rule``. A per-task rank
over epochs would also be balanced, but a new epoch can reorder the earlier ones, whose weights are gone; this
score is fixed once an epoch is scored.

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
        """True for a multi-task run (scored by the mean share of the gap to perfect closed over its tasks)."""
        return len(self.monitor) > 1

    @property
    def name(self) -> str:
        """The rule in words (the rows' ``select_rule`` param): ``val miou``, or the joint score."""
        if not self.joint:
            (metric,) = self.monitor.values()
            return f"val {metric}"
        return ("mean over tasks of the share of val " + ", ".join(self.monitor.values())
                + " gap to perfect closed since epoch 1")

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
        return float(np.mean([closed_gap(_tasks.get(task).metric(metric), float(val[task][metric]),
                                         float(first[task][metric])) for task, metric in self.monitor.items()]))


def closed_gap(metric, now: float, first: float) -> float:
    """The share of ``metric``'s gap to a perfect score closed from ``first`` to ``now`` (at most 1; see the
    module docstring): a fraction's gap to 1, an error's to 0, else the relative change."""
    if metric.higher_is_better:
        gap = (1.0 - first) if metric.unit == "fraction" else abs(first)
        return (now - first) / max(gap, 1e-12)
    return (first - now) / max(first, 1e-12)
