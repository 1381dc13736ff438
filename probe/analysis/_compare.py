"""Family-level claims with family-level uncertainty.

"ConvNets transfer better than transformers" is a claim about families, not about the backbones that happened to
be run. :func:`family_bootstrap` gives the difference of the two families' mean metric (over their backbones, on
the same test images) an interval that accounts for both sources of chance:

- the test images, or the people/scenes they cluster in when the jobs saved them (resampled with replacement,
  the same for every backbone: paired), and
- the choice of backbones (within each family, its backbones are resampled with replacement). A backbone is an
  architecture: two input sizes of one architecture are one backbone (their mean), never two draws.

A family with one backbone contributes no backbone-choice uncertainty, and one with two or three barely does
(resampling 2 backbones gives 3 distinct means); the result says so in ``notes``. Across
datasets, :func:`sign_test` gives the exact two-sided binomial p-value of the wins (ties dropped).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .._errors import UsageError
from ..vocab import FINETUNE

#: Most float cells (resamples x images) drawn at once.
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class FamilyComparison:
    """Difference ``mean(family a) - mean(family b)`` of a metric on one dataset, with its bootstrap interval.

    Attributes
    ----------
    estimate, low, high : float
        The difference of the families' means over their backbones on all shared test images, and its
        percentile interval (fractions, not %).
    ci : float
        Confidence level.
    n_images : int
        Test images all members scored.
    members_a, members_b : tuple of str
        The members (backbone configurations) of each family.
    metric : str
        Metric name; ``higher_is_better`` tells which sign is a win for ``a``.
    p_le_zero : float
        Share of resamples with difference <= 0.
    notes : tuple of str
        Caveats, e.g. a family with one backbone (its backbone choice adds no uncertainty).
    """

    estimate: float
    low: float
    high: float
    ci: float
    n_images: int
    n_boot: int
    members_a: tuple
    members_b: tuple
    metric: str
    higher_is_better: bool = True
    p_le_zero: float = float("nan")
    notes: tuple = ()
    samples: np.ndarray = field(default=None, repr=False, compare=False)
    #: The backbones (architectures) of each family, each counted once however many input sizes it ran at.
    backbones_a: tuple = ()
    backbones_b: tuple = ()
    #: What the first level resamples: ``images``, or the groups they cluster in (``people``, ``scenes``).
    over: str = "images"
    n_groups: int = 0
    #: Caveats of a family with 2 or 3 backbones: its interval barely covers the choice of backbones.
    few_backbones: tuple = ()

    @property
    def separates(self) -> bool:
        """True when the interval excludes 0: the evidence separates the two families on this dataset."""
        return bool(self.low > 0 or self.high < 0)

    @property
    def winner(self) -> str | None:
        """``"a"`` or ``"b"`` by the sign of the estimate (and the metric's direction); None on a tie."""
        if self.estimate == 0:
            return None
        return "a" if (self.estimate > 0) == self.higher_is_better else "b"

    def format(self, *, percent: bool = True, digits: int = 1) -> str:
        """``'+3.2 [-1.1, +7.5]'`` (percentage points when ``percent``)."""
        s = 100.0 if percent else 1.0
        return f"{self.estimate * s:+.{digits}f} [{self.low * s:+.{digits}f}, {self.high * s:+.{digits}f}]"


def family_bootstrap(values_a, values_b, *, labels=None, metric: str = "top1", names_a=None, names_b=None,
                     backbones_a=None, backbones_b=None, groups=None, n_boot: int = 10_000, seed: int = 0,
                     ci: float = 0.95, higher_is_better: bool = True) -> FamilyComparison:
    """Two-level paired bootstrap of ``mean over family a's backbones - mean over family b's``.

    Parameters
    ----------
    values_a, values_b : array-like, [N, Ma] and [N, Mb]
        Per-image values (hits, or seed means of hits) of each member (backbone configuration) of the two
        families, on the same N test images in the same order (align them by id first, e.g. with
        :func:`probe.analysis.align_by_id`).
    labels : array-like of int, [N], optional
        True classes; required for ``metric="mean_per_class_acc"`` (mean over classes of per-class means).
        Every other metric is the mean of the per-image values.
    names_a, names_b : list of str, optional
        Member names, for the result and its notes.
    backbones_a, backbones_b : list of str, optional
        The architecture of each member (default: each member its own): members of one architecture (two input
        sizes) are averaged into one backbone, resampled as one.
    groups : array-like, [N], optional
        The group (person, scene) of each image: the first level then draws groups, not images.
    n_boot, seed, ci
        Resamples, their seed, and the confidence level of the percentile interval.
    higher_is_better : bool
        Direction of the metric (False for errors); sets :attr:`FamilyComparison.winner`.

    Returns
    -------
    FamilyComparison
        Each resample draws the images (or groups) with replacement, the same for every backbone, and,
        independently within each family, as many backbones as it has with replacement; the statistic is the
        difference of the resampled families' means.
    """
    from ._stats import Resampling, _sides_from_arrays

    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise UsageError(f"family_bootstrap needs [N, members] arrays on the same N images; got {a.shape} and "
                         f"{b.shape}")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise UsageError("family_bootstrap needs at least one backbone in each family")
    if a.shape[0] == 0:
        raise UsageError("cannot bootstrap over zero test images")
    sides = _sides_from_arrays([a[:, j] for j in range(a.shape[1])] + [b[:, j] for j in range(b.shape[1])],
                               labels, metric if metric in ("mean_per_class_acc",) else "accuracy")
    group_index = None
    if groups is not None:
        _, group_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    r = Resampling.build(np.arange(a.shape[0]).astype(str), sides, group_index=group_index,
                         over="groups" if groups is not None else "images", metric=metric)
    return two_level_bootstrap(r, a.shape[1], metric=metric, names_a=names_a, names_b=names_b,
                               backbones_a=backbones_a, backbones_b=backbones_b, n_boot=n_boot, seed=seed, ci=ci,
                               higher_is_better=higher_is_better)


def two_level_bootstrap(r, n_a: int, *, metric: str, names_a=None, names_b=None, backbones_a=None,
                        backbones_b=None, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95,
                        higher_is_better: bool = True) -> FamilyComparison:
    """The family bootstrap over a :class:`probe.analysis.Resampling` whose first ``n_a`` results are family a's
    members and the rest family b's: items (or groups) drawn once per resample for every member, then each
    family's backbones (architectures) drawn with replacement."""
    n_members = len(r._sides)
    n_b = n_members - n_a
    if n_a < 1 or n_b < 1:
        raise UsageError("family_bootstrap needs at least one backbone in each family")
    if int(n_boot) < 1 or not 0.0 < ci < 1.0:
        raise UsageError(f"n_boot must be positive and ci in (0, 1); got {n_boot} and {ci}")
    names_a = tuple(names_a or (f"a{i}" for i in range(n_a)))
    names_b = tuple(names_b or (f"b{i}" for i in range(n_b)))
    arch_a = tuple(backbones_a or names_a)
    arch_b = tuple(backbones_b or names_b)
    units_a = list(dict.fromkeys(arch_a))
    units_b = list(dict.fromkeys(arch_b))
    # members -> backbones: a backbone's value is the mean of its members (input sizes)
    to_unit = np.zeros((n_members, len(units_a) + len(units_b)))
    for j, arch in enumerate(arch_a):
        to_unit[j, units_a.index(arch)] = 1.0
    for j, arch in enumerate(arch_b):
        to_unit[n_a + j, len(units_a) + units_b.index(arch)] = 1.0
    to_unit /= to_unit.sum(axis=0, keepdims=True)
    ua = len(units_a)

    def unit_values(counts):
        return r.values(counts) @ to_unit  # [B, units]

    full = unit_values(r.full_counts())[0]
    estimate = float(full[:ua].mean() - full[ua:].mean())
    rng = np.random.default_rng(seed)
    n_boot = int(n_boot)
    samples = np.empty(n_boot)
    chunk = r.chunk()
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        size = stop - start
        stats = unit_values(r.draw(rng, size))
        pick_a = rng.integers(0, ua, size=(size, ua))
        pick_b = ua + rng.integers(0, len(units_b), size=(size, len(units_b)))
        samples[start:stop] = (np.take_along_axis(stats, pick_a, axis=1).mean(axis=1)
                               - np.take_along_axis(stats, pick_b, axis=1).mean(axis=1))
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        raise UsageError(f"no family resample gave a finite {metric}")
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    notes, few = [], []
    for units, names in ((units_a, names_a), (units_b, names_b)):
        if len(units) == 1:
            notes.append(f"a family has one backbone ({units[0]}): the interval covers the test "
                         f"{r.over}, not the choice of backbones")
        elif len(units) < 4:
            few.append(f"a family has {len(units)} backbones ({', '.join(units)}): resampling them gives "
                         f"{math.comb(2 * len(units) - 1, len(units))} distinct means, so the interval barely covers "
                         "the choice of backbones")
    return FamilyComparison(estimate=estimate, low=float(low), high=float(high), ci=float(ci), n_images=int(r.n),
                            n_boot=n_boot, members_a=names_a, members_b=names_b, metric=metric,
                            higher_is_better=higher_is_better, p_le_zero=float(np.mean(samples <= 0)),
                            notes=tuple(notes), few_backbones=tuple(few), samples=samples,
                            backbones_a=tuple(units_a),
                            backbones_b=tuple(units_b), over=r.over, n_groups=r.n_groups)


def sign_test(wins_a: int, wins_b: int) -> float:
    """Exact two-sided sign-test p-value of ``wins_a`` against ``wins_b`` (ties left out; 1.0 with no wins).

    The probability, under "either family wins a dataset with probability 1/2", of a split at least as uneven
    as the one seen (the two-sided binomial test, as ``scipy.stats.binomtest(k, n, 0.5)``).
    """
    n = int(wins_a) + int(wins_b)
    if n == 0:
        return 1.0
    k = min(int(wins_a), int(wins_b))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def family_order(family: str) -> tuple[int, str]:
    """Sort key of a family: the order of :data:`probe.vocab.FAMILIES`, then anything else by name."""
    from ..vocab import FAMILIES

    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), family)


