"""The end of a study run, shared by both runners: the console summary and the report.

:func:`console_summary` is the one place the console summary is made: from the analysis layer
(:func:`probe.analysis.summary_lines`), as the report is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any



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


def console_summary(results_dir: str | os.PathLike) -> tuple[list, list[str]]:
    """The console summary of a results folder: (the tables of :func:`probe.analysis.summary_tables`, the lines of
    :func:`probe.analysis.summary_lines`). The analysis layer makes both, as it makes the report's."""
    from .. import analysis

    tables = analysis.summary_tables(results_dir)
    return tables, analysis.summary_lines(results_dir, tables=tables)
