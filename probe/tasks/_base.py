"""The task protocol: what a target asks, its metrics and how they are computed from per-item statistics.

A task is one module under :mod:`probe.tasks` that defines a :class:`Task` subclass and registers an instance
(:func:`probe.tasks.register`). The sweep engine, the study, the analysis layer and the report ask the registry
(:func:`probe.tasks.get`) and never import a task module or test a task by name.

Metrics follow torchmetrics' split of state and value: a job saves *per-item statistics* (one row per test item:
a hit, an absolute error, a squared error, per-class intersection and union counts) beside its parquet file, and a
:class:`Metric` turns count-weighted sums of those rows into the number. One definition therefore serves the
result row (every item counted once), a cross-validated summary (the held-out items of every fold pooled) and a
bootstrap interval (items, or the groups they cluster in, drawn with repetition).

No torch here; numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

#: Units of metric columns: ``fraction`` prints as a percentage; ``target`` is the target's own unit (metres for
#: depth, years for age); ``ratio`` and ``log10`` are unitless numbers.
UNITS = ("fraction", "target", "ratio", "log10")

#: Key of the per-item group array in a job's ``.npz`` (a person, a scene): bootstrap intervals resample groups.
GROUP_KEY = "group"


def _sums(stats: Mapping[str, Any], keys: tuple[str, ...], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Count-weighted sums of per-item statistics: ``counts`` [B, N] -> each key [B, ...], plus ``n`` [B]."""
    out = {}
    for k in keys:
        x = np.asarray(stats[k], dtype=np.float64)
        out[k] = (counts @ x.reshape(len(x), -1)).reshape(counts.shape[0], *x.shape[1:])
    out["n"] = counts.sum(axis=1)
    return out


