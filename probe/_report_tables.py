"""The report's blocks for any task: scored tables per dataset and evaluation scheme, and dense probes beside
fine-tuning. Markdown over :mod:`probe.analysis`; a task's report hook (:meth:`probe.tasks.Task.report_section`)
composes them through the :class:`probe._report.Report` it is given.

- :func:`scored_tables` (every task's default section): per dataset and evaluation scheme, one table per group of
  rows (a fixed method per tap, e.g. ``cosine / pooled``, where nothing is selected; the learned probes' best
  protocol by val; fine-tuning's best protocol by val), each metric in its unit, the headline's bootstrap
  interval over the items it averages (or the people/scenes they cluster in, said in the cell), the paired
  difference to the configuration chosen on **val** (never the best test score), the families, and frozen vs
  fine-tuned side by side.
- :func:`dense_section`: per dataset and scheme, the frozen dense probe beside the single-task fine-tune with the
  linear head (the frozen probe's counterpart) and the gain; joint multi-task fine-tunes and other heads are
  listed apart, their tasks and head named.
- The figures a task's :meth:`~probe.tasks.Task.report_figures` hook names: :func:`retrieval_figures`,
  :func:`prediction_scatter_figure` and :func:`dense_examples_figure` build them (matplotlib, over
  :mod:`probe.analysis`); :func:`retrieval_figure`, :func:`prediction_scatter` and :func:`dense_examples` save them
  as PNGs for the markdown, and the HTML explorer draws the same figures as inline SVG.

What each section compares (fixed methods, the frozen candidates, the fine-tunes that are the frozen probe's
counterpart) comes from :func:`probe.analysis.report_groups`, as the task declares it.
"""

from __future__ import annotations

import json
import math

from .vocab import FINETUNE

#: Names of the groups of rows selected on val: the frozen probes that learn, and fine-tuning.
LEARNED, TUNED = "learned probes (best by val)", "fine-tuning (best by val)"


# ----------------------------------------------------------------------------------------- formatting


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_fraction(task, metric: str) -> bool:
    """True when ``metric`` of ``task`` (a :class:`probe.tasks.Task` or None) prints as a percentage."""
    if task is None or metric not in task.metric_names:
        return True
    return task.metric(metric).unit == "fraction"


def fmt(task, metric: str, value, sd=None, *, digits: int = 2) -> str:
    """A metric value for tables: percent (one decimal) for fractions, ``digits`` decimals otherwise."""
    if _missing(value):
        return "—"
    scale, d = (100.0, 1) if is_fraction(task, metric) else (1.0, digits)
    text = f"{value * scale:.{d}f}"
    if not _missing(sd):
        text += f" ± {sd * scale:.{d}f}"
    return text


def signed(task, metric: str, value, *, digits: int = 2) -> str:
    scale, d = (100.0, 1) if is_fraction(task, metric) else (1.0, digits)
    return f"{value * scale:+.{d}f}"


def interval(task, metric: str, low, high, *, sign: bool = False, digits: int = 2) -> str:
    if low is None or high is None:
        return ""
    scale, d = (100.0, 1) if is_fraction(task, metric) else (1.0, digits)
    s = "+" if sign else ""
    return f" [{low * scale:{s}.{d}f}, {high * scale:{s}.{d}f}]"


def unit_label(task, metric: str) -> str:
    """``%`` for fractions, the target's unit (``m`` for depth) or the unit's name otherwise."""
    if task is None or metric not in task.metric_names:
        return "%"
    unit = task.metric(metric).unit
    return {"fraction": "%", "target": task.target_unit}.get(unit, unit)


def head(task, metric: str) -> str:
    """Column heading of a metric: its label and unit (``RMSE (m)``)."""
    label = task.metric(metric).label if task is not None and metric in task.metric_names else metric
    return f"{label or metric} ({unit_label(task, metric)})"


def over(result) -> str:
    """`` (over people)`` / `` (over images)`` for a bootstrap result (empty without one)."""
    return f" (over {result})" if isinstance(result, str) and result else ""


# ----------------------------------------------------------------------------------------- scored tables


