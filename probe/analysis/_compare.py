"""Family-level claims with family-level uncertainty.

"ConvNets transfer better than transformers" is a claim about families, not about the backbones that happened to
be run. :func:`family_bootstrap` gives the difference of the two families' mean metric (over their backbones, on
the same test images) an interval that accounts for both sources of chance:

- the test images (resampled with replacement, the same images for every backbone: paired), and
- the choice of backbones (within each family, its backbones are resampled with replacement).

A family with one backbone contributes no backbone-choice uncertainty; the result says so in ``notes``. Across
datasets, :func:`sign_test` gives the exact two-sided binomial p-value of the wins (ties dropped).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .._errors import UsageError

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
                     n_boot: int = 10_000, seed: int = 0, ci: float = 0.95,
                     higher_is_better: bool = True) -> FamilyComparison:
    """Two-level paired bootstrap of ``mean over family a's backbones - mean over family b's``.

    Parameters
    ----------
    values_a, values_b : array-like, [N, Ma] and [N, Mb]
        Per-image values (hits, or seed means of hits) of each backbone of the two families, on the same N test
        images in the same order (align them by id first, e.g. with :func:`probe.analysis.align_by_id`).
    labels : array-like of int, [N], optional
        True classes; required for ``metric="mean_per_class_acc"`` (mean over classes of per-class means).
        Every other metric is the mean of the per-image values.
    names_a, names_b : list of str, optional
        Member names, for the result and its notes.
    n_boot, seed, ci
        Resamples, their seed, and the confidence level of the percentile interval.
    higher_is_better : bool
        Direction of the metric (False for errors); sets :attr:`FamilyComparison.winner`.

    Returns
    -------
    FamilyComparison
        Each resample draws N images with replacement (the same for every backbone) and, independently within
        each family, as many backbones as it has with replacement; the statistic is the difference of the
        resampled families' means.
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise UsageError(f"family_bootstrap needs [N, members] arrays on the same N images; got {a.shape} and "
                         f"{b.shape}")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise UsageError("family_bootstrap needs at least one backbone in each family")
    n = a.shape[0]
    if n == 0:
        raise UsageError("cannot bootstrap over zero test images")
    if int(n_boot) < 1 or not 0.0 < ci < 1.0:
        raise UsageError(f"n_boot must be positive and ci in (0, 1); got {n_boot} and {ci}")
    names_a = tuple(names_a or (f"a{i}" for i in range(a.shape[1])))
    names_b = tuple(names_b or (f"b{i}" for i in range(b.shape[1])))
    per_class = metric == "mean_per_class_acc"
    if per_class:
        if labels is None:
            raise UsageError("metric 'mean_per_class_acc' needs labels=; pass the true class of every test image")
        _, cls = np.unique(np.asarray(labels), return_inverse=True)
        onehot = np.eye(cls.max() + 1)[cls]  # [N, K]
    values = np.concatenate([a, b], axis=1)  # [N, M]
    ma = a.shape[1]

    def member_stats(weights: np.ndarray) -> np.ndarray:
        # weights [B, N] draws per image -> metric per member [B, M]
        if not per_class:
            return weights @ values / weights.sum(axis=1, keepdims=True)
        class_n = weights @ onehot  # [B, K]
        class_sum = np.einsum("bn,nk,nm->bmk", weights, onehot, values)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = class_sum / class_n[:, None, :]
        present = class_n > 0
        return np.where(present[:, None, :], recall, 0.0).sum(axis=2) / present.sum(axis=1)[:, None]

    full = member_stats(np.ones((1, n)))[0]
    estimate = float(full[:ma].mean() - full[ma:].mean())
    rng = np.random.default_rng(seed)
    n_boot = int(n_boot)
    samples = np.empty(n_boot)
    chunk = max(1, _CHUNK_CELLS // (n * (onehot.shape[1] if per_class else 1)))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        size = stop - start
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        stats = member_stats(weights)
        pick_a = rng.integers(0, ma, size=(size, ma))
        pick_b = ma + rng.integers(0, b.shape[1], size=(size, b.shape[1]))
        samples[start:stop] = (np.take_along_axis(stats, pick_a, axis=1).mean(axis=1)
                               - np.take_along_axis(stats, pick_b, axis=1).mean(axis=1))
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    notes = tuple(f"a family has one backbone ({names[0]}): the interval covers the test images, not the choice "
                  "of backbones" for names in (names_a, names_b) if len(names) == 1)
    return FamilyComparison(estimate=estimate, low=float(low), high=float(high), ci=float(ci), n_images=int(n),
                            n_boot=n_boot, members_a=names_a, members_b=names_b, metric=metric,
                            higher_is_better=higher_is_better, p_le_zero=float(np.mean(samples <= 0)),
                            notes=notes, samples=samples)


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
        Rows of :func:`probe.analysis.best_by_val` (one per configuration, dataset, task and selection metric),
        already filtered to one side (e.g. frozen probes, or fine-tuning).
    metric : str, optional
        Metric compared (default: the task's headline metric). Bootstrapped from the saved predictions.

    Returns
    -------
    list of dict
        One per (dataset, task, select_metric, weights kind, family pair) where both families have members:
        ``family_a``, ``family_b`` (in family order), ``members_a``/``members_b`` (config labels),
        ``mean_a``/``mean_b`` (the families' mean of the table values), ``comparison`` (a
        :class:`FamilyComparison`, or None without saved predictions) and ``note``. Pretrained and random-init
        configurations are compared only among themselves (``weights_kind``).
    """
    from ._select import lower_is_better, primary_metric, weights_kind
    from ._stats import align_by_id, seed_mean_hits

    out: list[dict] = []
    if best.is_empty():
        return out
    rows = best.to_dicts()
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["dataset"], r["task"], r["select_metric"], weights_kind(r["weights"]))
        groups.setdefault(key, []).append(r)
    for (dataset, task, select_metric, kind), members in sorted(groups.items()):
        m = metric or primary_metric(task)
        fams = sorted({r["family"] for r in members}, key=family_order)
        for i in range(len(fams)):
            for j in range(i + 1, len(fams)):
                fa, fb = fams[i], fams[j]
                ra = sorted((r for r in members if r["family"] == fa), key=lambda r: r["config_label"])
                rb = sorted((r for r in members if r["family"] == fb), key=lambda r: r["config_label"])
                rec = dict(dataset=dataset, task=task, select_metric=select_metric, weights_kind=kind,
                           family_a=fa, family_b=fb, metric=m,
                           members_a=[r["config_label"] for r in ra], members_b=[r["config_label"] for r in rb],
                           mean_a=float(np.mean([r[m] for r in ra])), mean_b=float(np.mean([r[m] for r in rb])),
                           comparison=None, note="")
                hits = [seed_mean_hits(r["files"], m) for r in ra + rb]
                bad = next((h for h in hits if isinstance(h, str)), None)
                aligned = bad or align_by_id([(h.ids, h.labels, h.values[:, 0]) for h in hits],
                                             what="backbones")
                if isinstance(aligned, str):
                    rec["note"] = aligned
                else:
                    rec["comparison"] = family_bootstrap(
                        aligned.values[:, :len(ra)], aligned.values[:, len(ra):], labels=aligned.labels, metric=m,
                        names_a=rec["members_a"], names_b=rec["members_b"], n_boot=n_boot, seed=seed, ci=ci,
                        higher_is_better=not lower_is_better(m))
                    rec["note"] = aligned.note
                out.append(rec)
    return out


def family_wins(comparisons: list[dict]) -> list[dict]:
    """Wins across datasets per (family pair, task, select_metric, weights kind), with the exact sign test.

    Returns one dict per group: ``family_a``, ``family_b``, ``wins_a``, ``wins_b``, ``ties``, ``datasets``,
    ``separated`` (datasets whose interval excludes 0), ``p_value`` (:func:`sign_test`) and ``separates``
    (p < 0.05: the wins across datasets are more uneven than chance would make them).
    """
    groups: dict[tuple, list[dict]] = {}
    for c in comparisons:
        key = (c["family_a"], c["family_b"], c["task"], c["select_metric"], c["weights_kind"], c["metric"])
        groups.setdefault(key, []).append(c)
    out = []
    for (fa, fb, task, select_metric, kind, metric), recs in groups.items():
        higher = recs[0]["comparison"].higher_is_better if recs[0]["comparison"] else True
        wins_a = wins_b = ties = separated = 0
        for c in recs:
            diff = c["comparison"].estimate if c["comparison"] else c["mean_a"] - c["mean_b"]
            if diff == 0:
                ties += 1
            elif (diff > 0) == higher:
                wins_a += 1
            else:
                wins_b += 1
            separated += bool(c["comparison"] and c["comparison"].separates)
        p = sign_test(wins_a, wins_b)
        out.append(dict(family_a=fa, family_b=fb, task=task, select_metric=select_metric, weights_kind=kind,
                        metric=metric, wins_a=wins_a, wins_b=wins_b, ties=ties, datasets=len(recs),
                        separated=separated, p_value=p, separates=p < 0.05))
    return out


def with_intervals(protocols, *, metric: str = "top1", n_boot: int = 10_000, seed: int = 0, ci: float = 0.95):
    """Add ``<metric>_low``/``<metric>_high``: a bootstrap interval over test images of each row's seed mean.

    ``protocols`` are :func:`probe.analysis.aggregate_seeds` rows (their ``files``); a row without saved
    predictions gets nulls.
    """
    import polars as pl

    from ._stats import job_ci

    lows, highs = [], []
    for files in protocols["files"].to_list():
        r = job_ci(list(files), metric=metric, n_boot=n_boot, seed=seed, ci=ci)
        lows.append(r.low if r else None)
        highs.append(r.high if r else None)
    return protocols.with_columns(pl.Series(f"{metric}_low", lows, dtype=pl.Float64),
                                  pl.Series(f"{metric}_high", highs, dtype=pl.Float64))


def finetune_gains(frozen, finetune, *, metric: str = "top1", extra_metrics=("mean_per_class_acc",),
                   n_boot: int = 10_000, seed: int = 0, ci: float = 0.95, intervals: bool = True):
    """Best frozen probe beside fine-tuning, per (dataset, task, backbone_config, select_metric), and the gain.

    Parameters
    ----------
    frozen, finetune : polars.DataFrame
        :func:`probe.analysis.best_by_val` rows of each side. Rows are matched on the configuration and the
        selection metric, never across them.
    metric : str
        The compared metric; ``extra_metrics`` get a paired gain interval too.
    intervals : bool
        Bootstrap intervals from the saved predictions (seed means, paired by image id).

    Returns
    -------
    polars.DataFrame
        One row per configuration present on either side: ``frozen_method``, ``frozen`` (seed mean of
        ``metric``), ``frozen_n`` (seeds), ``frozen_n_train``, the same for ``finetune``, ``gain`` (null unless
        both sides exist), ``gain_low``/``gain_high``, ``gain_n`` (paired images), ``<m>_gain``/``_low``/``_high``
        for each extra metric, ``frozen_low``/``_high`` and ``finetune_low``/``_high`` (each side's own
        interval), and ``note`` (why an interval is missing; partial pairing).
    """
    import polars as pl

    from ._stats import compare_jobs, job_ci, seed_mean_hits

    keys = ["dataset", "task", "backbone_config", "select_metric"]
    desc = ["backbone", "config_label", "family", "family_source", "weights", "img_size", "precision"]
    sides = {}
    for name, frame in (("frozen", frozen), ("finetune", finetune)):
        for r in frame.to_dicts():
            sides.setdefault(tuple(r[k] for k in keys), {})[name] = r
    rows = []
    for key, pair in sorted(sides.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        any_side = pair.get("frozen") or pair.get("finetune")
        row = dict(zip(keys, key), **{c: any_side.get(c) for c in desc}, note="")
        for name in ("frozen", "finetune"):
            r = pair.get(name)
            row[f"{name}_method"] = r["method"] if r else None
            row[name] = r[metric] if r else None
            row[f"{name}_sd"] = r.get(f"{metric}_sd") if r else None
            row[f"{name}_n"] = r["n"] if r else None
            row[f"{name}_n_train"] = r["n_train"] if r else None
            row[f"{name}_n_eval"] = r["n_eval"] if r else None
            for m in extra_metrics:
                row[f"{name}_{m}"] = r.get(m) if r else None
            iv = job_ci(list(r["files"]), metric=metric, n_boot=n_boot, seed=seed, ci=ci) if r and intervals \
                else None
            row[f"{name}_low"], row[f"{name}_high"] = (iv.low, iv.high) if iv else (None, None)
        fz, ft = pair.get("frozen"), pair.get("finetune")
        row["gain"] = ft[metric] - fz[metric] if fz and ft else None
        row.update(gain_low=None, gain_high=None, gain_n=None)
        for m in extra_metrics:
            row[f"{m}_gain"] = (ft[m] - fz[m]) if fz and ft and ft.get(m) is not None and fz.get(m) is not None \
                else None
            row[f"{m}_gain_low"] = row[f"{m}_gain_high"] = None
        if fz and ft and intervals:
            g = compare_jobs(list(ft["files"]), list(fz["files"]), metric=metric, n_boot=n_boot, seed=seed, ci=ci)
            if g is None:
                why = [h for h in (seed_mean_hits(list(ft["files"]), metric),
                                   seed_mean_hits(list(fz["files"]), metric)) if isinstance(h, str)]
                row["note"] = why[0] if why else "the two sides cannot be paired by test image id"
            else:
                row.update(gain=g.estimate, gain_low=g.low, gain_high=g.high, gain_n=g.n)
                for m in extra_metrics:
                    gm = compare_jobs(list(ft["files"]), list(fz["files"]), metric=m, n_boot=n_boot, seed=seed,
                                      ci=ci)
                    if gm is not None:
                        row.update({f"{m}_gain": gm.estimate, f"{m}_gain_low": gm.low, f"{m}_gain_high": gm.high})
                n_ft, n_fz = ft["n_eval"], fz["n_eval"]
                if g.n < max(n_ft or 0, n_fz or 0):
                    row["note"] = f"paired on the {g.n} test images both sides scored"
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    floats = [c for c in frame.columns if frame[c].dtype == pl.Null]
    return frame.with_columns(pl.col(c).cast(pl.Utf8 if c.endswith("method") else pl.Float64) for c in floats)


#: Fine-tune params that do not make two runs' recipes different for the multi-task comparison.
_NOT_RECIPE = ("tasks", "task_weighting", "select_rule", "epoch", "chosen_epoch", "settings_hash", "accum_steps")


def multitask_gains(jobs, *, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95, intervals: bool = True):
    """Multi-task minus single-task fine-tuning, per dataset, task and backbone configuration, with its CI.

    A joint run (params ``tasks`` naming several tasks) is paired with the single-task runs of the same settings
    (the same params apart from the co-trained tasks and their weighting, the same ``select_metric``) on the same
    dataset, task and backbone configuration. Seeds are averaged on each side (:func:`aggregate_seeds`); the
    interval is the paired bootstrap over test images of the seed means (:func:`probe.analysis.compare_jobs`,
    from the per-image statistics both runs saved).

    Parameters
    ----------
    jobs : polars.DataFrame
        :func:`probe.analysis.job_table` rows (any filter; non-finetune rows are ignored).

    Returns
    -------
    polars.DataFrame
        One row per pair, grouped by family (:func:`family_order`), then configuration: ``dataset``, ``task``,
        ``backbone_config``, ``backbone``, ``config_label``, ``family``, ``cotrained`` (the joint run's tasks,
        ``+``-joined), ``weighting``, ``metric`` (the task's primary metric: ``miou``, ``rmse``...),
        ``lower_is_better``, ``multi``, ``single`` (seed means), ``gain`` (multi − single; for a lower-is-better
        metric a negative gain is an improvement), ``gain_low``/``gain_high``/``gain_n`` (paired images), ``n``
        (seeds of the joint run) and ``note`` (why an interval is missing).
    """
    import polars as pl

    from ..vocab import LOWER_IS_BETTER
    from ._select import _params, aggregate_seeds, primary_metric
    from ._stats import compare_jobs

    if jobs.is_empty():
        return pl.DataFrame()
    jobs = jobs.filter(pl.col("probe") == "finetune")
    info = {}
    for r in jobs.select("protocol", "params").to_dicts():
        p = _params(r["params"])
        tasks = p.get("tasks") or ["classification"]
        recipe = json.dumps({k: v for k, v in p.items() if k not in _NOT_RECIPE}, sort_keys=True, default=str)
        info[r["protocol"]] = (tuple(tasks), recipe, p.get("task_weighting"))
    protocols = aggregate_seeds(jobs)
    key_cols = ["dataset", "task", "backbone_config", "select_metric"]
    singles, joints = {}, []
    for r in protocols.to_dicts():
        tasks, recipe, weighting = info[r["protocol"]]
        key = (*(r[k] for k in key_cols), recipe)
        if len(tasks) > 1:
            joints.append((key, r, tasks, weighting))
        elif tasks == (r["task"],):
            singles[key] = r
    rows = []
    for key, joint, tasks, weighting in joints:
        single = singles.get(key)
        if single is None:
            continue
        metric = primary_metric(joint["task"])
        row = {k: joint[k] for k in key_cols[:3]}
        row.update(backbone=joint["backbone"], config_label=joint["config_label"], family=joint["family"],
                   cotrained="+".join(tasks), weighting=weighting, metric=metric,
                   lower_is_better=metric in LOWER_IS_BETTER, multi=joint[metric], single=single[metric],
                   gain=joint[metric] - single[metric], gain_low=None, gain_high=None, gain_n=None, n=joint["n"],
                   note="")
        if intervals:
            try:
                g = compare_jobs(list(joint["files"]), list(single["files"]), metric=metric, n_boot=n_boot,
                                 seed=seed, ci=ci)
            except UsageError as exc:  # no per-image bootstrap for this metric
                g, row["note"] = None, str(exc)
            if g is not None:
                row.update(gain=g.estimate, gain_low=g.low, gain_high=g.high, gain_n=g.n)
            elif not row["note"]:
                row["note"] = "the two runs cannot be paired by test image id"
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    frame = frame.with_columns(pl.col(c).cast(pl.Float64) for c in ("gain_low", "gain_high", "gain_n")
                               if frame[c].dtype == pl.Null)
    order = sorted(range(frame.height), key=lambda i: (family_order(frame["family"][i]), frame["config_label"][i],
                                                       frame["dataset"][i], frame["task"][i]))
    return frame[order]
