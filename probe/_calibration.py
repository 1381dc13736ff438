"""Calibration of a classifier's test probabilities, before and after temperature scaling fitted on val.

The one owner of the calibration metrics (numpy and scipy; no torch). Conventions, used everywhere:

- **Probabilities.** A probe whose scores are a probability model (logistic regression's softmax, a fine-tuned
  network's softmax) is calibrated from those probabilities (``calib_input = "probabilities"``); the logits of
  temperature scaling are their logarithms (``softmax(log p / T)``, the same as ``softmax(z / T)`` of the
  network's logits). Probes whose scores are not probabilities (ridge, kNN, centroid) are calibrated from their
  scores treated as logits, ``softmax(s / T)`` (``calib_input = "scores"``); before scaling that is ``T = 1``.
- **Top-label ECE** (Guo et al. 2017): the predicted class is the top-scoring column (ties to the lower column, as
  :func:`probe.results.top_k`), its probability the confidence; 15 equal-width bins over [0, 1], right-closed
  (``((m-1)/15, m/15]``: a confidence of exactly 1 is in the last bin); ECE = sum over bins of
  (bin share of items) x |mean confidence - accuracy|; MCE = the largest |mean confidence - accuracy| over
  non-empty bins.
- **NLL**: mean over items of -log p(true class); **Brier**: mean over items of the sum over classes of
  (p_c - onehot_c)^2 (multi-class Brier, in [0, 2]). A true class the model has no column for (absent from its
  training data) has probability 0: it is never a hit, adds 1 to its Brier term, and its NLL is -log of the
  smallest positive float64 (about 708).
- **Temperature scaling**: one scalar T > 0 minimising the mean val NLL of ``softmax(logits / T)`` (convex in
  1/T, so unimodal in log(1/T): bounded Brent over log(1/T), T in [1e-4, 1e4], wide enough for cosine scores in
  [-1, 1]); fitted on val only, so test labels cannot move it. Val
  items whose class has no score column are left out of the fit (their NLL does not depend on T). Scaling never
  changes the predicted class, so accuracy is the same before and after.

Every metric is computed from per-item statistics (``item/conf``, ``item/conf_ts``, ``item/nll``, ... beside
``item/top1``, the hit): one definition serves the row, pooled summaries and the bootstrap
(:class:`probe.tasks.Metric`; the binned errors through :func:`binned_errors`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Equal-width confidence bins of ECE and MCE.
N_BINS = 15
#: Bounds of the fitted temperature (log(1/T) is searched in [-log T_MAX, -log T_MIN]).
T_MIN, T_MAX = 1e-4, 1e4
#: The calibration columns of a results row (Float64 except ``calib_input``).
COLUMNS = ("ece", "ece_ts", "mce", "mce_ts", "nll", "nll_ts", "brier", "brier_ts", "temperature", "calib_input")
#: Per-item statistic keys saved beside a job's predictions (``item/top1`` is the hit).
ITEM_KEYS = ("item/conf", "item/conf_ts", "item/nll", "item/nll_ts", "item/brier", "item/brier_ts")

_LOG_FLOOR = float(np.log(np.finfo(np.float64).tiny))


def _logits(scores, from_probabilities: bool) -> np.ndarray:
    """Scores as float64 logits: the log of probabilities (floored at the smallest positive float64) or the
    scores themselves."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [N, C]; got shape {s.shape}")
    if from_probabilities:
        with np.errstate(divide="ignore"):
            return np.maximum(np.log(np.clip(s, 0.0, None)), _LOG_FLOOR)
    return s


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    shifted = z - m
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _column_index(y, classes: Sequence | None, n_cols: int) -> np.ndarray:
    """The score column of each label (-1 for a label without a column)."""
    y = np.asarray(y)
    if classes is None:
        idx = y.astype(np.int64)
        return np.where((idx >= 0) & (idx < n_cols), idx, -1)
    classes = np.asarray(classes)
    if len(classes) != n_cols:
        raise ValueError(f"classes has {len(classes)} labels for {n_cols} score columns")
    where = {c: i for i, c in enumerate(classes.tolist())}
    return np.asarray([where.get(v, -1) for v in y.tolist()], dtype=np.int64)


def _nll_at(z: np.ndarray, col: np.ndarray, beta: float) -> float:
    """Mean NLL of ``softmax(beta * z)`` at the columns ``col`` (every entry valid)."""
    lp = _log_softmax(beta * z)
    return float(-lp[np.arange(len(col)), col].mean())