def scored_tables(report, task, jobs) -> list[str]:
    """Markdown of the generic section of ``task`` (see the module docstring)."""
    pl = report.pl
    if not jobs.height:
        return []
    lines = report.group_heading(task.report_group)
    lines += [f"### {task.title}", ""]
    for dataset in sorted(set(jobs["dataset"].to_list())):
        sub = jobs.filter(pl.col("dataset") == dataset)
        schemes = sorted(set(sub["evaluation"].to_list()))
        for evaluation in schemes:
            lines += [f"#### {dataset} · evaluation `{evaluation}`", ""]
            lines += _scheme_block(report, task, dataset, evaluation, sub.filter(pl.col("evaluation") == evaluation))
    return lines


def _candidates(report, task, tj) -> list[tuple[str, object]]:
    """Rows to compare per configuration (:func:`probe.analysis.report_groups`): fixed methods per tap (probes
    the task runs without learning, no val score: nothing selected), the learned probes' best protocol by val, and
    fine-tuning's best protocol by val (never ranked against the frozen probes: the two are compared side by
    side)."""
    groups = report.a.report_groups(tj, task, notes=report.notes)
    out = list(groups["fixed"])
    for name, key in ((LEARNED, "frozen"), (TUNED, "tuned")):
        if groups[key].height:
            out.append((name, groups[key]))
    return out


def _reference(report, task, recs: list[dict]) -> dict | None:
    """The row every other row is compared with: the best *val* score (in the rows' selection metric), ties by
    configuration label; None when no row has a val score (nothing was selected, so no reference either: one
    picked by its test score would favour it)."""
    scored = [r for r in recs if r.get("val_score") is not None]
    if not scored:
        return None
    lower = report.a.lower_is_better(scored[0]["select_metric"], task.name)
    return min(scored, key=lambda r: ((r["val_score"] if lower else -r["val_score"]), r["config_label"]))


def _scheme_block(report, task, dataset: str, evaluation: str, tj) -> list[str]:
    a = report.a
    # an sd or standard-error column (verif_acc_sd, verif_acc_se) shows beside its metric
    metrics = [m for m in task.metric_names if m in tj.columns
               and not (m[-3:] in ("_sd", "_se") and m[:-3] in task.metric_names)]
    hd = task.headline
    lines = []
    groups = _candidates(report, task, tj)
    shown = []
    undefined = {}  # metric -> why its n/a cells are undefined (the task's missing_reason)
    for name, rows in groups:
        recs = sorted(rows.to_dicts(), key=lambda r: (report.config_index(r["backbone_config"]), r["config_label"]))
        ref = _reference(report, task, recs)
        several = any((r.get("n") or 1) > 1 for r in recs)
        cols = [head(task, m) + (" ± SE over folds" if f"{m}_se" in task.metric_names and not several else "")
                for m in metrics]
        ref_head = f"vs best {hd} (chosen on val) [{report.pct} CI]" if ref is not None else None
        lines += [f"{name}:", "", "| configuration | family | method | " + " | ".join(cols) +
                  f" | {hd} [{report.pct} CI] |" + (f" {ref_head} |" if ref_head else "") + " n |",
                  "|---|---|---|" + "---:|" * len(cols) + "---:|" + ("---:|" if ref_head else "") + "---:|"]
        for r in recs:
            files = list(r["files"])
            sd = _fold_sd(files, r, metrics, task)
            cells = []
            for m in metrics:
                reason = task.missing_reason(m) if _missing(r.get(m)) else None
                if reason:
                    undefined[m] = reason
                cells.append("n/a" if reason else fmt(task, m, r.get(m), sd.get(m)))
            ci = a.resample_interval([files], hd, task=task.name, **report.kw)
            if isinstance(ci, str):
                ci_text = fmt(task, hd, r.get(hd)) + f" (no interval: {ci})"
            else:
                ci_text = fmt(task, hd, r.get(hd)) + interval(task, hd, ci.low, ci.high) + over(ci.over)
            diff = ""
            if ref is not None:
                if r is ref:
                    diff = "reference (best val)"
                else:
                    d = a.resample_interval([files, list(ref["files"])], hd, task=task.name, **report.kw)
                    diff = ("—" if isinstance(d, str) else
                            signed(task, hd, d.estimate) + interval(task, hd, d.low, d.high, sign=True)
                            + (" (separated)" if d.excludes_zero else "") + over(d.over))
            lines.append(f"| `{r['config_label']}` | {r['family']} | {r['method']} | " + " | ".join(cells) +
                         f" | {ci_text} |" + (f" {diff} |" if ref is not None else "") + f" {r['n_eval'] or '—'} |")
        lines.append("")
        lines += [f"_n/a in {head(task, m)}: {why}._" for m, why in undefined.items()] + ([""] if undefined else [])
        undefined = {}
        if ref is None and len(recs) > 1:
            lines += ["_Nothing was selected on val in this group (no val score), so no configuration is the "
                      "reference: a reference picked by its test score would favour it._", ""]
        lines += report.family_lines(task, rows, hd, name)
        shown.append((name, recs))
    frames = dict(groups)
    if LEARNED in frames and TUNED in frames:
        lines += _frozen_vs_tuned(report, task, metrics, frames[LEARNED], frames[TUNED])
    lines += task.report_figures(report, dataset, evaluation, shown)
    return lines


