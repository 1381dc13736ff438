"""Select on val, refit on train+val, score test once: the one protocol of every learned probe.

:func:`select_refit_test` is the only place that chooses a grid point and refits it. The classification sweep
(:func:`probe.sweep`), the regression sweep (:func:`probe.sweep_regression`), the identity classifiers, every fold
of a cross-validation and the dense probes all call it, so they share one rule:

- **Selection**: the grid point with the best val score in the metric's direction (highest, or lowest when lower is
  better) is chosen. A non-finite val score (NaN, inf) never wins; when no point has a finite score the sweep
  stops with one line naming the metric.
- **Ties**: among points whose val scores are exactly equal, the strongest regularisation wins: the first in the
  estimator's ``_strength_order(points)`` (smallest C, largest alpha, largest k, strongest weight decay), so a
  flat val curve picks the simplest model.
- **Refit and test**: the chosen setting is set on the estimator (``_prepare_refit`` lets it warm-start), refitted
  by the caller's ``fit`` on train+val (or the few-shot train), timed here, and scored once by the caller's
  ``score``. Test data reach the protocol only through ``score``, after the choice.

The module also holds the grid helpers every sweep uses (:func:`check_grid`, :func:`make_probe`) and the protocol
id of a sweep (:func:`protocol_of`). It imports no task and no other engine module.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ._errors import ProbeError, UsageError


def best_index(scores: Sequence[float], strength_order: Sequence[int], *, higher_is_better: bool,
               metric: str = "the selection metric") -> int:
    """The chosen grid point: best finite score in the metric's direction, exact ties to the first point of
    ``strength_order`` (strongest regularisation first). See the module docstring.

    Parameters
    ----------
    scores : sequence of float
        Val score of each grid point (index = point).
    strength_order : sequence of int
        Point indices from the strongest regularisation to the weakest (an estimator's ``_strength_order``).
    higher_is_better : bool
        Direction of the metric.
    metric : str
        The metric's name, for the error when no score is finite.
    """
    values = [float(s) if s is not None else math.nan for s in scores]
    finite = [i for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        raise ProbeError(f"every grid point gave a non-finite val {metric}; check the features and targets")
    sign = 1.0 if higher_is_better else -1.0
    best_value = max(sign * values[i] for i in finite)
    return next(i for i in strength_order if math.isfinite(values[i]) and sign * values[i] == best_value)


@dataclass
class Outcome:
    """What :func:`select_refit_test` returns.

    Attributes
    ----------
    best : int
        Index of the chosen grid point.
    params : dict
        The chosen point.
    val_scores : list of float
        The val score of every point (index = point).
    estimator : estimator or None
        The chosen setting refitted; None when there is nothing to test (no ``fit``).
    fit_seconds : float
        Wall time of the refit.
    test : object
        What ``score(estimator, fit_seconds)`` returned; None without a refit.
    """

    best: int
    params: dict
    val_scores: list
    estimator: Any = None
    fit_seconds: float = 0.0
    test: Any = None


def select_refit_test(est, points: list[dict[str, Any]], val_path: Iterable[tuple], *,
                      val_score: Callable[..., float], higher_is_better: bool, metric: str = "the selection metric",
                      fit: Callable[[Any], None] | None = None,
                      score: Callable[[Any, float], Any] | None = None) -> Outcome:
    """Select a grid point on val, refit it, and score test once (the protocol of the module docstring).

    Parameters
    ----------
    est : estimator
        The probe swept; provides ``_strength_order(points)`` and ``set_params``.
    points : list of dict
        The expanded grid.
    val_path : iterable of tuples
        ``(point index, val output, seconds)`` for every point, in any order (an estimator's ``_sweep_path``).
    val_score : callable
        ``val_score(i, output, seconds) -> float``: the val metric of point ``i`` (the caller writes its val row
        here, so at most one output is held at a time).
    higher_is_better : bool
        Direction of the selection metric.
    metric : str
        The selection metric's name (for errors).
    fit : callable, optional
        ``fit(estimator)`` refits the chosen setting on train+val (the caller decides the data). None: nothing is
        refitted or tested (a dataset without a test split).
    score : callable, optional
        ``score(estimator, fit_seconds)``: scores test once; its value is :attr:`Outcome.test`.
    """
    scores = [math.nan] * len(points)
    for i, output, seconds in val_path:
        scores[i] = float(val_score(i, output, seconds))
    best = best_index(scores, est._strength_order(points), higher_is_better=higher_is_better, metric=metric)
    outcome = Outcome(best=best, params=dict(points[best]), val_scores=scores)
    if fit is None:
        return outcome
    fitted = est.set_params(**outcome.params)
    prepare = getattr(fitted, "_prepare_refit", None)
    if prepare is not None:
        prepare(best)
    start = time.perf_counter()
    fit(fitted)
    outcome.estimator, outcome.fit_seconds = fitted, time.perf_counter() - start
    if score is not None:
        outcome.test = score(fitted, outcome.fit_seconds)
    return outcome


# ---------------------------------------------------------------------------------------------------- grids


def make_probe(probe, device: str | None = None, *, registry: Mapping[str, type] | None = None, kind: str = "probe"):
    """A fresh estimator for a probe name (from ``registry``, default :data:`probe.probes.PROBES`), or a clone of
    an estimator; ``device`` overrides its device."""
    from sklearn.base import BaseEstimator, clone

    if registry is None:
        from .probes import PROBES as registry
    if isinstance(probe, str):
        if probe not in registry:
            raise UsageError(f"unknown {kind} {probe!r}; choose from {', '.join(registry)}")
        est = registry[probe]()
    elif isinstance(probe, BaseEstimator):
        est = clone(probe)
    else:
        raise UsageError(f"probe must be a name ({', '.join(registry)}) or a probe.probes estimator; "
                         f"got {type(probe).__name__}")
    if device is not None:
        est.set_params(device=device)
    return est


def check_grid(est, grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The expanded grid of ``est`` (its ``default_grid`` when None); UsageError for unknown keys or empty values."""
    from .probes._base import expand_grid

    grid = dict(type(est).default_grid if grid is None else grid)
    valid = set(est.get_params()) - {"device"}
    unknown = sorted(set(grid) - valid)
    if unknown:
        raise UsageError(f"grid keys {unknown} are not parameters of the {est.name} probe; "
                         f"valid keys: {sorted(valid) or 'none (it has no hyperparameters)'}")
    grid = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]) for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise UsageError(f"grid values for {empty} are empty; give at least one value per key")
    return expand_grid(grid)