def fit_temperature(val_logits, y_val) -> float:
    """The temperature T minimising the mean NLL of ``softmax(val_logits / T)`` on val.

    Parameters
    ----------
    val_logits : array [N, C]
        Val logits (or the log of val probabilities, or scores treated as logits).
    y_val : array [N]
        The score column of each val item's true class; items with a negative index (no column) are left out.

    Returns
    -------
    float
        T in [1e-4, 1e4] (1.0 when no val item can be used or there is one column). The mean NLL is convex in
        1/T, hence unimodal in log(1/T), so the bounded Brent search over log(1/T) finds the global minimum within
        the bounds.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(val_logits, dtype=np.float64)
    col = np.asarray(y_val, dtype=np.int64)
    keep = (col >= 0) & (col < z.shape[1]) & np.isfinite(z).all(axis=1)
    z, col = z[keep], col[keep]
    if not len(col) or z.shape[1] < 2:
        return 1.0
    lo, hi = -np.log(T_MAX), -np.log(T_MIN)
    res = minimize_scalar(lambda lb: _nll_at(z, col, float(np.exp(lb))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-9})
    beta = float(np.exp(res.x))
    # the bounded search never evaluates its end points; a minimum at the bound is taken there
    for end in (1.0 / T_MAX, 1.0 / T_MIN):
        if _nll_at(z, col, end) < _nll_at(z, col, beta):
            beta = end
    return 1.0 / beta


def _top(probs: np.ndarray) -> np.ndarray:
    """The predicted column of each row: the highest, ties to the lower column (the package's one tie rule)."""
    return np.argmax(probs, axis=1)


def bin_index(conf, n_bins: int = N_BINS) -> np.ndarray:
    """The confidence bin of each item: equal-width, right-closed bins ``((m-1)/n_bins, m/n_bins]`` (0 and 1 in
    the first and last)."""
    conf = np.asarray(conf, dtype=np.float64)
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def binned_errors(conf, hit, counts=None, *, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """ECE and MCE of each resample from per-item confidences and hits.

    Parameters
    ----------
    conf : array [N]
        Top-label confidence of each item.
    hit : array [N]
        1 when the top label is the true class, else 0.
    counts : array [B, N], optional
        How often each resample draws each item (default: one resample of every item once).
    n_bins : int
        Equal-width, right-closed bins over [0, 1].

    Returns
    -------
    ece, mce : arrays [B]
        NaN for a resample that draws no item.
    """
    conf = np.asarray(conf, dtype=np.float64)
    hit = np.asarray(hit, dtype=np.float64)
    counts = np.ones((1, len(conf))) if counts is None else np.atleast_2d(np.asarray(counts, dtype=np.float64))
    b = bin_index(conf, n_bins)
    onehot = np.zeros((len(conf), n_bins))
    onehot[np.arange(len(conf)), b] = 1.0
    n_b = counts @ onehot
    gap = np.abs(counts @ (onehot * conf[:, None]) - counts @ (onehot * hit[:, None]))  # n_b * |conf - acc|
    total = n_b.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ece = gap.sum(axis=1) / total
        per_bin = np.where(n_b > 0, gap / np.where(n_b > 0, n_b, 1.0), -np.inf)
        mce = np.where(total > 0, per_bin.max(axis=1), np.nan)
    return ece, mce


def _hits(probs: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = _top(probs)
    return probs[np.arange(len(probs)), pred], (pred == col).astype(np.float64)


def ece(probs, y, n_bins: int = N_BINS) -> float:
    """Top-label expected calibration error of ``probs`` [N, C] against the true columns ``y`` [N] (see the
    module docstring; a negative ``y`` is a class without a column, never a hit)."""
    conf, hit = _hits(np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64))
    return float(binned_errors(conf, hit, n_bins=n_bins)[0][0])


def mce(probs, y, n_bins: int = N_BINS) -> float:
    """Top-label maximum calibration error: the largest |mean confidence - accuracy| over non-empty bins."""
    conf, hit = _hits(np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64))
    return float(binned_errors(conf, hit, n_bins=n_bins)[1][0])


def _item_nll(logp: np.ndarray, col: np.ndarray) -> np.ndarray:
    rows = np.arange(len(col))
    return -np.where(col >= 0, np.maximum(logp[rows, np.maximum(col, 0)], _LOG_FLOOR), _LOG_FLOOR)


def _item_brier(probs: np.ndarray, col: np.ndarray) -> np.ndarray:
    rows = np.arange(len(col))
    sq = (probs ** 2).sum(axis=1)
    p_true = np.where(col >= 0, probs[rows, np.maximum(col, 0)], 0.0)
    return sq - 2.0 * p_true + 1.0


def nll(probs, y) -> float:
    """Mean negative log-likelihood of the true columns ``y`` under ``probs`` [N, C] (natural log)."""
    p = np.asarray(probs, dtype=np.float64)
    return float(_item_nll(_logits(p, True), np.asarray(y, dtype=np.int64)).mean())


def brier(probs, y) -> float:
    """Multi-class Brier score: mean over items of sum over classes of (p_c - onehot_c)^2, in [0, 2]."""
    return float(_item_brier(np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64)).mean())