def _frozen_vs_tuned(report, task, metrics: list[str], frozen, tuned) -> list[str]:
    """Per configuration: the best frozen probe beside fine-tuning and the paired difference over the same
    held-out items (:func:`probe.analysis.finetune_gains`, pairing by item id, groups resampled)."""
    a = report.a
    hd = metrics[0] if metrics else task.headline
    extra = [m for m in task.gain_metrics if m in metrics[1:]]
    gains = a.finetune_gains(frozen, tuned, metric=hd, extra_metrics=extra, **report.kw)
    rows = [g for g in (gains.to_dicts() if gains.height else []) if g["finetune"] is not None]
    if not rows:
        return []
    lower = not task.metric(hd).higher_is_better
    lines = [f"Frozen vs fine-tuned ({hd}; {'lower' if lower else 'higher'} is better; differences are fine-tuned "
             f"− frozen, paired over the same held-out items, {report.pct} CI):", "",
             f"| configuration | family | frozen (best by val) | frozen {hd} [{report.pct} CI] | fine-tuned | "
             f"fine-tuned {hd} [{report.pct} CI] | fine-tuned − frozen {hd} [{report.pct} CI] | "
             + "".join(f"fine-tuned − frozen {m} | " for m in extra) + "paired n |",
             "|---|---|---|---:|---|---:|---:|" + "---:|" * len(extra) + "---:|"]
    rows.sort(key=lambda g: (report.config_index(g["backbone_config"]), g["config_label"]))
    for g in rows:
        def side(name):
            return fmt(task, hd, g[name]) + interval(task, hd, g[f"{name}_low"], g[f"{name}_high"]) \
                + over(g.get(f"{name}_over"))
        if g["gain"] is None:
            diff = "— (no frozen probe)"
        elif g["gain_low"] is None:
            diff = signed(task, hd, g["gain"]) + f" ({g['note'] or 'no interval'})"
        else:
            diff = (signed(task, hd, g["gain"]) + interval(task, hd, g["gain_low"], g["gain_high"], sign=True)
                    + (" (separated)" if g["gain_low"] > 0 or g["gain_high"] < 0 else "") + over(g["gain_over"]))
        cells = []
        for m in extra:
            value = g.get(f"{m}_gain")
            cells.append("—" if value is None else signed(task, m, value) + (
                interval(task, m, g[f"{m}_gain_low"], g[f"{m}_gain_high"], sign=True)
                if g.get(f"{m}_gain_low") is not None else ""))
        n = g["gain_n"]
        lines.append(f"| `{g['config_label']}` | {g['family']} | {g['frozen_method'] or '—'} | "
                     f"{side('frozen') if g['frozen'] is not None else '—'} | {g['finetune_method']} | "
                     f"{side('finetune')} | {diff} | " + "".join(f"{c} | " for c in cells)
                     + f"{int(n) if n is not None else '—'} |")
    return lines + [""]


def _fold_sd(files, row, metrics, task) -> dict:
    """The sd to show beside each metric: over seeds when there are several; else a cross-validation's sd over
    folds (its summary row's params, ``fold_sd``), or a metric that is the standard error or sd of another
    (``verif_acc_se``, the standard error over the pair folds that LFW's protocol reports, labelled so in the
    heading; else ``verif_acc_sd``)."""
    if (row.get("n") or 1) > 1:
        return {m: row.get(f"{m}_sd") for m in metrics}
    own = {m: row.get(f"{m}_se" if f"{m}_se" in task.metric_names else f"{m}_sd") for m in metrics
           if f"{m}_se" in task.metric_names or f"{m}_sd" in task.metric_names}
    import polars as pl

    try:
        params = pl.read_parquet(files[0]).filter(pl.col("fold").is_null() & pl.col("selected"))["params"]
        summary = json.loads(params[0]) if len(params) else {}
    except (OSError, ValueError, IndexError, pl.exceptions.PolarsError):
        summary = {}
    sd = {m: v for m, v in (summary.get("fold_sd") or {}).items() if m in metrics}
    return {**own, **sd}


