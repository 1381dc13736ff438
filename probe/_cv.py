"""Cross-validation for datasets without a test split, and the regression sweep (select on val, refit, test).

Folds (:func:`cv_folds`) are a pure function of the ids, the seed and (optionally) labels or groups, like the
carves of :mod:`probe.splits`: items are ranked by a seeded hash of their id (of their group's name when grouped)
and dealt round-robin to the K folds, within each class when stratified. ``groups`` (``--cv-group subject``)
keeps every person in one fold; K equal to the number of people is leave-one-person-out.

Selection is nested (:func:`cross_validate`): inside each training fold the sweep carves its own val part (by
group when grouped, so no person is in both), selects there, refits on the whole training fold and scores the
held-out fold once. Each fold writes its rows (``fold`` = i); a summary row (``fold`` = null, ``split`` = test,
``selected`` = true) holds the mean over folds, with the sd over folds and a bootstrap interval over the held-out
items (or people) in its ``params``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ._errors import UsageError
from .splits import _rank_keys
from .vocab import DEFAULT_VAL_FRACTION, LOWER_IS_BETTER, TASK_METRICS

#: What ``--cv-group`` may name: the grouping of the items.
CV_GROUPS = ("subject",)


def cv_folds(ids: Sequence[str], *, k: int, seed: int = 0, labels=None, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds as ``(train_rows, test_rows)`` pairs of sorted indices; every item is tested exactly once.

    Parameters
    ----------
    ids : sequence of str
        Item ids (the ranking hashes them, so the folds do not depend on the order of the list).
    k : int
        Number of folds, at least 2; with ``groups``, at most the number of groups (K = groups: leave one out).
    seed : int
        Seed of the ranking.
    labels : array [n], optional
        Class labels: each class is dealt over the folds on its own (stratified). Ignored with ``groups``.
    groups : array [n], optional
        Group of each item (a person): a group's items are always in the same fold.
    """
    ids = [str(i) for i in ids]
    n = len(ids)
    k = int(k)
    if k < 2:
        raise UsageError(f"--cv must be at least 2 folds; got {k}")
    fold = np.empty(n, dtype=np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        names, inverse = np.unique(groups.astype(str), return_inverse=True)
        if k > len(names):
            raise UsageError(f"--cv {k} asks for more folds than there are groups ({len(names)} people); use "
                             f"--cv {len(names)} for leave-one-person-out")
        if k == len(names):
            order = np.arange(len(names))  # leave one group out, in name order
        else:
            keys = _rank_keys(list(names), "cv-group", seed)
            order = np.empty(len(names), dtype=np.int64)
            order[np.argsort(keys, kind="stable")] = np.arange(len(names))
        fold = order[inverse] % k
    else:
        if n < k:
            raise UsageError(f"--cv {k} asks for more folds than there are items ({n})")
        keys = _rank_keys(ids, "cv", seed)
        strata = np.zeros(n, dtype=np.int64) if labels is None else np.unique(np.asarray(labels),
                                                                               return_inverse=True)[1]
        offset = 0
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            ranked = members[np.lexsort((np.asarray(ids, dtype=object)[members].astype(str), keys[members]))]
            fold[ranked] = (offset + np.arange(len(ranked))) % k
            offset += len(ranked)  # the next class starts where this one stopped: fold sizes stay balanced
    out = []
    for i in range(k):
        test = np.flatnonzero(fold == i)
        if len(test):
            out.append((np.flatnonzero(fold != i), test))
    return out


def carve_groups(ids: Sequence[str], *, fraction: float, seed: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, val) by a seeded hash ranking of their groups (of each id without groups).

    ``round(fraction * n_groups)`` groups (clipped to [1, n_groups - 1]) go to val; no group is in both.
    """
    ids = [str(i) for i in ids]
    names = np.asarray(ids if groups is None else [str(g) for g in groups])
    unique = np.unique(names)
    if len(unique) < 2:
        raise UsageError("cannot carve a val part: the training rows hold a single group; use more people or "
                         "items")
    n_val = int(np.clip(round(fraction * len(unique)), 1, len(unique) - 1))
    keys = _rank_keys(list(unique), "val-group", seed)
    val_names = unique[np.lexsort((unique, keys))][:n_val]
    is_val = np.isin(names, val_names)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# ---------------------------------------------------------------------------------------------------- regression


@dataclass
class TaskSweep:
    """What :func:`sweep_regression` (and a fold of :func:`cross_validate`) returns.

    Attributes
    ----------
    rows : list of dict
        Result rows (val rows, then the selected test row).
    selected_params : dict
    estimator : fitted estimator or None
    test : dict
        Per-item arrays of the test part: ``ids``, ``labels`` (targets), ``pred`` and ``item/<metric>``.
    """

    rows: list[dict]
    selected_params: dict
    estimator: Any = None
    test: dict = field(default_factory=dict)


def regression_items(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-item values whose means are the regression metrics (for bootstrap intervals): ``item/mae``,
    ``item/cs5`` and ``item/rmse`` (the squared error: rmse is the square root of its mean)."""
    from .results import CS_TOLERANCE

    err = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64))
    return {"item/mae": err, "item/cs5": (err <= CS_TOLERANCE).astype(np.float64), "item/rmse": err ** 2}


