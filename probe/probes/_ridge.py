"""Ridge classification (scikit-learn's RidgeClassifier) from one eigendecomposition for every alpha."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .._linalg import gram, symmetric_eigh
from .._runtime import factor_threads
from ._base import ProbeBase, check_labels, check_positive, chunk_rows, to_tensor


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
            self._solve(_Moments(X, y_index, len(self.classes_), self.fit_intercept))
        else:
            dec = _Decomposition(X, y_index, len(self.classes_), self.fit_intercept)
            self._W, self._b = dec.solution(float(self.alpha))
            self._set_weights()

    def _solve(self, mom: "_Moments") -> None:
        """One alpha from the moments: a Cholesky solve of (Xc^T Xc + alpha I) W = Xc^T Yc (cheaper than a
        decomposition)."""
        G = mom.gram.clone()
        G.diagonal().add_(float(self.alpha))
        with factor_threads(G):
            W = torch.cholesky_solve(mom.xty(), torch.linalg.cholesky(G)).float()
        self._W, self._b = W, mom.y_mean - mom.x_mean @ W
        self._set_weights()

    def _set_weights(self) -> None:
        self.coef_ = self._W.T.cpu().numpy()
        self.intercept_ = self._b.cpu().numpy()

    def _fit_stacked(self, parts):
        """A sweep's refit on train+val: the train moments of its path, extended by the val rows' (Chan et al.'s
        pairwise update), so only the val rows are multiplied and no stacked copy is made. Anything else (other
        rows than the path's, a class only val has, fewer rows than features) is fitted from the stack."""
        known, self._refit_moments = getattr(self, "_refit_moments", None), None
        if known is None or len(parts) != 2 or known.fit_intercept != self.fit_intercept:
            return super()._fit_stacked(parts)
        (X0, y0), (X1, y1) = parts
        device = self._device()
        if X1.shape[1] != X0.shape[1] or len(X0) + len(X1) < X0.shape[1] or not known.describes(X0, device):
            return super()._fit_stacked(parts)
        y = check_labels(np.concatenate([y0, y1]), len(X0) + len(X1))
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) != known.n_classes:
            return super()._fit_stacked(parts)
        self._check_params()
        self.classes_, self.n_features_in_ = classes, X0.shape[1]
        new = _Moments(to_tensor(X1, device), torch.as_tensor(y_index[len(X0):], device=device), len(classes),
                       self.fit_intercept)
        self._solve(_Moments.combine(known, new))
        return self

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        z = X @ self._W.to(X.device) + self._b.to(X.device)
        return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z

    def _sweep_path(self, X, y_index, n_classes, X_eval, points):
        """One decomposition for the whole alpha grid; each alpha then costs one [d, r] x [r, C] and one
        [N_eval, d] x [d, C] product."""
        start = time.perf_counter()
        dec = _Decomposition(X, y_index, n_classes, self.fit_intercept)
        self._path_moments = dec.moments
        Xc_eval = X_eval - dec.x_mean
        alphas = [float(point.get("alpha", self.alpha)) for point in points]
        for alpha in alphas:
            check_positive(type(self).__name__, "alpha", alpha)
        shared = (time.perf_counter() - start) / max(1, len(points))
        n_out = dec.B.shape[1]
        # A few alphas per product: [N_eval, d] x [d, group * C] with a few hundred columns runs nearer the matmul
        # peak than C = 100 columns alone, and than all alphas at once (a large fresh output; timed once on the AMD
        # host: 400 columns 0.10 s, 2,100 columns 0.13 s for the 21 alphas of 100 classes)
        group = max(1, min(len(points), -(-_SCORE_COLUMNS // n_out), chunk_rows(len(points), len(Xc_eval) * n_out)))
        for lo in range(0, len(points), group):
            start = time.perf_counter()
            ids = range(lo, min(lo + group, len(points)))
            # the solutions W(alpha) = P diag(1 / (l + alpha)) B, then float32 scores: the scores' rounding (~1e-6
            # relative) is far below any gap that changes a prediction that float64 would make
            Z = torch.addmm(dec.y_mean.repeat(len(ids)), Xc_eval, dec.weights([alphas[i] for i in ids]))
            each = (time.perf_counter() - start) / len(ids)
            for j, i in enumerate(ids):
                z = Z[:, j * n_out:(j + 1) * n_out]
                if n_out == 1:
                    z = torch.cat([torch.zeros_like(z), z], dim=1)
                yield i, z, shared + each

    def _prepare_refit(self, point_index: int) -> None:
        self._refit_moments, self._path_moments = getattr(self, "_path_moments", None), None

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        return sorted(range(len(points)), key=lambda i: (-float(points[i].get("alpha", 1.0)), i))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}


class _Moments:
    """What a ridge fit needs of (X, y): n, the feature mean, the centred Gram matrix and class sums (float64).

    ``Xc^T Yc`` follows from the class sums (targets are +-1), so no [n, C] target matrix or float64 copy of ``X``
    is ever made: the one O(n d^2) step is the float32 Gram product of the centred features. Moments of a sweep's
    train rows are extended by the val rows of the refit (Chan et al.'s pairwise update), so the refit on
    train+val multiplies only the new rows.
    """

    def __init__(self, X: torch.Tensor, y_index: torch.Tensor, n_classes: int, fit_intercept: bool):
        n, d = X.shape
        self.n, self.n_classes, self.fit_intercept = n, n_classes, fit_intercept
        self.source = X  # the rows these moments describe (for describes); not copied
        mean = X.mean(dim=0) if fit_intercept else torch.zeros(d, device=X.device, dtype=X.dtype)
        self.mean = mean.double()
        self.counts = torch.bincount(y_index, minlength=n_classes).double()
        # Centred rows a block at a time, in one reused buffer: no [n, d] copy (whose fresh pages cost about 15 ms at
        # 20,000 x 768, timed once on the AMD host). Each block's Gram matrix is accumulated in float32, as
        # scikit-learn's float32 path, and the blocks are summed in float64.
        rows = -(-n // max(1, -(-n // _CENTRED_ROWS)))  # equal blocks of at most _CENTRED_ROWS (no small last one)
        buf = torch.empty(rows, d, device=X.device, dtype=X.dtype)
        total = torch.zeros(d, d, device=X.device, dtype=torch.float64)
        sums = torch.zeros(n_classes, d, device=X.device, dtype=X.dtype)
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            Xc = torch.sub(X[lo:hi], mean, out=buf[:hi - lo])
            total += gram(Xc)
            sums.index_add_(0, y_index[lo:hi], Xc)
        self.gram = total
        self.class_sums = sums.double()  # of the centred rows: sum over class members of (x - mean)

    def describes(self, X, device) -> bool:
        """Whether these moments are of exactly the rows of the array ``X`` (the same memory, or equal values)."""
        if tuple(X.shape) != tuple(self.source.shape):
            return False
        X = to_tensor(X, device)
        return X.data_ptr() == self.source.data_ptr() or bool(torch.equal(X, self.source))

    @classmethod
    def combine(cls, a: "_Moments", b: "_Moments") -> "_Moments":
        """The moments of ``a``'s rows followed by ``b``'s (Chan et al.'s pairwise update of the mean and Gram)."""
        m = a.n
        out = cls.__new__(cls)
        out.n, out.n_classes, out.fit_intercept, out.source = m + b.n, a.n_classes, a.fit_intercept, None
        out.counts = a.counts + b.counts
        if a.fit_intercept:
            delta = b.mean - a.mean
            out.mean = a.mean + delta * (b.n / out.n)
            out.gram = a.gram + b.gram + torch.outer(delta, delta) * (m * b.n / out.n)
            # re-centre each part's class sums on the joint mean
            out.class_sums = (a.class_sums - torch.outer(a.counts, out.mean - a.mean)
                              + b.class_sums - torch.outer(b.counts, out.mean - b.mean))
        else:
            out.mean = a.mean
            out.gram = a.gram + b.gram
            out.class_sums = a.class_sums + b.class_sums
        return out

    @property
    def n_out(self) -> int:
        return 1 if self.n_classes == 2 else self.n_classes

    @property
    def x_mean(self) -> torch.Tensor:
        return self.mean.float()

    @property
    def y_mean(self) -> torch.Tensor:
        """Mean of the +-1 targets (zeros without an intercept), float32 [n_out]."""
        ym = 2 * self.counts / self.n - 1 if self.fit_intercept else torch.zeros_like(self.counts)
        return ym[-self.n_out:].float()

    def xty(self) -> torch.Tensor:
        """``Xc^T Yc`` [d, n_out] in float64 from the class sums: Y = 2 onehot - 1 column by column."""
        total = self.class_sums.sum(dim=0)  # column sums of Xc: zero up to round-off with an intercept
        y_mean = 2 * self.counts / self.n - 1 if self.fit_intercept else torch.zeros_like(self.counts)
        # Xc^T Yc = Xc^T (2 onehot - 1 - 1 y_mean^T) = 2 S^T - total (1 + y_mean)^T
        out = 2 * self.class_sums.T - torch.outer(total, 1 + y_mean)
        return out[:, -self.n_out:]


class _Decomposition:
    """Eigendecomposition of the centred Gram matrix giving the ridge solution for any alpha.

    Primal (n >= d): ``G = Xc^T Xc = V diag(l) V^T``, ``W(a) = V diag(1/(l+a)) V^T Xc^T Yc``.
    Dual (n < d): ``K = Xc Xc^T = U diag(l) U^T``, ``W(a) = Xc^T U diag(1/(l+a)) U^T Yc``.
    Both are ``W(a) = P diag(1/(l+a)) B`` with ``P`` [d, r] and ``B`` [r, C].
    """

    def __init__(self, X: torch.Tensor, y_index: torch.Tensor, n_classes: int, fit_intercept: bool):
        n, d = X.shape
        self.moments = None
        if n >= d:
            mom = self.moments = _Moments(X, y_index, n_classes, fit_intercept)
            self.x_mean, self.y_mean = mom.x_mean, mom.y_mean
            eigvals, V = symmetric_eigh(mom.gram)  # float64: small eigenvalues matter for small alphas
            self.P = V
            self.B = V.T @ mom.xty()
            self._dual_X = None
        else:
            Xc, Yc, self.x_mean, self.y_mean = _centred(X, y_index, n_classes, fit_intercept)
            K = (Xc @ Xc.T).double()
            eigvals, U = symmetric_eigh(K)
            self.P = Xc.T.double() @ U
            self.B = U.T @ Yc
            self._dual_X = Xc
        self.eigvals = eigvals.clamp_min(0.0)  # round-off can leave tiny negative eigenvalues

    @classmethod
    def for_targets(cls, X: torch.Tensor, Y: torch.Tensor, fit_intercept: bool) -> "_Decomposition":
        """The same decomposition for real-valued targets ``Y`` [n, t] (float64): ridge regression."""
        n, d = X.shape
        self = cls.__new__(cls)
        self.moments = None
        x_mean = X.mean(dim=0) if fit_intercept else torch.zeros(d, device=X.device, dtype=X.dtype)
        y_mean = Y.mean(dim=0) if fit_intercept else torch.zeros(Y.shape[1], device=Y.device, dtype=Y.dtype)
        Xc, Yc = X - x_mean, Y - y_mean
        if n >= d:
            G = (Xc.T @ Xc).double()
            eigvals, V = symmetric_eigh(G)
            self.P, self.B, self._dual_X = V, V.T @ (Xc.T @ Yc.to(X.dtype)).double(), None
        else:
            K = (Xc @ Xc.T).double()
            eigvals, U = symmetric_eigh(K)
            self.P, self.B, self._dual_X = Xc.T.double() @ U, U.T @ Yc, Xc
        self.x_mean, self.y_mean = x_mean, y_mean.float()
        self.eigvals = eigvals.clamp_min(0.0)
        return self

    def weights(self, alphas: list[float]) -> torch.Tensor:
        """``W(alpha)`` [d, n_out] for each alpha side by side, float32 [d, len(alphas) * n_out]."""
        M = torch.cat([self.B / (self.eigvals + alpha)[:, None] for alpha in alphas], dim=1)
        if self._dual_X is None:  # P = V is orthonormal: a float32 product loses nothing that matters
            return self.P.float() @ M.float()
        return (self.P @ M).float()

    def solution(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (W [d, n_out], b [n_out]) in float32 for penalty ``alpha``."""
        W = (self.P @ (self.B / (self.eigvals + alpha)[:, None])).float()
        b = self.y_mean - self.x_mean @ W
        return W, b

    def project(self, X_eval: torch.Tensor) -> torch.Tensor:
        """``(X_eval - mean) P`` (float32), so that scores(alpha) = project @ (B / (l + alpha)) + y_mean."""
        if self._dual_X is None:  # P = V is orthonormal: a float32 product loses nothing that matters
            return (X_eval - self.x_mean) @ self.P.float()
        return ((X_eval - self.x_mean).double() @ self.P).float()


#: Rows of the centred block that :class:`_Moments` multiplies at a time.
_CENTRED_ROWS = 4096

#: Score columns per product of a ridge sweep (see ``RidgeProbe._sweep_path``).
_SCORE_COLUMNS = 400


def _centred(X: torch.Tensor, y_index: torch.Tensor, n_classes: int, fit_intercept: bool):
    """Centred features (float32), centred +-1 targets (float64) and both means (float32); for the dual solve."""
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
