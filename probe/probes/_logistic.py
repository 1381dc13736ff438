"""Multinomial L2-penalised logistic regression on torch, with C meaning exactly scikit-learn's C."""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize

from .._runtime import quiet_blas
from ._base import ProbeBase, check_positive


class LogisticProbe(ProbeBase):
    """Multinomial logistic regression with an L2 penalty, fitted by L-BFGS on torch (float32, CPU or GPU).

    The objective is scikit-learn's ``LogisticRegression`` objective, so ``C`` means the same thing:
    ``C * sum_i CE_i + 0.5 * ||W||^2``, minimised in the equivalent scaled form ``mean_i CE_i + ||W||^2 / (2 C n)``
    with the intercept unpenalised. Convergence uses scikit-learn's criterion, the largest absolute gradient
    component of the scaled objective below ``tol``, measured in the centred parametrisation the solver works in
    (logits ``(X - mean) W^T + c``: the same model and optimum, better conditioned). Two classes use one logit (the binomial model, as
    scikit-learn does), so the penalty has the same meaning there too.

    Parameters
    ----------
    C : float, default=1.0
        Inverse of the regularisation strength; smaller is stronger.
    fit_intercept : bool, default=True
        Learn an (unpenalised) intercept per class.
    max_iter : int, default=1000
        Maximum L-BFGS iterations per fit.
    tol : float, default=1e-4
        Stop when max |gradient| of the scaled objective is below this (scikit-learn's ``tol``).
    history_size : int, default=10
        L-BFGS memory (``maxcor`` of scipy's L-BFGS-B, which drives the torch objective; 10 as in scikit-learn).
    device : str, default="auto"
        Torch device; ``"auto"`` picks cuda when available.

    Attributes
    ----------
    classes_ : ndarray [n_classes]
        Sorted labels seen in ``fit``; score columns follow this order.
    coef_ : ndarray [n_classes, n_features] (or [1, n_features] for two classes)
    intercept_ : ndarray [n_classes] (or [1])
    n_iter_ : int
        L-BFGS iterations used by the last fit.
    converged_ : bool
        False when the last fit stopped at ``max_iter`` (a ConvergenceWarning is issued, as scikit-learn does).
    """

    name = "logistic"
    # 45 log-spaced values over the wide range of Kornblith et al. (2019). Warm starts along the path make the
    # extra points cheap (each fit starts next to its answer), and a fixed grid keeps runs comparable.
    default_grid = {"C": np.logspace(-6, 5, 45).tolist()}
    probabilistic = True  # predict_proba is the softmax of _scores

    def __init__(self, C: float = 1.0, *, fit_intercept: bool = True, max_iter: int = 1000, tol: float = 1e-4,
                 history_size: int = 10, device: str = "auto"):
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.history_size = history_size
        self.device = device

    def _check_params(self) -> None:
        check_positive(type(self).__name__, "C", self.C)
        check_positive(type(self).__name__, "max_iter", self.max_iter, integer=True)
        check_positive(type(self).__name__, "tol", self.tol)
        check_positive(type(self).__name__, "history_size", self.history_size, integer=True)

    # ------------------------------------------------------------------------------------------- fitting
    def _fit(self, X: torch.Tensor, y_index: torch.Tensor) -> None:
        # A sweep's refit on train+val starts from the path's solution for this C (same answer, fewer iterations).
        init, self._refit_init = getattr(self, "_refit_init", None), None
        n_out = 1 if len(self.classes_) == 2 else len(self.classes_)
        if init is not None and tuple(init[0].shape) != (n_out, X.shape[1]):
            init = None
        if init is not None:
            init = tuple(t.to(X.device) for t in init)
        W, b, n_iter = self._lbfgs(X, y_index, len(self.classes_), float(self.C), init=init)
        self._set_solution(W, b, n_iter)
        self.converged_ = self._last_converged
        if not self.converged_:
            from sklearn.exceptions import ConvergenceWarning

            from .._console import counted_warning, format_value

            warnings.warn(counted_warning(
                ConvergenceWarning, f"L-BFGS did not converge in max_iter={self.max_iter} iterations "
                f"(C={self.C:g}); increase max_iter or scale the features", what="logistic fit{s} stopped at max_iter",
                where=f"C = {format_value(float(self.C))}"), stacklevel=3)

    def _set_solution(self, W: torch.Tensor, b: torch.Tensor, n_iter: int) -> None:
        self._W, self._b = W.detach(), b.detach()
        self.coef_ = self._W.cpu().numpy()
        self.intercept_ = self._b.cpu().numpy()
        self.n_iter_ = int(n_iter)

    def _lbfgs(self, X: torch.Tensor, y_index: torch.Tensor, n_classes: int, C: float,
               init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        n, d = X.shape
        n_out = 1 if n_classes == 2 else n_classes
        # Optimise with centred features, logits = (X - mu) W^T + c, which is the same model with intercept
        # b = c - W mu (the intercept is unpenalised, so the optimum is unchanged) but far better conditioned when
        # features share a large mean, as backbone features do. X itself is never copied.
        mu = X.mean(dim=0) if self.fit_intercept else torch.zeros(d, device=X.device, dtype=X.dtype)
        if init is None:
            W = torch.zeros(n_out, d, device=X.device, dtype=X.dtype)
            # Start the intercept at the log class priors: the optimum when W = 0, so strong penalties finish fast.
            counts = torch.bincount(y_index, minlength=n_classes).to(X.dtype)
            log_prior = torch.log(counts / n)
            c = log_prior[1:] - log_prior[:1] if n_out == 1 else log_prior - log_prior.mean()
            if not self.fit_intercept:
                c = torch.zeros_like(c)
        else:
            W = init[0].detach()
            c = (init[1] + W @ mu).detach()
        lam = 1.0 / (C * n)  # the scaled objective: mean CE + lam/2 ||W||^2
        objective = _Objective(X, y_index, n_out, mu, lam, self.fit_intercept)
        # scipy's L-BFGS-B with scikit-learn's settings and stopping rule (see _Objective.minimize): the same
        # fitted objective as LogisticRegression. Only the objective's matmuls are heavy, and they run in torch;
        # the optimiser's own O(history x parameters) vector work stays in single-threaded compiled code, which
        # (unlike many tiny multi-threaded torch ops) stays fast on a busy machine.
        with _few_threads_if_small(X.device, n * d * n_out), quiet_blas():
            W, c, n_iter = objective.minimize(W, c, tol=self.tol, max_iter=self.max_iter,
                                              history=self.history_size)
            if self.tol < _FLOAT32_TOL and objective.dtype == torch.float32:
                # Below float32's resolution of the gradient, finish with a float64 objective from where float32
                # stopped: a tight tol then means what it means in scikit-learn (float64 throughout).
                objective = objective.in_float64()
                W, c, more = objective.minimize(W, c, tol=self.tol, max_iter=max(1, self.max_iter - n_iter),
                                                history=self.history_size)
                n_iter += more
        self._last_func_evals = objective.evaluations
        self._last_converged = objective.converged
        W, c = W.to(X.dtype), c.to(X.dtype)
        return W, c - W @ mu, n_iter

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        W, b = self._W.to(X.device), self._b.to(X.device)
        return _full_logits(X @ W.T + b)

    # ----------------------------------------------------------------------------------------- prediction
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities [n_samples, n_classes] (softmax of the logits)."""
        return torch.softmax(self._scores(self._check_predict_input(X)), dim=1).cpu().numpy()

    def predict_log_proba(self, X) -> np.ndarray:
        """Log class probabilities [n_samples, n_classes]."""
        return torch.log_softmax(self._scores(self._check_predict_input(X)), dim=1).cpu().numpy()

    # --------------------------------------------------------------------------------------------- sweeps
    def _sweep_path(self, X, y_index, n_classes, X_eval, points):
        """Warm-start along the C path from the strongest penalty (smallest C) to the weakest."""
        self._check_params()
        self._path_solutions = {}
        path: list[tuple[float, torch.Tensor, torch.Tensor]] = []  # (log C, W, b) of the fits so far
        for i in self._strength_order(points):
            start = time.perf_counter()
            C = float(points[i].get("C", self.C))
            check_positive(type(self).__name__, "C", C)
            W, b, _ = self._lbfgs(X, y_index, n_classes, C, init=_path_start(path, np.log(C)))
            self._path_solutions[i] = (W, b)
            path = [*path[-1:], (float(np.log(C)), W, b)]
            yield i, _full_logits(X_eval @ W.T + b), time.perf_counter() - start

    def _prepare_refit(self, point_index: int) -> None:
        solutions = getattr(self, "_path_solutions", None) or {}
        self._refit_init = solutions.get(point_index)
        self._path_solutions = None  # free the path's weights

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        return sorted(range(len(points)), key=lambda i: (float(points[i].get("C", 1.0)), i))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}


#: Below this many multiply-adds per objective matmul, CPU fits run on one thread (see _few_threads_if_small).
_SMALL_WORK = 2**24
#: A tol below this asks for more than a float32 gradient resolves (its rounding is about 1e-7 of the largest
#: per-sample terms, summed over n samples): such fits finish in float64.
_FLOAT32_TOL = 1e-5
#: Below this a true-class probability may have lost digits to float32 underflow: its log comes from the logits.
_TINY_PROB = 1e-30


class _Objective:
    """The scaled objective ``mean CE + lam/2 ||W||^2`` and its gradient, for scipy's L-BFGS-B.

    Variables ``theta = [W, c]``, logits ``(X - mu) W^T + c``. The gradient is written out (no autograd graph,
    no float64 copies of [n, K] arrays): one forward product ``X W^T`` and one backward product ``G^T X`` per
    evaluation, in the objective's dtype on the device, per-sample losses summed in float64.
    """

    def __init__(self, X, y_index, n_out, mu, lam, fit_intercept):
        self.X, self.y, self.n_out, self.mu, self.lam = X, y_index, n_out, mu, lam
        self.fit_intercept, self.dtype = fit_intercept, X.dtype
        self.n, self.d = X.shape
        # index of each row's true logit in the flattened [n, n_out] logits
        self._flat_targets = torch.arange(self.n, device=X.device) * self.n_out + y_index
        self.evaluations = 0

    def in_float64(self) -> "_Objective":
        out = _Objective(self.X.double(), self.y, self.n_out, self.mu.double(), self.lam, self.fit_intercept)
        out.evaluations = self.evaluations
        return out

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.evaluations += 1
        X, n, n_w = self.X, self.n, self.n_out * self.d
        t = torch.from_numpy(theta).to(device=X.device, dtype=self.dtype)
        W, c = t[:n_w].view(self.n_out, self.d), t[n_w:]
        Z = torch.addmm(c - W @ self.mu, X, W.T)  # [n, n_out] logits
        # Few passes over the [n, n_out] block (each costs a fair share of a matmul at n_out = 100): one softmax,
        # the loss from the true class's probability, then the gradient of the summed loss in place.
        if self.n_out == 1:  # binomial: class scores [0, z]
            z = Z[:, 0]
            target = (self.y == 1).to(Z.dtype)
            ce = (F.softplus(z) - target * z).double().sum()
            G = (torch.sigmoid(z) - target)[:, None]
        else:
            G = torch.softmax(Z, dim=1)  # one fused pass
            p_true = G.view(-1)[self._flat_targets].double()
            tiny = p_true < _TINY_PROB
            ce = -torch.log(p_true[~tiny]).sum()
            if bool(tiny.any()):  # an underflowed probability's log comes exactly from the logits of its row
                log_p = torch.log_softmax(Z[tiny], dim=1).gather(1, self.y[tiny][:, None])
                ce = ce - log_p.double().sum()
            del Z
            G.view(-1)[self._flat_targets] -= 1.0
        g_c = G.sum(dim=0).div_(n)
        # 1/n and the centring and penalty terms ride in the one backward product
        g_W = torch.addmm(self.lam * W - torch.outer(g_c, self.mu), G.T, X, alpha=1.0 / n)
        if not self.fit_intercept:
            g_c = torch.zeros_like(g_c)
        loss = float(ce) / n + 0.5 * self.lam * float(W.double().pow(2).sum())
        return loss, torch.cat([g_W.reshape(-1), g_c]).double().cpu().numpy()

    def minimize(self, W: torch.Tensor, c: torch.Tensor, *, tol: float, max_iter: int,
                 history: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """L-BFGS-B from (W, c) with scikit-learn's settings; returns (W, c, iterations) in the objective's dtype.

        scikit-learn's stopping rule: max |gradient| <= tol (scipy's gtol), at most ``max_iter`` iterations,
        maxls 50, ftol 64 eps, ``maxcor = history``.
        """
        theta0 = torch.cat([W.reshape(-1), c]).double().cpu().numpy()
        res = optimize.minimize(self, theta0, method="L-BFGS-B", jac=True,
                                options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                         "ftol": 64 * np.finfo(float).eps, "maxcor": history})
        self.converged = int(res.status) != 1  # scipy's status 1: the iteration limit was reached
        theta = torch.from_numpy(res.x).to(device=self.X.device, dtype=self.dtype)
        n_w = self.n_out * self.d
        return theta[:n_w].view(self.n_out, self.d), theta[n_w:], int(res.nit)


@contextlib.contextmanager
def _few_threads_if_small(device: torch.device, work: int):
    """Run tiny CPU fits single-threaded: each of the many small ops of an iterative fit otherwise pays an OpenMP
    fork/join, which on a busy machine costs milliseconds."""
    if device.type != "cpu" or work >= _SMALL_WORK or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _path_start(path: list[tuple[float, torch.Tensor, torch.Tensor]],
                log_C: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Starting point for the next C of a warm-started path: the last solution, moved on along the line through
    the last two solutions (linear in log C, at most one previous step's length).

    Only where the fit starts changes, never the objective or the stopping rule; benchmarks/bench_probes.py prints
    the objective evaluations of its path of 10 C values.
    """
    if not path:
        return None
    log_c1, W1, b1 = path[-1]
    if len(path) < 2:
        return W1, b1
    log_c0, W0, b0 = path[-2]
    step = log_c1 - log_c0
    if step <= 0:
        return W1, b1
    g = min(1.0, max(0.0, (log_C - log_c1) / step))
    return W1 + g * (W1 - W0), b1 + g * (b1 - b0)


def _full_logits(z: torch.Tensor) -> torch.Tensor:
    """Two classes are fitted with one logit z; as class scores that is [0, z] (softmax gives sigmoid(z))."""
    return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z
