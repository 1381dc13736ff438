"""Shared machinery of the probes: input validation, devices, and the scikit-learn estimator contract.

Every probe stores its parameters in ``__init__`` only, validates in ``fit`` and returns ``self``, and keeps
learned state in attributes ending in ``_``. The heavy lifting runs in torch (float32) on ``device``, so the same
code runs on CPU and GPU; results come back as numpy arrays.
"""

from __future__ import annotations

import itertools
import time
import warnings
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

#: Bytes of similarity matrix a chunked kernel may hold at once (bounds memory of kNN / scoring).
CHUNK_BYTES = 256 * 2**20


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Map ``"auto"``/None to cuda when present (else cpu); anything else goes to :class:`torch.device`."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Feature dtypes kept as they are (never copied); anything else (integers, objects holding numbers) becomes float32.
#: float16 caches stay float16 on the host and are widened once, on the device, by :func:`to_tensor`.
FEATURE_DTYPES = [np.float32, np.float64, np.float16]


def _host(a: Any) -> Any:
    """A torch tensor as a numpy array (scikit-learn's validation reads numpy); anything else unchanged."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def check_features(X: Any, *, name: str = "X", n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a 2-D numeric numpy array, or raise ValueError naming what is wrong and how to fix it.

    Shape, sparse, complex, object and empty inputs get scikit-learn's own messages (:func:`check_array`);
    float32/float64/float16 arrays are returned without a copy.
    """
    X = check_array(_host(X), dtype=FEATURE_DTYPES, ensure_all_finite=False, input_name=name)
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the probe was fitted on {n_features}; "
                         "use features of the same backbone and tap for fit and predict")
    check_finite(X, name=name)
    return X


def check_finite(X: np.ndarray, *, name: str = "X") -> None:
    """Raise ValueError naming the count and first row of NaN/inf values in a validated feature array."""
    if X.dtype.kind != "f":
        return
    # One pass without an [N, D] temporary: a NaN or infinity makes its row's sum non-finite, so finite row sums
    # prove the array finite; sums in float32 (float64 for float64 input) run at memory speed (a float64 sum of
    # float32 rows converts every value: 12 ms against 3.5 ms for 25,000 x 768, timed once on the AMD host), and
    # the rare row whose finite values overflow the sum is checked element by element below, like a NaN.
    wide = np.float64 if X.dtype == np.float64 else np.float32
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing or inf - inf sum is what is being looked for
        if X.size == 0 or np.isfinite(X.sum(axis=tuple(range(1, X.ndim)), dtype=wide)).all():
            return
    finite = np.isfinite(X)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"{name} contains {bad} NaN or infinite values (first in row {row}); "
                         "re-extract the features (float16 overflow?) or drop those rows")


def check_labels(y: Any, n_samples: int, *, name: str = "y", min_classes: int = 2) -> np.ndarray:
    """Return ``y`` as a 1-D array of class labels of length ``n_samples`` with at least ``min_classes`` classes.

    Any labels work (integers, strings, ...); integer-valued floats become int64. A column vector is raveled
    with scikit-learn's DataConversionWarning, and a continuous target is refused ("Unknown label type").
    """
    y = column_or_1d(_host(y), warn=True)
    if len(y) != n_samples:
        raise ValueError(f"X and {name} have different lengths ({n_samples} vs {len(y)}); "
                         "pass one label per feature row")
    check_classification_targets(y)
    if y.dtype.kind in "fiu":  # check_classification_targets has refused non-integral floats
        y = y.astype(np.int64, copy=False)
    n_classes = len(np.unique(y))
    if n_classes < min_classes:
        raise ValueError(f"{name} has {n_classes} class(es); a probe needs at least {min_classes} to classify. "
                         "Check the labels or the few-shot draw")
    return y


def to_tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 tensor on ``device`` (float16 caches are widened here, once)."""
    with warnings.catch_warnings():
        # A read-only array (a memory map) is only read by the probes; copying it to please torch would double the
        # host memory of the largest array in a sweep.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
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
    #: True when ``_scores`` are the logits of the probe's probability model (its softmax is ``predict_proba``):
    #: calibration then starts from those probabilities; other probes' scores are treated as logits
    #: (:mod:`probe._calibration`).
    probabilistic: ClassVar[bool] = False

    # ----------------------------------------------------------------------------------------- public API
    def fit(self, X, y):
        """Fit the probe on features ``X`` [n_samples, n_features] and class labels ``y``; returns self.

        ``y`` may hold any labels (class names, integers, ...); ``classes_`` is their sorted unique values and
        ``predict`` returns values from it.
        """
        X, y = validate_data(self, _host(X), _host(y), dtype=FEATURE_DTYPES, ensure_all_finite=False)
        check_finite(X)
        y = check_labels(y, len(X))
        self._check_params()
        device = resolve_device(getattr(self, "device", None))
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self._fit(to_tensor(X, device), torch.as_tensor(y_index, device=device))
        return self

    def decision_function(self, X) -> np.ndarray:
        """Per-class scores [n_samples, n_classes] (columns follow ``classes_``); larger means more likely.

        For two classes one score per sample [n_samples], positive for ``classes_[1]``, as in scikit-learn.
        """
        scores = self._decision(self._scores(self._check_predict_input(X))).cpu().numpy()
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

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

    def _fit_stacked(self, parts: list[tuple[np.ndarray, np.ndarray]]):
        """Fit on the rows of the validated ``(X, y)`` parts stacked in order, as ``fit`` on their concatenation
        (a sweep's refit on train+val). A probe that can fit from the parts themselves overrides it."""
        # torch's allocator: numpy asks the kernel for huge pages on large arrays, which stalls in page compaction on
        # a host whose memory another process has just fragmented
        with warnings.catch_warnings():  # read-only inputs (memory maps) are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            X = torch.cat([torch.from_numpy(np.ascontiguousarray(x)) for x, _ in parts]).numpy()
        return self.fit(X, np.concatenate([y for _, y in parts]))

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
        """Fitted check, then ``X`` validated against the fit (scikit-learn's messages) as a tensor on the device."""
        check_is_fitted(self)
        X = validate_data(self, _host(X), reset=False, dtype=FEATURE_DTYPES, ensure_all_finite=False)
        check_finite(X)
        return to_tensor(X, self._device())

    def _decision(self, scores: torch.Tensor) -> torch.Tensor:
        """``_scores`` as reported by ``decision_function`` (a probe whose raw scores are not comparable across
        samples, like kNN's vote counts, rescales them here)."""
        return scores

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
