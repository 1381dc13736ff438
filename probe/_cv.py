"""Cross-validation for datasets without a test split: nested selection in each fold, a pooled summary.

Folds come from :func:`probe.splits.cv_folds` (a pure function of the ids, the seed and optionally labels or
groups; ``--cv-group subject`` keeps every person in one fold, K = people is leave-one-person-out). Selection is
nested (:func:`cross_validate`): inside each training fold the sweep carves its own val part (by group when
grouped, so no person is in both), selects there (:func:`probe._protocol.select_refit_test`), refits on the whole
training fold and scores the held-out fold once. Each fold writes its rows (``fold`` = i).

The summary row (``fold`` = null, ``split`` = test, ``selected`` = true) holds each metric computed from the
**pooled** held-out items of all folds (:meth:`probe.tasks.Metric.value` over the per-item statistics: every item
counted once, as FG-NET's leave-one-person-out MAE over all images), not the mean of the per-fold metrics. Its
``params`` hold ``fold_mean`` and ``fold_sd`` (the mean and sd of the per-fold metrics, labelled as such) and a
bootstrap interval of the pooled value, resampling people when the items cluster in them (grouped folds, or a
dataset whose classes are people) and items otherwise. A metric that is not computed from items (a scalar
such as ROC AUC) is the fold mean, and ``params["from_fold_mean"]`` names it.
"""

from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np

from ._fit import TaskSweep, regression_items, sweep_regression  # noqa: F401  (names of this module's API)
from .splits import carve_groups, check_fold_classes, cv_folds  # noqa: F401

#: What ``--cv-group`` may name: the grouping of the items.
CV_GROUPS = ("subject",)

__all__ = ["CV_GROUPS", "cv_folds", "carve_groups", "cross_validate", "summary_row", "cluster_bootstrap",
           "resample_counts", "sweep_regression", "TaskSweep", "regression_items", "fold_plan"]


def fold_plan(task, data, job, *, labels=None):
    """The folds of ``job`` over ``data`` and the groups they keep together (None when ungrouped).

    Stratified by ``labels`` when given (a task whose probes learn classes); grouped by person with
    ``cv_group="subject"``. A grouping that leaves a test fold's class without a training example is refused
    (one line) for every task that learns classes.
    """
    groups = data.labels if job.cv_group == "subject" else None
    folds = cv_folds(data.ids, k=job.cv, seed=job.seed, labels=labels, groups=groups)
    if task.learns_classes:
        classes = data.labels if labels is None else labels
        check_fold_classes(folds, classes, class_names=data.classes if labels is None or labels is data.labels
                           else None, grouped_by=job.cv_group, task=task.name)
    return folds, groups


def cross_validate(run_fold: Callable[[int, np.ndarray, np.ndarray], TaskSweep], folds, *,
                   metrics: Sequence[str] | None = None, task=None, items_of: Callable | None = None, groups=None,
                   people=None, ids=None, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
                   ) -> tuple[list[dict], dict]:
    """Run every fold (nested selection is ``run_fold``'s: it sees only the training rows for its val carve),
    then add the summary row computed from the pooled held-out items (see the module docstring).

    Parameters
    ----------
    run_fold : callable (fold index, train rows, test rows) -> TaskSweep
        One nested sweep; its rows get ``fold`` set here.
    folds : list of (train rows, test rows)
    metrics : sequence of str, optional
        Metric columns summarised; default every metric of the task.
    task : Task or str, optional
        The task whose :class:`probe.tasks.Metric` definitions compute the pooled values; default the rows'
        ``task`` column.
    items_of : callable, optional
        The held-out per-item arrays of a fold (default ``TaskSweep.test``); pooled over folds they are the
        job's predictions (every item once) and the items of the summary.
    groups : array [n], optional
        Group (person) of every item when the folds are grouped by it.
    people : array [n], optional
        The person of every item when the dataset's items cluster in people (ungrouped folds too): the pooled
        ``group`` array and the interval then resample people.
    ids : array [n], optional
        Item ids (the ``group`` of an item that clusters in nothing).

    Returns
    -------
    rows, pooled
        All rows (per fold, then the summary) and the pooled per-item arrays (with ``fold`` and ``group``).
    """
    from .tasks import GROUP_KEY

    rows: list[dict] = []
    pooled: dict[str, list] = {}
    per_fold_tests = []
    cluster = groups if groups is not None else people
    for i, (tr, te) in enumerate(folds):
        result = run_fold(i, tr, te)
        rows += [dict(r, fold=i) for r in result.rows]
        per_fold_tests += [dict(r, fold=i) for r in result.rows if r["selected"] and r["split"] == "test"]
        items = (items_of or (lambda res: res.test))(result)
        for key, value in items.items():
            pooled.setdefault(key, []).append(np.asarray(value))
        if items:
            pooled.setdefault("fold", []).append(np.full(len(next(iter(items.values()))), i))
            pooled.setdefault(GROUP_KEY, []).append(
                np.asarray(cluster)[te].astype(str) if cluster is not None else
                np.asarray([str(x) for x in (np.asarray(ids)[te] if ids is not None else te)]))
    joined = {k: np.concatenate(v) for k, v in pooled.items()}
    if per_fold_tests:
        rows.append(summary_row(per_fold_tests, joined, task=task, metrics=metrics, n_boot=n_boot, seed=seed,
                                ci=ci, clustered=cluster is not None))
    return rows, joined


