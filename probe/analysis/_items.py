"""A job's saved per-item statistics, read through its task (:meth:`probe.tasks.Task.item_stats`): what the
analysis layer's one bootstrap (:func:`probe.analysis.resample_interval`) resamples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import tasks as _tasks


def job_predictions(file) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, labels, top-1 predictions) of a job's saved test predictions, or None without them."""
    art = _artifacts(file)
    return None if art is None or "pred" not in art else (art["ids"], art["labels"], art["pred"])


def _artifacts(file) -> dict | None:
    from ..results import load_artifacts

    try:
        return load_artifacts(file)
    except (OSError, KeyError, ValueError):
        return None


def _name(file) -> str:
    from pathlib import Path

    return Path(str(file)).with_suffix("").name


def _files(files) -> list:
    return [files] if isinstance(files, (str, bytes)) or not hasattr(files, "__iter__") else list(files)


@dataclass
class JobItems:
    """One job's per-item statistics, as its task defines them (:meth:`probe.tasks.Task.item_stats`).

    Attributes
    ----------
    ids : numpy.ndarray of str, [N]
        Test item ids (images, pairs, queries).
    stats : dict
        Statistic arrays, first axis = items (``item/<metric>``, ``stat/<k>``, ``labels``).
    group : numpy.ndarray of str, [N] or None
        The group (person, scene) of each item, when the job saved one (``group``).
    group_noun : str
        What the groups are (``people``, ``scenes``): the job's ``group_name``, else the task's noun.
    task : str
        The job's task.
    """

    ids: np.ndarray
    stats: dict
    group: np.ndarray | None
    group_noun: str
    task: str


def _task_for(art: dict, metric: str, task: str | None):
    """The task whose metric ``metric`` the artifacts hold the statistics of: the given task, the job's saved
    ``task``, else the registered task that has the metric and whose statistics are all present."""
    name = task or (str(art["task"]) if "task" in art else None)
    if name is not None:
        return _tasks.get(name)
    found = []
    for t in _tasks.all_tasks():
        if (metric in t.metric_names or metric in {m.name for m in t.extra_metrics}) and t.metric(metric).from_items:
            st = t.item_stats(art)
            if all(k in st for k in t.metric(metric).stats):
                found.append(t)
    return found[0] if found else None


def job_items(file, *, metric: str | None = None, task: str | None = None) -> JobItems | None:
    """The per-item statistics of one job (its parquet or ``.npz`` path), or None when it saved none.

    ``task`` names the job's task (the ``task`` column of its row); without it, the task is the one the job
    saved, else the task whose ``metric`` the saved arrays can compute.
    """
    art = _artifacts(file)
    if art is None or "ids" not in art:
        return None
    t = _task_for(art, metric or "", task)
    if t is None:
        return None
    group = np.asarray(art[_tasks.GROUP_KEY]).astype(str) if _tasks.GROUP_KEY in art else None
    noun = str(art["group_name"]) if "group_name" in art else t.group_noun
    return JobItems(ids=np.asarray(art["ids"]).astype(str), stats=t.item_stats(art), group=group, group_noun=noun,
                    task=t.name)


def job_dense_stats(file) -> tuple[np.ndarray, str, dict[str, np.ndarray]] | None:
    """(ids, task, per-image statistics) of a dense job's test images (:mod:`probe.dense`), or None without them."""
    art = _artifacts(file)
    if art is None or "task" not in art:
        return None
    stats = {k.split("/", 1)[1]: v for k, v in art.items() if k.startswith("stat/")}
    return (art["ids"], str(art["task"]), stats) if stats else None


def job_preview(file) -> dict[str, np.ndarray] | None:
    """The few test images a dense job saved with their targets and its predictions (``ids``, ``image``,
    ``target``, ``pred``; see :mod:`probe._dense_sweep`), or None without them."""
    art = _artifacts(file)
    if art is None or "preview/ids" not in art:
        return None
    return {k.split("/", 1)[1]: v for k, v in art.items() if k.startswith("preview/")} | {
        "classes": art.get("classes", np.asarray([], dtype=str))}
