"""Run a whole study: extraction through the cache, probe sweeps, fine-tuning, then the report.

With no STUDY file, runs the embedded default study: timm's tiny test ConvNets and transformers, trained briefly
on the synthetic 'shapes' dataset and transferred to scikit-learn's 'digits' (frozen probes and fine-tuning),
offline, in a few minutes on a CPU. Outputs go under the current directory: cache/ (features), results/ (one
parquet per job), pretrain/ (source-task weights) and report/ (report.md with figures). Work already done is
skipped, so a second run takes seconds.

--executor local|slurm runs the same jobs through submitit (one job array per stage; Slurm resources from the
study's [executor] table); --status shows each job's state and the log of a failed one. Under torchrun
(torchrun --nproc-per-node N -m probe run ...) the ranks share every extraction.
"""

from __future__ import annotations

import argparse
import sys

from probe._console import progress_option

from ._common import DEFAULT_CACHE_DIR, DEFAULT_RESULTS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", nargs="?", default=None, metavar="STUDY.toml",
                        help="study file (TOML; format in the README); default: the embedded default study")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="feature cache directory")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="results directory (one parquet file per job)")
    parser.add_argument("--report-dir", default="report", metavar="DIR", help="where report.md and figures go")
    parser.add_argument("--pretrain-dir", default="pretrain", metavar="DIR",
                        help="results and weights of the [pretrain] step, kept apart from the transfer results")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the report at the end")
    parser.add_argument("--plan", action="store_true",
                        help="only check the study and that each dataset's files are there (printing its classes "
                             "and split sizes), print the jobs it would run, in order, and exit; computes nothing")
    parser.add_argument("--keep-going", action=argparse.BooleanOptionalAction, default=False,
                        help="when a job fails, run the remaining ones (those that need it are skipped), write the "
                             "report, list the failures at the end and exit 1")
    parser.add_argument("--device", default=None, help="torch device (default: the study's, else auto)")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="sweep jobs in parallel (default: the study's, else 1)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="data loading workers (default: the extractor's choice)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars inside jobs on a terminal; when the output is not a terminal (a log "
                             "file), only the line per finished job (default); --progress: bars there too; "
                             "--no-progress: no bars")
    parser.add_argument("--executor", choices=["inprocess", "local", "slurm"], default="inprocess",
                        help="where the jobs run: in this process; as local processes through submitit (one job "
                             "array per stage, one stage after the other); or as Slurm job arrays through submitit, "
                             "later stages depending on earlier ones, resources from the study's [executor] table. "
                             "Rerunning submits only the jobs that are not done")
    parser.add_argument("--status", action="store_true",
                        help="print each job's state (done, running, submitted, failed with its log file, "
                             "skipped) from --log-dir and exit; computes nothing")
    parser.add_argument("--log-dir", default=None, metavar="DIR",
                        help="submitit's logs and the jobs' state files (default: logs/<study name>)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from probe._errors import UsageError
    from probe._io import safe_name
    from probe.study import check_datasets, check_study, load_study, plan_study, run_study

    study = load_study(args.study)  # the whole file against the study schema
    if args.plan:
        check_study(study, data=False)  # backbone names; the datasets below, every one listed with its problem
        jobs = plan_study(study)
        problems = check_datasets(study, out=sys.stdout)
        print(f"study {study.name} ({study.source}): {len(jobs)} jobs")
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.describe()}")
        if problems:
            raise UsageError(f"{len(problems)} dataset(s) of the study cannot be read; first: {problems[0]}")
        return 0
    log_dir = args.log_dir or str(Path("logs") / safe_name(study.name))
    if args.status:
        from probe.study.executor import print_status

        print_status(study, log_dir)
        return 0
    if args.executor != "inprocess":
        from probe.study.executor import run_with_executor

        run_with_executor(study, executor=args.executor, log_dir=log_dir, cache_dir=args.cache_dir,
                          results_dir=args.results_dir, report_dir=args.report_dir if args.report else None,
                          pretrain_dir=args.pretrain_dir, device=args.device, jobs=args.jobs,
                          workers=args.workers, progress=False)
        return 0
    run_study(study, cache_dir=args.cache_dir, results_dir=args.results_dir,
              report_dir=args.report_dir if args.report else None, pretrain_dir=args.pretrain_dir,
              device=args.device, jobs=args.jobs, workers=args.workers, progress=progress_option(args.progress, lines=False),
              keep_going=args.keep_going)
    return 0
