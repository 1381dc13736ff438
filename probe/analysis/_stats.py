"""Bootstrap confidence intervals over test images, for one metric or for a paired difference of two.

Both functions resample the test images with replacement (the nonparametric bootstrap) and recompute the metric
on every resample; the interval is the percentile interval of the resampled values. "Paired" means both results
are scored on the same images and every resample draws the same images for both, so the interval is for the
difference on this test set, not for two independent estimates.

Why it is fast: top-1 accuracy and mean per-class accuracy depend on a resample only through how many times it
drew each *kind* of image, a kind being (class, value) with value the per-image correctness (0/1) or, paired,
the difference of the two correctnesses (-1/0/+1). Drawing n images with replacement makes those counts
multinomial with the kinds' shares as probabilities, so the resamples are drawn as multinomial counts over at
most ``3 * n_classes`` kinds instead of ``n`` indices each. That is the same distribution as resampling indices,
without ever materialising them: 10,000 resamples of 10,000 images take milliseconds for accuracy and well under
a second for mean per-class accuracy with 100 classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._errors import UsageError

#: Metric names understood by the bootstrap. "top1", "top5" and "accuracy" all mean "mean of the per-image
#: correctness you pass" (pass top-5 hits for top5); "mean_per_class_acc" averages per-class recall.
_CLASSIFICATION_METRICS = ("top1", "top5", "accuracy", "mean_per_class_acc")
#: Dense metrics, bootstrapped from the per-image statistics each dense job saves (:mod:`probe.dense`).
DENSE_METRICS = ("miou", "pixel_acc", "rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
#: The metrics of the face and regression tasks that are means of per-item values take those values (hits,
#: average precisions, absolute errors), saved by their jobs as ``item/<metric>``.
ITEM_METRICS = ("rank1", "rank5", "map", "verif_acc", "mae", "cs5")
BOOTSTRAP_METRICS = _CLASSIFICATION_METRICS + DENSE_METRICS + ITEM_METRICS

#: Most int64 count cells drawn at once (resamples x kinds); bounds memory to about 64 MB per chunk.
_CHUNK_CELLS = 8_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap estimate with its percentile confidence interval; all values are fractions (not %).

    Attributes
    ----------
    estimate : float
        The metric (or the difference a - b of the metric) on the full test set.
    low, high : float
        Percentile confidence interval bounds.
    ci : float
        Confidence level of [low, high], e.g. 0.95.
    n : int
        Number of test images (pairs, for a paired bootstrap).
    n_boot : int
        Number of resamples.
    metric : str
        Metric name (see ``BOOTSTRAP_METRICS``).
    std_error : float
        Standard deviation of the resampled values (bootstrap standard error).
    p_le_zero : float
        Share of resamples whose value is <= 0. For a paired difference with a positive estimate this is a
        one-sided bootstrap p-value-like number for "a is not better than b"; NaN for :func:`bootstrap_ci`.
    paired : bool
        True for a difference from :func:`paired_bootstrap`.
    samples : numpy.ndarray
        The resampled values, [n_boot].
    """

    estimate: float
    low: float
    high: float
    ci: float
    n: int
    n_boot: int
    metric: str
    std_error: float
    p_le_zero: float = float("nan")
    paired: bool = False
    samples: np.ndarray = field(default=None, repr=False, compare=False)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0."""
        return bool(self.low > 0 or self.high < 0)

    def format(self, *, percent: bool = True, digits: int = 1, signed: bool = False) -> str:
        """Return e.g. ``'+3.2 [1.1, 5.3]'`` (percentage points when ``percent``)."""
        scale = 100.0 if percent else 1.0
        sign = "+" if signed else ""
        return (f"{self.estimate * scale:{sign}.{digits}f} "
                f"[{self.low * scale:{sign}.{digits}f}, {self.high * scale:{sign}.{digits}f}]")

    def __str__(self) -> str:
        what = f"{self.metric} difference" if self.paired else self.metric
        return f"{what} {self.format(signed=self.paired)} ({self.ci:.0%} CI, n={self.n}, {self.n_boot} resamples)"


def paired_bootstrap(correct_a, correct_b, *, labels=None, metric: str = "top1", n_boot: int = 10_000,
                     seed: int = 0, ci: float = 0.95) -> BootstrapResult:
    """Paired bootstrap of the difference ``metric(a) - metric(b)`` over the same test images.

    Parameters
    ----------
    correct_a, correct_b : array-like of bool or {0, 1}, [N]
        Per-image correctness of the two results on the same images in the same order (e.g. ``pred == labels``;
        top-5 hits for top5). Align them by image id first.
    labels : array-like of int, [N], optional
        True class of each image; required for ``metric="mean_per_class_acc"``.
    metric : {"top1", "top5", "accuracy", "mean_per_class_acc"}
        "top1"/"top5"/"accuracy": mean of the correctness. "mean_per_class_acc": mean over the classes present
        in the resample of the per-class accuracy (the resample's class counts change, and are recomputed).
    n_boot : int
        Number of resamples.
    seed : int
        Seed of the resampling; the same inputs and seed give the same result.
    ci : float
        Confidence level of the percentile interval, in (0, 1).

    Returns
    -------
    BootstrapResult
        ``estimate`` is the difference on the full set, ``[low, high]`` its percentile interval, ``p_le_zero``
        the share of resamples with difference <= 0.

    Examples
    --------
    >>> r = paired_bootstrap(pred_ft == y, pred_frozen == y, n_boot=10_000)  # doctest: +SKIP
    >>> print(f"gain {r.estimate:+.1%}, 95% CI [{r.low:+.1%}, {r.high:+.1%}] on {r.n} images")  # doctest: +SKIP
    """
    a = _as_correctness(correct_a, "correct_a", metric)
    b = _as_correctness(correct_b, "correct_b", metric)
    if a.shape != b.shape:
        raise UsageError(f"paired_bootstrap needs both results on the same images; got {a.size} and {b.size} "
                         "values. Align them by image id first")
    return _bootstrap(a - b, labels, metric=metric, n_boot=n_boot, seed=seed, ci=ci, paired=True)


def bootstrap_ci(correct, *, labels=None, metric: str = "top1", n_boot: int = 10_000, seed: int = 0,
                 ci: float = 0.95) -> BootstrapResult:
    """Bootstrap percentile interval of one metric over the test images (error bars for one result).

    Parameters
    ----------
    correct : array-like of bool or {0, 1}, [N]
        Per-image correctness (``pred == labels``; top-5 hits for top5).
    labels : array-like of int, [N], optional
        True class of each image; required for ``metric="mean_per_class_acc"``.
    metric, n_boot, seed, ci
        As in :func:`paired_bootstrap`.

    Returns
    -------
    BootstrapResult
        ``estimate`` is the metric on the full set; ``p_le_zero`` is NaN.
    """
    values = _as_correctness(correct, "correct", metric)
    return _bootstrap(values, labels, metric=metric, n_boot=n_boot, seed=seed, ci=ci, paired=False)


def _as_correctness(values, name: str, metric: str = "top1") -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise UsageError(f"{name} must be one value per test image (1-D); got shape {arr.shape}")
    if metric in ITEM_METRICS:  # per-item values (average precision, absolute error): any finite numbers
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise UsageError(f"{name} must hold finite per-item values of {metric}")
        return arr
    if arr.dtype != bool and arr.size and not np.isin(arr, (0, 1)).all():
        raise UsageError(f"{name} must hold per-image correctness (bool or 0/1), e.g. pred == labels")
    return arr.astype(np.int8)


def _bootstrap(values: np.ndarray, labels, *, metric: str, n_boot: int, seed: int, ci: float,
               paired: bool) -> BootstrapResult:
    if metric not in _CLASSIFICATION_METRICS + ITEM_METRICS:
        raise UsageError(f"bootstrap metric must be one of {_CLASSIFICATION_METRICS + ITEM_METRICS}; got {metric!r}")
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. 10000")
    if not 0.0 < ci < 1.0:
        raise UsageError(f"ci must be a confidence level in (0, 1); got {ci}. Use e.g. 0.95")
    n = values.size
    if n == 0:
        raise UsageError("cannot bootstrap over zero test images; the results hold no saved predictions")
    n_boot = int(n_boot)
    per_class = metric == "mean_per_class_acc"
    if per_class:
        if labels is None:
            raise UsageError("metric 'mean_per_class_acc' needs labels=; pass the true class of every test image")
        labels = np.asarray(labels)
        if labels.shape != values.shape:
            raise UsageError(f"labels must have one entry per test image ({n}); got shape {labels.shape}")
    else:
        labels = np.zeros(n, dtype=np.int64)  # one class: the statistic is the plain mean

    # Kinds of image: (class, value). Sorting by class keeps each class's kinds contiguous for reduceat. Values
    # are 0/1 correctness, their paired differences, or seed means of them: few distinct kinds per class.
    _, class_index = np.unique(labels, return_inverse=True)
    kinds, kind_counts = np.unique(np.stack([class_index.astype(np.float64), values.astype(np.float64)]), axis=1,
                                   return_counts=True)
    kind_class, kind_value = kinds[0].astype(np.int64), kinds[1]
    class_starts = np.flatnonzero(np.r_[True, kind_class[1:] != kind_class[:-1]])
    shares = kind_counts / n

    def statistic(counts: np.ndarray) -> np.ndarray:
        # counts: [B, K] draws per kind -> metric per resample [B]
        sums = counts @ kind_value
        if not per_class:
            return sums / n
        class_n = np.add.reduceat(counts, class_starts, axis=1)
        class_sum = np.add.reduceat(counts * kind_value, class_starts, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = class_sum / class_n  # NaN for a class the resample did not draw
        present = class_n > 0
        return np.where(present, recall, 0.0).sum(axis=1) / present.sum(axis=1)

    estimate = float(statistic(kind_counts[None, :])[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // len(shares))
    samples = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        samples[start:stop] = statistic(rng.multinomial(n, shares, size=stop - start))
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return BootstrapResult(
        estimate=estimate, low=float(low), high=float(high), ci=float(ci), n=int(n), n_boot=n_boot,
        metric=metric, std_error=float(samples.std(ddof=1)) if n_boot > 1 else 0.0,
        p_le_zero=float(np.mean(samples <= 0)) if paired else float("nan"), paired=paired, samples=samples,
    )


@dataclass
class PairedPredictions:
    """Two jobs' test predictions matched by image id: shared labels and per-image top-1 correctness.

    ``correct_a``/``correct_b`` are None when the jobs cannot be paired (no shared id, or different labels for
    the same ids); ``note`` then says why, and otherwise says when only part of the test images are shared.
    """

    labels: np.ndarray | None
    correct_a: np.ndarray | None
    correct_b: np.ndarray | None
    note: str = ""


@dataclass
class Aligned:
    """Several results matched on the test image ids they all scored.

    Attributes
    ----------
    ids, labels : numpy.ndarray, [N]
        The shared image ids (sorted) and their labels.
    values : numpy.ndarray, [N, M]
        Per-image value of each result (hits: 1 when the image counts as correct for the metric).
    note : str
        Says when only part of the images are shared; empty otherwise.
    """

    ids: np.ndarray
    labels: np.ndarray
    values: np.ndarray
    note: str = ""


def align_by_id(results: list[tuple], *, what: str = "results") -> Aligned | str:
    """Match ``(ids, labels, values)`` of several results on the image ids all of them scored.

    Returns an :class:`Aligned`, or a string saying why the results cannot be paired (no shared id, duplicate
    ids, or different labels for the same ids).
    """
    if not results:
        return f"no {what} to pair"
    for ids, _, _ in results:
        if len(np.unique(ids)) != len(ids):
            return f"one of the {what} has duplicate test image ids, so images cannot be paired by id"
    common = results[0][0]
    for ids, _, _ in results[1:]:
        common = np.intersect1d(common, ids, assume_unique=True)
    if len(common) == 0:
        return f"the {what} share no test image ids"
    labels, columns = None, []
    for ids, lab, val in results:
        _, _, idx = np.intersect1d(common, ids, assume_unique=True, return_indices=True)
        if labels is None:
            labels = np.asarray(lab)[idx]
        elif not np.array_equal(labels, np.asarray(lab)[idx]):
            return f"the {what} disagree on test labels"
        columns.append(np.asarray(val, dtype=np.float64)[idx])
    largest = max(len(r[0]) for r in results)
    note = f"paired on the {len(common)} test images all {what} scored" if len(common) < largest else ""
    return Aligned(ids=np.sort(common), labels=labels, values=np.stack(columns, axis=1), note=note)


def pair_by_id(a: tuple, b: tuple) -> PairedPredictions:
    """Match ``(ids, labels, pred)`` of two jobs on the test image ids both scored."""
    (ids_a, labels_a, pred_a), (ids_b, labels_b, pred_b) = a, b
    aligned = align_by_id([(ids_a, labels_a, pred_a == labels_a), (ids_b, labels_b, pred_b == labels_b)],
                          what="two results")
    if isinstance(aligned, str):
        return PairedPredictions(None, None, None, note=aligned)
    return PairedPredictions(aligned.labels, aligned.values[:, 0].astype(bool), aligned.values[:, 1].astype(bool),
                             aligned.note)


def job_predictions(file) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, labels, top-1 predictions) of a job's saved test predictions, or None without them."""
    art = _artifacts(file)
    return None if art is None else (art["ids"], art["labels"], art["pred"])


def _artifacts(file) -> dict | None:
    from ..results import load_artifacts

    try:
        return load_artifacts(file)
    except (OSError, KeyError, ValueError):
        return None


def job_hits(file, metric: str = "top1") -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ids, labels, hits) of one job: ``hits`` is 1 where the image counts as correct for ``metric``.

    ``top1``/``accuracy``/``mean_per_class_acc``: the top-1 prediction is the label; ``top5``: the label is among
    the five highest scores (the saved ``top5`` columns). Returns None when the job saved no predictions.

    Raises
    ------
    UsageError
        For a metric whose per-image values are not saved (the bootstrap cannot recompute it).
    """
    if metric not in _CLASSIFICATION_METRICS + ITEM_METRICS:
        raise UsageError(f"cannot bootstrap metric {metric!r} from saved predictions; use one of "
                         f"{', '.join(_CLASSIFICATION_METRICS + ITEM_METRICS)}")
    art = _artifacts(file)
    if art is None:
        return None
    labels = art["labels"]
    if f"item/{metric}" in art:  # saved per-item values (face and regression tasks, cross-validated jobs)
        return art["ids"], labels, art[f"item/{metric}"].astype(np.float64)
    if metric in ITEM_METRICS:
        return None
    if metric == "top5":
        if "top5" not in art:
            raise UsageError(f"{file} saved no top-5 predictions; use metric='top1'")
        hits = (art["top5"] == labels[:, None]).any(axis=1)
    else:
        hits = art["pred"] == labels
    return art["ids"], labels, hits.astype(np.float64)


def seed_mean_hits(files, metric: str = "top1") -> Aligned | str:
    """Per-image hits averaged over the seeds (jobs) of one protocol, on the images every seed scored.

    ``files`` is one job file or a list of them. Returns an :class:`Aligned` with one column (the seed mean),
    or a string saying why not (no saved predictions, no shared images).
    """
    files = [files] if isinstance(files, (str, bytes)) or not hasattr(files, "__iter__") else list(files)
    per_seed = []
    for f in files:
        h = job_hits(f, metric)
        if h is None:
            return f"no saved predictions for {_name(f)}"
        per_seed.append(h)
    aligned = align_by_id(per_seed, what="seeds")
    if isinstance(aligned, str):
        return aligned
    return Aligned(aligned.ids, aligned.labels, aligned.values.mean(axis=1, keepdims=True), aligned.note)


def _name(file) -> str:
    from pathlib import Path

    return Path(str(file)).with_suffix("").name


def compare_jobs(file_a, file_b, *, metric: str = "top1", n_boot: int = 10_000, seed: int = 0,
                 ci: float = 0.95) -> BootstrapResult | None:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two jobs (their parquet or ``.npz`` paths).

    ``file_a``/``file_b`` may each be a list of job files: the seeds of one protocol, whose per-image hits are
    averaged (the estimate is then the difference of the seed means). Predictions are paired by test image id.
    ``metric`` is top1, top5 (from the saved top-5 columns) or mean_per_class_acc. Returns None when either job
    saved no predictions or the two cannot be paired.
    """
    if metric in DENSE_METRICS:
        return _dense_bootstrap([file_a, file_b], metric, n_boot=n_boot, seed=seed, ci=ci)
    a, b = seed_mean_hits(file_a, metric), seed_mean_hits(file_b, metric)
    if isinstance(a, str) or isinstance(b, str):
        return None
    pair = align_by_id([(a.ids, a.labels, a.values[:, 0]), (b.ids, b.labels, b.values[:, 0])], what="two results")
    if isinstance(pair, str):
        return None
    return _bootstrap(pair.values[:, 0] - pair.values[:, 1], pair.labels, metric=metric, n_boot=n_boot, seed=seed,
                      ci=ci, paired=True)