# ----------------------------------------------------------------------------------------- dense


DENSE_INTRO = (
    "Per dataset, task and evaluation scheme, the frozen dense probe (a linear layer on each patch token, "
    "bilinearly upsampled to the labels; `linear / patch`) beside its fine-tuned counterpart: the single-task "
    "fine-tune with a linear head, each chosen on val. Joint multi-task fine-tunes and other heads are listed "
    "apart with their tasks and head (see also the multi-task section). Segmentation: mIoU (averaged over the "
    "classes predicted or present in the test ground truth, as mmsegmentation and torchmetrics define it) and "
    "pixel accuracy, in percent; depth: RMSE (m), abs rel and log10 (lower is better), and δ thresholds in "
    "percent, on valid pixels (see `probe.dense` for the crop and the depth cap). Every configuration sees the "
    "whole frame resized to its input size (no centre crop) and is scored on the same pixels, its predictions "
    "upsampled to the label resolution; `grid` is its token grid (rows x columns; a ConvNet's final map is "
    "stride 32, a ViT/16's stride 16: tap `patch16` gives a ConvNet's stride-16 stage for a matched-stride "
    "comparison). Intervals are bootstrap {pct} CIs over test images (or the scenes they cluster in, where saved; "
    "paired for differences), resampling each image's saved statistics (intersection and union counts; depth error sums).")


def dense_section(report, task, jobs) -> list[str]:
    """Markdown of a dense task's section (see the module docstring)."""
    a, pl = report.a, report.pl
    if not jobs.height:
        return []
    lines = report.group_heading(task.report_group, [DENSE_INTRO.format(pct=report.pct), ""])
    metrics = [m for m in task.metric_names if m in jobs.columns]
    hd = metrics[0]
    for dataset in sorted(set(jobs["dataset"].to_list())):
        for evaluation in sorted(set(jobs.filter(pl.col("dataset") == dataset)["evaluation"].to_list())):
            sub = jobs.filter((pl.col("dataset") == dataset) & (pl.col("evaluation") == evaluation))
            # the frozen dense probe and its counterpart fine-tune (single-task, linear head), as the task says
            groups = a.report_groups(sub, task, notes=report.notes)
            fz, ft, others = groups["frozen"], groups["tuned"], groups["others"]
            gains = a.finetune_gains(fz, ft, metric=hd, extra_metrics=[m for m in task.gain_metrics if m in metrics],
                                     **report.kw) \
                if fz.height or ft.height else pl.DataFrame()
            lines += [f"### {dataset}: {task.name}", "", f"Evaluation: `{evaluation}`.", ""]
            grid = _grids(sub)
            header = ["configuration", "grid", "family", "method (val-selected)", "seeds",
                      f"{head(task, hd)} [{report.pct} CI]", *(head(task, m) for m in metrics[1:]),
                      "train images", "test images"]
            lines += ["| " + " | ".join(header) + " |", "|---|---|---|---|" + "---:|" * (len(header) - 4)]
            rows = []
            for side, frame in (("frozen", fz), ("finetune", ft)):
                by_config = {r["backbone_config"]: r for r in frame.to_dicts()} if frame.height else {}
                for g in gains.to_dicts() if gains.height else []:
                    r = by_config.get(g["backbone_config"])
                    if r is not None:
                        rows.append((side, g, r))
            rows.sort(key=lambda t: (report.config_index(t[1]["backbone_config"]), t[0]))
            for side, g, r in rows:
                cells = [f"`{r['config_label']}`", grid(r), r["family"], r["method"], str(r["n"]),
                         fmt(task, hd, r[hd], digits=3) + interval(task, hd, g[f"{side}_low"], g[f"{side}_high"],
                                                                    digits=3) + over(g.get(f"{side}_over")),
                         *(fmt(task, m, r[m], digits=3) for m in metrics[1:]), _int(r["n_train"]), _int(r["n_eval"])]
                lines.append("| " + " | ".join(cells) + " |")
            both = [g for g in (gains.to_dicts() if gains.height else []) if g["gain"] is not None
                    and g["frozen_method"] and g["finetune_method"]]
            if both:
                lines += ["", f"Fine-tuning (single-task, linear head) − frozen probe, same test images "
                              f"({head(task, hd)}, {report.pct} CI): " + "; ".join(
                                  f"`{g['config_label']}` " + signed(task, hd, g["gain"], digits=3)
                                  + interval(task, hd, g["gain_low"], g["gain_high"], sign=True, digits=3)
                                  + over(g["gain_over"]) for g in both) + "."]
            if others.height:
                lines += ["", *_other_finetunes(report, task, metrics, others)]
            shown = [(LEARNED, [r for side, _, r in rows if side == "frozen"]),
                     (TUNED, [r for side, _, r in rows if side == "finetune"])]
            figures = task.report_figures(report, dataset, evaluation, shown)
            if figures:
                lines += ["", *figures]
            lines.append("")
    return lines