def compare_families(best, *, metric: str | None = None, n_boot: int = 10_000, seed: int = 0,
                     ci: float = 0.95) -> list[dict]:
    """Every pair of families on every dataset, from the val-selected protocol of each configuration.

    Parameters
    ----------
    best : polars.DataFrame
        Rows of :func:`probe.analysis.best_by_val` (one per configuration, dataset, task, evaluation scheme and
        selection metric), already filtered to one side (e.g. frozen probes, or fine-tuning).
    metric : str, optional
        Metric compared (default: each task's headline metric; a metric the task does not have is replaced by
        its headline). Bootstrapped from the saved per-item statistics.

    Returns
    -------
    list of dict
        One per (dataset, task, evaluation, select_metric, weights kind, family pair) where both families have
        members: ``family_a``, ``family_b`` (in family order), ``members_a``/``members_b`` (config labels),
        ``backbones_a``/``backbones_b`` (architectures, each once), ``mean_a``/``mean_b`` (the families' mean over
        their backbones of the table values), ``comparison`` (a :class:`FamilyComparison`, or None without
        saved statistics) and ``note``. Pretrained and random-init configurations are compared only among
        themselves (``weights_kind``); evaluation schemes never meet.
    """
    from ._select import lower_is_better, primary_metric, task_metrics, weights_kind
    from ._stats import resampling

    out: list[dict] = []
    if best.is_empty():
        return out
    rows = best.to_dicts()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["dataset"], r["task"], r.get("evaluation") or "", r["select_metric"], weights_kind(r["weights"]))
        groups.setdefault(key, []).append(r)
    for (dataset, task, evaluation, select_metric, kind), members in sorted(groups.items()):
        m = metric if metric in task_metrics(task) else primary_metric(task)
        fams = sorted({r["family"] for r in members}, key=family_order)
        for i in range(len(fams)):
            for j in range(i + 1, len(fams)):
                fa, fb = fams[i], fams[j]
                ra = sorted((r for r in members if r["family"] == fa), key=lambda r: r["config_label"])
                rb = sorted((r for r in members if r["family"] == fb), key=lambda r: r["config_label"])
                rec = dict(dataset=dataset, task=task, evaluation=evaluation, select_metric=select_metric,
                           weights_kind=kind, family_a=fa, family_b=fb, metric=m,
                           members_a=[r["config_label"] for r in ra], members_b=[r["config_label"] for r in rb],
                           backbones_a=list(dict.fromkeys(r["backbone"] for r in ra)),
                           backbones_b=list(dict.fromkeys(r["backbone"] for r in rb)),
                           mean_a=_backbone_mean(ra, m), mean_b=_backbone_mean(rb, m), comparison=None, note="")
                res = resampling([list(r["files"]) for r in ra + rb], m, task=task)
                if isinstance(res, str):
                    rec["note"] = res
                else:
                    try:
                        rec["comparison"] = two_level_bootstrap(
                            res, len(ra), metric=m, names_a=rec["members_a"], names_b=rec["members_b"],
                            backbones_a=[r["backbone"] for r in ra], backbones_b=[r["backbone"] for r in rb],
                            n_boot=n_boot, seed=seed, ci=ci, higher_is_better=not lower_is_better(m, task))
                        rec["note"] = res.note
                    except UsageError as exc:
                        rec["note"] = str(exc)
                out.append(rec)
    return out


