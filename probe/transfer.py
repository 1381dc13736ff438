"""Transferability scores on cached features: predict the fine-tuning ranking from frozen features.

Each score follows its paper's definition (the published reference code was read to settle the details a paper
leaves open; the notes below say where this module differs). Higher is better for every score.

========================  =========================================================  ==============================
score                     what it measures                                          needs
========================  =========================================================  ==============================
``logme``                 mean over classes (or target columns) of the log marginal  features; classification or
                          evidence per image of a Bayesian linear model on the        regression targets
                          features (You et al., ICML 2021; JMLR 2022 fixed point)
``hscore``                tr(cov(f)^+ cov(E[f|y])) (Bao et al., ICIP 2019)            features, class labels
``hscore_shrink``         the same with a Ledoit-Wolf shrunk cov(f) (Ibrahim et al.,  features, class labels
                          ICLR 2023, "Newer is not always better")
``leep``                  mean log-likelihood of the target label under the source    the source head's logits
                          head's predictions pushed through P(y|z) (Nguyen et al.,
                          ICML 2020)
``nce``                   negative conditional entropy H(Y|Z) of the target labels    the source head's logits
                          given the source head's hard predictions (Tran et al.,
                          ICCV 2019)
``nleep``                 LEEP with a diagonal Gaussian mixture (5 components per     features, class labels
                          class) on the features' PCA (80 % of the variance) in
                          place of a source head (Li et al., CVPR 2021)
``sfda``                  mean probability of the true class under a regularised     features, class labels
                          Fisher discriminant refitted after ConfMix (Shao et al.,
                          ECCV 2022)
``transrate``             coding rate of the features minus the mean coding rate of  features, class labels
                          each class (Huang et al., ICML 2022)
``gbc``                   minus the sum over class pairs of the Bhattacharyya         features, class labels
                          coefficient of per-class Gaussians (Pandy et al., CVPR
                          2022)
========================  =========================================================  ==============================

LogME and both H-scores need only D x D statistics: :class:`FeatureStats` accumulates them chunk by chunk
(float64), so :func:`scores_from_cache` reads the HDF5 file in blocks with memory flat in the number of images.
The other scores hold the features in memory. Everything runs in torch, on the GPU when one is given; on the CPU the
streaming pass's Gram matrix is BLAS's symmetric product (``dsyrk``, :class:`probe._linalg.GramSum`) and LogME takes
the eigenvalues of F^T F and the coordinates of F^T Y in its eigenvectors without forming them
(:func:`probe._linalg.eigh_coordinates`).

Notes where a reference implementation and the paper part ways, and which side this module takes:

- LogME: the log-determinant runs over all D eigenvalues of F^T F (the paper's evidence); the reference drops the
  zero eigenvalues of rank-deficient features. For full-rank features (N > D) the two agree. The fixed-point
  iteration, its stopping rule (relative change of alpha/beta below 1e-3, at most 11 steps) and the 1e-5 guards
  are the reference's, so its published numbers are reproduced.
- H-score: covariances divide by N (the maximum-likelihood estimates the formulas are written with).
- SFDA: the largest eigenvalue of the within-class scatter (which sets the shrinkage) is computed exactly, where
  the reference takes three power iterations.
- NLEEP: the mixture has diagonal covariances and a seeded initialisation (means at distinct random images),
  fitted by EM to sklearn's stopping rule (change of the mean log-likelihood below 1e-3, at most 100 steps), in
  float32 (the PCA and LEEP in float64).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ._errors import UsageError
from ._linalg import gram as _gram
from ._linalg import GramSum, eigh_coordinates, symmetric_eigh
from ._runtime import factor_threads, torch_threads


@dataclass(frozen=True)
class ScoreSpec:
    """What a transferability score needs and how it is computed.

    Attributes
    ----------
    name : str
        The score's name in the results' ``score`` column.
    needs : str
        ``features`` (the tap's features) or ``logits`` (the backbone's own classifier head).
    tasks : tuple of str
        Tasks the score is defined for (``classification``, ``regression``).
    streaming : bool
        True when the score needs only D x D statistics (computed while streaming the cache).
    settings : dict
        The score's settings, part of the protocol id of its rows.
    reference : str
        The paper that defines it.
    """

    name: str
    needs: str
    tasks: tuple[str, ...]
    streaming: bool
    settings: Mapping[str, Any]
    reference: str


#: The scores, in the order they are computed and reported.
SCORES: dict[str, ScoreSpec] = {s.name: s for s in (
    ScoreSpec("logme", "features", ("classification", "regression"), True, {"tol": 1e-3, "max_iter": 11},
              "You et al., LogME, ICML 2021"),
    ScoreSpec("hscore", "features", ("classification",), True, {"rcond": 1e-15}, "Bao et al., ICIP 2019"),
    ScoreSpec("hscore_shrink", "features", ("classification",), True, {"shrinkage": "ledoit-wolf"},
              "Ibrahim et al., ICLR 2023"),
    ScoreSpec("leep", "logits", ("classification",), False, {}, "Nguyen et al., LEEP, ICML 2020"),
    ScoreSpec("nce", "logits", ("classification",), False, {}, "Tran et al., ICCV 2019"),
    ScoreSpec("nleep", "features", ("classification",), False,
              {"variance": 0.8, "components_per_class": 5, "covariance": "diag", "max_iter": 100, "tol": 1e-3,
               "reg_covar": 1e-6, "seed": 0, "dtype": "float32"}, "Li et al., Ranking neural checkpoints, CVPR 2021"),
    ScoreSpec("sfda", "features", ("classification",), False, {"a": 5.0}, "Shao et al., SFDA, ECCV 2022"),
    ScoreSpec("transrate", "features", ("classification",), False, {"eps": 1e-4},
              "Huang et al., TransRate, ICML 2022"),
    ScoreSpec("gbc", "features", ("classification",), False, {"gaussian": "spherical"},
              "Pandy et al., GBC, CVPR 2022"),
)}

#: Rows of the streaming pass (images per block read from the HDF5 file).
CHUNK_ROWS = 8192


def check_scores(names: Iterable[str] | None, *, task: str = "classification") -> tuple[str, ...]:
    """Validate score names for ``task`` and return them in :data:`SCORES` order (default: all that apply)."""
    if names is None:
        return tuple(n for n, s in SCORES.items() if task in s.tasks)
    names = list(names)
    bad = [n for n in names if n not in SCORES]
    if bad:
        raise UsageError(f"unknown score(s) {bad}; scores are {', '.join(SCORES)}")
    wrong = [n for n in names if task not in SCORES[n].tasks]
    if wrong:
        ok = [n for n, s in SCORES.items() if task in s.tasks]
        raise UsageError(f"score(s) {wrong} are not defined for task {task}; use {', '.join(ok)}")
    return tuple(n for n in SCORES if n in names)


def check_labels(labels: np.ndarray, n_features: int | None = None, *, what: str = "the dataset") -> np.ndarray:
    """Class labels as int64; a UsageError for one class or fewer images than classes (before any work)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UsageError(f"labels of {what} must be one-dimensional; got shape {labels.shape}")
    if n_features is not None and len(labels) != n_features:
        raise UsageError(f"{what} has {n_features} feature rows but {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise UsageError(f"{what} has {len(classes)} class; transferability scores need at least two classes")
    if len(labels) < len(classes) + 1:
        raise UsageError(f"{what} has {len(labels)} images for {len(classes)} classes; transferability scores "
                         "need more images than classes")
    return labels.astype(np.int64)


def _torch():
    import torch

    return torch


def _as64(x, device=None):
    torch = _torch()
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return t.to(device=device or t.device, dtype=torch.float64)


def _dense_labels(labels) -> tuple[np.ndarray, int]:
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1


def _largest_eigenvalue(m) -> float:
    """The largest eigenvalue of a symmetric matrix."""
    with factor_threads(m):
        return float(_torch().linalg.eigvalsh(m)[-1])


def _as_tensor(x, device=None):
    """``x`` as a tensor on ``device``, in its own floating dtype (no copy of a float32 array on the CPU)."""
    torch = _torch()
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t.to(device=device or t.device)


def _check_finite(t, what: str) -> None:
    """UsageError unless every value of ``t`` is finite (rows' sums first: a NaN or inf makes its row's sum
    non-finite, and only a failing or overflowing sum is checked element by element)."""
    torch = _torch()
    t = torch.as_tensor(t)
    if t.numel() == 0 or bool(torch.isfinite(t.reshape(len(t), -1).sum(1)).all()) or bool(torch.isfinite(t).all()):
        return
    raise UsageError(f"{what} contain non-finite values (NaN or inf); re-extract them (e.g. --dtype float32) "
                     "before scoring")


# --------------------------------------------------------------------------------------------------------------
# Streaming statistics: LogME and the H-scores
# --------------------------------------------------------------------------------------------------------------

class FeatureStats:
    """D x D statistics of features (and their labels or targets), accumulated block by block in float64.

    Every sum is taken about a shift (the first block's mean), which keeps the centred moments accurate even when
    the features sit far from the origin; the raw moments LogME needs are recovered from them.

    Parameters
    ----------
    n_classes : int, optional
        Number of classes (labels ``0..n_classes-1``) when labels are given to :meth:`update`.
    device : str or torch.device, optional
        Where the statistics live (default cpu).
    fourth_moments : bool
        Also accumulate the sums of ||x||^2, ||x||^4 and ||x||^2 x that the Ledoit-Wolf shrinkage needs.
    """

    def __init__(self, n_classes: int | None = None, *, device=None, fourth_moments: bool = True):
        self.n_classes = n_classes
        self.device = device or "cpu"
        self.fourth_moments = fourth_moments
        self.n = 0
        self.shift = None  # [D], float64 holding exactly the value subtracted from each block
        self._gram = None  # GramSum of (x - shift): the running sum of (x - shift)(x - shift)^T  [D, D]
        self._gram_total = None  # its symmetric total, kept until the next update
        self.sum = None  # sum of (x - shift)  [D]
        self.class_count = None  # [C]
        self.class_sum = None  # sum of (x - shift) per class  [C, D]
        self.sq = None  # sum of ||x - shift||^2 (with fourth_moments)
        self.sq2 = None  # sum of ||x - shift||^4 (with fourth_moments)
        self.sq_x = None  # sum of ||x - shift||^2 (x - shift)  [D] (with fourth_moments)
        self.target_cross = None  # sum of (x - shift) y^T  [D, T]
        self.target_sum = None  # sum of y  [T]
        self.target_sq = None  # sum of y^2 per target column  [T]
        self._buffer = None  # the shifted block in float64 (reused: no fresh pages per block)

    def update(self, x, labels=None, targets=None) -> "FeatureStats":
        """Add a block of features ``x`` [B, D] with its class labels [B] and/or continuous targets [B] or [B, T]."""
        torch = _torch()
        x = _as_tensor(x, self.device)
        f64 = torch.float64
        if self.shift is None:
            # any shift near the mean centres the sums; the block's mean in its own dtype is the fast one (a float64
            # reduction of float32 values converts element by element: 22 ms against 1 ms for 8,192 x 768, timed
            # once on the AMD host)
            shift = (x.mean(0) if x.dtype in (torch.float32, f64) else x.to(f64).mean(0)).to(f64)
            if not bool(torch.isfinite(shift).all()):  # NaN or inf in the block (or an overflowing float32 sum)
                _check_finite(x, "features")
                shift = x.to(f64).mean(0)
            d = x.shape[1]
            self.shift = shift
            self._gram = GramSum(d, self.device)
            self.sum = torch.zeros(d, dtype=f64, device=self.device)
            if self.fourth_moments:
                self.sq = torch.zeros((), dtype=f64, device=self.device)
                self.sq2 = torch.zeros((), dtype=f64, device=self.device)
                self.sq_x = torch.zeros(d, dtype=f64, device=self.device)
            if self.n_classes is not None:
                self.class_count = torch.zeros(self.n_classes, dtype=f64, device=self.device)
                self.class_sum = torch.zeros(self.n_classes, d, dtype=f64, device=self.device)
        xs = self._shifted(x)
        self._gram.add(xs)
        self._gram_total = None
        if not math.isfinite(self._gram.trace()):  # a NaN or inf anywhere in a block reaches the diagonal
            _check_finite(x, "features")
            raise UsageError("features are too large to score in float64 (their squared norms overflow); rescale "
                             "them before scoring")
        self.n += xs.shape[0]
        # on the CPU the rest on one torch thread: OpenMP threads woken beside the BLAS threads of the Gram product
        # spin-wait on the same cores (two threads cost 0.07 s more per 20,000 x 768 pass, one 0.013 s, timed once
        # on the AMD host in a throwaway script)
        with torch_threads(1) if xs.device.type == "cpu" else nullcontext():
            if self.fourth_moments:
                a = (xs * xs).sum(1, dtype=f64)
                self.sq += a.sum()
                self.sq2 += (a * a).sum()
                self.sq_x += a @ xs
            if labels is not None:
                y = torch.as_tensor(np.asarray(labels), device=self.device, dtype=torch.int64)
                self.class_count.index_add_(0, y, torch.ones_like(y, dtype=f64))
                part = torch.zeros_like(self.class_sum).index_add_(0, y, xs)
                self.class_sum += part
                self.sum += part.sum(0)  # the block's sum from its class sums: no second pass over the block
            else:
                self.sum += xs.sum(0)
        if targets is not None:
            t = _as64(targets, self.device)
            t = t[:, None] if t.ndim == 1 else t
            _check_finite(t, "targets")
            if self.target_cross is None:
                self.target_cross = torch.zeros(x.shape[1], t.shape[1], dtype=f64, device=self.device)
                self.target_sum = torch.zeros(t.shape[1], dtype=f64, device=self.device)
                self.target_sq = torch.zeros(t.shape[1], dtype=f64, device=self.device)
            self.target_cross += xs.T @ t
            self.target_sum += t.sum(0)
            self.target_sq += (t * t).sum(0)
        return self

    def _shifted(self, x):
        """The block ``x`` minus the shift, in float64 (a reused buffer for a float32 block)."""
        torch = _torch()
        f64 = torch.float64
        if x.dtype == f64:
            return x - self.shift
        if self._buffer is None or self._buffer.shape[0] < x.shape[0]:
            # on the CPU numpy's allocation: it asks the kernel for huge pages (madvise), which a fresh 50 MB buffer
            # fills about three times as fast as torch's (7 ms against 21-25 ms for 8,192 x 768, timed once on the
            # AMD host in a throwaway script)
            self._buffer = (torch.from_numpy(np.empty(tuple(x.shape))) if x.device.type == "cpu"
                            else torch.empty(x.shape, dtype=f64, device=x.device))
        out = self._buffer[:x.shape[0]]
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float16):
            # numpy's single-threaded cast and subtraction: no OpenMP threads woken beside the BLAS threads
            np.copyto(out.numpy(), x.numpy())
            np.subtract(out.numpy(), self.shift.numpy(), out=out.numpy())
            return out
        # a copy then an in-place subtraction: a subtraction that promotes float32 to float64 runs element by element
        # (21 ms against 5 ms for 8,192 x 768 on the CPU, timed once on the AMD host)
        return out.copy_(x).sub_(self.shift)

    # derived quantities --------------------------------------------------------------------------------------
    @property
    def gram(self):
        """The sum of (x - shift)(x - shift)^T over every block [D, D] (float64, symmetric)."""
        if self._gram_total is None:
            self._gram_total = self._gram.total()
        return self._gram_total

    @property
    def mean(self):
        return self.shift + self.sum / self.n

    def raw_gram(self):
        """F^T F of the raw (unshifted) features."""
        torch = _torch()
        h = self.shift
        u = self.sum + (self.n / 2.0) * h  # s h^T + h s^T + n h h^T = u h^T + h u^T
        return torch.addr(torch.addr(self.gram, u, h), h, u)

    def covariance(self):
        """Covariance of the features (divided by N)."""
        m = self.sum / self.n
        return self.gram / self.n - m[:, None] * m[None, :]

    def between_covariance(self):
        """cov(E[f|y]): the covariance of each image's class mean (divided by N)."""
        cnt = self.class_count
        present = cnt > 0
        means = self.class_sum[present] / cnt[present, None] - (self.sum / self.n)[None, :]
        return (means.T * (cnt[present] / self.n)) @ means

    def ledoit_wolf_shrinkage(self) -> float:
        """The Ledoit-Wolf shrinkage of the covariance towards a scaled identity (as scikit-learn computes it)."""
        if not self.fourth_moments:
            raise ValueError("the Ledoit-Wolf shrinkage needs FeatureStats(fourth_moments=True)")
        n, d = self.n, self.gram.shape[0]
        mu_t = self.sum / n  # mean of the shifted features
        c = float(mu_t @ mu_t)
        cov = self.covariance()
        # sum over images of ||x_i - mean||^4, from the shifted moments
        fourth = (float(self.sq2) - 4 * float(mu_t @ self.sq_x) + 4 * float(mu_t @ self.gram @ mu_t)
                  + 2 * c * float(self.sq) - 3 * n * c * c)
        fro2 = float((cov * cov).sum())
        mu = float(torch_trace(cov)) / d
        beta = (fourth / n - fro2) / (d * n)
        delta = (fro2 - 2 * mu * float(torch_trace(cov)) + d * mu * mu) / d
        beta = min(beta, delta)
        return 0.0 if beta == 0 else beta / delta