def _quiet_blas(fn):
    from ._sweep import _quiet_blas_during

    return _quiet_blas_during(fn)


@_quiet_blas
def sweep_regression(probe, train: tuple, val: tuple | None = None, test: tuple | None = None, *,
                     grid: Mapping[str, Sequence] | None = None, select_metric: str = "mae",
                     val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, train_ids=None, test_ids=None,
                     groups=None, device: str | None = None, base: Mapping[str, Any] | None = None) -> TaskSweep:
    """Sweep a regression probe on val, refit the best on train+val, score test once (as :func:`probe.sweep`).

    Parameters
    ----------
    probe : str or RegressionProbeBase
        ``"ridge"`` or ``"knn"`` (:data:`probe.probes.REGRESSORS`), or an estimator.
    train, val, test : tuple of (X [n, d], y [n])
        Features and real-valued targets; ``val=None`` carves val from train (by ``groups`` when given: no person
        in both), seeded by ``seed``.
    select_metric : {"mae", "rmse", "cs5"}
        Val metric that selects the setting (lower is better for mae and rmse); ties go to the strongest
        regularisation.
    base : dict
        Values of the other results columns for every row (backbone, dataset, protocol, fold ...).
    """
    from sklearn.base import clone

    from ._sweep import _check_grid, _plain
    from .probes import REGRESSORS
    from .probes._base import check_features, resolve_device, to_tensor
    from .results import make_row, regression_metrics

    import torch

    if isinstance(probe, str):
        if probe not in REGRESSORS:
            raise UsageError(f"unknown regression probe {probe!r}; choose from {', '.join(REGRESSORS)}")
        est = REGRESSORS[probe]()
    else:
        est = clone(probe)
    if device is not None:
        est.set_params(device=device)
    if select_metric not in TASK_METRICS["regression"]:
        raise UsageError(f"select_metric for regression must be one of {', '.join(TASK_METRICS['regression'])}; "
                         f"got {select_metric!r}")
    points = _check_grid(est, grid)
    X = check_features(train[0], name="train X")
    y = np.asarray(train[1], dtype=np.float64)
    ids = np.asarray([str(i) for i in range(len(y))] if train_ids is None else [str(i) for i in train_ids])
    if val is None:
        tr, va = carve_groups(ids, fraction=val_fraction, seed=seed, groups=groups)
        X_val, y_val = X[va], y[va]
        X, y = X[tr], y[tr]
        recorded_fraction = float(val_fraction)
    else:
        X_val, y_val = check_features(val[0], name="val X", n_features=X.shape[1]), np.asarray(val[1], np.float64)
        recorded_fraction = 0.0
    dev = resolve_device(est.get_params().get("device"))
    Xt, Xv, yt = to_tensor(X, dev), to_tensor(X_val, dev), torch.as_tensor(y, device=dev)
    common = dict(base or {}, probe=est.name, shots=0, seed=int(seed), val_fraction=recorded_fraction,
                  select_metric=select_metric, n_val=len(y_val), task="regression")
    rows: list[dict] = [None] * len(points)  # type: ignore[list-item]
    for i, pred, seconds in est._sweep_path(Xt, yt, Xv, points):
        rows[i] = make_row(**common, params={k: _plain(v) for k, v in points[i].items()}, selected=False,
                           split="val", n_train=len(y), n_eval=len(y_val), fit_seconds=seconds,
                           **regression_metrics(y_val, pred.double().cpu().numpy()))
    sign = 1.0 if select_metric in LOWER_IS_BETTER else -1.0
    best_value = min(sign * r[select_metric] for r in rows)
    best = next(i for i in est._strength_order(points) if sign * rows[i][select_metric] == best_value)
    selected = dict(points[best])
    out = TaskSweep(rows=rows, selected_params=selected)
    if test is None:
        rows[best] = dict(rows[best], selected=True)
        return out
    X_fit, y_fit = np.concatenate([X, X_val]), np.concatenate([y, y_val])
    fitted = est.set_params(**selected)
    start = time.perf_counter()
    fitted.fit(X_fit, y_fit)
    seconds = time.perf_counter() - start
    X_test = check_features(test[0], name="test X", n_features=X.shape[1])
    y_test = np.asarray(test[1], dtype=np.float64)
    pred = fitted.predict(X_test)
    rows.append(make_row(**common, params={k: _plain(v) for k, v in selected.items()}, selected=True, split="test",
                         n_train=len(y_fit), n_eval=len(y_test), fit_seconds=seconds,
                         **regression_metrics(y_test, pred)))
    out.estimator = fitted
    out.test = {"ids": np.asarray([str(i) for i in (test_ids if test_ids is not None else range(len(y_test)))]),
                "labels": y_test, "pred": pred, **regression_items(y_test, pred)}
    return out


