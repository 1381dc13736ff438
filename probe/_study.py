"""The study's former module path, kept for code that still imports it: every name lives in :mod:`probe.study`
(the file format, the plan, the runners). New code imports from there."""

from __future__ import annotations

from .study import (ALL_BLOCKS, BackboneSpec, DatasetSpec, Job, Study, StudyOutcome, check_datasets,  # noqa: F401
                    check_study, expand_taps, load_study, plan_study, run_study, study_schema)
from .study.jobs import run_job as _run_job  # noqa: F401
from .study.summary import _format_table, study_summary  # noqa: F401