def torch_trace(m):
    return m.diagonal().sum()


def stats_from_arrays(features, labels=None, *, targets=None, n_classes: int | None = None, device=None,
                      chunk: int = CHUNK_ROWS, fourth_moments: bool = True) -> FeatureStats:
    """:class:`FeatureStats` of in-memory features (block by block, as when streaming)."""
    if labels is not None and n_classes is None:
        n_classes = int(np.max(labels)) + 1
    stats = FeatureStats(n_classes, device=device, fourth_moments=fourth_moments)
    for block in _blocks(features, labels, targets, chunk):
        stats.update(*block)
    return stats


def _blocks(features, labels=None, targets=None, chunk: int = CHUNK_ROWS):
    """(features, labels, targets) of consecutive blocks of ``chunk`` rows (labels/targets None when not given)."""
    for lo in range(0, len(features), chunk):
        yield (features[lo:lo + chunk], None if labels is None else labels[lo:lo + chunk],
               None if targets is None else targets[lo:lo + chunk])


def streamed_stats(names: Iterable[str], blocks, n_classes: int | None, device=None) -> dict[str, FeatureStats]:
    """The statistics of every streaming score in ``names`` (LogME, the H-scores), filled in one pass over ``blocks``
    (``(features, labels, targets)`` tuples): one :class:`FeatureStats` that they share, with the fourth moments
    only when ``hscore_shrink`` (the Ledoit-Wolf shrinkage) is asked for."""
    names = [n for n in names if SCORES[n].streaming]
    stats = FeatureStats(n_classes, device=device, fourth_moments="hscore_shrink" in names)
    for block in blocks:
        stats.update(*block)
    return {n: stats for n in names}


