"""A whole study from one TOML file: backbones x datasets x protocols, then the report.

Three parts, read in the order a study moves:

- the file (:mod:`.file`, :mod:`.checks`): the format and its one declared schema (:func:`study_schema`),
  :func:`load_study`, and what the schema cannot see (:func:`check_study`: names, files, datasets); keys that
  name tasks, probes and evaluation options are checked against the task registry (:mod:`probe.tasks`);
- the plan (:mod:`.plan`): :func:`plan_study`'s jobs, each carrying the jobs it needs, so that a failed
  prerequisite is decided in one place; :mod:`.jobs` runs one job;
- the runners, siblings over one plan: in-process (:mod:`.inprocess`, :func:`run_study`) and through submitit
  (:mod:`.executor`, ``probe run --executor local|slurm``); both end with :mod:`.summary`.
"""

from __future__ import annotations

from .checks import check_datasets, check_study
from .file import ALL_BLOCKS, BackboneSpec, DatasetSpec, Study, load_study, study_schema
from .inprocess import StudyOutcome, run_study
from .plan import Job, blocked_by, expand_taps, plan_study

__all__ = ["ALL_BLOCKS", "BackboneSpec", "DatasetSpec", "Job", "Study", "StudyOutcome", "blocked_by",
           "check_datasets", "check_study", "expand_taps", "load_study", "plan_study", "run_study", "study_schema"]
