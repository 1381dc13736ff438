"""The in-process runner: every job of the plan in this process (or under torchrun, in every rank), in order.

:func:`run_study` checks everything that can be checked before the first job, runs the plan one job at a time
(one status line each), skips the jobs whose prerequisites failed (:func:`probe.study.plan.blocked_by`) and
ends with the console summary and the report (:mod:`probe.study.summary`). Its sibling,
:mod:`probe.study.executor`, runs the same plan through submitit.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ProbeError
from .._schema import WORKERS, Setting, check_setting
from .checks import check_study
from .file import Study, load_study
from .._console import job_label
from .jobs import run_job_on_ranks
from .plan import Job, blocked_by, plan_study
from .summary import finish


@dataclass
class StudyOutcome:
    """What :func:`run_study` did: per job its status and seconds, and where the outputs are."""

    jobs: list[dict]
    results_dir: Path
    report_path: Path | None
    summary: Any = None  # the console summary's tables (probe.analysis.summary_tables)


def run_study(study: Study | str | os.PathLike | None = None, *, cache_dir: str | os.PathLike = "cache",
              results_dir: str | os.PathLike = "results", report_dir: str | os.PathLike | None = "report",
              pretrain_dir: str | os.PathLike = "pretrain", device: str | None = None, jobs: int | None = None,
              workers: int | None = None, progress: bool = True, keep_going: bool = False,
              out=None) -> StudyOutcome:
    """Run every job of a study (extraction through the cache, sweeps, fine-tuning), then the report.

    Work already done is found and skipped (cached features are reused, results files that exist are not
    recomputed), so running the same study again takes seconds. Prints one line per job to ``out`` (stdout).

    Parameters
    ----------
    study : Study, path or None
        A parsed study, a study file, or None for the embedded default study.
    cache_dir, results_dir, report_dir, pretrain_dir : path
        Outputs; ``report_dir=None`` skips the report. Pretraining results and weights go to ``pretrain_dir``
        so that they do not mix with the transfer results.
    device, jobs : optional
        Override the study's device and parallel sweep jobs.
    keep_going : bool
        When a job fails, run the remaining ones (jobs that need the failed one are skipped), write the report
        of what succeeded, list the failures on stderr, then raise a ProbeError. Without it the first failure
        stops the study.

    Raises
    ------
    UsageError
        Before any job: a bad study, an output folder that cannot be written, an unknown backbone name, a
        missing dataset or weights file.
    ProbeError
        A failed job (with ``keep_going``: after the others ran, naming how many failed).
    """
    from .._checks import check_output_dirs

    out = out or sys.stdout
    if not isinstance(study, Study):
        study = load_study(study)
    # Everything that can be checked is checked before the first job (pretraining takes minutes).
    check_output_dirs({"--cache-dir": cache_dir, "--results-dir": results_dir, "--report-dir": report_dir,
                       "--pretrain-dir": pretrain_dir if study.pretrain is not None else None})
    check_study(study)
    from .._runtime import resolve_device

    device = device or study.device
    resolve_device(device)
    jobs = check_setting(jobs or study.jobs, Setting("int", lo=1), "--jobs", example="--jobs 2")
    workers = check_setting(workers, WORKERS, "--workers", example="--workers 4")
    from .. import _distributed

    if _distributed.init(device) and not _distributed.is_main():
        out = open(os.devnull, "w")  # under torchrun rank 0 speaks for the group
    plan = plan_study(study)
    print(f"study {study.name}: {len(plan)} jobs, {len(study.backbones)} backbones x {len(study.datasets)} datasets; "
          f"cache {cache_dir}, results {results_dir}", file=out, flush=True)
    records, failures = _run_plan(plan, study, cache_dir=cache_dir, results_dir=results_dir,
                                  pretrain_dir=pretrain_dir, device=device, jobs=jobs, workers=workers,
                                  progress=progress, keep_going=keep_going, out=out)
    summary, report_path = _distributed.on_main(lambda: finish(results_dir, report_dir, out, study.source))
    if failures:
        _raise_failures(failures, len(plan))
    return StudyOutcome(jobs=records, results_dir=Path(results_dir), report_path=report_path, summary=summary)


def _run_plan(plan: list[Job], study: Study, *, keep_going: bool, out, **options) -> tuple[list[dict], list[dict]]:
    """Run the jobs in order, one status line each; returns (records, failures).

    Without ``keep_going`` the first failure raises, naming the job. With it, a failure is recorded and the
    jobs that need the failed one (:attr:`Job.needs`: every job of a backbone whose pretraining failed, the
    sweeps of a failed extraction) are skipped rather than run on the wrong weights or retried.
    """
    pretrained: dict[str, str] = {}  # backbone name -> weights file from the pretrain job
    records, failures = [], []
    failed: set[str] = set()  # keys of the jobs that failed, or were skipped because a job they need failed
    for i, job in enumerate(plan, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(plan)}] {job.describe()} ...", file=out, end=" ", flush=True)
        blocked = blocked_by(job, plan, lambda other: other.key not in failed)
        if blocked:
            failed.add(job.key)
            print(f"skipped ({blocked} failed)", file=out, flush=True)
            records.append({"job": job.describe(), "status": f"skipped ({blocked} failed)", "seconds": 0.0})
            continue
        try:
            with job_label(job.backbone.name):  # names the backbone in the run's warning summary
                status = run_job_on_ranks(job, study, pretrained, **options)
        except ProbeError as exc:
            print("failed", file=out, flush=True)
            if not keep_going:
                raise type(exc)(f"study job {i}/{len(plan)} ({job.describe()}) failed: {exc}") from None
            failed.add(job.key)
            failures.append({"index": i, "job": job.describe(), "error": str(exc)})
            records.append({"job": job.describe(), "status": "failed", "seconds": time.perf_counter() - t0})
            continue
        seconds = time.perf_counter() - t0
        print(f"{status} ({seconds:.1f} s)", file=out, flush=True)
        records.append({"job": job.describe(), "status": status, "seconds": seconds})
    return records, failures


def _raise_failures(failures: list[dict], n_jobs: int) -> None:
    """List the failed jobs on stderr, then raise one ProbeError line that counts them."""
    print(f"probe: {len(failures)} of {n_jobs} study jobs failed:", file=sys.stderr)
    for f in failures:
        print(f"  [{f['index']}/{n_jobs}] {f['job']}: {f['error']}", file=sys.stderr)
    raise ProbeError(f"{len(failures)} of {n_jobs} study jobs failed (listed above); fix them and rerun: finished "
                     "jobs are skipped")