def logme_from_stats(stats: FeatureStats, *, regression: bool = False, tol: float = 1e-3,
                     max_iter: int = 11) -> float:
    """LogME from streamed statistics: the eigenvalues of F^T F and V^T F^T Y (:func:`eigh_coordinates`), every class
    (target) at once."""
    if regression:
        cross = stats.target_cross + stats.shift[:, None] * stats.target_sum[None, :]  # F^T Y  [D, T]
        yy = stats.target_sq
    else:
        cross = (stats.class_sum + stats.class_count[:, None] * stats.shift[None, :]).T  # F^T onehot(y)  [D, C]
        keep = stats.class_count > 0
        cross, yy = cross[:, keep], stats.class_count[keep]
    sigma, z = eigh_coordinates(stats.raw_gram(), cross)
    return float(_logme_evidence(sigma.clamp_min(0.0), z, yy, stats.n, tol=tol, max_iter=max_iter).mean())


def _logme_evidence(sigma, z, yy, n: int, *, tol: float, max_iter: int):
    """Per-target evidence / N of LogME's fixed point, from the eigenvalues ``sigma`` [D] of F^T F, ``z`` = V^T F^T y
    [D, K] and ``yy`` = y^T y [K].

    In the eigenbasis the posterior mean is z / (t + sigma) (t = alpha / beta), so ||m||^2 = sum z^2/(t+sigma)^2
    and ||F m - y||^2 = y^T y - sum z^2 (2t + sigma)/(t + sigma)^2: no division by a zero eigenvalue.
    """
    torch = _torch()
    if z.device.type == "cpu":  # [D, K] element-wise steps: one thread avoids a parallel region per small op
        with torch_threads(1):
            return _logme_fixed_point(sigma, z, yy, n, tol=tol, max_iter=max_iter)
    return _logme_fixed_point(sigma, z, yy, n, tol=tol, max_iter=max_iter)