def job_ci(file, *, metric: str = "top1", n_boot: int = 10_000, seed: int = 0,
           ci: float = 0.95) -> BootstrapResult | None:
    """Bootstrap interval of one job's test ``metric`` from its saved predictions (None without them).

    ``file`` may be a list of job files (the seeds of one protocol): the interval is then for their mean.
    """
    if metric in DENSE_METRICS:
        return _dense_bootstrap([file], metric, n_boot=n_boot, seed=seed, ci=ci)
    a = seed_mean_hits(file, metric)
    if isinstance(a, str):
        return None
    return _bootstrap(a.values[:, 0], a.labels, metric=metric, n_boot=n_boot, seed=seed, ci=ci, paired=False)


def job_dense_stats(file) -> tuple[np.ndarray, str, dict[str, np.ndarray]] | None:
    """(ids, task, per-image statistics) of a dense job's test images (:mod:`probe.dense`), or None without them."""
    art = _artifacts(file)
    if art is None or "task" not in art:
        return None
    stats = {k.split("/", 1)[1]: v for k, v in art.items() if k.startswith("stat/")}
    return (art["ids"], str(art["task"]), stats) if stats else None


def job_preview(file) -> dict[str, np.ndarray] | None:
    """The few test images a dense job saved with their targets and its predictions (``ids``, ``image``,
    ``target``, ``pred``; see :mod:`probe._dense_sweep`), or None without them."""
    art = _artifacts(file)
    if art is None or "preview/ids" not in art:
        return None
    return {k.split("/", 1)[1]: v for k, v in art.items() if k.startswith("preview/")} | {
        "classes": art.get("classes", np.asarray([], dtype=str))}


