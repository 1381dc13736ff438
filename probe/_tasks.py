"""Former home of the face and continuous-target sweeps, now task modules (:mod:`probe.tasks`) behind the engine
(:mod:`probe._sweep`). Two names stay importable here for the fine-tuning code until it asks the registry:
:func:`target_name` (the regression task's target) and :func:`_write` (:func:`probe.results.write_job`)."""

from __future__ import annotations

from .results import write_job


def target_name(source, task: str = "regression") -> str:
    """The continuous target a regression job reads (:meth:`probe.tasks.regression.Regression.target_name`)."""
    from . import tasks

    return tasks.get(task).target_name(source)


def _write(stem, rows, items):
    """One job's ``.npz`` then its parquet file (:func:`probe.results.write_job`)."""
    return write_job(stem, rows, items)