def _logme_fixed_point(sigma, z, yy, n: int, *, tol: float, max_iter: int):
    """The iteration of :func:`_logme_evidence`, on the device of its inputs."""
    torch = _torch()
    d = sigma.shape[0]
    k = z.shape[1]
    s = sigma[:, None]
    z2 = z * z
    alpha = torch.ones(k, dtype=torch.float64, device=z.device)
    beta = torch.ones_like(alpha)
    m2 = torch.zeros_like(alpha)
    res2 = torch.zeros_like(alpha)
    active = torch.ones(k, dtype=torch.bool, device=z.device)
    for _ in range(max_iter):
        t = alpha / beta
        tp = t[None, :] + s
        gamma = (s / tp).sum(0)
        m2_new = (z2 / tp ** 2).sum(0)
        res2_new = yy - (z2 * (2 * t[None, :] + s) / tp ** 2).sum(0)
        alpha_new = gamma / (m2_new + 1e-5)
        beta_new = (n - gamma) / (res2_new + 1e-5)
        # a class whose iteration stopped keeps its last values
        m2 = torch.where(active, m2_new, m2)
        res2 = torch.where(active, res2_new, res2)
        alpha = torch.where(active, alpha_new, alpha)
        beta = torch.where(active, beta_new, beta)
        active = active & ((alpha / beta - t).abs() / t > tol)
        if not bool(active.any()):
            break
    evidence = (d / 2.0 * torch.log(alpha) + n / 2.0 * torch.log(beta)
                - 0.5 * torch.log(alpha[None, :] + beta[None, :] * s).sum(0)
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * math.log(2 * math.pi))
    return evidence / n


def _pinv_sym(m, rcond: float):
    """Pseudo-inverse of a symmetric matrix: eigenvalues at most rcond * the largest magnitude count as zero."""
    torch = _torch()
    w, v = symmetric_eigh(m)
    cut = rcond * w.abs().max()
    inv = torch.where(w.abs() > cut, 1.0 / w, torch.zeros_like(w))
    return (v * inv) @ v.T


def hscore_from_stats(stats: FeatureStats, *, rcond: float = 1e-15) -> float:
    """H-score tr(cov(f)^+ cov(E[f|y])) from streamed statistics."""
    return float(torch_trace(_pinv_sym(stats.covariance(), rcond) @ stats.between_covariance()))


def hscore_shrink_from_stats(stats: FeatureStats) -> float:
    """Shrinkage H-score tr(cov_a(f)^-1 (1 - a) cov(E[f|y])), cov_a = (1 - a) cov + a tr(cov)/D I (Ledoit-Wolf a)."""
    torch = _torch()
    cov = stats.covariance()
    d = cov.shape[0]
    a = stats.ledoit_wolf_shrinkage()
    shrunk = (1 - a) * cov + a * float(torch_trace(cov)) / d * torch.eye(d, dtype=cov.dtype, device=cov.device)
    between = (1 - a) * stats.between_covariance()
    with factor_threads(shrunk):
        chol, info = torch.linalg.cholesky_ex(shrunk)
    if int(info) != 0:  # singular (a = 0 on rank-deficient features): fall back to the pseudo-inverse
        return float(torch_trace(_pinv_sym(shrunk, 1e-15) @ between))
    return float(torch_trace(torch.cholesky_solve(between, chol)))


# --------------------------------------------------------------------------------------------------------------
# In-memory scores
# --------------------------------------------------------------------------------------------------------------

def logme(features, labels=None, *, targets=None, tol: float = 1e-3, max_iter: int = 11, device=None) -> float:
    """LogME: the mean over classes (or target columns) of the maximum log evidence per image.

    Parameters
    ----------
    features : array [N, D]
    labels : array [N], optional
        Class labels (classification: one-hot targets, one evidence per class).
    targets : array [N] or [N, T], optional
        Continuous targets (regression form; pass instead of ``labels``).
    tol, max_iter : float, int
        Stopping rule of the fixed-point iteration (relative change of alpha / beta).
    """
    if (labels is None) == (targets is None):
        raise UsageError("logme needs labels (classification) or targets (regression), not both")
    c = None
    if labels is not None:
        labels, c = _dense_labels(labels)
    stats = streamed_stats(["logme"], _blocks(features, labels, targets), c, device)["logme"]
    return logme_from_stats(stats, regression=labels is None, tol=tol, max_iter=max_iter)