def _metric(task, name: str, items: dict):
    """The Metric ``name`` computable from ``items``: the task's own, else a registered task's of that name (an
    identity classifier's top-1 is classification's)."""
    from . import tasks

    candidates = [task] + [t for t in tasks.all_tasks() if t is not task]
    for t in candidates:
        if name in t.metric_names:
            m = t.metric(name)
            if m.from_items and all(k in items for k in m.stats):
                return m
    return None


def summary_row(fold_rows: list[dict], items: dict, *, task=None, metrics: Sequence[str] | None = None,
                n_boot: int = 2000, seed: int = 0, ci: float = 0.95, clustered: bool = False) -> dict:
    """The summary of the folds' selected test rows (see the module docstring): each metric from the pooled
    held-out ``items``; ``params`` holds ``folds``, ``fold_mean``, ``fold_sd``, ``interval`` (bootstrap of the
    pooled value, people resampled when ``clustered``), ``interval_over`` and ``from_fold_mean``."""
    from . import tasks
    from .tasks import GROUP_KEY

    first = dict(fold_rows[0])
    if task is None:
        task = first.get("task") or tasks.DEFAULT
    if isinstance(task, str):
        task = tasks.get(task)
    names = list(metrics) if metrics is not None else list(task.metric_names)
    names += [m for m in ("top1", "top5", "mean_per_class_acc") if m not in names and first.get(m) is not None]
    fold_mean, fold_sd, intervals, from_folds = {}, {}, {}, []
    groups = items.get(GROUP_KEY) if clustered else None
    n = len(next(iter(items.values()))) if items else 0
    counts = resample_counts(n, groups, n_boot=n_boot, seed=seed) if n else None
    tail = (1.0 - ci) / 2.0
    for m in names:
        values = np.asarray([r[m] for r in fold_rows if r.get(m) is not None], dtype=np.float64)
        if not len(values):
            continue
        fold_mean[m] = float(values.mean())
        fold_sd[m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        metric = _metric(task, m, items) if n else None
        if metric is None:
            first[m] = fold_mean[m]
            from_folds.append(m)
            continue
        first[m] = metric.value(items)
        stats = metric.resampled(items, counts)
        stats = stats[np.isfinite(stats)]
        if len(stats):
            low, high = np.quantile(stats, [tail, 1.0 - tail])
            intervals[m] = [float(low), float(high)]
    # the task's extra metrics (calibration) from the pooled items; its other per-row numbers (one temperature per
    # fold) have no pooled value: null, never the first fold's
    for metric in task.extra_metrics:
        if metric.name not in names:
            first[metric.name] = (metric.value(items) if n and all(k in items for k in metric.stats)
                                  else None)
    extra = {m.name for m in task.extra_metrics}
    for name, dtype in task.columns.items():
        if dtype != "Utf8" and name not in names and name not in extra:
            first[name] = None
    first.update(fold=None, params=json.dumps({"folds": len(fold_rows), "pooled": True, "fold_mean": fold_mean,
                                               "fold_sd": fold_sd, "ci": ci, "interval": intervals,
                                               "interval_over": "people" if groups is not None else "items",
                                               "from_fold_mean": from_folds}, sort_keys=True),
                 n_eval=int(sum(r["n_eval"] or 0 for r in fold_rows)),
                 n_train=int(np.median([r["n_train"] or 0 for r in fold_rows])),
                 n_val=int(np.median([r["n_val"] or 0 for r in fold_rows])),
                 fit_seconds=float(sum(r["fit_seconds"] or 0.0 for r in fold_rows)))
    return first


def resample_counts(n: int, groups=None, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] draw counts of a bootstrap over ``n`` items: items drawn with replacement, or, with
    ``groups``, whole groups drawn with replacement (each item counted as often as its group is drawn)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_boot)).astype(np.float64)
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    g = int(inverse.max()) + 1
    draws = rng.multinomial(g, np.full(g, 1.0 / g), size=int(n_boot)).astype(np.float64)
    return draws[:, inverse]


def cluster_bootstrap(values, groups=None, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
                      sqrt: bool = False) -> tuple[float, float]:
    """Percentile interval of the mean of per-item ``values``, resampling groups (people) when given, else items.

    With groups, each resample draws as many groups as there are, with replacement, and takes the mean over the
    drawn groups' items (a ratio of sums); ``sqrt`` takes the square root of that mean (rmse from squared errors).
    """
    values = np.asarray(values, dtype=np.float64)
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    n = len(sums)
    stats = np.empty(int(n_boot))
    step = max(1, 4_000_000 // n)  # resamples drawn at once: bounds the [step, n] count matrix
    for lo in range(0, int(n_boot), step):
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=min(step, int(n_boot) - lo)).astype(np.float64)
        stats[lo:lo + len(draws)] = (draws @ sums) / (draws @ counts)
    if sqrt:
        stats = np.sqrt(stats)
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)
