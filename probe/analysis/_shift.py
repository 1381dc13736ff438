"""Distribution shift: shifted vs in-distribution accuracy across configurations, and effective robustness.

The rows come from :func:`probe.analysis.job_table` with ``shifted=True``: every model the protocol selected on a
dataset (a frozen probe chosen on val and refitted; a fine-tune's chosen epoch) scored on its test split and, once,
on each shifted set named by ``eval_on`` (:mod:`probe._shifted`). A *point* is one (backbone configuration,
protocol) at full data, seeds averaged (:func:`probe.analysis.aggregate_seeds`): its in-distribution accuracy
``x`` and its accuracy on the shifted set ``y``, both of the task's headline metric.

Following Taori et al. (2020, "Measuring robustness to natural distribution shifts in image classification"), a
line is fitted through the points of one (dataset, evaluation scheme, shifted set) on **logit-scaled** accuracies,
``logit(y) = slope · logit(x) + intercept`` (ordinary least squares; accuracies clipped to [0.5/n, 1 − 0.5/n] for
n test images, so a perfect or null score stays finite), and a point's **effective robustness** is its shifted
accuracy minus the line's prediction at its in-distribution accuracy, ``y − expit(slope · logit(x) + intercept)``
(a fraction; the report prints points). The line is descriptive: nothing is selected on it or on a shifted set.

The interval of each effective robustness resamples the test images of both sets (independently: they are
different images) with the one bootstrap path of :mod:`probe.analysis._stats` (:func:`resampling`,
:func:`resampled_values`; people or scenes where the jobs saved groups), recomputes every point's accuracies on
the resample, refits the line and takes each point's distance to it: the interval includes the line's own
uncertainty from the images.
"""

from __future__ import annotations

import numpy as np

from .. import tasks as _tasks

#: Points needed for a fitted line (two points always lie on their line: no effective robustness to speak of).
MIN_POINTS = 3

#: The scale the line is fitted on, as the report names it.
SCALE = "logit"