# ---------------------------------------------------------------------------------------------------- CV driver


def cross_validate(run_fold: Callable[[int, np.ndarray, np.ndarray], TaskSweep], folds, *, metrics: Sequence[str],
                   items_of: Callable[[TaskSweep], dict] | None = None, groups=None, ids=None, n_boot: int = 2000,
                   seed: int = 0, ci: float = 0.95) -> tuple[list[dict], dict]:
    """Run every fold (nested selection is ``run_fold``'s: it sees only the training rows for its val carve),
    then add the across-fold summary row.

    Parameters
    ----------
    run_fold : callable (fold index, train rows, test rows) -> TaskSweep
        One nested sweep; its rows get ``fold`` set here.
    folds : list of (train rows, test rows)
    metrics : sequence of str
        Metric columns summarised (mean and sd over folds).
    items_of : callable, optional
        The held-out per-item arrays of a fold (default ``TaskSweep.test``); pooled over folds they are the
        job's predictions (every item once) and the items of the summary's bootstrap interval.
    groups : array [n], optional
        Group (person) of every item of the dataset: the interval then resamples people, not items.

    Returns
    -------
    rows, pooled
        All rows (per fold, then the summary) and the pooled per-item arrays (with ``fold``).
    """
    rows: list[dict] = []
    pooled: dict[str, list] = {}
    per_fold_tests = []
    for i, (tr, te) in enumerate(folds):
        result = run_fold(i, tr, te)
        rows += [dict(r, fold=i) for r in result.rows]
        tests = [r for r in result.rows if r["selected"] and r["split"] == "test"]
        per_fold_tests += [dict(t, fold=i) for t in tests]
        items = (items_of or (lambda res: res.test))(result)
        for key, value in items.items():
            pooled.setdefault(key, []).append(np.asarray(value))
        if items:
            pooled.setdefault("fold", []).append(np.full(len(next(iter(items.values()))), i))
            pooled.setdefault("group", []).append(np.asarray(groups)[te] if groups is not None else np.asarray(
                [str(x) for x in (np.asarray(ids)[te] if ids is not None else te)]))
    joined = {k: np.concatenate(v) for k, v in pooled.items()}
    if per_fold_tests:
        rows.append(summary_row(per_fold_tests, metrics, joined, n_boot=n_boot, seed=seed, ci=ci,
                                grouped=groups is not None))
    return rows, joined


def summary_row(fold_rows: list[dict], metrics: Sequence[str], items: dict, *, n_boot: int, seed: int, ci: float,
                grouped: bool) -> dict:
    """The across-fold summary of the folds' selected test rows: mean over folds per metric (``fold`` null);
    ``params`` holds the folds' count, each metric's sd over folds and its bootstrap interval over the pooled
    held-out items (people when ``grouped``)."""
    first = dict(fold_rows[0])
    sd, intervals = {}, {}
    for m in metrics:
        values = np.asarray([r[m] for r in fold_rows if r.get(m) is not None], dtype=np.float64)
        if not len(values):
            continue
        first[m] = float(values.mean())
        sd[m] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        item = items.get(f"item/{m}")
        if item is not None and len(item):
            low, high = cluster_bootstrap(item, items["group"] if grouped else None, n_boot=n_boot, seed=seed, ci=ci,
                                          sqrt=m == "rmse")
            intervals[m] = [low, high]
    first.update(fold=None, params=json.dumps({"folds": len(fold_rows), "fold_sd": sd, "ci": ci, "interval": intervals,
                                               "interval_over": "people" if grouped else "items"}, sort_keys=True),
                 n_eval=int(sum(r["n_eval"] or 0 for r in fold_rows)),
                 n_train=int(np.median([r["n_train"] or 0 for r in fold_rows])),
                 n_val=int(np.median([r["n_val"] or 0 for r in fold_rows])),
                 fit_seconds=float(sum(r["fit_seconds"] or 0.0 for r in fold_rows)))
    return first


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
