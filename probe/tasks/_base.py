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
#: One group per item ([N]), or two ([N, 2]: a verification pair of two people, counted as often as both are drawn).
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


@dataclass(frozen=True)
class Request:
    """What a sweep asks of a task (the arguments of :func:`probe.sweep_cached`, checked by the task).

    ``probes``, ``taps`` and ``select_metric`` are None until :meth:`Task.check_request` fills the task's
    defaults in.
    """

    probes: tuple | None = None
    taps: tuple | None = None
    shots: tuple = (0,)
    seeds: tuple = (0,)
    grids: Mapping[str, Any] = field(default_factory=dict)
    select_metric: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    cv: int | None = None
    cv_group: str | None = None
    pairs: Any = None
    whiten: int | None = None
    device: str = "auto"
    family: str | None = None
    eval_on: tuple = ()  # shifted sets' specs (probe._shifted): the selected probe scores each once


@dataclass
class Job:
    """One job of a sweep: one parquet file (and its ``.npz``) under the results directory.

    ``protocol`` is the protocol id (evaluation included), ``evaluation`` the readable scheme of its rows, ``tag``
    the part of the file name that keeps different features and protocols apart; ``context`` the results columns
    every row of the job carries; ``extra`` whatever the task's :meth:`Task.run` needs (an estimator, pairs ...).
    """

    tap: str
    probe: str
    seed: int
    protocol: str
    evaluation: str
    tag: str
    shots: int = 0
    grid: Any = None
    select_metric: str = ""
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    cv: int | None = None
    cv_group: str | None = None
    whiten: int | None = None
    device: str = "auto"
    context: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    #: The shifted sets the job's selected probe is scored on once: ((EvalSet, FeatureData of its test split),
    #: ...) (:mod:`probe._shifted`); a task that accepts ``eval_on`` returns their rows as :meth:`Task.run` says.
    shifted: tuple = ()


