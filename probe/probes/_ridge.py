"""Ridge classification (scikit-learn's RidgeClassifier) from one eigendecomposition for every alpha."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ._base import ProbeBase, check_positive


class RidgeProbe(ProbeBase):
    """Least squares on +-1 class targets with an L2 penalty, as scikit-learn's ``RidgeClassifier``.

    Targets are +1 for the true class and -1 elsewhere (one column for two classes); with ``fit_intercept``
    features and targets are centred, so the intercept is unpenalised. A single fit is a Cholesky solve of
    ``(Xc^T Xc + alpha I) W = Xc^T Yc``; a sweep instead decomposes the centred Gram matrix once (``Xc^T Xc``, or
    ``Xc Xc^T`` when there are fewer samples than features) and reuses it for every alpha. Gram matrices are
    accumulated in float32 on centred features and solved or decomposed in float64.

    Parameters
    ----------
    alpha : float, default=1.0
        L2 penalty on the (unscaled) sum of squared errors, as in scikit-learn.
    fit_intercept : bool, default=True
        Centre features and targets (unpenalised intercept).
    device : str, default="auto"
        Torch device; ``"auto"`` picks cuda when available.

    Attributes
    ----------
    classes_ : ndarray [n_classes]
    coef_ : ndarray [n_classes, n_features] (or [1, n_features] for two classes)
    intercept_ : ndarray [n_classes] (or [1])
    """

    name = "ridge"
    # Half-decade steps over ten decades: alpha's useful range scales with the eigenvalues of X^T X (features'
    # scale times n), which vary by orders of magnitude between backbones; each extra alpha costs one small matmul.
    default_grid = {"alpha": np.logspace(-3, 7, 21).tolist()}

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True, device: str = "auto"):
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.device = device

    def _check_params(self) -> None:
        check_positive(type(self).__name__, "alpha", self.alpha)

    def _fit(self, X: torch.Tensor, y_index: torch.Tensor) -> None:
        n, d = X.shape
        if n >= d:
            # One alpha: a Cholesky solve of (Xc^T Xc + alpha I) W = Xc^T Yc is cheaper than a decomposition.
            Xc, Yc, x_mean, y_mean = _centred(X, y_index, len(self.classes_), self.fit_intercept)
            G = (Xc.T @ Xc).double()
            G.diagonal().add_(float(self.alpha))
            W = torch.cholesky_solve(Xc.T.double() @ Yc, torch.linalg.cholesky(G)).float()
            self._W, self._b = W, y_mean - x_mean @ W
        else:
            dec = _Decomposition(X, y_index, len(self.classes_), self.fit_intercept)
            self._W, self._b = dec.solution(float(self.alpha))
        self.coef_ = self._W.T.cpu().numpy()
        self.intercept_ = self._b.cpu().numpy()

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        z = X @ self._W.to(X.device) + self._b.to(X.device)
        return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z

    def _sweep_path(self, X, y_index, n_classes, X_eval, points):
        """One decomposition for the whole alpha grid; each alpha then costs one [N_eval, r] x [r, C] matmul."""
        start = time.perf_counter()
        dec = _Decomposition(X, y_index, n_classes, self.fit_intercept)
        E = dec.project(X_eval)
        shared = (time.perf_counter() - start) / max(1, len(points))
        for i, point in enumerate(points):
            start = time.perf_counter()
            alpha = float(point.get("alpha", self.alpha))
            check_positive(type(self).__name__, "alpha", alpha)
            z = (E @ (dec.B / (dec.eigvals + alpha)[:, None])).float() + dec.y_mean
            if z.shape[1] == 1:
                z = torch.cat([torch.zeros_like(z), z], dim=1)
            yield i, z, shared + time.perf_counter() - start

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        return sorted(range(len(points)), key=lambda i: (-float(points[i].get("alpha", 1.0)), i))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}


class _Decomposition:
    """Eigendecomposition of the centred Gram matrix giving the ridge solution for any alpha.

    Primal (n >= d): ``G = Xc^T Xc = V diag(l) V^T``, ``W(a) = V diag(1/(l+a)) V^T Xc^T Yc``.
    Dual (n < d): ``K = Xc Xc^T = U diag(l) U^T``, ``W(a) = Xc^T U diag(1/(l+a)) U^T Yc``.
    Both are ``W(a) = P diag(1/(l+a)) B`` with ``P`` [d, r] and ``B`` [r, C].
    """

    def __init__(self, X: torch.Tensor, y_index: torch.Tensor, n_classes: int, fit_intercept: bool):
        n, d = X.shape
        Xc, Yc, self.x_mean, self.y_mean = _centred(X, y_index, n_classes, fit_intercept)
        # Accumulate the Gram matrix in float32 (the O(n d^2) part), decompose in float64 for accuracy.
        if n >= d:
            eigvals, V = torch.linalg.eigh((Xc.T @ Xc).double())
            self.P = V
            self.B = V.T @ (Xc.T.double() @ Yc)
            self._dual_X = None
        else:
            eigvals, U = torch.linalg.eigh((Xc @ Xc.T).double())
            self.P = Xc.T.double() @ U
            self.B = U.T @ Yc
            self._dual_X = Xc
        self.eigvals = eigvals.clamp_min(0.0)  # round-off can leave tiny negative eigenvalues

    def solution(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W [d, n_out], b [n_out]) in float32 for penalty ``alpha``."""
        W = (self.P @ (self.B / (self.eigvals + alpha)[:, None])).float()
        b = self.y_mean - self.x_mean @ W
        return W, b

    def project(self, X_eval: torch.Tensor) -> torch.Tensor:
        """``(X_eval - mean) P`` (float64 result), so that scores(alpha) = project @ (B / (l + alpha)) + y_mean."""
        if self._dual_X is None:  # P = V is orthonormal: a float32 product loses nothing that matters
            return ((X_eval - self.x_mean) @ self.P.float()).double()
        return (X_eval - self.x_mean).double() @ self.P


def _centred(X: torch.Tensor, y_index: torch.Tensor, n_classes: int, fit_intercept: bool):
    """Centred features (float32), centred +-1 targets (float64) and both means (float32)."""
    n, d = X.shape
    n_out = 1 if n_classes == 2 else n_classes
    Y = torch.full((n, n_classes), -1.0, device=X.device, dtype=X.dtype)
    Y[torch.arange(n, device=X.device), y_index] = 1.0
    if n_out == 1:
        Y = Y[:, 1:]
    if fit_intercept:
        x_mean, y_mean = X.mean(dim=0), Y.mean(dim=0)
    else:
        x_mean = torch.zeros(d, device=X.device, dtype=X.dtype)
        y_mean = torch.zeros(n_out, device=X.device, dtype=X.dtype)
    return X - x_mean, (Y - y_mean).double(), x_mean, y_mean
