"""The report's section on faces and continuous targets: identification, verification, regression (e.g. age).

Markdown over :mod:`probe.analysis`, like the rest of the report: per dataset and task, one row per backbone
configuration with the task's metrics (units from :data:`probe.vocab.METRIC_UNITS`), a bootstrap interval over
the items the metric averages (queries, pairs, images; people for leave-one-person-out jobs), the paired
difference to the best configuration over the same items, the families compared as for classification, and
the figures (retrieved faces per query, predicted vs true).

- Identification: leave-one-image-out retrieval (``cosine``: nothing learned, no selection) per tap, and the
  identity classifiers under cross-validation (the protocol with the best seed-mean val score).
- Verification: ``cosine`` on the pairs' folds (threshold chosen on the other folds).
- Regression: the regression probe chosen on val (nested in each training fold under cross-validation) and,
  where it was run, fine-tuning with a regression head (the fine-tune mode chosen on val), with frozen vs
  fine-tuned per configuration: the paired difference over the same held-out images
  (:func:`probe.analysis.finetune_gains`), and the fine-tuned predictions in the predicted-vs-true figure.
"""

from __future__ import annotations

import json
import math

from .vocab import COSINE, FINETUNE, LOWER_IS_BETTER, METRIC_UNITS, TASK_METRICS

#: Tasks this section reports (the classification sections leave them out).
FACE_TASKS = ("identification", "verification", "regression")
_TITLES = {"identification": "Identification (who is this?)", "verification": "Verification (same person?)",
           "regression": "Regression (continuous target, e.g. age)"}