def _backbone_mean(rows: list[dict], metric: str) -> float | None:
    """Mean over backbones (architectures, each the mean of its input sizes) of the rows' ``metric``."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            per.setdefault(r["backbone"], []).append(float(r[metric]))
    return float(np.mean([np.mean(v) for v in per.values()])) if per else None


def family_wins(comparisons: list[dict]) -> list[dict]:
    """Wins across datasets per (family pair, task, select_metric, weights kind), with the exact sign test.

    Returns one dict per group: ``family_a``, ``family_b``, ``wins_a``, ``wins_b``, ``ties``, ``datasets``,
    ``separated`` (datasets whose interval excludes 0), ``p_value`` (:func:`sign_test`) and ``separates``
    (p < 0.05: the wins across datasets are more uneven than chance would make them).
    """
    groups: dict[tuple, list[dict]] = {}
    for c in comparisons:
        key = (c["family_a"], c["family_b"], c["task"], c.get("evaluation", ""), c["select_metric"],
               c["weights_kind"], c["metric"])
        groups.setdefault(key, []).append(c)
    out = []
    for (fa, fb, task, evaluation, select_metric, kind, metric), recs in groups.items():
        higher = recs[0]["comparison"].higher_is_better if recs[0]["comparison"] else True
        wins_a = wins_b = ties = separated = 0
        for c in recs:
            if c["comparison"]:
                diff = c["comparison"].estimate
            elif c["mean_a"] is not None and c["mean_b"] is not None:
                diff = c["mean_a"] - c["mean_b"]
            else:
                diff = 0.0
            if diff == 0:
                ties += 1
            elif (diff > 0) == higher:
                wins_a += 1
            else:
                wins_b += 1
            separated += bool(c["comparison"] and c["comparison"].separates)
        p = sign_test(wins_a, wins_b)
        out.append(dict(family_a=fa, family_b=fb, task=task, evaluation=evaluation, select_metric=select_metric,
                        weights_kind=kind,
                        metric=metric, wins_a=wins_a, wins_b=wins_b, ties=ties, datasets=len(recs),
                        separated=separated, p_value=p, separates=p < 0.05))
    return out


def with_intervals(protocols, *, metric: str = "top1", n_boot: int = 10_000, seed: int = 0, ci: float = 0.95):
    """Add ``<metric>_low``/``<metric>_high``/``<metric>_over``: a bootstrap interval of each row's seed mean over
    its test items (or the people/scenes they cluster in: ``_over`` says which).

    ``protocols`` are :func:`probe.analysis.aggregate_seeds` rows (their ``files``); a row without saved
    per-item statistics gets nulls.
    """
    import polars as pl

    from ._stats import resample_interval

    lows, highs, overs = [], [], []
    tasks = protocols["task"].to_list() if "task" in protocols.columns else [None] * protocols.height
    for files, task in zip(protocols["files"].to_list(), tasks):
        r = resample_interval([list(files)], metric, task=task, n_boot=n_boot, seed=seed, ci=ci)
        ok = not isinstance(r, str)
        lows.append(r.low if ok else None)
        highs.append(r.high if ok else None)
        overs.append(r.over if ok else None)
    return protocols.with_columns(pl.Series(f"{metric}_low", lows, dtype=pl.Float64),
                                  pl.Series(f"{metric}_high", highs, dtype=pl.Float64),
                                  pl.Series(f"{metric}_over", overs, dtype=pl.Utf8))


def finetune_gains(frozen, finetune, *, metric: str | None = None, extra_metrics=("mean_per_class_acc",),
                   n_boot: int = 10_000, seed: int = 0, ci: float = 0.95, intervals: bool = True):
    """Best frozen probe beside fine-tuning, per (dataset, task, evaluation, backbone_config, select_metric), and
    the gain.

    Parameters
    ----------
    frozen, finetune : polars.DataFrame
        :func:`probe.analysis.best_by_val` rows of each side. Rows are matched on the configuration, the
        evaluation scheme and the selection metric, never across them.
    metric : str, optional
        The compared metric (default, and for a row whose task does not have it: the task's headline metric,
        named in the ``metric`` column); ``extra_metrics`` (those the row's task has) get a paired gain too.
    intervals : bool
        Bootstrap intervals from the saved per-item statistics (seed means, paired by item id; the people or
        scenes the items cluster in are resampled when the jobs saved them).

    Returns
    -------
    polars.DataFrame
        One row per configuration present on either side: ``metric``, ``lower_is_better``, ``frozen_method``,
        ``frozen`` (seed mean of the metric), ``frozen_n`` (seeds), ``frozen_n_train``, the same for
        ``finetune``, ``gain`` (null unless both sides exist), ``gain_low``/``gain_high``, ``gain_n`` (paired
        items), ``gain_over`` (``images``, ``people`` ...), ``<m>_gain``/``_low``/``_high`` for each extra metric,
        ``frozen_low``/``_high`` and ``finetune_low``/``_high`` (each side's own interval), and ``note`` (why an
        interval is missing; partial pairing).
    """
    import polars as pl

    from ._select import lower_is_better, primary_metric, task_metrics
    from ._stats import resample_interval

    keys = ["dataset", "task", "evaluation", "backbone_config", "select_metric"]
    desc = ["backbone", "config_label", "family", "family_source", "weights", "img_size", "precision"]
    sides = {}
    for name, frame in (("frozen", frozen), ("finetune", finetune)):
        for r in frame.to_dicts():
            sides.setdefault(tuple(r.get(k) for k in keys), {})[name] = r
    kw = dict(n_boot=n_boot, seed=seed, ci=ci)
    rows = []
    for key, pair in sorted(sides.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        any_side = pair.get("frozen") or pair.get("finetune")
        task = any_side["task"]
        names = task_metrics(task)
        m = metric if metric in names else primary_metric(task) if names else metric
        extra = [e for e in extra_metrics if e in names and e != m]
        row = dict(zip(keys, key), **{c: any_side.get(c) for c in desc}, metric=m,
                   lower_is_better=lower_is_better(m, task), note="")
        for name in ("frozen", "finetune"):
            r = pair.get(name)
            row[f"{name}_method"] = r["method"] if r else None
            row[name] = r.get(m) if r else None
            row[f"{name}_sd"] = r.get(f"{m}_sd") if r else None
            row[f"{name}_n"] = r["n"] if r else None
            row[f"{name}_n_train"] = r["n_train"] if r else None
            row[f"{name}_n_eval"] = r["n_eval"] if r else None
            for e in extra_metrics:
                row[f"{name}_{e}"] = r.get(e) if r and e in extra else None
            iv = resample_interval([list(r["files"])], m, task=task, **kw) if r and intervals else None
            ok = iv is not None and not isinstance(iv, str)
            row[f"{name}_low"], row[f"{name}_high"] = (iv.low, iv.high) if ok else (None, None)
            row[f"{name}_over"] = iv.over if ok else None
        fz, ft = pair.get("frozen"), pair.get("finetune")
        both = fz is not None and ft is not None
        row["gain"] = ft[m] - fz[m] if both and ft.get(m) is not None and fz.get(m) is not None else None
        row.update(gain_low=None, gain_high=None, gain_n=None, gain_over=None)
        for e in extra_metrics:
            row[f"{e}_gain"] = (ft[e] - fz[e]) if both and e in extra and ft.get(e) is not None \
                and fz.get(e) is not None else None
            row[f"{e}_gain_low"] = row[f"{e}_gain_high"] = None
        if both and intervals and row["gain"] is not None:
            g = resample_interval([list(ft["files"]), list(fz["files"])], m, task=task, **kw)
            if isinstance(g, str):
                row["note"] = g
            else:
                row.update(gain=g.estimate, gain_low=g.low, gain_high=g.high, gain_n=g.n, gain_over=g.over)
                for e in extra:
                    ge = resample_interval([list(ft["files"]), list(fz["files"])], e, task=task, **kw)
                    if not isinstance(ge, str):
                        row.update({f"{e}_gain": ge.estimate, f"{e}_gain_low": ge.low, f"{e}_gain_high": ge.high})
                n_ft, n_fz = ft["n_eval"], fz["n_eval"]
                if g.n < max(n_ft or 0, n_fz or 0):
                    row["note"] = f"paired on the {g.n} test items both sides scored"
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    floats = [c for c in frame.columns if frame[c].dtype == pl.Null]
    return frame.with_columns(pl.col(c).cast(pl.Utf8 if c.endswith(("method", "over")) or c == "evaluation"
                                             else pl.Float64) for c in floats)


#: Fine-tune params that do not make two runs' recipes different for the multi-task comparison (the co-trained
#: tasks and how they are weighted and selected, and what a run records about its own outcome).
_NOT_RECIPE = ("tasks", "task_weighting", "select_rule", "epoch", "chosen_epoch", "settings_hash", "accum_steps",
               "ci", "fold_sd", "interval", "interval_over", "folds")


def finetune_tasks(params) -> tuple[tuple[str, ...], str | None]:
    """(co-trained tasks, head) a fine-tune row records in its params (``tasks``, ``head``); the tasks are
    empty and the head None where an older row did not record them."""
    from ._select import _params

    p = params if isinstance(params, dict) else _params(params)
    return tuple(p.get("tasks") or ()), p.get("head")


def report_groups(jobs, task, *, notes: list[str] | None = None) -> dict:
    """What both reports compare for one task's rows of one evaluation scheme, as the task declares it.

    Parameters
    ----------
    jobs : polars.DataFrame
        Rows of :func:`probe.analysis.job_table` of one task (and one evaluation scheme; selection never crosses
        schemes either way: :func:`probe.analysis.best_by_val` keeps them apart).
    task : probe.tasks.Task or str
        The task (its :attr:`~probe.tasks.Task.frozen_taps_excluded` and
        :meth:`~probe.tasks.Task.finetune_counterpart` decide the candidates).
    notes : list of str, optional
        Receives a line for each group without a val score (:func:`probe.analysis.best_by_val`).

    Returns
    -------
    dict
        ``protocols``: every protocol, seeds averaged (:func:`probe.analysis.aggregate_seeds`, the task's
        metrics); at full data (``shots == 0``): ``fixed``, a list of ``(method, rows)`` for the methods that
        learn and select nothing (no val score, not a fine-tune: cosine retrieval or verification per tap);
        ``frozen``, the best frozen probe by val among the learned ones (taps the task excludes left out);
        ``tuned``, the best fine-tune by val among the frozen probe's counterparts; ``others``, the job rows of
        the other fine-tunes (joint multi-task runs, other heads), listed apart and never selected among.
    """
    import polars as pl

    from ._select import aggregate_seeds, best_by_val, task_of

    t = task_of(task) if isinstance(task, str) else task
    metrics = [m for m in t.metric_names if m in jobs.columns] if t is not None else None
    excluded = sorted(t.frozen_taps_excluded) if t is not None else []
    protocols = aggregate_seeds(jobs, metrics=metrics)
    empty = protocols.clear()
    if not jobs.height:
        return dict(protocols=protocols, fixed=[], frozen=empty, tuned=empty, others=jobs)
    counterpart = [bool(t is None or t.finetune_counterpart(*finetune_tasks(params))) if probe == FINETUNE
                   else False for probe, params in jobs.select("probe", "params").iter_rows()]
    marked = jobs.with_columns(pl.Series("_counterpart", counterpart, dtype=pl.Boolean))
    tuned_jobs = marked.filter((pl.col("probe") == FINETUNE) & pl.col("_counterpart")).drop("_counterpart")
    others = marked.filter((pl.col("probe") == FINETUNE) & ~pl.col("_counterpart")).drop("_counterpart")
    full = protocols.filter(pl.col("shots") == 0)
    frozen = full.filter(pl.col("probe") != FINETUNE)
    fixed = frozen.filter(pl.col("val_score").is_null())
    learned = frozen.filter(pl.col("val_score").is_not_null() & ~pl.col("tap").is_in(excluded))
    tuned = aggregate_seeds(tuned_jobs, metrics=metrics).filter(pl.col("shots") == 0) if tuned_jobs.height \
        else empty
    return dict(
        protocols=protocols,
        fixed=[(method, fixed.filter(pl.col("method") == method)) for method in sorted(set(fixed["method"]))],
        frozen=best_by_val(learned, notes=notes) if learned.height else empty,
        tuned=best_by_val(tuned, notes=notes) if tuned.height else empty,
        others=others)


def multitask_gains(jobs, *, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95, intervals: bool = True,
                    notes: list[str] | None = None):
    """Multi-task minus single-task fine-tuning, per dataset, task and backbone configuration, with its CI.

    Every joint job row (params ``tasks`` naming several tasks) is paired with the single-task job row of the
    same dataset, task, evaluation scheme, backbone configuration, seed and val carve (``val_fraction``), the same
    ``select_metric`` and the same recipe apart from the co-trained tasks and their weighting. Pairs are made row
    by row (never through a recipe table where the last job wins); the seeds of a joint protocol are then
    averaged on each side and the interval is the paired bootstrap of the seed means over test items (or the
    groups they cluster in).

    Parameters
    ----------
    jobs : polars.DataFrame
        :func:`probe.analysis.job_table` rows (any filter; non-finetune rows are ignored).
    notes : list of str, optional
        Receives a line for each joint run that finds no single-task partner.

    Returns
    -------
    polars.DataFrame
        One row per joint protocol with a partner, grouped by family (:func:`family_order`), then configuration:
        ``dataset``, ``task``, ``evaluation``, ``backbone_config``, ``backbone``, ``config_label``, ``family``,
        ``cotrained`` (the joint run's tasks, ``+``-joined), ``head``, ``weighting``, ``metric`` (the task's
        headline), ``lower_is_better``, ``multi``, ``single`` (seed means), ``gain`` (multi − single),
        ``gain_low``/``gain_high``/``gain_n``, ``gain_over``, ``n`` (paired seeds) and ``note``.
    """
    import polars as pl

    from ._select import _params, lower_is_better, primary_metric
    from ._stats import resample_interval

    if jobs.is_empty():
        return pl.DataFrame()
    jobs = jobs.filter(pl.col("probe") == "finetune")

    def ident(r: dict) -> tuple:
        p = _params(r["params"])
        recipe = {k: v for k, v in p.items() if k not in _NOT_RECIPE}
        if recipe.get("depth_zoom") == "divide":  # the crops of every single-task run (only depth is rescaled)
            recipe.pop("depth_zoom")
        recipe = json.dumps(recipe, sort_keys=True, default=str)
        return (r["dataset"], r["task"], r.get("evaluation"), r["backbone_config"], r["seed"], r["val_fraction"],
                r["select_metric"], recipe)

    singles: dict[tuple, list[dict]] = {}
    joints = []
    for r in jobs.to_dicts():
        tasks, _ = finetune_tasks(r["params"])
        if len(tasks) > 1:
            joints.append(r)
        elif tasks in ((r["task"],), ()):
            singles.setdefault(ident(r), []).append(r)
    paired: dict[tuple, list[tuple[dict, dict]]] = {}
    for r in joints:
        partners = singles.get(ident(r), [])
        if not partners:
            if notes is not None:
                tasks, _ = finetune_tasks(r["params"])
                notes.append(f"joint fine-tune {'+'.join(tasks)} of `{r['config_label']}` on {r['dataset']} "
                             f"({r['task']}, seed {r['seed']}) has no single-task run of the same recipe, seed and "
                             "val carve: not compared.")
            continue
        partner = sorted(partners, key=lambda x: x["file"])[0]
        key = (r["dataset"], r["task"], r.get("evaluation"), r["backbone_config"], r["protocol"])
        paired.setdefault(key, []).append((r, partner))
    rows = []
    for (dataset, task, evaluation, config, _), pairs in paired.items():
        joint = pairs[0][0]
        metric = primary_metric(task)
        tasks, head = finetune_tasks(joint["params"])
        multi = [j[metric] for j, _ in pairs]
        single = [s_[metric] for _, s_ in pairs]
        ok = all(v is not None for v in multi + single)
        row = dict(dataset=dataset, task=task, evaluation=evaluation, backbone_config=config,
                   backbone=joint["backbone"], config_label=joint["config_label"], family=joint["family"],
                   cotrained="+".join(tasks), head=head, weighting=_params(joint["params"]).get("task_weighting"),
                   metric=metric, lower_is_better=lower_is_better(metric, task),
                   multi=float(np.mean(multi)) if ok else None, single=float(np.mean(single)) if ok else None,
                   gain=float(np.mean(multi) - np.mean(single)) if ok else None, gain_low=None, gain_high=None,
                   gain_n=None, gain_over=None, n=len(pairs), note="")
        if intervals and ok:
            g = resample_interval([[j["file"] for j, _ in pairs], [s_["file"] for _, s_ in pairs]], metric, task=task,
                                  n_boot=n_boot, seed=seed, ci=ci)
            if isinstance(g, str):
                row["note"] = g
            else:
                row.update(gain=g.estimate, gain_low=g.low, gain_high=g.high, gain_n=g.n, gain_over=g.over)
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame = frame.with_columns(pl.col(c).cast(pl.Utf8 if c in ("gain_over", "head", "weighting", "evaluation")
                                              else pl.Float64)
                               for c in frame.columns if frame[c].dtype == pl.Null)
    order = sorted(range(frame.height), key=lambda i: (family_order(frame["family"][i]), frame["config_label"][i],
                                                       frame["dataset"][i], frame["task"][i]))
    return frame[order]
