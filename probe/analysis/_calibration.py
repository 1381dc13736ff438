"""Calibration in the reports: per dataset, the val-chosen best frozen probe and fine-tune of every configuration
with their test ECE before and after temperature scaling (paired bootstrap intervals over test items), and
reliability diagrams.

The numbers come from the calibration columns and per-item statistics the jobs saved (:mod:`probe._calibration`;
the task's :attr:`probe.tasks.Task.extra_metrics`), the intervals from the analysis layer's one bootstrap
(:func:`probe.analysis.resample_interval`: seeds averaged, items paired by id, people or scenes resampled where the
items cluster). What is compared is what the task's other tables compare (:func:`probe.analysis.report_groups`):
nothing is chosen on calibration, and nothing crosses configurations, datasets or evaluation schemes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .. import _calibration

#: The sides of a configuration the calibration table shows, in order: (report_groups key, label).
SIDES = (("frozen", "best frozen probe"), ("tuned", "fine-tuning"))


def _has_calibration(rows) -> bool:
    return "ece" in rows.columns and rows.height > 0 and rows["ece"].null_count() < rows.height


def calibration_table(chosen, jobs, *, side: str = "", n_boot: int = 10_000, seed: int = 0, ci: float = 0.95):
    """Test calibration of chosen protocols: ECE before and after temperature scaling with their intervals.

    Parameters
    ----------
    chosen : polars.DataFrame
        :func:`probe.analysis.best_by_val` rows (one per configuration and dataset: ``files`` are the seeds).
    jobs : polars.DataFrame
        :func:`probe.analysis.job_table` rows holding those files (their calibration columns).
    side : str
        A label for the rows' ``side`` column (``best frozen probe``, ``fine-tuning``).
    n_boot, seed, ci
        Bootstrap resamples, seed and confidence level.

    Returns
    -------
    polars.DataFrame
        One row per chosen protocol with calibration: its identity (``dataset``, ``evaluation``,
        ``backbone_config``, ``config_label``, ``family``, ``method``, ``side``, ``calib_input``), ``n`` (seeds),
        ``temperature`` (seed mean), ``top1``, ``ece``/``ece_low``/``ece_high``, ``ece_ts`` (and its interval),
        ``change`` = ECE after − before with its paired interval (``change_low``/``change_high``), seed means of
        ``mce``, ``mce_ts``, ``nll``, ``nll_ts``, ``brier``, ``brier_ts``, ``n_test``, ``over`` (what was
        resampled), ``note`` (why an interval is missing) and ``files`` (the seeds' job files).
    """
    import polars as pl

    from ._stats import resample_interval

    out = []
    kw = dict(n_boot=n_boot, seed=seed, ci=ci)
    for r in chosen.to_dicts():
        files = list(r["files"])
        sub = jobs.filter(pl.col("file").is_in(files))
        if not _has_calibration(sub):
            continue
        task = sub["task"][0]
        mean = {c: sub[c].drop_nulls().mean() for c in ("temperature", "top1", "ece", "ece_ts", "mce", "mce_ts",
                                                          "nll", "nll_ts", "brier", "brier_ts")}
        row = dict(dataset=r["dataset"], evaluation=sub["evaluation"][0], backbone_config=r["backbone_config"],
                   config_label=r["config_label"], family=r["family"], method=r["method"], side=side,
                   calib_input=",".join(sorted(set(sub["calib_input"].drop_nulls().to_list()))), n=len(files),
                   **mean, n_test=sub["n_eval"][0], over="", note="", files=files)
        notes = []
        for name, metric, sides in (("ece", "ece", [files]), ("ece_ts", "ece_ts", [files]),
                                    ("change", ["ece_ts", "ece"], [files, files])):
            res = resample_interval(sides, metric, task=task, **kw)
            if isinstance(res, str):
                row[f"{name}_low"] = row[f"{name}_high"] = None
                notes.append(res)
                if name == "change":
                    row["change"] = (row["ece_ts"] - row["ece"]) if None not in (row["ece"], row["ece_ts"]) else None
                continue
            row[name] = res.estimate
            row[f"{name}_low"], row[f"{name}_high"] = res.low, res.high
            row["over"] = res.over
        row["note"] = "; ".join(dict.fromkeys(notes))
        out.append(row)
    return pl.DataFrame(out) if out else pl.DataFrame()


def reliability_bins(files, *, task: str | None = None, n_bins: int = _calibration.N_BINS) -> dict | None:
    """Per confidence bin, the mean confidence, accuracy and item count before and after temperature scaling,
    over the test items of ``files`` (the seeds of one protocol, their items counted together); None when the
    jobs saved no calibration statistics.

    Returns ``{"conf", "acc", "count", "conf_ts", "acc_ts", "count_ts"}``, each [n_bins] (NaN in an empty bin).
    """
    from ._items import _files, job_items

    sums = {k: np.zeros(n_bins) for k in ("c", "a", "n", "c_ts", "a_ts", "n_ts")}
    found = False
    for f in _files(files):
        items = job_items(f, metric="ece", task=task)
        if items is None or "item/conf" not in items.stats:
            continue
        found = True
        hit = np.asarray(items.stats["item/top1"], dtype=np.float64)
        for suffix in ("", "_ts"):
            conf = np.asarray(items.stats[f"item/conf{suffix}"], dtype=np.float64)
            b = _calibration.bin_index(conf, n_bins)
            sums[f"c{suffix}"] += np.bincount(b, weights=conf, minlength=n_bins)
            sums[f"a{suffix}"] += np.bincount(b, weights=hit, minlength=n_bins)
            sums[f"n{suffix}"] += np.bincount(b, minlength=n_bins)
    if not found:
        return None
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for suffix in ("", "_ts"):
            n = sums[f"n{suffix}"]
            out[f"conf{suffix}"] = np.where(n > 0, sums[f"c{suffix}"] / n, np.nan)
            out[f"acc{suffix}"] = np.where(n > 0, sums[f"a{suffix}"] / n, np.nan)
            out[f"count{suffix}"] = n
    return out


def reliability_figure(curves: list[dict], *, styles=None, title: str | None = None):
    """Reliability diagrams, one panel per backbone configuration (family colours).

    ``curves`` holds one dict per (configuration, side): ``backbone_config``, ``config_label``, ``family``,
    ``side`` (``best frozen probe`` / ``fine-tuning``), ``method`` and ``bins`` (:func:`reliability_bins`).
    Each panel draws accuracy against mean confidence per non-empty bin, before temperature scaling (dashed,
    open markers) and after (solid, filled); circles are the frozen probe, squares fine-tuning; the diagonal is
    perfect calibration.
    """
    import textwrap

    import polars as pl
    from matplotlib.lines import Line2D

    from ._figures import FAMILY_COLORS, _panels, _styles, _wrapped

    frame = pl.DataFrame([{k: c[k] for k in ("backbone_config", "config_label", "family")} for c in curves])
    styles = _styles(styles, frame)
    configs = sorted({c["backbone_config"] for c in curves}, key=styles.configs.index)
    fig, axes = _panels([textwrap.fill(styles.legend(c), 48) for c in configs])
    markers = {label: m for (_, label), m in zip(SIDES, "os")}
    for ax, config in zip(axes, configs):
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, alpha=0.6)
        color = styles.color(config)
        for c in (c for c in curves if c["backbone_config"] == config):
            bins, marker = c["bins"], markers.get(c["side"], "o")
            for suffix, style, face in (("", "--", "none"), ("_ts", "-", color)):
                keep = bins[f"count{suffix}"] > 0
                ax.plot(bins[f"conf{suffix}"][keep], bins[f"acc{suffix}"][keep], linestyle=style, marker=marker,
                        color=color, markerfacecolor=face, markersize=4, linewidth=1.2)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean confidence (top label)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    handles = [Line2D([], [], color="gray", marker=markers[label], linestyle="none", label=label)
               for _, label in SIDES if any(c["side"] == label for c in curves)]
    handles += [Line2D([], [], color="gray", linestyle="--", label="before temperature scaling"),
                Line2D([], [], color="gray", linestyle="-", label="after (T fitted on val)")]
    handles += [Line2D([], [], color=FAMILY_COLORS.get(f, "tab:gray"), linewidth=6, label=f)
                for f in dict.fromkeys(styles.family[c] for c in configs)]
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False, ncols=3)
    fig.suptitle(_wrapped(title or "reliability diagrams (15 equal-width confidence bins, test items)", fig),
                 fontsize=10)
    return fig


def calibration_groups(jobs, task, *, notes: list[str] | None = None) -> list[tuple[str, object]]:
    """``(side label, best_by_val rows)`` of one task's rows of one evaluation scheme, as its tables compare them
    (:func:`probe.analysis.report_groups`: the best frozen probe and the counterpart fine-tune)."""
    from ._compare import report_groups

    groups = report_groups(jobs, task, notes=notes)
    return [(label, groups[key]) for key, label in SIDES if groups[key].height]


def calibration_section(jobs, task, save_figure: Callable, *, styles=None, notes: list[str] | None = None,
                        n_boot: int = 10_000, seed: int = 0, ci: float = 0.95) -> list[str]:
    """Markdown lines of the calibration section of one task's rows (every evaluation scheme apart).

    Parameters
    ----------
    jobs : polars.DataFrame
        The task's rows of :func:`probe.analysis.job_table`.
    task : probe.tasks.Task
    save_figure : callable
        ``save_figure(fig, name) -> str`` saves a figure and returns the path to link.
    styles : probe.analysis.Styles, optional
        The report's colours and markers.

    Returns
    -------
    list of str
        Empty when no row carries calibration columns.
    """
    import polars as pl

    if not _has_calibration(jobs):
        return []
    pct = f"{ci:.0%}"
    intro = ("Top-label expected calibration error (ECE, 15 equal-width confidence bins) on test, before and after "
             "temperature scaling: one temperature per job, fitted on val by minimising NLL (test never touches it). "
             "Probes whose scores are not probabilities (ridge, kNN, centroid) are calibrated from their scores "
             "treated as logits (`calib_input` = scores). The methods are those the tables above chose on val; "
             f"intervals are {pct} bootstrap intervals over the test items, the change paired on the same items "
             "(seeds averaged). Binned ECE is biased upward on a resample (and on a small test set), so its "
             "interval can sit above the estimate.")
    lines = ["## Calibration", "", intro, ""]
    schemes = sorted(set(jobs["evaluation"].to_list()))
    kw = dict(n_boot=n_boot, seed=seed, ci=ci)
    for evaluation in schemes:
        scoped = jobs.filter(pl.col("evaluation") == evaluation)
        tables = [calibration_table(rows, scoped, side=label, **kw)
                  for label, rows in calibration_groups(scoped, task)]  # (notes: the task's tables say them)
        tables = [t for t in tables if t.height]
        if not tables:
            continue
        table = pl.concat(tables, how="diagonal_relaxed")
        order = {c: i for i, c in enumerate(styles.configs)} if styles is not None else {}
        for dataset in sorted(set(table["dataset"].to_list())):
            rows = sorted(table.filter(pl.col("dataset") == dataset).to_dicts(),
                          key=lambda r: (order.get(r["backbone_config"], len(order)), r["side"]))
            suffix = "" if len(schemes) == 1 else f" · evaluation `{evaluation}`"
            header = (f"| configuration | family | method | calibrated from | T | test top-1 (%) | ECE (%) [{pct} CI] "
                      f"| ECE after TS (%) [{pct} CI] | change (pp) [{pct} CI] | NLL → after TS | Brier → after TS "
                      "| seeds | test images |")
            lines += [f"### {dataset}{suffix}", "", header, "|---|---|---|---|" + "---:|" * 9]
            curves = []
            for r in rows:
                lines.append("| " + " | ".join([
                    f"`{r['config_label']}`", r["family"], f"{r['side']}: {r['method']}", r["calib_input"] or "—",
                    _num(r["temperature"], 2), _num(r["top1"], 1, 100), _iv(r["ece"], r["ece_low"], r["ece_high"]),
                    _iv(r["ece_ts"], r["ece_ts_low"], r["ece_ts_high"]),
                    _iv(r["change"], r["change_low"], r["change_high"], signed=True),
                    f"{_num(r['nll'], 3)} → {_num(r['nll_ts'], 3)}",
                    f"{_num(r['brier'], 3)} → {_num(r['brier_ts'], 3)}",
                    str(r["n"]), str(r["n_test"] or "—")]) + " |")
                if r["note"] and notes is not None:
                    notes.append(f"calibration of {r['config_label']} ({r['side']}) on {dataset}: {r['note']}.")
            for r in rows:
                bins = reliability_bins(r["files"], task=task.name)
                if bins is not None:
                    curves.append(dict(r, bins=bins))
            if curves:
                fig = reliability_figure(curves, styles=styles, title=f"{dataset}: reliability diagrams (test items; "
                                         "dashed: before temperature scaling, solid: after)")
                png = save_figure(fig, f"{dataset}-{evaluation}-reliability")
                lines += ["", f"![{dataset}: reliability diagrams]({png})", ""]
            else:
                lines.append("")
    return lines


def _num(value, digits: int, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "—"
    return f"{value * scale:.{digits}f}"


def _iv(est, low, high, *, signed: bool = False) -> str:
    """``'4.2 [3.1, 5.5]'`` in percent (points, signed, for a change)."""
    if est is None:
        return "—"
    f = "+.1f" if signed else ".1f"
    text = f"{est * 100:{f}}"
    return text if low is None else f"{text} [{low * 100:{f}}, {high * 100:{f}}]"