def _other_finetunes(report, task, metrics: list[str], others) -> list[str]:
    """Fine-tunes that are not the frozen probe's counterpart (joint multi-task runs, other heads): one row per
    protocol, seeds averaged, with the co-trained tasks and the head named; nothing is selected among them."""
    a, pl = report.a, report.pl
    from .analysis import finetune_tasks

    described = {}
    for protocol, params in others.select("protocol", "params").iter_rows():
        tasks, head_ = finetune_tasks(params)
        described[protocol] = ("+".join(tasks) or task.name, head_ or "not recorded")
    protocols = a.aggregate_seeds(others)
    hd = metrics[0]
    lines = [f"Other fine-tunes of {task.name} (joint multi-task runs or other heads; not the frozen probe's "
             "counterpart, so not in the gain above):", "",
             "| configuration | grid | family | trained tasks | head | seeds | "
             f"{head(task, hd)} [{report.pct} CI] | " + " | ".join(head(task, m) for m in metrics[1:]) + " |",
             "|---|---|---|---|---|---:|---:|" + "---:|" * len(metrics[1:])]
    grid = _grids(others)
    recs = sorted(protocols.to_dicts(), key=lambda r: (report.config_index(r["backbone_config"]), r["protocol"]))
    for r in recs:
        tasks, head_ = described.get(r["protocol"], (task.name, "not recorded"))
        ci = a.resample_interval([list(r["files"])], hd, task=task.name, **report.kw)
        cell = fmt(task, hd, r[hd], digits=3) + ("" if isinstance(ci, str) else
                                                 interval(task, hd, ci.low, ci.high, digits=3) + over(ci.over))
        lines.append(f"| `{r['config_label']}` | {grid(r)} | {r['family']} | {tasks} | {head_} | {r['n']} | {cell} | "
                     + " | ".join(fmt(task, m, r[m], digits=3) for m in metrics[1:]) + " |")
    if pl is not None:
        lines.append("")
    return lines


def _grids(jobs):
    """``row -> its token grid`` (the dense rows' ``grid`` column, e.g. ``14x14``) by configuration and protocol
    (the tap is part of the protocol); ``—`` for rows written without one."""
    found: dict = {}
    if "grid" in jobs.columns:
        for config, protocol, value in jobs.select("backbone_config", "protocol", "grid").iter_rows():
            if value:
                found.setdefault((config, protocol), value)

    def grid(r) -> str:
        return found.get((r.get("backbone_config"), r.get("protocol")), "—")

    return grid


def _int(value) -> str:
    return "—" if value is None else str(int(value))


# ----------------------------------------------------------------------------------------- task figures


def retrieval_figures(a, dataset: str, shown: list[tuple[str, list[dict]]]) -> list[tuple[str, str, object]]:
    """The retrieved faces of a few queries, per configuration, for each fixed retrieval group (``cosine / tap``):
    ``(group name, title, matplotlib figure)`` each, drawn by :func:`probe.analysis.retrieval_figure` (``a`` is
    :mod:`probe.analysis`); none where the dataset's images cannot be opened here."""
    out = []
    for name, recs in shown:
        if name in (LEARNED, TUNED) or not recs:
            continue
        files = {r["config_label"]: list(r["files"])[0] for r in recs}
        examples = a.retrieval_examples(files, queries=3)
        if not examples["queries"]:
            continue
        loader = _image_loader(files)
        if loader is None:
            continue
        title = f"{dataset}: nearest faces per query and backbone (green: same person, red: another)"
        out.append((name, title, a.retrieval_figure(examples, loader, title=title)))
    return out