def calibration_items(test_scores, y_test, classes=None, *, temperature: float,
                      from_probabilities: bool) -> dict[str, np.ndarray]:
    """Per-item statistics of the test items before and after scaling by ``temperature``.

    Returns ``item/conf`` and ``item/conf_ts`` (top-label confidence), ``item/nll``/``item/nll_ts`` and
    ``item/brier``/``item/brier_ts``, and ``item/top1`` (the hit; the same before and after). ``classes`` is the
    label of each score column (default ``0..C-1``); ``y_test`` holds labels.
    """
    z = _logits(test_scores, from_probabilities)
    col = _column_index(y_test, classes, z.shape[1])
    out: dict[str, np.ndarray] = {}
    for suffix, t in (("", 1.0), ("_ts", float(temperature))):
        logp = _log_softmax(z / t)
        probs = np.exp(logp)
        conf, hit = _hits(probs, col)
        out[f"item/conf{suffix}"] = conf
        out[f"item/nll{suffix}"] = _item_nll(logp, col)
        out[f"item/brier{suffix}"] = _item_brier(probs, col)
        out["item/top1"] = hit
    return out


def item_values(items) -> dict[str, float]:
    """The calibration metrics of per-item statistics (:func:`calibration_items`), every item once."""
    out = {}
    for suffix in ("", "_ts"):
        e, m = binned_errors(items[f"item/conf{suffix}"], items["item/top1"])
        out[f"ece{suffix}"], out[f"mce{suffix}"] = float(e[0]), float(m[0])
        out[f"nll{suffix}"] = float(np.mean(items[f"item/nll{suffix}"]))
        out[f"brier{suffix}"] = float(np.mean(items[f"item/brier{suffix}"]))
    return out


def calibrate(val_scores, y_val, test_scores, y_test, classes=None, *, from_probabilities: bool,
              val_classes=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Fit the temperature on val and score test before and after: (the row's columns, per-item statistics).

    See :func:`calibration_metrics` for the parameters; the per-item statistics are :func:`calibration_items`'.
    """
    z_val = _logits(val_scores, from_probabilities)
    col_val = _column_index(y_val, classes if val_classes is None else val_classes, z_val.shape[1])
    t = fit_temperature(z_val, col_val)
    items = calibration_items(test_scores, y_test, classes, temperature=t, from_probabilities=from_probabilities)
    columns: dict[str, Any] = item_values(items) if len(items["item/top1"]) else {c: float("nan") for c in COLUMNS}
    columns.update(temperature=t, calib_input="probabilities" if from_probabilities else "scores")
    return {c: columns[c] for c in COLUMNS}, items


def calibration_metrics(val_scores, y_val, test_scores, y_test, classes=None, *, from_probabilities: bool,
                        val_classes=None) -> dict[str, Any]:
    """The calibration columns of one selected test row: temperature fitted on val, test scored before and after.

    Parameters
    ----------
    val_scores : array [N_val, C_val]
        The selected model's val scores (probabilities, or scores treated as logits). For a probe refitted on
        train+val these are the selected grid point's val scores from its fit on train.
    y_val : array [N_val]
        Val labels.
    test_scores : array [N_test, C]
        The model's test scores.
    y_test : array [N_test]
        Test labels.
    classes : array [C], optional
        The label of each test score column (a probe's ``classes_``); default ``0..C-1``.
    from_probabilities : bool
        True when the scores are probabilities (rows summing to 1); False for scores treated as logits.
    val_classes : array [C_val], optional
        The label of each val score column when it differs from ``classes`` (default: ``classes``).

    Returns
    -------
    dict
        ``ece``, ``ece_ts``, ``mce``, ``mce_ts``, ``nll``, ``nll_ts``, ``brier``, ``brier_ts``, ``temperature``
        and ``calib_input`` (``"probabilities"`` or ``"scores"``).
    """
    return calibrate(val_scores, y_val, test_scores, y_test, classes, from_probabilities=from_probabilities,
                     val_classes=val_classes)[0]


def calibrate_model(val_scores, y_val, test_scores, y_test, classes=None, *, probabilistic: bool,
                    val_classes=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`calibrate` for a model's raw scores: the columns and the per-item statistics to save beside its
    predictions (its hits ``item/top1`` are saved there already).

    ``probabilistic``: the scores are the logits of the model's probability model (a logistic probe, a fine-tuned
    network), calibrated from their softmax (``calib_input = "probabilities"``); otherwise scores treated as
    logits (``"scores"``).
    """
    if probabilistic:
        from scipy.special import softmax

        val_scores = softmax(np.asarray(val_scores, dtype=np.float64), axis=1)
        test_scores = softmax(np.asarray(test_scores, dtype=np.float64), axis=1)
    columns, items = calibrate(val_scores, y_val, test_scores, y_test, classes, from_probabilities=probabilistic,
                               val_classes=val_classes)
    return columns, {k: v for k, v in items.items() if k != "item/top1"}