@dataclass(frozen=True)
class Metric:
    """One metric column of a task.

    Attributes
    ----------
    name : str
        The results column (``top1``, ``rmse``, ``miou`` ...).
    higher_is_better : bool
        Direction: selection and "best" flip their sign when False.
    unit : str
        One of :data:`UNITS`.
    label : str
        Table heading (``top-1``, ``RMSE``).
    stats : tuple of str
        The per-item statistic arrays (``.npz`` keys, first axis = items) the metric is computed from; empty when
        it cannot be (``roc_auc``: no bootstrap interval and no pooled summary from items).
    reduce : callable, optional
        ``reduce(sums) -> [B]`` from the count-weighted sums of ``stats`` (each [B, ...]) and ``sums["n"]`` [B]
        (how many items each resample holds). Default: the mean of the single statistic.
    resample : callable, optional
        ``resample(stats, counts) -> [B]`` for a metric that is not a function of sums (a mean over images of a
        per-image ratio); used instead of ``reduce``.
    """

    name: str
    higher_is_better: bool = True
    unit: str = "fraction"
    label: str = ""
    stats: tuple[str, ...] = ()
    reduce: Callable[[dict[str, np.ndarray]], np.ndarray] | None = field(default=None, compare=False)
    resample: Callable[[Mapping[str, Any], np.ndarray], np.ndarray] | None = field(default=None, compare=False)

    @property
    def from_items(self) -> bool:
        """True when the metric can be computed from saved per-item statistics (pooled and bootstrapped)."""
        return bool(self.stats)

    def resampled(self, stats: Mapping[str, Any], counts) -> np.ndarray:
        """The metric of each resample: ``counts`` [B, N] says how often each item is drawn (linear in counts).

        A pooled value is the case of one resample drawing every item once (:meth:`value`).
        """
        if not self.stats:
            raise ValueError(f"metric {self.name!r} is not computed from per-item statistics")
        counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        if self.resample is not None:
            return np.asarray(self.resample(stats, counts), dtype=np.float64)
        sums = _sums(stats, self.stats, counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.reduce is None:
                return sums[self.stats[0]].reshape(len(counts), -1)[:, 0] / sums["n"]
            return np.asarray(self.reduce(sums), dtype=np.float64)

    def value(self, stats: Mapping[str, Any]) -> float:
        """The metric over every item once (the pooled value)."""
        n = len(np.asarray(stats[self.stats[0]]))
        return float(self.resampled(stats, np.ones((1, n)))[0])


def mean_metric(name: str, label: str, *, higher_is_better: bool = True, unit: str = "fraction",
                stat: str | None = None) -> Metric:
    """A metric that is the mean over items of one per-item value (``item/<name>`` unless ``stat`` is given)."""
    return Metric(name, higher_is_better, unit, label, (stat or f"item/{name}",))


def root_mean_metric(name: str, label: str, *, stat: str, unit: str = "target") -> Metric:
    """A root-mean-square metric from a per-item squared error (lower is better)."""
    return Metric(name, False, unit, label, (stat,), reduce=lambda s: np.sqrt(s[stat] / s["n"]))


def scalar_metric(name: str, label: str, *, higher_is_better: bool = True, unit: str = "fraction") -> Metric:
    """A metric computed on the whole evaluation set only (no per-item statistics: no interval from items)."""
    return Metric(name, higher_is_better, unit, label, ())


class Task:
    """The protocol every task implements (class attributes describe it; methods are the engine's hooks).

    Subclasses set the class attributes and register one instance with :func:`probe.tasks.register`.

    Attributes
    ----------
    name : str
        The task's name (``--task NAME``, the ``task`` column).
    metrics : tuple of Metric
        Its metric columns; the first is the headline and the default ``select_metric``.
    select_metrics : tuple of str
        The metrics a selection rule may use for its learned probes (default: every metric).
    probes : tuple of str
        Probes the task accepts (``--probes``).
    default_probes : tuple of str
        Probes run when none are named.
    default_taps : tuple of str
        Taps probed when none are named.
    options : frozenset of str
        Evaluation options the task accepts: ``cv``, ``cv_group``, ``pairs``, ``whiten``, ``test_fraction``,
        ``shots``. Others are refused with one line.
    learns_classes : bool
        True when probes learn the dataset's classes: a fold grouping that leaves a test label without a
        training example is refused.
    dense : bool
        Per-pixel targets on the ``patch`` tap.
    """

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    select_metrics: ClassVar[tuple[str, ...]] = ()
    probes: ClassVar[tuple[str, ...]] = ()
    default_probes: ClassVar[tuple[str, ...]] = ()
    default_taps: ClassVar[tuple[str, ...]] = ("pooled",)
    options: ClassVar[frozenset[str]] = frozenset()
    learns_classes: ClassVar[bool] = False
    dense: ClassVar[bool] = False

    # ------------------------------------------------------------------------------------------ description

    @property
    def headline(self) -> str:
        """The task's headline metric (its first)."""
        return self.metrics[0].name

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` called ``name``; KeyError naming the task's metrics otherwise."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"task {self.name!r} has no metric {name!r}; its metrics are {', '.join(self.metric_names)}")

    def selectable(self) -> tuple[str, ...]:
        """Metrics a selection rule may use (``--select-metric``)."""
        return self.select_metrics or self.metric_names

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def __init__(self) -> None:
        if not type(self).title:
            type(self).title = self.name.capitalize()

    # ------------------------------------------------------------------------------------------ engine hooks
    # (the sweep engine's calls: reading the target, checking evaluation options, scoring a job)

    # ------------------------------------------------------------------------------------------ report hooks
    # (the analysis layer's and the report's calls: a job's per-item statistics, what its groups are, the
    # task's section of the report)

    #: The task's heading in the report, and the part of the report it sits in (tasks of one part share its
    #: heading: "Faces and continuous targets", "Dense transfer: segmentation and depth").
    title: ClassVar[str] = ""
    report_group: ClassVar[str] = "Other tasks"
    #: How a metric of unit ``target`` prints in table headings (``m`` for depth).
    target_unit: ClassVar[str] = "target units"

    #: What the per-item groups of this task's datasets are, for "interval over <noun>" (``group`` in a job's
    #: ``.npz``; a ``group_name`` array there overrides it).
    group_noun: ClassVar[str] = "groups"
    #: What one item of the task's per-item statistics is, for "interval over <noun>" without groups.
    item_noun: ClassVar[str] = "images"

    def item_stats(self, artifacts: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The per-item statistics of one job from its saved arrays (:func:`probe.results.load_artifacts`).

        Every :attr:`Metric.stats` key of the task present in ``artifacts`` (``item/<metric>``, ``stat/<k>``) and
        ``labels``; a task whose jobs save something else (classification: predictions) derives them here.
        Arrays have one row per item in the order of ``artifacts["ids"]``.
        """
        keys = {k for m in self.metrics for k in m.stats} | {"labels"}
        return {k: np.asarray(artifacts[k]) for k in keys if k in artifacts}

    def legacy_evaluation(self, params: Mapping[str, Any], protocol: str | None) -> str:
        """The ``evaluation`` of a row written before that column existed (its ``evaluation`` is null).

        ``params`` are the row's parsed params: a cross-validated job's summary row records ``folds`` and
        ``interval_over`` (``people`` when the folds were grouped by person), read as ``cv<k>[ by subject]``;
        everything else was scored on the dataset's splits.
        """
        folds = params.get("folds")
        if isinstance(folds, int) and not isinstance(folds, bool):
            return evaluation_label(cv=folds, cv_group="subject" if params.get("interval_over") == "people" else None)
        return "splits"

    def report_figures(self, report, dataset: str, evaluation: str, shown: list) -> list[str]:
        """Markdown lines of the task's figures under its generic tables (none by default).

        ``shown`` lists ``(group name, rows)`` of the tables just written for ``dataset`` under ``evaluation``
        (each row an :func:`probe.analysis.aggregate_seeds` record with its ``files``).
        """
        return []

    def report_section(self, report, jobs) -> list[str]:
        """Markdown lines of this task's part of the report (empty to leave it out).

        Parameters
        ----------
        report : probe._report.Report
            The report being written: its building blocks (``report.scored_tables(task, jobs)``,
            ``report.frozen_vs_finetune(...)``, ``report.families(...)``, ...), the analysis layer as
            ``report.a``, polars as ``report.pl``, ``report.notes`` and ``report.save(fig, name)``. A task module
            imports neither the report nor the analysis layer: it composes what ``report`` offers.
        jobs : polars.DataFrame
            This task's rows of :func:`probe.analysis.job_table` (every dataset and evaluation scheme).

        The default is the generic section every task gets: per dataset and evaluation scheme, one table per
        group of rows (fixed methods per tap, learned probes best by val, fine-tuning best by val), each metric
        with its bootstrap interval and the paired difference to the val-chosen best, and the families.
        """
        return report.scored_tables(self, jobs)


def evaluation_label(*, cv: int | None = None, cv_group: str | None = None, retrieval: str | None = None,
                     pairs: str | None = None, pair_folds: int | None = None, whiten: int | None = None,
                     test_fraction: float = 0.0) -> str:
    """The readable ``evaluation`` column of a row: how its numbers were scored (never selected across).

    - dataset splits (train, val own or carved, test): ``splits``; a carved test split: ``test carve 0.2``
    - cross-validation: ``cv5``, ``cv5 by subject`` (folds grouped by person)
    - retrieval: ``loo`` (leave one image out), ``gallery/query``
    - verification pairs: ``pairs file`` or ``pairs drawn 10 folds``; PCA whitening adds `` whiten 128``
    """
    if pairs is not None:
        text = "pairs file" if pairs == "file" else f"pairs drawn {int(pair_folds or 0)} folds"
        return text + (f" whiten {int(whiten)}" if whiten is not None else "")
    if retrieval is not None:
        return {"leave-one-image-out": "loo", "gallery-query": "gallery/query"}.get(retrieval, retrieval)
    if cv is not None:
        return f"cv{int(cv)}" + (f" by {cv_group}" if cv_group else "")
    if test_fraction:
        return f"test carve {float(test_fraction):g}"
    return "splits"