def hscore(features, labels, *, rcond: float = 1e-15, device=None) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^+ cov(E[f|y])), covariances divided by N."""
    labels, c = _dense_labels(labels)
    return hscore_from_stats(streamed_stats(["hscore"], _blocks(features, labels), c, device)["hscore"], rcond=rcond)


def hscore_shrink(features, labels, *, device=None) -> float:
    """Shrinkage H-score (Ibrahim et al. 2023): the covariance of f shrunk with the Ledoit-Wolf coefficient."""
    labels, c = _dense_labels(labels)
    return hscore_shrink_from_stats(streamed_stats(["hscore_shrink"], _blocks(features, labels), c,
                                                   device)["hscore_shrink"])


def _softmax64(logits, device=None):
    torch = _torch()
    return torch.softmax(_as64(logits, device), dim=1)


def leep_from_probs(probs, labels) -> float:
    """LEEP of source-class probabilities ``probs`` [N, Z] (rows sum to one) for target ``labels`` [N]."""
    torch = _torch()
    probs = _as64(probs)
    y = torch.as_tensor(_dense_labels(labels)[0], device=probs.device)
    n = probs.shape[0]
    c = int(y.max()) + 1
    joint = torch.zeros(c, probs.shape[1], dtype=torch.float64, device=probs.device).index_add_(0, y, probs) / n
    cond = joint / joint.sum(0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)  # P(y | z)
    eep = (probs * cond[y]).sum(1)  # sum_z P(y_i | z) theta_z(x_i)
    return float(torch.log(eep).mean())


def leep(logits, labels, *, device=None) -> float:
    """LEEP (Nguyen et al. 2020) of the source head's ``logits`` [N, Z] for target ``labels`` [N]."""
    return leep_from_probs(_softmax64(logits, device), labels)


def nce(logits, labels, *, device=None) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z), Z the source head's top class (ties to the lower index)."""
    torch = _torch()
    logits = _as64(logits, device)
    z = torch.as_tensor(np.argmax(logits.cpu().numpy(), axis=1), device=logits.device)
    y = torch.as_tensor(_dense_labels(labels)[0], device=logits.device)
    n = len(y)
    _, zi = torch.unique(z, return_inverse=True)
    c, k = int(y.max()) + 1, int(zi.max()) + 1
    joint = torch.zeros(c * k, dtype=torch.float64, device=logits.device).index_add_(
        0, y * k + zi, torch.ones(n, dtype=torch.float64, device=logits.device)).view(c, k) / n
    pz = joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * torch.log(joint[nz] / pz.expand_as(joint)[nz])).sum())


def pca_components(x, variance: float):
    """Centred ``x`` projected on its leading principal axes that explain at least ``variance`` of the variance
    (the fewest that do, as scikit-learn's PCA(n_components=variance) keeps)."""
    torch = _torch()
    xc = x - x.mean(0)
    cov = _gram(xc) / (x.shape[0] - 1)
    w, v = symmetric_eigh(cov)
    w, v = w.flip(0).clamp_min(0), v.flip(1)
    ratio = torch.cumsum(w, 0) / w.sum()
    k = int(np.searchsorted(ratio.cpu().numpy(), variance, side="right")) + 1
    k = min(k, x.shape[1])
    return xc @ v[:, :k]


def gmm_posteriors(x, n_components: int, *, max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 1e-6,
                   seed: int = 0):
    """Posteriors P(component | x) [N, K] of a diagonal-covariance Gaussian mixture fitted by EM.

    Initialisation: means at ``n_components`` distinct images drawn with ``numpy.random.default_rng(seed)``,
    every variance the features' variance, equal weights. EM stops when the mean log-likelihood changes by less
    than ``tol`` or after ``max_iter`` steps; the posteriors are those of a last E-step.
    """
    torch = _torch()
    n, d = x.shape
    idx = np.sort(np.random.default_rng(seed).choice(n, size=n_components, replace=False))
    means = x[torch.as_tensor(idx, device=x.device)].clone()
    var = (x.var(0, unbiased=False) + reg_covar)[None, :].expand(n_components, d).clone()
    log_w = torch.full((n_components,), -math.log(n_components), dtype=x.dtype, device=x.device)
    x2 = x * x
    const = d * math.log(2 * math.pi)

    both = torch.cat([x2, x], dim=1)  # [N, 2d]: one product per step for the E- and the M-step

    def e_step():
        """Mean log-likelihood and the posteriors [N, K], in place in one [N, K] buffer: one product gives the
        log densities (sum_d (x - mu)^2 / var = x^2 . prec - 2 x . (mu prec) + sum mu^2 prec), one exp."""
        prec = 1.0 / var
        bias = -0.5 * (const + torch.log(var).sum(1) + (means * means * prec).sum(1)) + log_w
        log_p = torch.addmm(bias[None, :], both, torch.cat([prec, -2 * means * prec], dim=1).T, alpha=-0.5)
        top = log_p.amax(1, keepdim=True)
        resp = log_p.sub_(top).exp_()
        total = resp.sum(1, keepdim=True)
        resp.div_(total)
        return (top + torch.log(total)).double().mean(), resp  # float64 mean: the stopping rule sees no rounding

    lower = -math.inf
    for _ in range(max_iter):
        prev = lower
        lower_t, resp = e_step()
        nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
        moments = (resp.T @ both) / nk[:, None]  # [K, 2d]: E[x^2], E[x] per component
        means = moments[:, d:]
        var = moments[:, :d] - means * means + reg_covar
        log_w = torch.log(nk / n)
        lower = float(lower_t)
        if abs(lower - prev) < tol:
            break
    return e_step()[1]


def nleep(features, labels, *, variance: float = 0.8, components_per_class: int = 5, max_iter: int = 100,
          tol: float = 1e-3, reg_covar: float = 1e-6, seed: int = 0, dtype: str = "float32", device=None) -> float:
    """NLEEP (Li et al. 2021): LEEP with a Gaussian mixture's posteriors on the features' PCA as the source head.

    The PCA and LEEP run in float64; the mixture's EM runs in ``dtype`` (float32 by default: its E-step is a
    softmax over squared distances that needs no float64, and it is the score's cost, N x K x d per step; pass
    ``"float64"`` for the exact float64 fit).
    """
    torch = _torch()
    labels, c = _dense_labels(labels)
    x = _as64(features, device)
    _check_finite(x, "features")
    k = min(components_per_class * c, x.shape[0])
    z = pca_components(x, variance).to(getattr(torch, dtype))
    post = gmm_posteriors(z, k, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=seed)
    return leep_from_probs(post, labels)


