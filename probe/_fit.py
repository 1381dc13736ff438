"""Sweeps of a probe on arrays: classifiers (:func:`sweep`) and regressors (:func:`sweep_regression`).

Both follow :func:`probe._protocol.select_refit_test` (select on val, ties to the strongest regularisation, refit
on train+val, score test once); they differ only in what they score and in the val carve:

1. ``val``: the given val split; otherwise a seeded part of the *full* train split is carved off by
   :func:`probe.splits.carve_splits` (the one carve fine-tuning uses too): within each class for classifiers (a
   per-id hash ranking over the dataset's full id list, so images skipped as unreadable move no other image), by
   the ranking of ids (or of groups, so that no person is in both parts) for regressors. Fraction and seed are
   recorded in every row. A classification dataset without a test split gets one carved first when
   ``test_fraction`` > 0.
2. Few-shot (``shots > 0``, classifiers): ``shots`` examples per class are drawn (seeded,
   :func:`probe.splits.few_shot`) from what remains of train *after* the carve, so val never overlaps the
   few-shot train and is the same set for every ``shots``; the refit then uses the few-shot train alone.
3. Every grid point is fitted on train and scored on val (``split="val"``, ``selected=False``), work shared across
   the grid (each probe's ``_sweep_path``); the selected setting is refitted and scored once on test
   (``split="test"``, ``selected=True``). Without a test split the selected val row is marked instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import UsageError
from ._protocol import (check_grid, converged, make_probe, plain_params, protocol_of, quiet_blas_during,
                        select_refit_test)
from .results import classification_metrics, make_row, regression_metrics, results_frame
from .splits import carve_splits, few_shot, require_two_classes
from .vocab import DEFAULT_VAL_FRACTION

#: Columns that :func:`sweep` computes itself; ``context`` may set any other results column.
_COMPUTED = {"probe", "params", "selected", "split", "top1", "top5", "mean_per_class_acc", "n_train", "n_eval",
             "shots", "seed", "val_fraction", "test_fraction", "select_metric", "fit_seconds", "created",
             "probe_version", "protocol", "n_val"}


def _task(name: str):
    from . import tasks

    return tasks.get(name)


@dataclass
class SweepResult:
    """What :func:`sweep` returns with ``return_result=True``.

    Attributes
    ----------
    frame : polars.DataFrame
        Rows in the results contract (val rows, then the selected test row).
    selected_params : dict
        The grid point chosen on val.
    estimator : ProbeBase or None
        The selected setting refitted (train+val, or the few-shot train); None without a test split.
    test_scores : ndarray [n_test, n_classes] or None
        ``estimator``'s scores on test; columns follow ``estimator.classes_``.
    extra : dict
        ``test_ids`` and ``test_labels`` of a carved test split, ``val_ids`` of the val part; ``val_scores``
        [n_val, n_classes] (the selected grid point's val scores from its fit on train, the material of
        temperature scaling), ``val_labels`` and ``val_classes`` (the label of each of their columns).
    """

    frame: Any
    selected_params: dict
    estimator: Any = None
    test_scores: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


@quiet_blas_during
def sweep(probe, train: tuple, val: tuple | None = None, test: tuple | None = None, *,
          grid: Mapping[str, Sequence] | None = None, select_metric: str = "top1",
          val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0, seed: int = 0, shots: int = 0,
          class_names: Sequence[str] | None = None, refit_on_val: bool | None = None, device: str | None = None,
          train_ids: Sequence[str] | None = None, absent: Mapping[str, int] | None = None,
          context: Mapping[str, Any] | None = None, evaluation: Mapping[str, Any] | None = None,
          return_result: bool = False):
    """Sweep a classification probe's hyperparameters on val, refit the best, and score test once.

    See the module docstring for the protocol (val carve, few-shot draw, selection, ties, refit).

    Parameters
    ----------
    probe : str or ProbeBase
        ``"logistic"``, ``"ridge"``, ``"knn"``, ``"centroid"``, or an estimator from :mod:`probe.probes` (its
        non-grid parameters, e.g. ``max_iter``, are kept).
    train, val, test : tuple of (X [n, d], y [n])
        Features and integer labels. ``val=None`` carves val from train; ``test=None`` carves test from train
        when ``test_fraction`` > 0 and otherwise skips the test row.
    grid : dict of lists, optional
        E.g. ``{"C": [...]}``, ``{"alpha": [...]}``, ``{"k": [...], "temperature": [...]}``; default: the
        probe's ``default_grid``.
    select_metric : {"top1", "top5", "mean_per_class_acc"}
        The val metric that selects the setting.
    val_fraction : float
        Part of each class of train carved off as val when ``val`` is None (recorded in every row; 0 otherwise).
    test_fraction : float
        Part of each class of train carved off as test (before the val carve) when ``test`` is None; 0 (default)
        carves nothing. Recorded in every row. The test carve's seed is fixed (:mod:`probe.splits`).
    seed : int
        Seed of the val carve and the few-shot draw (recorded in every row).
    shots : int
        Examples per class drawn from train (after the carve); 0 means all.
    class_names : list of str, optional
        Names of the labels, used in the error for a class with too few examples.
    refit_on_val : bool, optional
        Refit the selected setting on train+val; default True for ``shots == 0`` and False for few-shot.
    device : str, optional
        Torch device for the probe (default: the estimator's own, ``"auto"`` for names).
    train_ids : sequence of str, optional
        Ids of the train rows: the carves rank them (:func:`probe.splits.carve_splits`); default the positions.
    absent : dict id -> label, optional
        Train images of the full dataset that are not rows of ``train`` (skipped as unreadable), so the carves
        are those of the full list.
    context : dict, optional
        Values of the other results columns (backbone, family, weights, dataset, tap, cache_key, task,
        evaluation, and the backbone configuration: img_size, precision, backbone_config, config_label).
    evaluation : dict, optional
        The evaluation scheme's material for the protocol id (a fold of a cross-validation); None for splits.
    return_result : bool
        Return a :class:`SweepResult` (frame, selected estimator, test scores) instead of the frame alone.

    Returns
    -------
    polars.DataFrame or SweepResult
    """
    import torch

    from .probes._base import check_features, check_labels, resolve_device, to_tensor
    from .tasks import evaluation_label

    est = make_probe(probe, device)
    own = _task("classification")
    if select_metric not in own.selectable():
        raise UsageError(f"select_metric must be one of {', '.join(own.selectable())}; got {select_metric!r}")
    context = dict(context or {})
    clash = sorted(set(context) & _COMPUTED)
    if clash:
        raise UsageError(f"context may not set {clash}; sweep computes those columns (pass shots=/seed= instead)")
    if not isinstance(shots, (int, np.integer)) or shots < 0:
        raise UsageError(f"shots must be a non-negative integer (0 = all); got {shots!r}")
    points = check_grid(est, grid)
    refit_on_val = (shots == 0) if refit_on_val is None else bool(refit_on_val)

    X_train = check_features(train[0], name="train X")
    y_train = check_labels(train[1], len(X_train), name="train y", min_classes=1)
    ids = np.asarray([str(i) for i in range(len(y_train))] if train_ids is None else [str(i) for i in train_ids])
    if len(ids) != len(y_train):
        raise UsageError(f"train_ids has {len(ids)} ids for {len(y_train)} train rows")
    d = X_train.shape[1]
    carve_test = test is None and bool(test_fraction)
    parts = carve_splits(y_train, ids=ids, absent=absent, val_fraction=val_fraction if val is None else 0.0,
                         test_fraction=test_fraction if carve_test else 0.0, seed=seed)
    test_ids = None
    if carve_test:
        test = (X_train[parts["test"]], y_train[parts["test"]])
        test_ids = ids[parts["test"]]
    recorded_test_fraction = float(test_fraction) if carve_test else 0.0
    val_ids = None
    if val is None:
        X_val, y_val = X_train[parts["val"]], y_train[parts["val"]]
        val_ids = ids[parts["val"]]
        recorded_fraction = float(val_fraction)
    else:
        X_val = check_features(val[0], name="val X", n_features=d)
        y_val = check_labels(val[1], len(X_val), name="val y", min_classes=1)
        recorded_fraction = 0.0
    if not (len(parts["train"]) == len(y_train) and (parts["train"] == np.arange(len(y_train))).all()):
        X_train, y_train = X_train[parts["train"]], y_train[parts["train"]]  # (no copy when every row stays)
    if shots:
        pick = few_shot(y_train, int(shots), seed, list(class_names) if class_names is not None else None)
        X_train, y_train = X_train[pick], y_train[pick]
    require_two_classes(y_train, list(class_names) if class_names is not None else None,
                        after="the val carve and few-shot draw")
    if test is not None:
        X_test = check_features(test[0], name="test X", n_features=d)
        y_test = check_labels(test[1], len(X_test), name="test y", min_classes=1)

    dev = resolve_device(est.get_params().get("device"))
    classes, y_index = np.unique(y_train, return_inverse=True)
    Xt, yt = to_tensor(X_train, dev), torch.as_tensor(y_index, device=dev)

    protocol = protocol_of(est, points, tap=str(context.get("tap", "-")),
                           task=str(context.get("task") or own.name), val_fraction=recorded_fraction,
                           test_fraction=recorded_test_fraction, select_metric=select_metric, shots=int(shots),
                           refit=refit_on_val, evaluation=evaluation)
    context.setdefault("evaluation", evaluation_label(test_fraction=recorded_test_fraction))
    base = dict(context, probe=est.name, shots=int(shots), seed=int(seed), val_fraction=recorded_fraction,
                test_fraction=recorded_test_fraction, select_metric=select_metric, protocol=protocol,
                n_val=len(y_val))
    val_rows: list[dict] = [None] * len(points)  # type: ignore[list-item]
    not_converged = []
    sign = 1.0 if own.metric(select_metric).higher_is_better else -1.0
    # val scores of the points tying the best val score so far: the chosen point is one of them (temperature
    # scaling is fitted on its val scores); one matrix is held unless val scores tie exactly
    leaders: dict[int, np.ndarray] = {}
    lead = [-np.inf]

    def on_val(i, scores, seconds):
        scores_np = scores.float().cpu().numpy()
        metrics = classification_metrics(y_val, scores_np, classes)
        status = converged(est)  # the fit of point i has just finished
        if status and not status["converged"]:
            not_converged.append(points[i])
        val_rows[i] = make_row(**base, params={**plain_params(points[i]), **status}, selected=False, split="val",
                               n_train=len(X_train), n_eval=len(X_val), fit_seconds=seconds, **metrics)
        value = sign * float(metrics[select_metric])
        if np.isfinite(value) and value >= lead[0]:
            if value > lead[0]:
                leaders.clear()
                lead[0] = value
            leaders[i] = scores_np
        return metrics[select_metric]

    def warn_path():
        """The path's fits that stopped at max_iter, said once, before the refit (the order they happened in)."""
        if not_converged and not warned:
            from ._console import not_converged_warning

            warned.append(True)
            warnings.warn(not_converged_warning(est.name, context, not_converged, len(points)), stacklevel=4)

    warned: list[bool] = []

    def fit(fitted):
        warn_path()
        if refit_on_val:
            fitted._fit_stacked([(X_train, y_train), (X_val, y_val)])
        else:
            fitted.fit(X_train, y_train)

    def score(fitted, seconds):
        test_scores = class_scores(fitted, X_test)
        metrics = classification_metrics(y_test, test_scores, fitted.classes_)
        n_fit = len(y_train) + (len(y_val) if refit_on_val else 0)
        row = make_row(**base, params={**plain_params(points_best(points, fitted)), **converged(fitted)}, selected=True,
                       split="test", n_train=n_fit, n_eval=len(X_test), fit_seconds=seconds, **metrics)
        return row, test_scores

    # the val tensor lives only in the path (freed once every point is scored, before the refit; kNN's path keeps it
    # until the refit, to recognise the refit's rows as the ones it normalised)
    path = est._sweep_path(Xt, yt, len(classes), to_tensor(X_val, dev), points)
    outcome = select_refit_test(est, points, path, val_score=on_val,
                                higher_is_better=own.metric(select_metric).higher_is_better, metric=select_metric,
                                fit=None if test is None else fit, score=None if test is None else score)
    warn_path()
    rows, test_scores = list(val_rows), None
    if outcome.estimator is None:
        rows[outcome.best] = dict(rows[outcome.best], selected=True)
    else:
        test_row, test_scores = outcome.test
        rows.append(test_row)
    frame = results_frame(rows)
    if return_result:
        return SweepResult(frame=frame, selected_params=outcome.params, estimator=outcome.estimator,
                           test_scores=test_scores,
                           extra={"test_ids": test_ids, "test_labels": None if test is None else y_test,
                                  "val_ids": val_ids, "val_scores": leaders.get(outcome.best), "val_labels": y_val,
                                  "val_classes": classes})
    return frame


def class_scores(fitted, X: np.ndarray) -> np.ndarray:
    """The class scores [N, C] of a fitted classification probe on features ``X`` (columns: ``fitted.classes_``):
    how its test split, and any shifted set it is scored on (:mod:`probe._shifted`), are scored."""
    from .probes._base import resolve_device, to_tensor

    dev = resolve_device(fitted.get_params().get("device"))
    return fitted._scores(to_tensor(X, dev)).float().cpu().numpy()


def points_best(points, fitted) -> dict:
    """The grid keys' values of a refitted estimator (the chosen point)."""
    params = fitted.get_params()
    return {k: params[k] for k in points[0]} if points else {}


# ---------------------------------------------------------------------------------------------------- regression


def regression_items(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Per-item statistics whose means are the regression metrics (pooled summaries and bootstrap intervals):
    ``item/mae``, ``item/cs5`` and ``item/rmse`` (the squared error: rmse is the square root of its mean)."""
    from .results import CS_TOLERANCE

    err = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(y, dtype=np.float64))
    return {"item/mae": err, "item/cs5": (err <= CS_TOLERANCE).astype(np.float64), "item/rmse": err ** 2}


@dataclass
class TaskSweep:
    """What :func:`sweep_regression` (and a fold of :func:`probe._cv.cross_validate`) returns.

    Attributes
    ----------
    rows : list of dict
        Result rows (val rows, then the selected test row).
    selected_params : dict
    estimator : fitted estimator or None
    test : dict
        Per-item arrays of the test part: ``ids``, ``labels`` (targets), ``pred`` and ``item/<metric>``.
    val_ids : array or None
        Ids of the carved val part (None when val was given).
    """

    rows: list[dict]
    selected_params: dict
    estimator: Any = None
    test: dict = field(default_factory=dict)
    val_ids: Any = None


@quiet_blas_during
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
        Features and real-valued targets; ``val=None`` carves val from train (unstratified
        :func:`probe.splits.carve_splits`; by ``groups`` when given: no person in both), seeded by ``seed``.
    select_metric : {"mae", "rmse", "cs5"}
        Val metric that selects the setting (lower is better for mae and rmse); ties go to the strongest
        regularisation.
    base : dict
        Values of the other results columns for every row (backbone, dataset, protocol, fold, evaluation ...).
    """
    import torch

    from .probes import REGRESSORS
    from .probes._base import check_features, resolve_device, to_tensor
    from .tasks import evaluation_label

    est = make_probe(probe, device, registry=REGRESSORS, kind="regression probe")
    own = _task("regression")
    if select_metric not in own.selectable():
        raise UsageError(f"select_metric for regression must be one of {', '.join(own.selectable())}; "
                         f"got {select_metric!r}")
    points = check_grid(est, grid)
    X = check_features(train[0], name="train X")
    y = np.asarray(train[1], dtype=np.float64)
    ids = np.asarray([str(i) for i in range(len(y))] if train_ids is None else [str(i) for i in train_ids])
    val_ids = None
    if val is None:
        parts = carve_splits(None, ids=ids, val_fraction=val_fraction, seed=seed, stratify=False, groups=groups)
        tr, va = parts["train"], parts["val"]
        X_val, y_val, val_ids = X[va], y[va], ids[va]
        X, y = X[tr], y[tr]
        recorded_fraction = float(val_fraction)
    else:
        X_val, y_val = check_features(val[0], name="val X", n_features=X.shape[1]), np.asarray(val[1], np.float64)
        recorded_fraction = 0.0
    dev = resolve_device(est.get_params().get("device"))
    Xt, Xv, yt = to_tensor(X, dev), to_tensor(X_val, dev), torch.as_tensor(y, device=dev)
    common = {"evaluation": evaluation_label(), "task": own.name, **(base or {})}
    common.update(probe=est.name, shots=0, seed=int(seed), val_fraction=recorded_fraction,
                  select_metric=select_metric, n_val=len(y_val))
    rows: list[dict] = [None] * len(points)  # type: ignore[list-item]

    def on_val(i, pred, seconds):
        metrics = regression_metrics(y_val, pred.double().cpu().numpy())
        rows[i] = make_row(**common, params=plain_params(points[i]), selected=False, split="val", n_train=len(y),
                           n_eval=len(y_val), fit_seconds=seconds, **metrics)
        return metrics[select_metric]

    def score(fitted, seconds):
        X_test = check_features(test[0], name="test X", n_features=X.shape[1])
        y_test = np.asarray(test[1], dtype=np.float64)
        pred = fitted.predict(X_test)
        row = make_row(**common, params=plain_params(points_best(points, fitted)), selected=True, split="test",
                       n_train=len(y) + len(y_val), n_eval=len(y_test), fit_seconds=seconds,
                       **regression_metrics(y_test, pred))
        items = {"ids": np.asarray([str(i) for i in (test_ids if test_ids is not None else range(len(y_test)))]),
                 "labels": y_test, "pred": pred, **regression_items(y_test, pred)}
        return row, items

    outcome = select_refit_test(est, points, est._sweep_path(Xt, yt, Xv, points), val_score=on_val,
                                higher_is_better=own.metric(select_metric).higher_is_better, metric=select_metric,
                                fit=None if test is None else (lambda f: f.fit(np.concatenate([X, X_val]),
                                                                               np.concatenate([y, y_val]))),
                                score=None if test is None else score)
    out = TaskSweep(rows=rows, selected_params=outcome.params, val_ids=val_ids)
    if outcome.estimator is None:
        rows[outcome.best] = dict(rows[outcome.best], selected=True)
        return out
    test_row, items = outcome.test
    rows.append(test_row)
    out.estimator, out.test = outcome.estimator, items
    return out