def _logit(p: np.ndarray, n: int) -> np.ndarray:
    eps = 0.5 / max(int(n), 1)
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_line(x, y, *, n_x: int, n_y: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``logit(y) = slope · logit(x) + intercept`` through points, for one or many resamples.

    Parameters
    ----------
    x, y : array [M] or [B, M]
        In-distribution and shifted accuracies (fractions) of M points (in B resamples).
    n_x, n_y : int
        Test images of each set (the logit clip, 0.5/n).

    Returns
    -------
    (slope, intercept) : arrays [] or [B]
    """
    lx, ly = _logit(x, n_x), _logit(y, n_y)
    mx, my = lx.mean(axis=-1, keepdims=True), ly.mean(axis=-1, keepdims=True)
    sxx = ((lx - mx) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = ((lx - mx) * (ly - my)).sum(axis=-1) / sxx
    intercept = my[..., 0] - slope * mx[..., 0]
    return slope, intercept


def _robustness(x, y, *, n_x: int, n_y: int) -> np.ndarray:
    """Each point's shifted accuracy minus the fitted line's prediction at its in-distribution accuracy."""
    slope, intercept = fit_line(x, y, n_x=n_x, n_y=n_y)
    predicted = _expit(np.asarray(slope)[..., None] * _logit(x, n_x) + np.asarray(intercept)[..., None])
    return np.asarray(y, dtype=np.float64) - predicted


def shift_points(jobs, *, notes: list[str] | None = None):
    """The points of every (dataset, evaluation scheme, shifted set): each protocol at full data scored on both.

    Parameters
    ----------
    jobs : polars.DataFrame
        Rows of :func:`probe.analysis.job_table` with ``shifted=True``.
    notes : list of str, optional
        Receives a line for each group without a val score.

    Returns
    -------
    polars.DataFrame
        One row per (dataset, task, evaluation, eval_dataset, backbone_config, protocol) of a task that scores
        shifted sets (``eval_on`` in :attr:`probe.tasks.Task.options`), shots = 0, taps the task excludes from its
        frozen probes left out: the describing columns, ``metric`` (the task's headline), ``acc_id`` and
        ``acc_shift`` (seed means), ``files_id``/``files_shift``, ``n_id``/``n_shift`` (test images) and
        ``chosen``: ``frozen`` for the configuration's best frozen probe by val, ``fine-tuned`` for its best
        fine-tune by val, else empty. Empty when no row was scored on a shifted set.
    """
    import polars as pl

    from ._compare import report_groups
    from ._select import aggregate_seeds

    empty = pl.DataFrame()
    if not jobs.height or "eval_dataset" not in jobs.columns:
        return empty
    parts = []
    for task in _tasks.all_tasks():
        if "eval_on" not in task.options:
            continue
        sub = jobs.filter((pl.col("task") == task.name) & (pl.col("shots") == 0)
                          & ~pl.col("tap").is_in(sorted(task.frozen_taps_excluded)))
        if not sub.filter(pl.col("eval_dataset") != pl.col("dataset")).height:
            continue
        metric = task.headline
        protocols = aggregate_seeds(sub, metrics=[metric])
        keys = ["dataset", "task", "evaluation", "backbone_config", "protocol"]
        own = protocols.filter(pl.col("eval_dataset") == pl.col("dataset"))
        shifted = protocols.filter(pl.col("eval_dataset") != pl.col("dataset"))
        points = shifted.join(own.select(*keys, pl.col(metric).alias("acc_id"), pl.col("files").alias("files_id"),
                                         pl.col("n_eval").alias("n_id")), on=keys, how="inner")
        points = points.rename({metric: "acc_shift", "files": "files_shift", "n_eval": "n_shift"})
        # the configuration's choices, made on the source's val as every other table makes them (the best frozen
        # probe and the counterpart fine-tune: probe.analysis.report_groups)
        chosen = []
        groups = report_groups(sub.filter(pl.col("eval_dataset") == pl.col("dataset")), task, notes=notes)
        for side, name in ((groups["frozen"], "frozen"), (groups["tuned"], "fine-tuned")):
            if side.height:
                chosen.append(side.select(*keys, pl.lit(name).alias("chosen")))
        if chosen:
            points = points.join(pl.concat(chosen), on=keys, how="left")
        else:
            points = points.with_columns(pl.lit(None, dtype=pl.Utf8).alias("chosen"))
        parts.append(points.with_columns(pl.lit(metric).alias("metric"), pl.col("chosen").fill_null("")))
    if not parts:
        return empty
    return pl.concat(parts, how="diagonal_relaxed").sort("dataset", "evaluation", "eval_dataset", "family",
                                                         "config_label", "method")


def effective_robustness(points, *, n_boot: int = 10_000, seed: int = 0, ci: float = 0.95) -> list[dict]:
    """The fitted line and each point's effective robustness with its bootstrap interval, per group.

    Parameters
    ----------
    points : polars.DataFrame
        Rows of :func:`shift_points`.
    n_boot, seed, ci
        Bootstrap resamples, seed (the shifted set's draws use ``seed + 1``: its images are other images) and
        confidence level.

    Returns
    -------
    list of dict
        One per (dataset, task, evaluation, eval_dataset): ``slope``, ``intercept`` (None with fewer than
        :data:`MIN_POINTS` points), ``scale`` (``"logit"``), ``metric``, ``n_points``, ``over`` (what the interval
        resamples), ``note``, and ``points``: the group's rows with ``er`` (effective robustness, a fraction),
        ``er_low``, ``er_high`` and ``predicted`` (the line's shifted accuracy at ``acc_id``).
    """
    import polars as pl

    from ._stats import resampled_values, resampling

    out = []
    if not points.height:
        return out
    keys = ["dataset", "task", "evaluation", "eval_dataset"]
    for key, group in points.group_by(keys, maintain_order=True):
        rec = dict(zip(keys, key), metric=group["metric"][0], scale=SCALE, n_points=group.height, slope=None,
                   intercept=None, over="images", note="")
        x, y = group["acc_id"].to_numpy(), group["acc_shift"].to_numpy()
        n_x, n_y = int(group["n_id"].max()), int(group["n_shift"].max())
        nulls = [None] * group.height
        er, low, high, predicted = nulls, nulls, nulls, nulls
        if group.height < MIN_POINTS or np.unique(np.round(x, 12)).size < 2:
            rec["note"] = (f"{group.height} point(s) with {np.unique(np.round(x, 12)).size} distinct in-distribution "
                           f"accuracies: a line needs at least {MIN_POINTS} points that differ in it")
        else:
            slope, intercept = fit_line(x, y, n_x=n_x, n_y=n_y)
            rec.update(slope=float(slope), intercept=float(intercept))
            predicted = list(_expit(slope * _logit(x, n_x) + intercept))
            er = list(_robustness(x, y, n_x=n_x, n_y=n_y))
            sides_id = [list(f) for f in group["files_id"].to_list()]
            sides_sh = [list(f) for f in group["files_shift"].to_list()]
            r_id = resampling(sides_id, rec["metric"], task=rec["task"])
            r_sh = resampling(sides_sh, rec["metric"], task=rec["task"])
            if isinstance(r_id, str) or isinstance(r_sh, str):
                rec["note"] = f"no interval: {r_id if isinstance(r_id, str) else r_sh}"
            else:
                _, v_id = resampled_values(r_id, n_boot=n_boot, seed=seed)
                _, v_sh = resampled_values(r_sh, n_boot=n_boot, seed=seed + 1)
                samples = _robustness(v_id, v_sh, n_x=r_id.n, n_y=r_sh.n)
                tail = (1.0 - ci) / 2.0
                with np.errstate(invalid="ignore"):
                    low = list(np.nanquantile(samples, tail, axis=0))
                    high = list(np.nanquantile(samples, 1.0 - tail, axis=0))
                rec["over"] = r_id.over if r_id.over == r_sh.over else f"{r_id.over} / {r_sh.over}"
                rec["note"] = "; ".join(n for n in (r_id.note, r_sh.note) if n)
        rec["points"] = group.with_columns(pl.Series("er", er, dtype=pl.Float64),
                                           pl.Series("er_low", low, dtype=pl.Float64),
                                           pl.Series("er_high", high, dtype=pl.Float64),
                                           pl.Series("predicted", predicted, dtype=pl.Float64))
        out.append(rec)
    return out


def shift_figure(group: dict, *, styles=None, title: str | None = None):
    """Shifted vs in-distribution accuracy of one group's points on logit axes, with the fitted line and y = x.

    Family colours and configuration markers are those of every figure (:class:`probe.analysis.Styles`); the
    chosen frozen probe of a configuration is filled, its fine-tune hatched, the other protocols hollow.
    """
    from ._figures import FAMILY_COLORS, FAMILY_NAMES, _styles, metric_name, new_figure

    pts = group["points"]
    styles = _styles(styles, pts)
    fig = new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    x, y = pts["acc_id"].to_numpy(), pts["acc_shift"].to_numpy()
    n_x, n_y = int(pts["n_id"].max()), int(pts["n_shift"].max())
    lo = 0.5 / max(n_x, n_y)
    for r in pts.iter_rows(named=True):
        st = styles.of(r["backbone_config"])
        colour = FAMILY_COLORS.get(r["family"], "tab:gray")
        face = colour if r["chosen"] == "frozen" else "white"
        ax.scatter([np.clip(r["acc_id"], lo, 1 - lo)], [np.clip(r["acc_shift"], lo, 1 - lo)], marker=st["marker"],
                   s=46, facecolors=face, edgecolors=colour, hatch="////" if r["chosen"] == "fine-tuned" else None,
                   linewidths=1.2, zorder=3)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("logit")
    ax.set_yscale("logit")
    ticks = FixedLocator([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    for axis in (ax.xaxis, ax.yaxis):  # accuracies in percent on the logit axes
        axis.set_major_locator(ticks)
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:g}"))
        axis.set_minor_formatter(NullFormatter())
    grid = np.linspace(max(lo, min(x.min(), y.min()) * 0.8), min(1 - lo, 1 - (1 - max(x.max(), y.max())) * 0.8), 200)
    ax.plot(grid, grid, ls=":", color="0.5", lw=1, label="y = x (no drop)")
    if group["slope"] is not None:
        line = _expit(group["slope"] * _logit(grid, n_x) + group["intercept"])
        ax.plot(grid, line, color="0.2", lw=1.2,
                label=f"fit on logit scale: slope {group['slope']:.2f}, intercept {group['intercept']:+.2f}")
    for fam in sorted(set(pts["family"].to_list())):
        ax.scatter([], [], color=FAMILY_COLORS.get(fam, "tab:gray"), label=FAMILY_NAMES.get(fam, fam))
    label = metric_name(group["metric"])
    ax.set_xlabel(f"{group['dataset']} test {label} (%, logit scale)")
    ax.set_ylabel(f"{group['eval_dataset']} {label} (%, logit scale)")
    ax.set_title(title or f"{group['dataset']} → {group['eval_dataset']} ({group['evaluation']}): filled = chosen "
                          "frozen probe, hatched = fine-tune", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def shift_section(report) -> list[str]:
    """Markdown lines of the report's section "Distribution shift: effective robustness" (empty without shifted
    rows). ``report`` is the :class:`probe._report.Report` being written (its results, bootstrap settings,
    figure saver, family comparison lines and notes)."""
    from ._select import job_table

    jobs = job_table(report.results_dir, shifted=True)
    points = shift_points(jobs, notes=report.notes)
    groups = effective_robustness(points, **report.kw)
    if not groups:
        return []
    pct = report.pct
    lines = ["## Distribution shift: effective robustness", "",
             "Each model the protocol selected on a dataset (the frozen probe chosen on val and refitted, the "
             "fine-tune's chosen epoch) was scored once more on shifted copies of its test images (`eval_on`); "
             "nothing was fitted or selected on them. A point is one configuration and protocol at full data (seeds "
             "averaged); the line is fitted through every point of a dataset and shifted set on **logit-scaled** "
             "accuracies, as Taori et al. (2020) do, and a configuration's *effective robustness* is its shifted "
             "accuracy minus the line's prediction at its in-distribution accuracy (in points; positive = more "
             f"robust than its in-distribution accuracy predicts). Brackets: {pct} bootstrap intervals that resample "
             "the test images of both sets and refit the line in every resample. The table lists each "
             "configuration's chosen frozen probe and fine-tune; the figure shows every point.", ""]
    for g in groups:
        task = _tasks.get(g["task"])
        lines += [f"### {g['dataset']} → {g['eval_dataset']} · evaluation `{g['evaluation']}`", ""]
        if g["slope"] is None:
            lines += [f"No line: {g['note']}.", ""]
        else:
            lines += [f"Line over {g['n_points']} points: logit(shifted) = {g['slope']:.3f} · logit(in-distribution) "
                      f"{g['intercept']:+.3f}; intervals over {g['over']}.", ""]
            fig = shift_figure(g, styles=report.styles)
            path = report.save(fig, f"shift-{g['dataset']}-{g['eval_dataset']}-{g['evaluation']}")
            lines += [f"![{g['dataset']} → {g['eval_dataset']}: shifted vs in-distribution accuracy]({path})", ""]
        head = task.metric(g["metric"]).label or g["metric"]
        lines += [f"| configuration | family | chosen on val as | method | {g['dataset']} {head} | "
                  f"{g['eval_dataset']} {head} | drop | effective robustness |",
                  "|---|---|---|---|---|---|---|---|"]
        shown = g["points"].filter(g["points"]["chosen"] != "")
        for r in shown.sort("family", "config_label", "chosen", descending=[False, False, True]).iter_rows(named=True):
            er = "—" if r["er"] is None else (f"{r['er'] * 100:+.1f}" + (
                "" if r["er_low"] is None else f" [{r['er_low'] * 100:+.1f}, {r['er_high'] * 100:+.1f}]"))
            lines.append(f"| {r['config_label']} | {r['family']} | {r['chosen']} | {r['method']} | "
                         f"{r['acc_id'] * 100:.1f} | {r['acc_shift'] * 100:.1f} | "
                         f"{(r['acc_shift'] - r['acc_id']) * 100:+.1f} | {er} |")
        lines.append("")
        if g["note"] and g["slope"] is not None:
            lines += [f"_{g['note']}._", ""]
        for side in ("frozen", "fine-tuned"):
            best = _best_rows(report, g, side)
            if best is not None:
                lines += report.family_lines(task, best, g["metric"], f"{side} on {g['eval_dataset']}")
    return lines


def _best_rows(report, group: dict, side: str):
    """The chosen rows of one side of a group as :func:`probe.analysis.best_by_val` rows (for the families)."""
    pts = group["points"]
    rows = pts.filter(pts["chosen"] == side)
    if not rows.height:
        return None
    return rows.rename({"acc_shift": group["metric"], "files_shift": "files"})


def shift_rows(groups: list[dict]) -> list[dict]:
    """Flat records of :func:`effective_robustness` groups (one per point), for tables outside markdown."""
    out = []
    for g in groups:
        for r in g["points"].iter_rows(named=True):
            out.append(dict(r, slope=g["slope"], intercept=g["intercept"], note=g["note"], over=g["over"]))
    return out


