"""Shared machinery of the probes: input validation, devices, and the scikit-learn estimator contract.

Every probe stores its parameters in ``__init__`` only, validates in ``fit`` and returns ``self``, and keeps
learned state in attributes ending in ``_``. The heavy lifting runs in torch (float32) on ``device``, so the same
code runs on CPU and GPU; results come back as numpy arrays.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

#: Bytes of similarity matrix a chunked kernel may hold at once (bounds memory of kNN / scoring).
CHUNK_BYTES = 256 * 2**20


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``"auto"``/None to cuda when present (else cpu); anything else goes to :class:`torch.device`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_features(X: Any, *, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a 2-D numpy array, or raise ValueError naming what is wrong and how to fix it."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_samples, n_features]; got shape {X.shape}. "
                         "Reshape a single sample with X.reshape(1, -1)")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers; got dtype {X.dtype}")
    if len(X) == 0:
        raise ValueError(f"{name} has no samples (shape {X.shape}); pass at least one row")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the probe was fitted on {n_features}; "
                         "use features of the same backbone and tap for fit and predict")
    finite = np.isfinite(X) if X.dtype.kind == "f" else True
    if not np.all(finite):
        bad = int(np.size(X) - np.count_nonzero(finite))
        row = int(np.flatnonzero(~np.all(finite, axis=1))[0])
        raise ValueError(f"{name} contains {bad} NaN or infinite values (first in row {row}); "
                         "re-extract the features (float16 overflow?) or drop those rows")
    return X


def check_labels(y: Any, n_samples: int, *, name: str = "y", min_classes: int = 2) -> np.ndarray:
    """Return ``y`` as a 1-D integer array of length ``n_samples`` with at least ``min_classes`` classes."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class labels; got shape {y.shape}")
    if len(y) != n_samples:
        raise ValueError(f"X and {name} have different lengths ({n_samples} vs {len(y)}); "
                         "pass one label per feature row")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class labels; got dtype {y.dtype}. "
                             "Encode string labels first, e.g. with sklearn.preprocessing.LabelEncoder")
    n_classes = len(np.unique(y))
    if n_classes < min_classes:
        raise ValueError(f"{name} has {n_classes} class(es); a probe needs at least {min_classes} to classify. "
                         "Check the labels or the few-shot draw")
    return y.astype(np.int64, copy=False)


def to_tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor on ``device`` (float16 caches are widened here, once)."""
    return torch.as_tensor(np.ascontiguousarray(X)).to(device=device, dtype=torch.float32)


def chunk_rows(n_rows: int, n_cols: int, bytes_per: int = 4) -> int:
    """Rows per chunk so that a [rows, n_cols] block stays within :data:`CHUNK_BYTES`."""
    return max(1, min(n_rows, CHUNK_BYTES // max(1, n_cols * bytes_per)))


def expand_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a dict of lists, in key order then value order (deterministic)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(list(grid[k]) for k in keys))]


class ProbeBase(ClassifierMixin, BaseEstimator):
    """Common contract of the probes: validation, classes_, predict, decision_function, score.

    Subclasses implement ``_fit(X, y_index)`` on a float32 tensor and class indices, and ``_scores(X)`` returning a
    float32 tensor [N, n_classes] whose argmax is the prediction. For sweeps they implement ``_sweep_path``.
    """

    #: The probe's name in the results table and on the command line.
    name: ClassVar[str] = ""
    #: Grid used by :func:`probe.sweep` when none is given.
    default_grid: ClassVar[dict[str, list]] = {}

    # ----------------------------------------------------------------------------------------- public API
    def fit(self, X, y):
        """Fit the probe on features ``X`` [n_samples, n_features] and integer labels ``y``; returns self."""
        X = check_features(X)
        y = check_labels(y, len(X))
        self._check_params()
        device = resolve_device(getattr(self, "device", None))
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        self._fit(to_tensor(X, device), torch.as_tensor(y_index, device=device))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Per-class scores [n_samples, n_classes] (columns follow ``classes_``); larger means more likely."""
        return self._scores(self._check_predict_input(X)).cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels (values from ``classes_``)."""
        scores = self._scores(self._check_predict_input(X))
        return self.classes_[scores.argmax(dim=1).cpu().numpy()]

    # ---------------------------------------------------------------------------------------- for sweeps
    def _sweep_path(self, X: torch.Tensor, y_index: torch.Tensor, n_classes: int, X_eval: torch.Tensor,
                    points: list[dict[str, Any]]) -> Iterable[tuple[int, torch.Tensor, float]]:
        """Yield (point index, eval scores [N_eval, n_classes], fit seconds) once per grid point, in any order.

        The caller turns each score matrix into metrics before asking for the next, so at most one is held.
        The default refits a clone per point; subclasses override it to share work across the grid.
        """
        for i, point in enumerate(points):
            start = time.perf_counter()
            est = self._clone_with(point)
            est.classes_ = np.arange(n_classes)
            est.n_features_in_ = X.shape[1]
            est._fit(X, y_index)
            yield i, est._scores(X_eval), time.perf_counter() - start

    def _prepare_refit(self, point_index: int) -> None:
        """Called by the sweep before refitting grid point ``point_index`` on more data (e.g. to warm-start)."""

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        """Indices of ``points`` from the strongest regularisation to the weakest (the tie-break order)."""
        return list(range(len(points)))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        """Learned arrays worth saving beside the results (small; not the training features)."""
        return {}

    # ------------------------------------------------------------------------------------------ helpers
    def _clone_with(self, params: dict[str, Any]):
        from sklearn.base import clone

        return clone(self).set_params(**params)

    def _check_params(self) -> None:
        """Validate hyperparameters (ValueError naming the parameter); called by ``fit``."""

    def _check_predict_input(self, X) -> torch.Tensor:
        if not hasattr(self, "classes_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")
        X = check_features(X, n_features=self.n_features_in_)
        return to_tensor(X, self._device())

    def _device(self) -> torch.device:
        return resolve_device(getattr(self, "device", None))

    def _fit(self, X: torch.Tensor, y_index: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _scores(self, X: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def check_positive(owner: str, name: str, value: Any, *, allow_none: bool = False, integer: bool = False) -> None:
    """Raise ValueError in scikit-learn's words unless ``value`` is a positive (int) number (or None if allowed)."""
    if value is None and allow_none:
        return
    kind = "int" if integer else "float"
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if not ok or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        extra = " or None" if allow_none else ""
        raise ValueError(f"The {name!r} parameter of {owner} must be a positive {kind}{extra}. Got {value!r} instead.")
