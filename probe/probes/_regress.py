"""Regression probes on frozen features (continuous targets, e.g. age in years): ridge and cosine kNN.

Both follow scikit-learn's regressor contract (``fit``/``predict``/``score`` = R^2) and compute in torch like the
classification probes; :func:`probe.sweep` scores a whole grid from shared work (one decomposition for every
alpha, one neighbour search for every k).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._base import FEATURE_DTYPES, _host, check_finite, check_positive, resolve_device, to_tensor
from ._knn import _top_neighbours
from ._ridge import RidgeProbe, _Decomposition


class RegressionProbeBase(RegressorMixin, BaseEstimator):
    """Common contract of the regression probes: validation, predict, and the sweep hooks.

    Subclasses implement ``_fit(X, y)`` on a float32 tensor and float64 targets, ``_predict(X)`` returning a
    tensor [N], and ``_sweep_path`` for sweeps.
    """

    name: ClassVar[str] = ""
    default_grid: ClassVar[dict[str, list]] = {}

    def fit(self, X, y):
        """Fit on features ``X`` [n_samples, n_features] and real-valued targets ``y`` [n_samples]; returns self."""
        X, y = validate_data(self, _host(X), _host(y), dtype=FEATURE_DTYPES, ensure_all_finite=False,
                             y_numeric=True)
        check_finite(X)
        y = np.asarray(y, dtype=np.float64)
        if not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity; drop those rows or fix the targets")
        self._check_params()
        device = resolve_device(getattr(self, "device", None))
        self._fit(to_tensor(X, device), torch.as_tensor(y, device=device))
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted targets [n_samples] (float64)."""
        check_is_fitted(self)
        X = validate_data(self, _host(X), reset=False, dtype=FEATURE_DTYPES, ensure_all_finite=False)
        check_finite(X)
        return self._predict(to_tensor(X, resolve_device(getattr(self, "device", None)))).double().cpu().numpy()

    def _check_params(self) -> None:
        """Validate hyperparameters (ValueError naming the parameter)."""

    def _sweep_path(self, X: torch.Tensor, y: torch.Tensor, X_eval: torch.Tensor,
                    points: list[dict[str, Any]]) -> Iterable[tuple[int, torch.Tensor, float]]:
        """Yield (point index, eval predictions [N_eval], fit seconds) per grid point; default: refit each."""
        from sklearn.base import clone

        for i, point in enumerate(points):
            start = time.perf_counter()
            est = clone(self).set_params(**point)
            est._check_params()
            est._fit(X, y)
            yield i, est._predict(X_eval), time.perf_counter() - start

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        return list(range(len(points)))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {}


class RidgeRegressionProbe(RegressionProbeBase):
    """Least squares with an L2 penalty, as scikit-learn's ``Ridge`` (unpenalised intercept by centring).

    A fit decomposes the centred Gram matrix (``Xc^T Xc``, or ``Xc Xc^T`` when there are fewer samples than
    features) once, in float64; a sweep reuses that one decomposition for every alpha of its grid (the ridge
    classifier's :class:`probe.probes.RidgeProbe` machinery, with real-valued targets).

    Parameters
    ----------
    alpha : float, default=1.0
        L2 penalty on the sum of squared errors, as in scikit-learn.
    fit_intercept : bool, default=True
        Centre features and targets.
    device : str, default="auto"
        Torch device; ``"auto"`` picks cuda when available.

    Attributes
    ----------
    coef_ : ndarray [n_features]
    intercept_ : float
    """

    name = "ridge"
    default_grid = RidgeProbe.default_grid

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True, device: str = "auto"):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.device = device

    def _check_params(self) -> None:
        check_positive(type(self).__name__, "alpha", self.alpha)

    def _fit(self, X, y):
        dec = _Decomposition.for_targets(X, y[:, None], self.fit_intercept)
        self._W, self._b = dec.solution(float(self.alpha))
        self.coef_ = self._W[:, 0].double().cpu().numpy()
        self.intercept_ = float(self._b[0])

    def _predict(self, X):
        return (X @ self._W.to(X.device) + self._b.to(X.device))[:, 0]

    def _sweep_path(self, X, y, X_eval, points):
        """One decomposition for the whole alpha grid; each alpha then costs one [N_eval, r] x [r] product."""
        start = time.perf_counter()
        dec = _Decomposition.for_targets(X, y[:, None], self.fit_intercept)
        E = dec.project(X_eval)
        shared = (time.perf_counter() - start) / max(1, len(points))
        for i, point in enumerate(points):
            start = time.perf_counter()
            alpha = float(point.get("alpha", self.alpha))
            check_positive(type(self).__name__, "alpha", alpha)
            z = torch.addmm(dec.y_mean, E, (dec.B / (dec.eigvals + alpha)[:, None]).to(E.dtype))
            yield i, z[:, 0], shared + time.perf_counter() - start

    _strength_order = staticmethod(RidgeProbe._strength_order)

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": np.asarray([self.intercept_])}