def plain(value: Any) -> Any:
    """A numpy scalar as a python one (for JSON params)."""
    return value.item() if isinstance(value, np.generic) else value


def plain_params(point: Mapping[str, Any]) -> dict:
    return {k: plain(v) for k, v in point.items()}


def converged(est) -> dict:
    """``{"converged": bool}`` for an iterative probe that reports it (the last fit's), else nothing."""
    flag = getattr(est, "_last_converged", None)
    return {} if flag is None else {"converged": bool(flag)}


def quiet_blas_during(fn):
    """Run ``fn`` with numpy/scipy's BLAS held to one thread (see :func:`probe._runtime.quiet_blas`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ._runtime import quiet_blas

        with quiet_blas():
            return fn(*args, **kwargs)

    return wrapper


def protocol_of(est, points: list[dict], *, tap: str, task: str, val_fraction: float, test_fraction: float,
                select_metric: str, shots: int, refit: bool, evaluation: Mapping[str, Any] | None = None,
                exclude: Sequence[str] = ("device",)) -> str:
    """The protocol id (:func:`probe._identity.protocol_id`) of a sweep of ``est`` over ``points``.

    The grid is the expanded list of points plus the estimator's other parameters (e.g. ``max_iter``), so a
    change to anything that moves the numbers is a different protocol; the device (and any name in ``exclude``)
    is not part of it. ``evaluation`` is the scheme (:meth:`probe.tasks.Task.evaluation`), absent for the
    dataset's own splits.
    """
    from ._identity import protocol_id
    from ._version import PROBE_VERSION

    fixed = {k: plain(v) for k, v in est.get_params().items() if k not in exclude}
    grid = {"points": [plain_params(p) for p in points], "estimator": fixed}
    return protocol_id(task=task, probe=est.name, tap=tap, grid=grid, val_fraction=val_fraction,
                       test_fraction=test_fraction, select_metric=select_metric, shots=shots, refit=refit,
                       probe_version=PROBE_VERSION, evaluation=evaluation)
