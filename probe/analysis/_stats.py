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

from .. import tasks as _tasks
from .._errors import UsageError
from ._items import (JobItems, _artifacts, _files, _name, _task_for, job_dense_stats, job_items,  # noqa: F401
                     job_predictions, job_preview)

#: Metric names understood by :func:`bootstrap_ci`/:func:`paired_bootstrap` on arrays you pass. "top1", "top5"
#: and "accuracy" all mean "mean of the per-image correctness you pass" (pass top-5 hits for top5);
#: "mean_per_class_acc" averages per-class recall.
_CLASSIFICATION_METRICS = ("top1", "top5", "accuracy", "mean_per_class_acc")
#: Metrics of the built-in tasks that are means of per-item values (any finite numbers) for those two functions.
ITEM_METRICS = ("rank1", "rank5", "map", "verif_acc", "mae", "cs5")
#: Metrics of the built-in dense tasks and every metric of a built-in task computed from per-item statistics
#: (kept for callers; the analysis layer asks the task registry instead: ``Metric.from_items``).
DENSE_METRICS = tuple(dict.fromkeys(m.name for t in _tasks.all_tasks() if t.dense for m in t.metrics))
BOOTSTRAP_METRICS = tuple(dict.fromkeys(
    _CLASSIFICATION_METRICS + tuple(m.name for t in _tasks.all_tasks() for m in t.metrics if m.from_items)))

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
    #: What one draw of the resampling is: ``images`` (items), or the groups they cluster in (``people``,
    #: ``scenes``), of which there are ``n_groups``.
    over: str = "images"
    n_groups: int = 0

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
    return _bootstrap_sides(_sides_from_arrays([a, b], labels, metric), metric=metric, n_boot=n_boot, seed=seed,
                            ci=ci)


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
    return _bootstrap_sides(_sides_from_arrays([values], labels, metric), metric=metric, n_boot=n_boot, seed=seed,
                            ci=ci)


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


def _array_metric(metric: str):
    """The :class:`probe.tasks.Metric` behind the array functions: a mean of the values, or classification's mean
    per-class accuracy (per-class means of the values, averaged over the classes a resample drew)."""
    if metric == "mean_per_class_acc":
        return _tasks.get("classification").metric("mean_per_class_acc")
    return _tasks.mean_metric(metric, metric, stat="item/top1")


def _sides_from_arrays(sides: list[np.ndarray], labels, metric: str) -> list:
    if metric not in _CLASSIFICATION_METRICS + ITEM_METRICS:
        raise UsageError(f"bootstrap metric must be one of {_CLASSIFICATION_METRICS + ITEM_METRICS}; got {metric!r}")
    n = sides[0].size
    if n == 0:
        raise UsageError("cannot bootstrap over zero test images; the results hold no saved predictions")
    if metric == "mean_per_class_acc":
        if labels is None:
            raise UsageError("metric 'mean_per_class_acc' needs labels=; pass the true class of every test image")
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise UsageError(f"labels must have one entry per test image ({n}); got shape {labels.shape}")
    m = _array_metric(metric)
    out = []
    for values in sides:
        st = {"item/top1": np.asarray(values, dtype=np.float64)}
        if labels is not None and metric == "mean_per_class_acc":
            st["labels"] = labels
        out.append((m, [st]))
    return out


def _bootstrap_sides(sides: list, *, metric: str, n_boot: int, seed: int, ci: float, group_index=None,
                     over: str = "images", note: str = "", ids=None) -> BootstrapResult:
    """The one resampling loop: ``sides`` are ``(Metric, [per-seed stats])`` on the same items in one order."""
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. 10000")
    if not 0.0 < ci < 1.0:
        raise UsageError(f"ci must be a confidence level in (0, 1); got {ci}. Use e.g. 0.95")
    n = len(next(iter(sides[0][1][0].values())))
    r = Resampling.build(np.arange(n).astype(str) if ids is None else ids, sides, group_index=group_index,
                         over=over, metric=metric, note=note)
    return _run(r, n_boot=n_boot, seed=seed, ci=ci)


def _run(r: "Resampling", *, n_boot: int, seed: int, ci: float) -> BootstrapResult:
    """Draw ``n_boot`` resamples of ``r`` (one result, or the paired difference of two) and summarise them."""
    metric = r.metric
    n = r.n

    def statistic(v):
        return v[..., 0] - v[..., 1] if v.shape[-1] == 2 else v[..., 0]

    full, values = resampled_values(r, n_boot=n_boot, seed=seed)
    estimate = float(statistic(full))
    n_boot = int(n_boot)
    samples = statistic(values)
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        raise UsageError(f"no bootstrap resample gave a finite {metric}")
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    paired = len(r._sides) == 2
    return BootstrapResult(estimate=estimate, low=float(low), high=float(high), ci=float(ci), n=int(n),
                           n_boot=n_boot, metric=metric,
                           std_error=float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
                           p_le_zero=float(np.mean(finite <= 0)) if paired else float("nan"), paired=paired,
                           samples=finite, over=r.over, n_groups=r.n_groups)