def dense_seed_stats(files, metric: str = "miou") -> tuple[np.ndarray, str, list[dict[str, np.ndarray]]] | str:
    """The per-image statistics of each seed (job) of one dense protocol, on the images every seed scored, in
    one order: (ids, task, [stats per seed]); or a string saying why not (UsageError naming ``metric`` for a
    job of another task)."""
    files = [files] if isinstance(files, (str, bytes)) or not hasattr(files, "__iter__") else list(files)
    loaded = []
    for f in files:
        got = job_dense_stats(f)
        if got is None:
            if _artifacts(f) is not None:  # predictions of another task: nothing to resample for a dense metric
                raise UsageError(f"cannot bootstrap metric {metric!r} from {_name(f)}: it saved no per-image "
                                 "dense statistics (not a segmentation or depth job)")
            return f"no saved per-image statistics for {_name(f)}"
        loaded.append(got)
    ids = [str(i) for i in loaded[0][0]]
    common = set(ids).intersection(*({str(i) for i in got[0]} for got in loaded[1:]))
    ids = [i for i in ids if i in common]
    if not ids:
        return "the seeds share no test image"
    per_seed = []
    for got_ids, _, stats in loaded:
        where = {str(i): k for k, i in enumerate(got_ids)}
        pick = np.asarray([where[i] for i in ids])
        per_seed.append({k: np.asarray(v)[pick] for k, v in stats.items()})
    return np.asarray(ids), loaded[0][1], per_seed