def retrieval_figure(report, dataset: str, evaluation: str, shown: list[tuple[str, list[dict]]]) -> list[str]:
    """Markdown of :func:`retrieval_figures` (PNG files beside the report)."""
    lines = []
    for name, _, fig in retrieval_figures(report.a, dataset, shown):
        png = report.save(fig, f"{dataset}-{name}-retrieval")
        lines += [f"![{dataset}: retrieved faces]({png})", ""]
    return lines


def prediction_scatter_figure(a, styles, dataset: str, shown: list[tuple[str, list[dict]]]):
    """Predicted vs true target, one panel per configuration and group (frozen probes, fine-tuning):
    ``(title, matplotlib figure)``, or None without rows."""
    recs = [r for _, rows in shown for r in rows]
    if not recs:
        return None
    entries = [dict(r, file=list(r["files"])[0]) for r in recs]
    try:
        from .results import load_artifacts

        unit = "years" if str(load_artifacts(entries[0]["file"]).get("target_name", "")) == "age" else "units"
    except (OSError, ValueError, KeyError):
        unit = "units"
    tuned = " and fine-tuning" if any(r["method"].startswith(FINETUNE) for r in recs) else ""
    title = f"{dataset}: predicted vs true (held-out predictions of the frozen probes{tuned})"
    return title, a.prediction_scatter_figure(entries, styles=styles, unit=unit, title=title)


def prediction_scatter(report, dataset: str, evaluation: str, shown: list[tuple[str, list[dict]]]) -> list[str]:
    """Markdown of :func:`prediction_scatter_figure` (a PNG file beside the report)."""
    made = prediction_scatter_figure(report.a, report.styles, dataset, shown)
    if made is None:
        return []
    task = next(r for _, rows in shown for r in rows)["task"]
    suffix = "" if report.schemes(dataset, task)[:1] == [evaluation] else f"-{evaluation}"  # first scheme: plain
    png = report.save(made[1], f"{dataset}-{task}-scatter{suffix}")
    return [f"![{dataset}: predicted vs true]({png})", ""]


def dense_examples_figure(a, task, dataset: str, shown: list[tuple[str, list[dict]]]):
    """Test images, ground truth and each configuration's frozen dense probe (the previews its job saved, from
    the :data:`LEARNED` group of ``shown``): ``(title, matplotlib figure)``, or None without previews."""
    previews = []
    for name, recs in shown:
        if name != LEARNED:
            continue
        for r in recs:
            p = a.job_preview(list(r["files"])[0])
            if p is not None:
                previews.append((f"{r['config_label']}", p))
    if not previews:
        return None
    classes = [str(c) for c in previews[0][1].get("classes", [])]
    title = f"{dataset} {task.name}: test images, ground truth and each configuration's frozen dense probe"
    return title, a.dense_examples_figure(previews, task=task.name, classes=classes or None, title=title)


def dense_examples(report, task, dataset: str, evaluation: str, shown: list[tuple[str, list[dict]]]) -> list[str]:
    """Markdown of :func:`dense_examples_figure` (a PNG file beside the report)."""
    made = dense_examples_figure(report.a, task, dataset, shown)
    if made is None:
        return []
    png = report.save(made[1], f"{dataset}-{task.name}-examples")
    return [f"![{dataset} {task.name}: examples]({png})"]


def _image_loader(files: dict):
    """``id -> PIL image`` of the dataset a retrieval job ran on (its spec is saved with the job), or None."""
    from .results import load_artifacts

    try:
        spec = str(load_artifacts(next(iter(files.values())))["dataset_spec"])
        from ._datasets import open_dataset

        source = open_dataset(spec)
    except Exception:  # the dataset may be gone from this machine: the figure is left out, not the report
        return None
    where = {i: (s, k) for s in source.split_names for k, i in enumerate(source.ids[s])}

    def load(id_):
        split, k = where[str(id_)]
        return source.load(split, k)

    return load