def _class_means(x, y, c: int):
    torch = _torch()
    cnt = torch.bincount(y, minlength=c).to(x.dtype)
    return torch.zeros(c, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, x) / cnt[:, None], cnt


def _fisher_probs(x, y, c: int, shrinkage: float | None, a: float):
    """SFDA's regularised Fisher discriminant: class probabilities and the shrinkage used.

    With every discriminant direction kept, the classifier is linear discriminant analysis with the shrunk
    within-class scatter S = (1 - l) Sw + l tr(Sw)/D I: logits_c = x S^-1 mu_c - mu_c S^-1 mu_c / 2 + log p_c.
    """
    torch = _torch()
    n, d = x.shape
    means, cnt = _class_means(x, y, c)
    within = x - means[y]
    sw = _gram(within) / n
    if shrinkage is None:
        shrinkage = max(math.exp(-a * _largest_eigenvalue(sw)), 1e-10)
    s = (1 - shrinkage) * sw + shrinkage * float(torch_trace(sw)) / d * torch.eye(d, dtype=x.dtype, device=x.device)
    with factor_threads(s):
        coef = torch.linalg.solve(s, means.T).T  # [C, D] = mu S^-1
    logits = x @ coef.T - 0.5 * (coef * means).sum(1)[None, :] + torch.log(cnt / n)[None, :]
    return torch.softmax(logits, dim=1), shrinkage


def sfda(features, labels, *, a: float = 5.0, device=None) -> float:
    """SFDA (Shao et al. 2022): the mean probability of the true class after ConfMix and a second Fisher fit."""
    torch = _torch()
    labels, c = _dense_labels(labels)
    x = _as64(features, device)
    _check_finite(x, "features")
    y = torch.as_tensor(labels, device=x.device)
    probs, lam = _fisher_probs(x, y, c, None, a)
    soft = torch.softmax(probs, dim=1)  # the reference softens the probabilities once more before mixing
    means, _ = _class_means(x, y, c)
    others = (means.sum(0, keepdim=True) - means) / (c - 1)  # mean of the other classes' means
    p = soft[torch.arange(len(y), device=x.device), y][:, None]
    mixed = p * x + (1 - p) * others[y]
    probs2, _ = _fisher_probs(mixed, y, c, lam, a)
    return float(probs2[torch.arange(len(y), device=x.device), y].mean())


def _coding_rate(z, eps: float):
    """R(Z, eps) = 1/2 logdet(I + Z^T Z / (n eps)), through the smaller of Z^T Z and Z Z^T."""
    torch = _torch()
    n, d = z.shape
    m = (_gram(z) if d <= n else _gram(z.T.contiguous())) / (n * eps)
    m.diagonal().add_(1.0)  # I + Z^T Z / (n eps): symmetric positive definite, so a Cholesky factor gives logdet
    with factor_threads(m):
        chol, info = torch.linalg.cholesky_ex(m)
        if int(info) == 0:
            return float(chol.diagonal().log().sum())
        return 0.5 * float(torch.linalg.slogdet(m)[1])


def transrate(features, labels, *, eps: float = 1e-4, device=None) -> float:
    """TransRate (Huang et al. 2022): R(Z) - mean_k R(Z_k), Z the centred features, Z_k one class's rows."""
    torch = _torch()
    labels, c = _dense_labels(labels)
    z = _as64(features, device)
    _check_finite(z, "features")
    z = z - z.mean(0)
    order = np.argsort(labels, kind="stable")  # one gather, then each class is a slice (not c masks over z)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=c))])
    zs = z[torch.as_tensor(order, device=z.device)]
    per_class = sum(_coding_rate(zs[bounds[k]:bounds[k + 1]], eps) for k in range(c))
    return _coding_rate(z, eps) - per_class / c


def gbc(features, labels, *, gaussian: str = "spherical", device=None) -> float:
    """GBC (Pandy et al. 2022): minus the sum over ordered class pairs of exp(-Bhattacharyya distance).

    Each class is a Gaussian with its mean and its per-dimension variance (divided by n_c, at least 1e-4);
    ``spherical`` replaces the variances by their mean.
    """
    torch = _torch()
    if gaussian not in ("spherical", "diagonal"):
        raise UsageError(f"gbc's gaussian must be spherical or diagonal; got {gaussian!r}")
    labels, c = _dense_labels(labels)
    x = _as64(features, device)
    _check_finite(x, "features")
    y = torch.as_tensor(labels, device=x.device)
    means, cnt = _class_means(x, y, c)
    centred = x - means[y]
    var = torch.zeros_like(means).index_add_(0, y, centred * centred) / cnt[:, None]
    var = var.clamp_min(1e-4)
    if gaussian == "spherical":
        var = var.mean(1, keepdim=True)
    total = 0.0
    log_var = torch.log(var).sum(1) if gaussian == "diagonal" else torch.log(var[:, 0]) * x.shape[1]
    for i in range(c):  # one class against all: [C, D] at a time
        avg = (var[i][None, :] + var) / 2
        diff = (means[i][None, :] - means) ** 2
        first = (diff / avg).sum(1) / 8
        log_avg = torch.log(avg).sum(1) if gaussian == "diagonal" else torch.log(avg[:, 0]) * x.shape[1]
        second = log_avg - 0.5 * log_var[i] - 0.5 * log_var
        bc = torch.exp(-(first + 0.5 * second))
        bc[i] = 0.0
        total += float(bc.sum())
    return -total


# --------------------------------------------------------------------------------------------------------------
# All scores of one configuration
# --------------------------------------------------------------------------------------------------------------

_IN_MEMORY: dict[str, Callable] = {"nleep": nleep, "sfda": sfda, "transrate": transrate, "gbc": gbc}