def _dense_bootstrap(sides: list, metric: str, *, n_boot: int, seed: int, ci: float) -> BootstrapResult | None:
    """Bootstrap of a dense metric (one side) or of a paired difference a - b (two sides), resampling test
    images: every resample draws image counts once and recomputes each seed's metric from its per-image
    statistics (:func:`probe.dense.resampled_metric`); a side's value is its seed mean."""
    from ..dense import resampled_metric

    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. 10000")
    if not 0.0 < ci < 1.0:
        raise UsageError(f"ci must be a confidence level in (0, 1); got {ci}. Use e.g. 0.95")
    got = [dense_seed_stats(files, metric) for files in sides]
    if any(isinstance(g, str) for g in got):
        return None
    ids = [str(i) for i in got[0][0]]
    for g in got[1:]:
        ids = [i for i in ids if i in {str(j) for j in g[0]}]
    if not ids:
        return None
    aligned = []
    for g_ids, task, per_seed in got:
        where = {str(i): k for k, i in enumerate(g_ids)}
        pick = np.asarray([where[i] for i in ids])
        aligned.append((task, [{k: v[pick] for k, v in st.items()} for st in per_seed]))
    n = len(ids)

    def statistic(counts):
        values = [np.mean([resampled_metric(task, metric, st, counts) for st in per_seed], axis=0)
                  for task, per_seed in aligned]
        return values[0] - values[1] if len(values) == 2 else values[0]

    estimate = float(statistic(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // max(n, 1))
    samples = np.empty(int(n_boot), dtype=np.float64)
    for start in range(0, int(n_boot), chunk):
        stop = min(int(n_boot), start + chunk)
        samples[start:stop] = statistic(rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start))
    samples = samples[np.isfinite(samples)] if not np.isfinite(samples).all() else samples
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    paired = len(sides) == 2
    return BootstrapResult(estimate=estimate, low=float(low), high=float(high), ci=float(ci), n=n,
                           n_boot=int(n_boot), metric=metric,
                           std_error=float(samples.std(ddof=1)) if len(samples) > 1 else 0.0,
                           p_le_zero=float(np.mean(samples <= 0)) if paired else float("nan"), paired=paired,
                           samples=samples)