class KNNRegressionProbe(RegressionProbeBase):
    """Mean target of the ``k`` nearest training rows under cosine similarity (DINO-weighted or uniform).

    ``temperature=None`` averages the neighbours uniformly (scikit-learn's ``KNeighborsRegressor`` with
    ``metric="cosine"``); otherwise the weights are ``exp(sim / temperature)``. ``k`` larger than the training
    set is clipped to its size.

    Parameters
    ----------
    k : int, default=10
    temperature : float or None, default=None
    device : str, default="auto"
    """

    name = "knn"
    default_grid = {"k": [1, 3, 5, 10, 20, 50], "temperature": [0.07, None]}

    def __init__(self, k: int = 10, *, temperature: float | None = None, device: str = "auto"):
        self.k = k
        self.temperature = temperature
        self.device = device

    def _check_params(self) -> None:
        check_positive(type(self).__name__, "k", self.k, integer=True)
        check_positive(type(self).__name__, "temperature", self.temperature, allow_none=True)

    def _fit(self, X, y):
        self.bank_ = F.normalize(X, dim=1)
        self.bank_targets_ = y

    def _predict(self, X):
        sims, rows = _top_neighbours(F.normalize(X, dim=1), self.bank_, _rows(self.bank_), self.k)
        return _weighted_mean(sims, self.bank_targets_[rows], min(self.k, sims.shape[1]), self.temperature)

    def _sweep_path(self, X, y, X_eval, points):
        """One top-max(k) search; every (k, temperature) is then scored from the same neighbours."""
        start = time.perf_counter()
        for p in points:
            check_positive(type(self).__name__, "k", p.get("k", self.k), integer=True)
            check_positive(type(self).__name__, "temperature", p.get("temperature", self.temperature),
                           allow_none=True)
        max_k = max(int(p.get("k", self.k)) for p in points)
        bank = F.normalize(X, dim=1)
        sims, rows = _top_neighbours(F.normalize(X_eval, dim=1), bank, _rows(bank), max_k)
        targets = y[rows]
        shared = (time.perf_counter() - start) / max(1, len(points))
        for i, p in enumerate(points):
            start = time.perf_counter()
            k = min(int(p.get("k", self.k)), sims.shape[1])
            yield i, _weighted_mean(sims, targets, k, p.get("temperature", self.temperature)), \
                shared + time.perf_counter() - start

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        from ._knn import KNNProbe

        return KNNProbe._strength_order(points)


def _rows(bank: torch.Tensor) -> torch.Tensor:
    return torch.arange(len(bank), device=bank.device)


def _weighted_mean(sims: torch.Tensor, targets: torch.Tensor, k: int, temperature: float | None) -> torch.Tensor:
    sims, targets = sims[:, :k].double(), targets[:, :k]
    if temperature is None:
        return targets.mean(dim=1)
    w = torch.exp((sims - sims[:, :1]) / float(temperature))
    return (w * targets).sum(dim=1) / w.sum(dim=1)


#: probe name (results table, CLI) -> regression estimator class, for ``--task regression``
REGRESSORS: dict[str, type[RegressionProbeBase]] = {cls.name: cls for cls in (RidgeRegressionProbe,
                                                                              KNNRegressionProbe)}