def compute_scores(features, labels=None, *, logits=None, targets=None, scores: Iterable[str] | None = None,
                   device=None) -> dict[str, float]:
    """Every requested score of one configuration's in-memory features.

    Parameters
    ----------
    features : array [N, D]
    labels : array [N], optional
        Class labels (classification).
    logits : array [N, Z], optional
        The backbone's own classifier head on the same images (LEEP, NCE).
    targets : array [N] or [N, T], optional
        Continuous targets (regression: LogME only).
    scores : iterable of str, optional
        Names from :data:`SCORES` (default: all that apply to the task).
    device : str or torch.device, optional

    Returns
    -------
    dict
        score name -> value (higher is better).
    """
    task = "regression" if targets is not None else "classification"
    names = check_scores(scores, task=task)
    features = np.asarray(features) if not hasattr(features, "shape") else features
    if labels is not None:
        labels = check_labels(labels, len(features))
    _check_need(names, has_logits=logits is not None, what="these features")
    features = _as_tensor(features, device)
    _check_finite(features, "features")
    out: dict[str, float] = {}
    streaming = [n for n in names if SCORES[n].streaming]
    if streaming:
        dense, c = (None, None) if task == "regression" else _dense_labels(labels)
        stats = streamed_stats(streaming, _blocks(features, dense, targets), c, features.device)
        out.update(_from_stats(stats, regression=task == "regression"))
    x = _as64(features) if any(n in _IN_MEMORY for n in names) else None
    for n in names:
        if n in ("leep", "nce"):
            out[n] = (leep if n == "leep" else nce)(logits, labels, device=features.device)
        elif n in _IN_MEMORY:
            out[n] = _IN_MEMORY[n](x, labels)
    return {n: out[n] for n in names}


def _from_stats(stats: Mapping[str, FeatureStats], *, regression: bool = False) -> dict[str, float]:
    """Each streaming score from its statistics (:func:`streamed_stats`)."""
    fns = {"logme": partial(logme_from_stats, regression=regression), "hscore": hscore_from_stats,
           "hscore_shrink": hscore_shrink_from_stats}
    return {n: fns[n](st) for n, st in stats.items()}


def _check_need(names, *, has_logits: bool, what: str) -> None:
    need = [n for n in names if SCORES[n].needs == "logits"]
    if need and not has_logits:
        raise UsageError(f"score(s) {need} need the backbone's own classifier head (the 'logits' tap), which "
                         f"{what} lack; drop them with --scores, or use a checkpoint that has a head")


def scores_from_cache(entry, *, tap: str = "pooled", scores: Iterable[str] | None = None, targets=None,
                      device=None, chunk: int = CHUNK_ROWS) -> dict[str, float]:
    """Every requested score of one cache entry (an HDF5 file written by :func:`probe.extract_features`).

    LogME and the H-scores stream the file in blocks of ``chunk`` images (memory flat in the number of images);
    the other scores read the tap (and ``logits`` for LEEP/NCE) into memory once. Bad input (one class, fewer
    images than classes, a missing tap, non-finite features) is a UsageError before any score is computed.
    """
    import h5py

    path = getattr(entry, "path", entry)
    task = "regression" if targets is not None else "classification"
    names = check_scores(scores, task=task)
    with h5py.File(path, "r") as f:
        have = set(f["features"].keys()) if "features" in f else set()
        if tap not in have:
            raise UsageError(f"cache entry {path} has no tap {tap!r} (it has {sorted(have)}); extract it with "
                             f"--taps {tap}")
        _check_need(names, has_logits="logits" in have, what=f"the cache entry {path}")
        labels = f["labels"][:]
        if task == "classification":
            labels = check_labels(labels, f["features"][tap].shape[0], what=f"cache entry {path}")
        dense, c = _dense_labels(labels)
        ds = f["features"][tap]
        n = ds.shape[0]
        out: dict[str, float] = {}
        streaming = [s for s in names if SCORES[s].streaming]
        if streaming:
            regression = task == "regression"
            blocks = ((ds[lo:lo + chunk], None if regression else dense[lo:lo + chunk],
                       np.asarray(targets)[lo:lo + chunk] if regression else None) for lo in range(0, n, chunk))
            stats = streamed_stats(streaming, blocks, None if regression else c, device)
            out.update(_from_stats(stats, regression=regression))
        rest = [s for s in names if not SCORES[s].streaming]
        if rest:
            feats = ds[:] if any(SCORES[s].needs == "features" for s in rest) else None
            logits = f["features"]["logits"][:] if any(SCORES[s].needs == "logits" for s in rest) else None
            if logits is not None:
                _check_finite(_as64(logits), "logits")
            out.update(compute_scores(feats if feats is not None else np.zeros((n, 1)), labels, logits=logits,
                                      scores=rest, device=device))
    return {s: out[s] for s in names}


# --------------------------------------------------------------------------------------------------------------
# Baselines beside the scores, and one job's rows
# --------------------------------------------------------------------------------------------------------------

def model_cost(backbone: str, *, weights=None, random_init: bool = False, seed: int = 0,
               img_size: int | None = None) -> dict[str, float]:
    """Parameter count (without the classifier head) and forward GFLOPs for one image at the resolved input size.

    FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts 2), on the
    meta device when the architecture runs there (no weights are read), else on the CPU.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ._backbones import _create, resolve_data_config

    model = _create(backbone, pretrained=False, img_size=img_size, num_classes=0).eval()
    params = float(sum(p.numel() for p in model.parameters()))
    size = resolve_data_config(model, img_size)["input_size"]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *size))
    return {"params": params, "gflops": counter.get_total_flops() / 1e9}


def has_head(backbone: str, *, weights=None, img_size: int | None = None) -> bool:
    """Whether ``backbone`` keeps a classifier head (source classes) that the ``logits`` tap can read.

    Built on the meta device (no weights read). A local checkpoint (``weights``) counts as headless: the
    extractor builds the architecture's default head and drops checkpoint head weights that do not fit it, so
    its logits would not be the checkpoint's own.
    """
    import torch

    from ._backbones import _create

    if weights is not None:
        return False
    with torch.device("meta"):
        model = _create(backbone, pretrained=False, img_size=img_size, num_classes=None)
    return bool(getattr(model, "num_classes", 0))


def default_scores(backbone: str, *, task: str = "classification", weights=None,
                   img_size: int | None = None) -> tuple[str, ...]:
    """Every score of ``task`` that ``backbone`` can give: LEEP and NCE only when it has a classifier head."""
    names = check_scores(None, task=task)
    if any(SCORES[n].needs == "logits" for n in names) and not has_head(backbone, weights=weights,
                                                                          img_size=img_size):
        names = tuple(n for n in names if SCORES[n].needs != "logits")
    return names


def transfer_protocol(name: str, *, task: str, tap: str, split: str = "train") -> str:
    """Protocol id of a score's rows: the score, its settings, the tap, the task and the split it is computed on."""
    from ._identity import protocol_id
    from ._version import PROBE_VERSION

    settings = dict(SCORES[name].settings) if name in SCORES else {}
    return protocol_id(task=task, probe="transfer", tap=tap, grid={"score": name, "split": split, **settings},
                       val_fraction=0.0, test_fraction=0.0, select_metric="-", shots=0, refit=False,
                       probe_version=PROBE_VERSION)


