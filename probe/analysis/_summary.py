"""The console summary of a results folder (what ``probe run`` prints at the end), over the same selection rules
as the report: one table per task and evaluation scheme, one row per (dataset, backbone configuration,
selection metric), one column per method (probe / tap, fine-tuning), each cell the seed-mean test value of the
task's headline metric at shots = 0 on the pooled representation (``pooled``; ``patch`` for dense tasks; ``-``
for fine-tuning). Layer-wise taps and few-shot protocols are left to the report.
"""

from __future__ import annotations

import os


def summary_tables(results_dir: str | os.PathLike) -> list[tuple]:
    """``(title, polars.DataFrame, Metric)`` per task and evaluation scheme of ``results_dir`` (empty when it
    holds none); the :class:`probe.tasks.Metric` is the task's headline, the one in the cells.

    Columns: ``dataset``, ``configuration``, ``family``, ``selected on``, ``seeds`` (``1`` or ``1-3``), then one
    column per method: the task's probes in its order, then the fine-tuning modes; a method run under several
    protocols gets one column per protocol, suffixed with the protocol id's first characters.
    """
    import polars as pl

    from .. import tasks as _tasks
    from .._errors import UsageError
    from ._select import aggregate_seeds, job_table

    try:
        jobs = job_table(results_dir)
    except UsageError:
        return []
    if jobs.is_empty():
        return []
    jobs = jobs.filter((pl.col("shots") == 0) & pl.col("tap").is_in(["pooled", "patch", "patch16", "-"]))
    out = []
    present = set(jobs["task"].to_list())
    for task in _tasks.all_tasks():
        if task.name not in present:
            continue
        metric = task.metric(task.headline)
        tj = jobs.filter(pl.col("task") == task.name)
        for evaluation in sorted(set(tj["evaluation"].to_list())):
            sub = tj.filter(pl.col("evaluation") == evaluation)
            protocols = aggregate_seeds(sub, metrics=[metric.name])
            ids = protocols.select("method", "protocol").unique()
            shared = set(ids.group_by("method").len().filter(pl.col("len") > 1)["method"].to_list())
            protocols = protocols.with_columns(
                pl.when(pl.col("method").is_in(sorted(shared)))
                .then(pl.concat_str([pl.col("method"), pl.lit(" ["), pl.col("protocol").str.slice(0, 12),
                                     pl.lit("]")]))
                .otherwise(pl.col("method")).alias("column"),
                pl.col(metric.name).alias("value"))
            renamed = protocols.rename({"config_label": "configuration", "select_metric": "selected on"})
            index = ["dataset", "configuration", "family", "selected on"]
            wide = renamed.pivot(on="column", index=index, values="value", aggregate_function="first")
            order = {p: i for i, p in enumerate(task.probes)}
            columns = sorted((c for c in wide.columns if c not in index),
                             key=lambda c: (c.startswith("finetune"), order.get(c.split(" ")[0], len(order)), c))
            seeds = (renamed.group_by(index).agg(pl.col("n").min().alias("lo"), pl.col("n").max().alias("hi"))
                     .select(*index, pl.when(pl.col("lo") == pl.col("hi")).then(pl.col("lo").cast(pl.Utf8))
                             .otherwise(pl.concat_str([pl.col("lo"), pl.lit("-"), pl.col("hi")])).alias("seeds")))
            frame = (wide.join(seeds, on=index, how="left").select(*index, "seeds", *columns)
                     .sort("dataset", "configuration", "selected on"))
            unit = {"fraction": "%", "target": task.target_unit}.get(metric.unit, metric.unit)
            lower = "" if metric.higher_is_better else ", lower is better"
            title = (f"{task.name}: test {metric.label or metric.name} ({unit}{lower}) of the selected setting, "
                     f"shots = 0, mean over seeds, evaluation `{evaluation}` (one row per backbone configuration):")
            out.append((title, frame, metric))
    return out


def summary_lines(results_dir: str | os.PathLike, *, tables: list[tuple] | None = None) -> list[str]:
    """The lines ``probe run`` prints at the end: :func:`summary_tables` as aligned text (fractions in percent,
    other units with three decimals, ``-`` for a method a configuration did not run). Empty without results.
    ``tables``: those of :func:`summary_tables` when the caller has them already."""
    lines: list[str] = []
    for title, frame, metric in (summary_tables(results_dir) if tables is None else tables):
        scale, fmt = (100.0, ".1f") if metric.unit == "fraction" else (1.0, ".3f")
        cols = frame.columns
        rows = [[("-" if v is None else f"{scale * v:{fmt}}" if isinstance(v, float) else str(v)) for v in r]
                for r in frame.iter_rows()]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        if lines:
            lines.append("")
        lines += [title, "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return lines