def fmt(metric: str, value, sd=None) -> str:
    """A metric value for tables: percent for fractions, two decimals otherwise; ``—`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    scale, digits = (100.0, 1) if METRIC_UNITS.get(metric, "fraction") == "fraction" else (1.0, 2)
    text = f"{value * scale:.{digits}f}"
    if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
        text += f" ± {sd * scale:.{digits}f}"
    return text


def _signed(metric: str, value) -> str:
    scale, digits = (100.0, 1) if METRIC_UNITS.get(metric, "fraction") == "fraction" else (1.0, 2)
    return f"{value * scale:+.{digits}f}"


def _interval(metric: str, low, high, signed: bool = False) -> str:
    if low is None:
        return ""
    scale, digits = (100.0, 1) if METRIC_UNITS.get(metric, "fraction") == "fraction" else (1.0, 2)
    sign = "+" if signed else ""
    return f" [{low * scale:{sign}.{digits}f}, {high * scale:{sign}.{digits}f}]"


def _unit(metric: str) -> str:
    unit = METRIC_UNITS.get(metric, "fraction")
    return "%" if unit == "fraction" else ("target units" if unit == "target" else unit)


def faces_section(report) -> list[str]:
    """Markdown lines of the section (empty when the results hold none of these tasks)."""
    pl = report.pl
    jobs = report.all_jobs
    if not jobs.height:
        return []
    jobs = jobs.filter(pl.col("task").is_in(list(FACE_TASKS)))
    if not jobs.height:
        return []
    lines = ["## Faces and continuous targets", "",
             "Identification ranks every other image of the dataset by cosine similarity of the frozen features "
             "(leave one image out: rank-1, rank-5, mAP over queries) or trains identity classifiers under "
             "cross-validation; verification picks the similarity threshold on the other folds of the pairs; "
             "regression probes are selected on val inside each training fold. Fractions are in percent, errors in "
             "the target's unit (years for age). Intervals are "
             f"{report.pct} bootstrap intervals over the items each metric averages (queries, pairs, images); "
             "'vs best' is the paired difference to the best configuration on the same items. A cross-validated "
             "value is the mean over folds ± the sd over folds. Fine-tuning (a regression head trained with an L1 "
             "loss, its epoch chosen on val inside each training fold) is listed beside the frozen probes where it "
             "was run, with the paired difference over the same held-out images.", ""]
    for dataset in sorted(set(jobs["dataset"].to_list())):
        sub = jobs.filter(pl.col("dataset") == dataset)
        lines += [f"### {dataset}", ""]
        for task in FACE_TASKS:
            tj = sub.filter(pl.col("task") == task)
            if tj.height:
                lines += _task_block(report, dataset, task, tj)
    return lines


def _candidates(report, task: str, tj):
    """Rows to compare per configuration: retrieval/verification per tap (nothing selected), the learned
    probes' best protocol by val (per selection metric), and fine-tuning's best protocol by val (never ranked
    against the frozen probes: the two are compared side by side)."""
    pl, a = report.pl, report.a
    protocols = a.aggregate_seeds(tj, metrics=[m for m in TASK_METRICS[task] if m in tj.columns])
    fixed = protocols.filter(pl.col("probe") == COSINE)
    learned = protocols.filter(~pl.col("probe").is_in([COSINE, FINETUNE]))
    tuned = protocols.filter(pl.col("probe") == FINETUNE)
    groups = []
    for tap in sorted(set(fixed["tap"].to_list())) if fixed.height else []:
        groups.append((f"{COSINE} / {tap}", fixed.filter(pl.col("tap") == tap)))
    for name, frame in ((LEARNED, learned), (TUNED, tuned)):
        best = a.best_by_val(frame, notes=report.notes) if frame.height else frame
        if best.height:
            groups.append((name, best))
    return groups


#: Names of the groups of rows selected on val: the frozen probes that learn, and fine-tuning.
LEARNED, TUNED = "learned probes (best by val)", "fine-tuning (best by val)"


def _task_block(report, dataset: str, task: str, tj) -> list[str]:
    a = report.a
    metrics = [m for m in TASK_METRICS[task] if m != "verif_acc_sd"]
    head = metrics[0]
    lines = [f"#### {_TITLES[task]}", ""]
    groups = _candidates(report, task, tj)
    scatter = []  # the regression figure: every group's held-out predictions
    for name, rows in groups:
        recs = sorted(rows.to_dicts(), key=lambda r: (report.styles.configs.index(r["backbone_config"])
                                                      if r["backbone_config"] in report.styles.configs else 0))
        lower = head in LOWER_IS_BETTER
        best = min(recs, key=lambda r: (r[head] if lower else -r[head]) if r[head] is not None else math.inf)
        cols = [f"{m} ({_unit(m)})" for m in metrics]
        lines += [f"{name}:", "", "| configuration | family | method | " + " | ".join(cols) +
                  f" | {head} [{report.pct} CI] | vs best {head} [{report.pct} CI] | n |",
                  "|---|---|---|" + "---:|" * len(cols) + "---:|---:|---:|"]
        for r in recs:
            files = list(r["files"])
            sd, people = _fold_summary(files, r, metrics, task)
            cells = [fmt(m, r[m], sd.get(m)) for m in metrics]
            if head in people:  # leave-one-person-out: the interval resamples people (saved with the job)
                ci_text = fmt(head, r[head]) + _interval(head, *people[head]) + " (over people)"
            else:
                ci = a.job_ci(files, metric=head, **report.kw) if head in a.BOOTSTRAP_METRICS else None
                ci_text = fmt(head, r[head]) + (_interval(head, ci.low, ci.high) if ci else " (no per-item values)")
            if r is best:
                diff = "best"
            else:
                d = a.compare_jobs(files, list(best["files"]), metric=head, **report.kw) \
                    if head in a.BOOTSTRAP_METRICS else None
                diff = (_signed(head, d.estimate) + _interval(head, d.low, d.high, signed=True)
                        + (" (separated)" if d.excludes_zero else "")) if d else "—"
            lines.append(f"| `{r['config_label']}` | {r['family']} | {r['method']} | " + " | ".join(cells) +
                         f" | {ci_text} | {diff} | {r['n_eval'] or '—'} |")
        lines.append("")
        lines += _families(report, task, rows, head, name)
        if task == "regression":
            scatter += recs
        else:
            lines += _figures(report, dataset, task, name, recs)
    frames = dict(groups)
    if LEARNED in frames and TUNED in frames:
        lines += _frozen_vs_tuned(report, head, metrics, frames[LEARNED], frames[TUNED])
    if scatter:
        lines += _figures(report, dataset, task, TUNED if TUNED in frames else LEARNED, scatter)
    return lines


def _frozen_vs_tuned(report, head: str, metrics: list[str], frozen, tuned) -> list[str]:
    """Per configuration: the best frozen probe beside fine-tuning and the paired difference over the same
    held-out items (:func:`probe.analysis.finetune_gains`, pairing by image id)."""
    a = report.a
    # rmse is not a mean of per-item values (its items are squared errors): no paired interval, no column here
    extra = [m for m in metrics[1:] if m in a.BOOTSTRAP_METRICS and m not in a.DENSE_METRICS]
    gains = a.finetune_gains(frozen, tuned, metric=head, extra_metrics=extra, **report.kw)
    rows = [g for g in (gains.to_dicts() if gains.height else []) if g["finetune"] is not None]
    if not rows:
        return []
    lower = head in LOWER_IS_BETTER
    lines = [f"Frozen vs fine-tuned ({head}; {'lower' if lower else 'higher'} is better; differences are fine-tuned "
             f"− frozen, paired over the same held-out images, {report.pct} CI):", "",
             f"| configuration | family | frozen (best by val) | frozen {head} [{report.pct} CI] | fine-tuned | "
             f"fine-tuned {head} [{report.pct} CI] | fine-tuned − frozen {head} [{report.pct} CI] | "
             + "".join(f"fine-tuned − frozen {m} | " for m in extra) + "paired n |",
             "|---|---|---|---:|---|---:|---:|" + "---:|" * len(extra) + "---:|"]
    rows.sort(key=lambda g: (report.styles.configs.index(g["backbone_config"])
                             if g["backbone_config"] in report.styles.configs else 0, g["config_label"]))
    for g in rows:
        def side(name):
            return fmt(head, g[name]) + _interval(head, g[f"{name}_low"], g[f"{name}_high"]) \
                if g[f"{name}_low"] is not None else fmt(head, g[name])
        if g["gain"] is None:
            diff = "— (no frozen probe)"
        elif g["gain_low"] is None:
            diff = _signed(head, g["gain"]) + f" ({g['note'] or 'no interval'})"
        else:
            diff = (_signed(head, g["gain"]) + _interval(head, g["gain_low"], g["gain_high"], signed=True)
                    + (" (separated)" if g["gain_low"] > 0 or g["gain_high"] < 0 else ""))
        cells = []
        for m in extra:
            value = g.get(f"{m}_gain")
            cells.append("—" if value is None else _signed(m, value) + (
                _interval(m, g[f"{m}_gain_low"], g[f"{m}_gain_high"], signed=True)
                if g.get(f"{m}_gain_low") is not None else ""))
        n = g["gain_n"]
        lines.append(f"| `{g['config_label']}` | {g['family']} | {g['frozen_method'] or '—'} | "
                     f"{side('frozen') if g['frozen'] is not None else '—'} | {g['finetune_method']} | "
                     f"{side('finetune')} | {diff} | " + "".join(f"{c} | " for c in cells)
                     + f"{int(n) if n is not None else '—'} |")
    return lines + [""]


def _fold_summary(files, row, metrics, task) -> tuple[dict, dict]:
    """The sd to show beside each metric (over seeds when there are several; else over folds: a
    cross-validation's summary row, or verif_acc_sd) and the intervals over people of a grouped cross-validation."""
    if row.get("n", 1) > 1:
        return {m: row.get(f"{m}_sd") for m in metrics}, {}
    if task == "verification":
        return {"verif_acc": row.get("verif_acc_sd")}, {}
    import polars as pl

    try:
        params = pl.read_parquet(files[0]).filter(pl.col("fold").is_null() & pl.col("selected"))["params"]
        summary = json.loads(params[0]) if len(params) else {}
    except (OSError, ValueError, IndexError):
        summary = {}
    sd = {m: v for m, v in summary.get("fold_sd", {}).items() if m in metrics}
    people = summary.get("interval", {}) if summary.get("interval_over") == "people" else {}
    return sd, people


def _families(report, task: str, rows, head: str, name: str) -> list[str]:
    a = report.a
    if len(set(rows["family"].to_list())) < 2 or head not in a.BOOTSTRAP_METRICS:
        return []
    lines = []
    for c in a.compare_families(rows, metric=head, **report.kw):
        na, nb = a.FAMILY_NAMES.get(c["family_a"], c["family_a"]), a.FAMILY_NAMES.get(c["family_b"], c["family_b"])
        comp = c["comparison"]
        if comp is None:
            text = f"{fmt(head, c['mean_a'] - c['mean_b'])} (no interval: {c['note']})"
        else:
            text = (fmt(head, comp.estimate) + _interval(head, comp.low, comp.high, signed=True)
                    + ("; separated" if comp.separates else "; the evidence does not separate them"))
        lines.append(f"- {name}, {na} − {nb} ({head}, {c['weights_kind']}): {text} "
                     f"({len(c['members_a'])} vs {len(c['members_b'])} backbones, two-level bootstrap over items and "
                     "backbones).")
    return lines + ([""] if lines else [])


def _figures(report, dataset: str, task: str, name: str, recs: list[dict]) -> list[str]:
    a = report.a
    if task == "identification" and name.startswith(COSINE):
        files = {r["config_label"]: list(r["files"])[0] for r in recs}
        examples = a.retrieval_examples(files, queries=3)
        loader = _image_loader(files)
        if not examples["queries"] or loader is None:
            return []
        fig = a.retrieval_figure(examples, loader, title=f"{dataset}: nearest faces per query and backbone "
                                                         "(green: same person, red: another)")
        png = report._save(fig, f"{dataset}-{name}-retrieval")
        return [f"![{dataset}: retrieved faces]({png})", ""]
    if task == "regression":
        entries = [dict(r, file=list(r["files"])[0]) for r in recs]
        try:
            from .results import load_artifacts

            unit = "years" if str(load_artifacts(entries[0]["file"]).get("target_name", "")) == "age" else "units"
        except (OSError, ValueError):
            unit = "units"
        tuned = " and fine-tuning" if any(r["method"].startswith(FINETUNE) for r in recs) else ""
        fig = a.prediction_scatter_figure(entries, styles=report.styles, unit=unit,
                                          title=f"{dataset}: predicted vs true (held-out predictions of the frozen "
                                                f"probes{tuned})")
        png = report._save(fig, f"{dataset}-{task}-scatter")
        return [f"![{dataset}: predicted vs true]({png})", ""]
    return []


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
