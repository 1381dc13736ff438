"""Face verification on frozen features: are the two images of a pair the same person? (LFW protocol)

For each fold k of the pairs, everything learned is learned on the other folds' pairs: the optional PCA
whitening (fitted on the images of the other folds' pairs) and the threshold on the cosine similarity (the one
that classifies the other folds' pairs best). Fold k's pairs are then scored once at that threshold. The
results: the mean, sample sd and standard error over folds of the accuracy (``verif_acc``, ``verif_acc_sd``,
``verif_acc_se`` = sd / sqrt(folds): LFW's protocol reports the mean ± this standard error), and on the pooled
held-out similarities the ROC AUC and the true accept rate at a false accept rate of 1e-3 (``tar_far1e3``).

TAR at FAR = 1e-3 is defined only with at least :data:`MIN_NEGATIVES` (1,000) negative (different-person) pairs:
with fewer, one false accept is already more than 1e-3 of them, so the only rate at or below 1e-3 that the pairs
can show is 0 and the number would be TAR at FAR = 0, another quantity. The value is then null (``n/a`` in the
report, with the reason); it is never reported at another FAR under this name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._faces import Pairs

#: False accept rate of ``tar_far1e3``.
FAR = 1e-3

#: Fewest negative pairs for which ``tar_far1e3`` is defined (one false accept in ``1 / FAR`` pairs).
MIN_NEGATIVES = 1000

#: Why ``tar_far1e3`` is null with fewer negative pairs (the report prints it beside ``n/a``).
TAR_REASON = (f"TAR at FAR = 1e-3 needs ≥ {MIN_NEGATIVES:,} negative pairs (two different people); with fewer, "
              "the only false accept rate at or below 1e-3 the pairs can show is 0")


def best_threshold(scores, same) -> float:
    """The threshold t that classifies ``score >= t`` as "same" with the best accuracy on these pairs.

    Candidates are the midpoints between consecutive distinct scores plus one below the lowest and one above the
    highest; among equally accurate thresholds the lowest is taken.
    """
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    # accuracy at each candidate from sorted counts: same pairs at or above t, different pairs below t
    pos = np.sort(scores[same])
    neg = np.sort(scores[~same])
    correct = (len(pos) - np.searchsorted(pos, candidates, side="left")) + np.searchsorted(neg, candidates,
                                                                                         side="left")
    return float(candidates[int(np.argmax(correct))])


@dataclass
class Verification:
    """What :func:`verify` returns: per-pair out-of-fold similarity and correctness, per-fold threshold/accuracy."""

    similarity: np.ndarray
    correct: np.ndarray
    thresholds: np.ndarray
    fold_accuracy: np.ndarray

    def metrics(self, same) -> dict[str, float]:
        """``verif_acc`` (mean over folds), ``verif_acc_sd`` (sample sd), ``verif_acc_se`` (standard error of the
        mean, sd / sqrt(folds)), ``roc_auc`` and ``tar_far1e3`` (None with
        fewer than :data:`MIN_NEGATIVES` negative pairs)."""
        from sklearn.metrics import roc_auc_score, roc_curve

        same = np.asarray(same, dtype=bool)
        acc = self.fold_accuracy
        fpr, tpr, _ = roc_curve(same, self.similarity, drop_intermediate=False)
        ok = fpr <= FAR
        tar = (float(tpr[ok].max()) if ok.any() else 0.0) if (~same).sum() >= MIN_NEGATIVES else None
        sd = float(acc.std(ddof=1)) if len(acc) > 1 else 0.0
        return {"verif_acc": float(acc.mean()), "verif_acc_sd": sd, "verif_acc_se": sd / float(np.sqrt(len(acc))),
                "roc_auc": float(roc_auc_score(same, self.similarity)) if 0 < same.sum() < len(same) else float("nan"),
                "tar_far1e3": tar}


def verify(features, pairs: Pairs, *, pca_dim: int | None = None) -> Verification:
    """Score every pair on the folds it was not fitted on (see the module docstring).

    Parameters
    ----------
    features : array [N, D]
        Features of the images the pairs index.
    pairs : Pairs
        Pairs with their folds (:func:`probe._faces.read_pairs` or :func:`probe._faces.draw_pairs`).
    pca_dim : int, optional
        Fit a PCA whitening with this many components on the other folds' images before the cosine; None (default)
        compares the features as they are.
    """
    X = np.asarray(features, dtype=np.float64)
    k = pairs.n_folds
    similarity = np.empty(len(pairs.a))
    thresholds = np.empty(k)
    accuracy = np.empty(k)
    correct = np.zeros(len(pairs.a), dtype=bool)
    base = None if pca_dim else _cosine(X, pairs.a, pairs.b)
    for f in range(k):
        test = pairs.fold == f
        train = ~test
        if pca_dim:
            rows = np.unique(np.concatenate([pairs.a[train], pairs.b[train]]))
            Z = _whiten(X, X[rows], int(pca_dim))
            sims = _cosine(Z, pairs.a, pairs.b)
        else:
            sims = base
        thresholds[f] = best_threshold(sims[train], pairs.same[train])
        similarity[test] = sims[test]
        correct[test] = (sims[test] >= thresholds[f]) == pairs.same[test]
        accuracy[f] = correct[test].mean()
    return Verification(similarity=similarity, correct=correct, thresholds=thresholds, fold_accuracy=accuracy)


def _cosine(X, a, b) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1)
    norms[norms == 0] = 1.0
    return np.einsum("ij,ij->i", X[a], X[b]) / (norms[a] * norms[b])


def _whiten(X, fit_rows, dim: int) -> np.ndarray:
    mean = fit_rows.mean(axis=0)
    _, s, vt = np.linalg.svd(fit_rows - mean, full_matrices=False)
    dim = min(dim, int((s > 1e-12 * s[0]).sum()))
    return (X - mean) @ vt[:dim].T / s[:dim]