#: Evaluation options of a request: (option, the flag that sets it).
_OPTIONS = (("cv", "--cv"), ("cv_group", "--cv-group"), ("pairs", "--pairs"), ("whiten", "--whiten"),
            ("test_fraction", "--test-fraction"), ("shots", "--shots"), ("eval_on", "--eval-on"))


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
        ``shots``, ``eval_on`` (scoring the selected probe on shifted sets, :mod:`probe._shifted`). Others are
        refused with one line.
    learns_classes : bool
        True when probes learn the dataset's classes: a fold grouping that leaves a test label without a
        training example is refused.
    dense : bool
        Per-pixel targets on the ``patch`` tap.
    dataset_probes : bool
        A study runs the task once per dataset, on pooled features, with the probes of the dataset's ``probes``
        key (default: ``default_probes``); otherwise from its ``[[sweeps]]`` tables (probes x taps x shots).
    stratified : bool
        The val carve is stratified by class (:func:`probe.splits.carve_splits`); False for a continuous target.
        Fine-tuning carves with the same setting, so both sides select on the same images.
    extra_metrics : tuple of Metric
        Metrics the task's rows carry beyond those compared everywhere (classification: calibration). Found by
        :meth:`metric` (so the analysis layer's one bootstrap resamples them) and pooled by :meth:`item_metrics`,
        but not in :attr:`metric_names`: never selected on, not in the generic tables; their report section is
        the task's own. Their columns are declared in ``columns``.
    columns : dict
        Results columns of the task's metrics that are not in :data:`probe.results.RESULT_COLUMNS` (name ->
        polars dtype name, e.g. ``{"even_acc": "Float64"}``). :func:`probe.results.make_row` accepts them while
        the task is registered and the parquet files carry them; a reader that scans files of several tasks sees
        them as null elsewhere. A task whose metric is an existing column (``top1``) declares nothing.

    Engine hooks (the sweep engine, :func:`probe.sweep_cached`, calls these and nothing task-specific):

    - :meth:`check_request` the evaluation options, probes, taps and selection metric, with one-line refusals;
    - :meth:`check_source` what the opened dataset must carry;
    - :meth:`target` the target read from the dataset (None: the class labels);
    - :meth:`load` the features (and targets) every job of the sweep reads, loaded once;
    - :meth:`evaluation` the scheme of a job (its readable label and its material for the protocol id);
    - :meth:`plan` the jobs, each with its protocol id;
    - :meth:`run` one job: its rows and per-item arrays (``ids``, ``labels``, ``item/<metric>`` /
      ``stat/<k>``, ``group`` where items cluster in people), which the engine writes.
    """

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()
    extra_metrics: ClassVar[tuple[Metric, ...]] = ()
    select_metrics: ClassVar[tuple[str, ...]] = ()
    probes: ClassVar[tuple[str, ...]] = ()
    default_probes: ClassVar[tuple[str, ...]] = ()
    default_taps: ClassVar[tuple[str, ...]] = ("pooled",)
    options: ClassVar[frozenset[str]] = frozenset()
    learns_classes: ClassVar[bool] = False
    dense: ClassVar[bool] = False
    dataset_probes: ClassVar[bool] = False
    stratified: ClassVar[bool] = True
    columns: ClassVar[dict[str, str]] = {}

    # ------------------------------------------------------------------------------------------ description

    @property
    def headline(self) -> str:
        """The task's headline metric (its first)."""
        return self.metrics[0].name

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    def metric(self, name: str) -> Metric:
        """The :class:`Metric` called ``name`` (one of :attr:`metrics` or :attr:`extra_metrics`); KeyError naming
        the task's metrics otherwise."""
        for m in self.metrics + self.extra_metrics:
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

    def check_request(self, request: Request) -> Request:
        """The request with this task's defaults filled in (probes, taps, selection metric); a one-line
        UsageError for an option the task does not accept or a value it cannot run."""
        from dataclasses import replace

        from .._errors import UsageError

        given = {"cv": request.cv is not None, "cv_group": request.cv_group is not None,
                 "pairs": request.pairs is not None, "whiten": request.whiten is not None,
                 "test_fraction": bool(request.test_fraction), "shots": any(int(k) for k in request.shots),
                 "eval_on": bool(request.eval_on)}
        for option, flag in _OPTIONS:
            if given[option] and option not in self.options:
                raise UsageError(_refusal(self, option, flag))
        if request.cv is not None and int(request.cv) < 2:
            raise UsageError(f"--cv must be at least 2 folds; got {request.cv}")
        if request.cv_group is not None and request.cv is None:
            raise UsageError("--cv-group groups the folds of --cv; give --cv K too (K = number of people for "
                             "leave-one-person-out)")
        if request.cv_group is not None and request.cv_group != "subject":
            raise UsageError(f"--cv-group must be one of subject; got {request.cv_group!r}")
        if request.cv is not None and request.test_fraction:
            raise UsageError("--cv and --test-fraction both make the test data; pass one of them")
        if request.cv is not None and request.eval_on:
            raise UsageError("--eval-on scores the probe refitted on the dataset's splits; a cross-validated job has "
                             "one probe per fold: drop --cv or --eval-on")
        probes = tuple(self.default_probes if request.probes is None else request.probes)
        bad = [p for p in probes if p not in self.probes]
        if bad:
            raise UsageError(self.probe_refusal(bad))
        metric = request.select_metric or self.selectable()[0]
        if metric not in self.selectable():
            raise UsageError(f"select metric for {self.name} must be one of {', '.join(self.selectable())}; "
                             f"got {metric!r}")
        taps = tuple(request.taps or self.default_taps)
        return replace(request, probes=probes, taps=taps, select_metric=metric)

    def probe_refusal(self, bad: list) -> str:
        """The one line refusing probes the task does not take."""
        return f"unknown probe(s) {bad} for --task {self.name}; it takes probes {', '.join(self.probes)}"

    def check_source(self, request: Request, source) -> None:
        """Refuse (one line) a dataset that cannot run the request: by default, cross-validation or a test carve
        of a dataset that has its own test split."""
        from .._errors import UsageError

        if request.cv is not None and "test" in source.splits:
            raise UsageError(f"dataset {source.name!r} has its own test split; cross-validation (--cv) is for "
                             "datasets without one: drop --cv")
        if request.test_fraction and "test" in source.splits:
            raise UsageError(f"dataset {source.spec!r} has its own test split; drop --test-fraction (it carves a "
                             "test split only for datasets without one)")

    def target(self, source, split: str):
        """The target of every item of ``split`` (aligned with ``source.ids[split]``), or None when the class
        labels are the target (the default)."""
        return None

    def load(self, backbone: str, source, request: Request, **extract):
        """What every job of the sweep reads, loaded once: by default the cached features of every split
        (:class:`probe._features.FeatureData`) with this task's target."""
        from .._features import load_features

        return load_features(backbone, source, taps=request.taps, task=self, **extract)

    def evaluation(self, request: Request, probe: str, data) -> dict:
        """The evaluation scheme of a job: ``{"label": <the evaluation column>, ...material}``; the material
        (everything but the label, when the scheme is not the dataset's splits) enters the protocol id."""
        if request.cv is not None:
            return {"label": evaluation_label(cv=request.cv, cv_group=request.cv_group), "cv": int(request.cv),
                    "cv_group": request.cv_group}
        return {"label": evaluation_label(test_fraction=_carved_test(request, data))}

    def plan(self, data, request: Request) -> list[Job]:
        """The jobs of a request over loaded data: one per (tap, probe, shots, seed), each with its protocol id
        (:func:`probe._protocol.protocol_of` over the probe's expanded grid and the evaluation material)."""
        from .._protocol import check_grid, protocol_of

        jobs = []
        for tap in request.taps:
            for name in request.probes:
                est = self.estimator(name)
                grid = (request.grids or {}).get(name)
                points = check_grid(est, grid)
                scheme = self.evaluation(request, name, data)
                material = {k: v for k, v in scheme.items() if k != "label"} or None
                cv = request.cv is not None
                val_fraction = 0.0 if "val" in data.splits and not cv else float(request.val_fraction)
                test_fraction = _carved_test(request, data)
                for k in request.shots:
                    protocol = protocol_of(est, points, tap=tap, task=self.name, val_fraction=val_fraction,
                                           test_fraction=test_fraction, select_metric=request.select_metric,
                                           shots=int(k), refit=int(k) == 0, evaluation=material)
                    for seed in request.seeds:
                        jobs.append(Job(tap=tap, probe=name, seed=int(seed), shots=int(k), protocol=protocol,
                                        evaluation=scheme["label"], tag=f"{data.feature_tag}-{protocol[:8]}",
                                        grid=grid, select_metric=request.select_metric,
                                        val_fraction=float(request.val_fraction), test_fraction=test_fraction,
                                        cv=request.cv, cv_group=request.cv_group, device=request.device,
                                        context=data.context(tap, request.family)))
        return jobs

    def estimator(self, probe: str):
        """A fresh estimator of one of the task's learned probes (default: a classification probe)."""
        from .._protocol import make_probe

        return make_probe(probe)

    def run(self, data, job: Job) -> tuple:
        """Run one job: its result rows (val rows, the selected test row; per fold and a summary under
        cross-validation) and its per-item arrays for the ``.npz``.

        A task that accepts ``eval_on`` returns a third element when ``job.shifted`` names shifted sets: one
        ``(EvalSet, row, items)`` per set, the selected probe scored once on it (:func:`probe._shifted.shifted_result`),
        which the engine writes beside the job's files (:func:`probe._shifted.shifted_stem`)."""
        raise NotImplementedError(f"task {self.name!r} does not run jobs")

    def item_metrics(self, items: Mapping[str, Any]) -> dict[str, float]:
        """The task's metrics (:attr:`extra_metrics` too) that per-item arrays can give, pooled over every item
        (:meth:`Metric.value`)."""
        return {m.name: m.value(items) for m in self.metrics + self.extra_metrics
                if m.from_items and all(k in items for k in m.stats) and len(np.asarray(items[m.stats[0]]))}

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
    #: Taps whose probes never count as the task's best frozen probe (classification: ``patch``, the dense
    #: probes' per-token tap). Both reports read it through :func:`probe.analysis.report_groups`.
    frozen_taps_excluded: ClassVar[frozenset[str]] = frozenset()
    #: Whether the reports compare backbone families on the task's headline metric (False for the dense tasks,
    #: whose reports show no family comparison).
    compare_families: ClassVar[bool] = True

    @property
    def gain_metrics(self) -> tuple[str, ...]:
        """Metrics beyond the headline that get their own paired fine-tuned − frozen difference in both reports:
        by default those pooled from per-item values with no reduction or resampling of their own (a plain mean
        over items); classification names mean per-class accuracy, the dense tasks all their metrics."""
        return tuple(m.name for m in self.metrics[1:] if m.from_items and m.reduce is None and m.resample is None)

    def finetune_counterpart(self, tasks: tuple[str, ...], head: str | None) -> bool:
        """Whether a fine-tune of this task is the frozen probe's counterpart ("fine-tuning" in the reports,
        compared with the best frozen probe); other fine-tunes are listed apart.

        Parameters
        ----------
        tasks : tuple of str
            The tasks the fine-tune trained jointly (empty where an older row did not record them).
        head : str or None
            Its head (None where not recorded).

        The default counts every fine-tune; the dense tasks count only single-task linear-head fine-tunes.
        """
        return True

    def item_stats(self, artifacts: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The per-item statistics of one job from its saved arrays (:func:`probe.results.load_artifacts`).

        Every :attr:`Metric.stats` key of the task present in ``artifacts`` (``item/<metric>``, ``stat/<k>``) and
        ``labels``; a task whose jobs save something else (classification: predictions) derives them here.
        Arrays have one row per item in the order of ``artifacts["ids"]``.
        """
        keys = {k for m in self.metrics + self.extra_metrics for k in m.stats} | {"labels"}
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

    def missing_reason(self, metric: str) -> str | None:
        """Why ``metric`` can be null in a row of this task because it is undefined on the row's data (not because
        it was not run): the report prints ``n/a`` in its cell and this reason under the table. None (the
        default): a null prints ``—``."""
        return None

    def report_figures(self, report, dataset: str, evaluation: str, shown: list) -> list[str]:
        """Markdown lines of the task's figures under its tables (none by default).

        ``shown`` lists ``(group name, rows)`` of the tables just written for ``dataset`` under ``evaluation``
        (each row an :func:`probe.analysis.aggregate_seeds` record with its ``files``). A task names its figures
        by calling ``report.retrieval_figure``, ``report.prediction_scatter`` or ``report.dense_examples``; the
        HTML explorer calls this hook too, with an object whose methods of those names draw inline SVG.
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


def _carved_test(request: Request, data) -> float:
    """The test fraction a job records: the request's, when the dataset has no test split of its own."""
    return 0.0 if "test" in getattr(data, "splits", {}) else float(request.test_fraction or 0.0)


def _refusal(task: Task, option: str, flag: str) -> str:
    """One line refusing an evaluation option the task does not accept, naming the tasks that do."""
    from ._registry import all_tasks

    takers = [t.name for t in all_tasks() if option in t.options]
    if option == "test_fraction":
        return (f"--test-fraction is for a dataset without a test split, with --task {' or '.join(takers)}; "
                f"{task.name} probes need a test split (drop --test-fraction)")
    if not takers:
        return f"{flag} is not accepted by --task {task.name}; drop it"
    return (f"{flag} is for --task {' or '.join(takers)}; drop it or add --task {takers[0]} "
            f"(--task {task.name} does not take it)")
