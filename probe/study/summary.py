"""The end of a study run, shared by both runners: the console summary and the report.

:func:`console_summary` is the one place the console summary is made; it will call the analysis layer's
summary of a results folder (:mod:`probe.analysis`), as the report does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..vocab import PROBES


def finish(results_dir, report_dir, out, source: str = "<default>") -> tuple[Any, Any]:
    """Print the console summary to ``out`` and write the reports, markdown then HTML (unless ``report_dir`` is
    None); returns (summary, report.md's path). ``source`` is the study file (``<default>``: the packaged default
    study), named in the HTML report's provenance."""
    summary, lines = console_summary(results_dir)
    for line in lines:
        print(line, file=out)
    report_path = None
    if report_dir is not None:
        from .._report import write_report

        report_path = write_report(results_dir, report_dir)
        print(f"report: {report_path}", file=out)
        from importlib.resources import files

        from .._report_html import write_html_report

        default = source == "<default>"
        study_file = Path(str(files("probe").joinpath("default_study.toml"))) if default else Path(source)
        html = write_html_report(results_dir, report_dir, study=study_file,
                                 command="probe run" + ("" if default else f" {source}"))
        print(f"report: {html}", file=out)
    from .._console import print_warning_summary

    print_warning_summary(out)  # the warnings of the run, counted (probe._console)
    return summary, report_path


def console_summary(results_dir: str | os.PathLike) -> tuple[Any, list[str]]:
    """The console summary of a results folder: (the summary table or None, its lines for the console)."""
    summary = study_summary(results_dir)
    return summary, ([] if summary is None else _format_table(summary).split("\n"))


def study_summary(results_dir: str | os.PathLike):
    """One row per (dataset, backbone configuration, selection metric): the test top-1 of every protocol on pooled
    features (``tap`` pooled, fine-tuning) at shots = 0, averaged over seeds (:mod:`probe.analysis`).

    Columns come in a fixed order: dataset, configuration, family, selected on, then the probes in
    :data:`probe.vocab.PROBES` order and the fine-tuning modes. A column is one protocol; when one probe ran under
    several protocols (e.g. two val fractions), each gets its own column, suffixed with its protocol id. Returns
    None when there are no results.
    """
    import polars as pl

    from .. import analysis, tasks

    try:
        jobs = analysis.job_table(results_dir)
    except UsageError:
        return None
    jobs = (jobs.filter(pl.col("tap").is_in(["pooled", "-"]) & (pl.col("shots") == 0)
                        & (pl.col("task") == tasks.DEFAULT)) if jobs.height else jobs)
    if jobs.is_empty():
        return None
    protocols = analysis.aggregate_seeds(jobs, metrics=["top1"])
    # one column per protocol: the method's name, with the protocol id when a method ran under several protocols
    ids = protocols.select("method", "protocol").unique()
    shared = set(ids.group_by("method").len().filter(pl.col("len") > 1)["method"].to_list())
    protocols = protocols.with_columns(
        pl.when(pl.col("method").is_in(sorted(shared)))
        .then(pl.concat_str([pl.col("method"), pl.lit(" ["), pl.col("protocol").str.slice(0, 12), pl.lit("]")]))
        .otherwise(pl.col("method")).alias("column"))
    protocols = protocols.with_columns(pl.col("top1").alias("value"),
                                       pl.col("n").alias("seeds"))
    index = ["dataset", "configuration", "family", "selected on"]
    wide = (protocols.rename({"config_label": "configuration", "select_metric": "selected on"})
            .pivot(on="column", index=index, values="value", aggregate_function=None))
    order = {p: i for i, p in enumerate(PROBES)}
    columns = sorted((c for c in wide.columns if c not in index),
                     key=lambda c: (c.startswith("finetune"), order.get(c.split(" ")[0], len(order)), c))
    renamed = protocols.rename({"config_label": "configuration", "select_metric": "selected on"})
    seeds = (renamed.group_by(index).agg(pl.col("seeds").min().alias("lo"), pl.col("seeds").max().alias("hi"))
             .select(*index, pl.when(pl.col("lo") == pl.col("hi")).then(pl.col("lo").cast(pl.Utf8))
                     .otherwise(pl.concat_str([pl.col("lo"), pl.lit("-"), pl.col("hi")])).alias("seeds")))
    return (wide.join(seeds, on=index, how="left").select(*index, "seeds", *columns)
            .sort("dataset", "configuration", "selected on"))


def _format_table(frame) -> str:
    cols = frame.columns
    rows = [[("-" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)) for v in r]
            for r in frame.iter_rows()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["test top-1 (%) of the selected setting, pooled features, shots = 0, mean over seeds "
             "(one row per backbone configuration):",
             "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