def resampled_values(r: "Resampling", *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every side's metric on the full sample [M] and on ``n_boot`` resamples [n_boot, M] of ``r``: the draws of
    the one bootstrap loop (:func:`resample_interval` summarises them for one result or a paired difference; a
    statistic of several results, such as effective robustness against a line fitted through them, is computed
    from them per resample)."""
    rng = np.random.default_rng(seed)
    n_boot = int(n_boot)
    values = np.empty((n_boot, len(r._sides)), dtype=np.float64)
    for start in range(0, n_boot, r.chunk()):
        stop = min(n_boot, start + r.chunk())
        values[start:stop] = r.values(r.draw(rng, stop - start))
    return r.values(r.full_counts())[0], values


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


def job_hits(file, metric: str = "top1", *, task: str | None = None):
    """(ids, labels, per-item values) of one job for a metric that is the mean of one per-item value (hits for
    top1/top5, absolute errors for mae ...); None when the job saved no predictions.

    Raises
    ------
    UsageError
        For a metric the job's task does not compute as a mean of one per-item value.
    """
    items = job_items(file, metric=metric, task=task)
    if items is None:
        if _artifacts(file) is not None:
            raise UsageError(f"cannot bootstrap metric {metric!r} from {_name(file)}: it saved no per-item "
                             "statistics for it")
        return None
    key = f"item/{metric}"
    if key not in items.stats:
        raise UsageError(f"cannot bootstrap metric {metric!r} from {_name(file)}: it saved no per-item values "
                         f"({key})")
    labels = items.stats.get("labels", np.zeros(len(items.ids), dtype=np.int64))
    return items.ids, labels, np.asarray(items.stats[key], dtype=np.float64)


def seed_mean_hits(files, metric: str = "top1", *, task: str | None = None) -> Aligned | str:
    """Per-item values (:func:`job_hits`) averaged over the seeds (jobs) of one protocol, on the items every
    seed scored: an :class:`Aligned` with one column, or a string saying why not."""
    per_seed = []
    for f in _files(files):
        h = job_hits(f, metric, task=task)
        if h is None:
            return f"no saved predictions for {_name(f)}"
        per_seed.append(h)
    aligned = align_by_id(per_seed, what="seeds")
    if isinstance(aligned, str):
        return aligned
    return Aligned(aligned.ids, aligned.labels, aligned.values.mean(axis=1, keepdims=True), aligned.note)


@dataclass
class Resampling:
    """Several results (each the seeds of one protocol) on the items all of them scored, ready to resample.

    ``draw(rng, size)`` gives counts [size, K]: items drawn with repetition, or, when the items cluster in groups
    (people, scenes), groups drawn with repetition and each item counted as often as its group (a cluster
    bootstrap). An item of two groups (group index [N, 2]: a verification pair of two people) counts as often as
    its two people were drawn multiplied (a pair of one person: as often as the person), so a pair is in a
    resample when both its people are (the dyadic, "pigeonhole" bootstrap). ``values(counts)`` gives each
    result's metric per resample [B, M] (seed means), through :meth:`probe.tasks.Metric.resampled` (linear in
    the counts).

    Without groups, items whose statistics are identical in every result are one *kind* (a top-1 hit of the
    same class, say): drawing n items with repetition makes the kinds' counts multinomial with their shares as
    probabilities, so the counts are drawn over the K kinds instead of the n items. Same distribution, a few
    kinds instead of thousands of items: 10,000 resamples of 10,000 images take well under a second.
    """

    ids: np.ndarray
    metric: str
    higher_is_better: bool
    over: str
    n_groups: int
    note: str
    _sides: list = field(repr=False, default_factory=list)  # [(Metric, [stats per seed, one row per kind])]
    _group_index: np.ndarray | None = field(repr=False, default=None)
    _kind_counts: np.ndarray | None = field(repr=False, default=None)

    @classmethod
    def build(cls, ids, sides: list, *, group_index=None, over: str = "images", metric: str = "",
              note: str = "") -> "Resampling":
        """From ``sides`` = ``[(Metric, [per-seed stats on the same N items])]`` and an optional group index [N]."""
        ids = np.asarray(ids)
        n = len(ids)
        reduced = [(m, [{k: np.asarray(st[k]) for k in m.stats} for st in per_seed]) for m, per_seed in sides]
        kind_counts, n_groups = None, 0
        if group_index is not None:
            n_groups = int(np.max(group_index)) + 1 if n else 0
        else:
            cols = [np.asarray(st[k], dtype=np.float64).reshape(n, -1) for _, per_seed in reduced
                    for st in per_seed for k in sorted(st)]
            table = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0))
            _, first, kind_counts = np.unique(table, axis=0, return_index=True, return_counts=True)
            reduced = [(m, [{k: v[first] for k, v in st.items()} for st in per_seed]) for m, per_seed in reduced]
        return cls(ids=ids, metric=metric, higher_is_better=reduced[0][0].higher_is_better,
                   over=over, n_groups=n_groups, note=note,
                   _sides=reduced, _group_index=None if group_index is None else np.asarray(group_index),
                   _kind_counts=kind_counts)

    @property
    def n(self) -> int:
        return len(self.ids)

    def full_counts(self) -> np.ndarray:
        """The counts of the full sample (every item once): [1, K]."""
        if self._kind_counts is not None:
            return self._kind_counts[None, :].astype(np.float64)
        return np.ones((1, self.n))

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self._kind_counts is not None:
            return rng.multinomial(self.n, self._kind_counts / self.n, size=size).astype(np.float64)
        g = self.n_groups
        per_group = rng.multinomial(g, np.full(g, 1.0 / g), size=size).astype(np.float64)
        gi = self._group_index
        if gi.ndim == 1:
            return per_group[:, gi]
        # an item of two groups (a verification pair of two people): counted once for each draw of both, c_a x c_b
        # (a pair of one person: c_a); kept only when both are drawn
        first, second = gi[:, 0], gi[:, 1]
        return per_group[:, first] * np.where(first == second, 1.0, per_group[:, second])

    def values(self, counts: np.ndarray) -> np.ndarray:
        counts = np.atleast_2d(counts)
        out = np.empty((counts.shape[0], len(self._sides)))
        for j, (metric, per_seed) in enumerate(self._sides):
            with np.errstate(invalid="ignore", divide="ignore"):
                out[:, j] = np.mean([metric.resampled(st, counts) for st in per_seed], axis=0)
        return out

    def chunk(self) -> int:
        width = len(self._kind_counts) if self._kind_counts is not None else self.n
        return max(1, _CHUNK_CELLS // max(width * max(1, len(self._sides)), 1))


def resampling(sides: list, metric, *, task: str | None = None, groups: bool = True) -> Resampling | str:
    """Line up several results on the items they all scored, for a bootstrap of ``metric``.

    Parameters
    ----------
    sides : list
        One entry per result: a job file, or a list of job files (the seeds of one protocol, averaged).
    metric : str or sequence of str
        A metric of the jobs' task (:meth:`probe.tasks.Task.metric`), computed from per-item statistics; or one
        metric per side (two metrics of the same jobs paired, e.g. ECE after and before temperature scaling).
    task : str, optional
        The jobs' task (their ``task`` column); found from the saved arrays otherwise.
    groups : bool
        Resample the groups the items cluster in (people, scenes) when the jobs saved them (``group``).

    Returns
    -------
    Resampling or str
        A string says why the results cannot be resampled (no saved statistics, a metric not computed from
        items, no shared item, duplicate ids, disagreeing labels).
    """
    per_side = [metric] * len(sides) if isinstance(metric, str) else list(metric)
    if len(per_side) != len(sides):
        raise UsageError(f"give one metric, or one per side ({len(sides)}); got {len(per_side)}")
    metric = per_side[0] if len(set(per_side)) == 1 else " - ".join(per_side)
    loaded = []
    for files, side_metric in zip(sides, per_side):
        per_seed = []
        for f in _files(files):
            items = job_items(f, metric=side_metric, task=task)
            if items is None:
                return f"no saved predictions for {_name(f)}"
            t = _tasks.get(items.task)
            try:  # the task's metrics and its extra metrics (classification: calibration)
                m = t.metric(side_metric)
            except KeyError:
                return f"{items.task} has no metric {side_metric!r}"
            if not m.from_items:
                return f"{m.label or side_metric} is not computed from per-item statistics (no interval)"
            if any(k not in items.stats for k in m.stats):
                return f"{_name(f)} saved no per-item statistics for {side_metric}"
            if len(np.unique(items.ids)) != len(items.ids):
                return f"{_name(f)} has duplicate test item ids, so items cannot be paired by id"
            per_seed.append((m, items))
        loaded.append(per_seed)
    if not loaded or not loaded[0]:
        return "nothing to resample"
    order = loaded[0][0][1].ids
    common = set(order)
    for per_seed in loaded:
        for _, items in per_seed:
            common &= set(items.ids)
    ids = np.asarray([i for i in order if i in common])
    if not len(ids):
        return "the results share no test item"
    largest = max(len(items.ids) for per_seed in loaded for _, items in per_seed)
    sides_out, labels, group = [], None, None
    item_noun = _tasks.get(loaded[0][0][1].task).item_noun
    noun = item_noun
    for per_seed in loaded:
        stats_per_seed = []
        for m, items in per_seed:
            where = {i: k for k, i in enumerate(items.ids)}
            pick = np.asarray([where[i] for i in ids])
            st = {k: np.asarray(v)[pick] for k, v in items.stats.items()}
            if "labels" in st:
                if labels is None:
                    labels = st["labels"]
                elif not np.array_equal(labels, st["labels"]):
                    return "the results disagree on test labels"
            if group is None and items.group is not None and groups:
                group, noun = items.group[pick], items.group_noun
            stats_per_seed.append(st)
        sides_out.append((per_seed[0][0], stats_per_seed))
    group_index = None
    if group is not None:  # [N], or [N, 2] for items of two groups (pairs of two people)
        group = np.asarray(group).astype(str)
        _, flat = np.unique(group.ravel(), return_inverse=True)
        group_index = flat.reshape(group.shape)
        if group_index.ndim == 1 and int(group_index.max()) + 1 == len(ids):  # every item its own group: an
            group_index, noun = None, item_noun  # ordinary bootstrap over items
    note = f"paired on the {len(ids)} test items all results scored" if len(ids) < largest else ""
    return Resampling.build(ids, sides_out, group_index=group_index, over=noun, metric=metric, note=note)


def resample_interval(sides: list, metric, *, task: str | None = None, n_boot: int = 10_000, seed: int = 0,
                      ci: float = 0.95, groups: bool = True) -> BootstrapResult | str:
    """The one bootstrap of the analysis layer: one result's ``metric`` (one side) or the paired difference
    ``a - b`` (two sides), from the per-item statistics the jobs saved, resampling items or their groups.

    Every resample draws item counts once (:meth:`Resampling.draw`: images, or people/scenes with each item
    counted as often as its group) and recomputes each seed's metric through :meth:`probe.tasks.Metric.resampled`;
    a side's value is its seed mean. ``metric`` may name one metric per side (a paired difference of two metrics
    of the same jobs). Returns a string saying why not when the results cannot be resampled.
    """
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. 10000")
    if not 0.0 < ci < 1.0:
        raise UsageError(f"ci must be a confidence level in (0, 1); got {ci}. Use e.g. 0.95")
    if len(sides) not in (1, 2):
        raise UsageError("resample_interval takes one result or two (a paired difference)")
    r = resampling(sides, metric, task=task, groups=groups)
    if isinstance(r, str):
        return r
    try:
        return _run(r, n_boot=n_boot, seed=seed, ci=ci)
    except UsageError as exc:
        return str(exc)


def _public(result, files, metric: str, task: str | None) -> BootstrapResult | None:
    if not isinstance(result, str):
        return result
    if result.startswith("no saved predictions"):
        for f in files:
            art = _artifacts(f)
            if art is not None and _task_for(art, metric, task) is None:
                raise UsageError(f"cannot bootstrap metric {metric!r} from {_name(f)}: it saved no per-item "
                                 "statistics for it")
    if "saved no per-item statistics for" in result or "has no metric" in result:
        raise UsageError(f"cannot bootstrap metric {metric!r}: {result}")
    return None


def compare_jobs(file_a, file_b, *, metric: str = "top1", task: str | None = None, n_boot: int = 10_000,
                 seed: int = 0, ci: float = 0.95, groups: bool = True) -> BootstrapResult | None:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two jobs (their parquet or ``.npz`` paths).

    ``file_a``/``file_b`` may each be a list of job files: the seeds of one protocol (the estimate is then the
    difference of the seed means). Items are paired by test id; when the jobs saved the group of each item
    (people, scenes) the groups are resampled (``result.over``). Returns None when either job saved no
    predictions or the two cannot be paired (:func:`resample_interval` says why).

    Raises
    ------
    UsageError
        For a metric the jobs' task does not compute from per-item statistics.
    """
    r = resample_interval([file_a, file_b], metric, task=task, n_boot=n_boot, seed=seed, ci=ci, groups=groups)
    return _public(r, _files(file_a) + _files(file_b), metric, task)


def job_ci(file, *, metric: str = "top1", task: str | None = None, n_boot: int = 10_000, seed: int = 0,
           ci: float = 0.95, groups: bool = True) -> BootstrapResult | None:
    """Bootstrap interval of one job's test ``metric`` from its saved per-item statistics (None without them).

    ``file`` may be a list of job files (the seeds of one protocol): the interval is then for their mean.
    """
    r = resample_interval([file], metric, task=task, n_boot=n_boot, seed=seed, ci=ci, groups=groups)
    return _public(r, _files(file), metric, task)