def score_backbone(backbone: str, dataset: str, *, scores: Iterable[str] | None = None, tap: str = "pooled",
                   task: str = "classification", target: str | None = None, results_dir="results",
                   overwrite: bool = False, device: str = "auto", data_root=None, cache_dir="cache",
                   weights=None, random_init: bool = False, seed: int = 0, img_size: int | None = None,
                   family: str | None = None, **extract_kwargs):
    """Compute the transferability scores of one backbone configuration on a dataset's train split; write rows.

    Parameters
    ----------
    backbone, dataset : str
        timm name and dataset spec, as for :func:`probe.extract_features` (missing features are extracted).
    scores : iterable of str, optional
        Names from :data:`SCORES` (default every score of the task). LEEP and NCE add the ``logits`` tap.
    tap : str
        The features the scores read (default ``pooled``).
    task : str
        ``classification`` (class labels) or ``regression`` (LogME's regression form on ``target``).
    target : str, optional
        Regression: the dataset's continuous target (default ``age`` when present, else ``target``).
    results_dir : path
        One parquet file per job: ``<dir>/<backbone>/<dataset>/transfer-<tap>-...parquet``.
    overwrite : bool
        Recompute a job whose file exists (otherwise its path is returned as it is).
    device : str
        ``auto`` (cuda when available), ``cpu`` or ``cuda[:N]``: where the scores are computed.
    **extract_kwargs
        Passed to :func:`probe.extract_features` (``batch_size``, ``workers``, ``precision``, ``dtype``, ...).

    Returns
    -------
    pathlib.Path
        The parquet file: one row per score (``probe = "transfer"``, ``score``, ``score_value``, ``split =
        "train"``), plus the ``params`` and ``gflops`` baselines.
    """
    import time
    from pathlib import Path

    import h5py

    from ._cache import read_attrs
    from ._datasets import open_dataset
    from ._extract import extract_features
    from ._families import resolve_family
    from ._identity import _digest, identity_columns
    from ._runtime import resolve_device
    from ._taps import parse_taps
    from .results import job_stem, make_row, write_results

    if task not in ("classification", "regression"):
        raise UsageError(f"transferability scores are defined for classification and regression; got task {task}")
    names = check_scores(scores, task=task)
    parse_taps(tap)
    if tap in ("patch", "patch16", "logits"):
        raise UsageError(f"scores read [N, D] features; tap {tap!r} is not one (use pooled, cls, mean or block<i>)")
    dev = resolve_device(device)
    # bad input is refused before any image is read
    source = open_dataset(dataset, data_root=data_root)
    split = source.check_split("train")
    labels = source.labels[split]
    targets_all = None
    if task == "classification":
        check_labels(labels, what=f"dataset {source.name!r} ({split})")
    else:
        name = target or ("age" if "age" in source.targets else "target")
        targets_all = source.target(name, split)
        if len(targets_all) < 3:
            raise UsageError(f"dataset {source.name!r} has {len(targets_all)} train images; LogME needs at least 3")
    taps = (tap, "logits") if any(SCORES[n].needs == "logits" for n in names) else (tap,)
    if "logits" in taps and weights is not None:
        raise UsageError("LEEP and NCE read the hub checkpoint's own classifier head; with --weights the head is not "
                         "kept as trained, so drop them (--scores without leep and nce)")
    kwargs = dict(weights=weights, random_init=random_init, seed=seed, img_size=img_size, family=family,
                  cache_dir=cache_dir, data_root=data_root, **extract_kwargs)
    entry = extract_features(backbone, dataset, splits=[split], taps=taps, device=device, **kwargs)[split]
    with h5py.File(entry.path, "r") as f:
        attrs = read_attrs(f)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["ids"][:]]
    identity = identity_columns(backbone=backbone, weights=attrs["weights"], data_config=attrs.get("data_config") or {},
                                precision=str(attrs.get("precision") or "fp32"))
    stem = job_stem(results_dir, backbone=backbone, dataset=source.name, probe="transfer", tap=tap,
                    tag=f"{identity['backbone_config'][:8]}-{_digest({'scores': names, 'task': task})[:8]}")
    path = Path(str(stem) + ".parquet")
    if path.exists() and not overwrite:
        return path
    targets = None
    if targets_all is not None:  # aligned with the cached rows (unreadable images may have been skipped)
        where = {id_: i for i, id_ in enumerate(source.ids[split])}
        targets = np.asarray(targets_all)[[where[i] for i in ids]]
    values = {}
    timings = {}
    for n in names:  # one at a time: each row carries its own wall time
        t0 = time.perf_counter()
        values.update(scores_from_cache(entry, tap=tap, scores=[n], targets=targets, device=dev))
        timings[n] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cost = model_cost(backbone, weights=weights, random_init=random_init, seed=seed, img_size=img_size)
    cost_seconds = time.perf_counter() - t0
    fam, fam_source = resolve_family(backbone, family)
    base = dict(backbone=backbone, family=fam, family_source=fam_source, weights=attrs["weights"],
                dataset=source.name, tap=tap, probe="transfer", selected=False, split=split, n_train=len(ids),
                n_eval=len(ids), shots=0, seed=seed, val_fraction=0.0, select_metric="-", cache_key=entry.key,
                task=task, test_fraction=0.0, n_skipped=len(attrs.get("skipped") or []), evaluation="train split",
                **identity)
    rows = []
    for n, v in {**values, **cost}.items():
        rows.append(make_row(**base, score=n, score_value=float(v),
                             params={"score": n, **(dict(SCORES[n].settings) if n in SCORES else {})},
                             protocol=transfer_protocol(n, task=task, tap=tap, split=split),
                             fit_seconds=timings.get(n, cost_seconds)))
    return write_results(rows, path)
