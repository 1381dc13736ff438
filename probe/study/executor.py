"""A study's job list through submitit: local processes (``--executor local``) or Slurm job arrays
(``--executor slurm``), never a scheduler of probe's own.

How a study is submitted:

- The jobs are :func:`probe.study.plan_study`'s, grouped into stages in the order data moves: pretraining,
  extraction, sweeps, transfer scores, fine-tuning, similarity. Each stage is one job array. On Slurm the arrays are submitted at once, each
  depending on the earlier ones (``afterany``: a job whose prerequisite failed finds that out itself and says
  so, exactly as ``probe run --keep-going`` would skip it); locally each stage starts when the one before has
  finished.
- Every job runs :func:`probe.study.jobs.run_job` in its own process, on the study object the driver pickled. A
  job that needs a backbone's pretrained weights asks the pretrain job for them, which finds its results done
  and answers at once. Work already done is skipped as in-process, and the cache's entry locks keep two jobs
  from writing one entry.
- Each job's state (submitted, running, done, failed, skipped, with its log files) is a small JSON file in
  ``<log_dir>/state/``; submitit's logs are in ``<log_dir>`` itself. ``probe run STUDY --status`` reads them;
  a rerun submits only the jobs that are not done.
- A job that Slurm preempts or times out is requeued by submitit's checkpointing (:meth:`StudyTask.checkpoint`)
  and resumes from the finished shards of its cache entry or from the last epoch checkpoint of its fine-tune.
- An extraction job with ``gpus > 1`` in ``[executor]`` runs one task per GPU, which form one torch.distributed
  group (:mod:`probe._distributed`) and share the entry's batches.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .._errors import ProbeError, UsageError
from .._io import write_text_atomic
from .jobs import run_job_on_ranks
from .plan import Job, blocked_by, plan_study
from .summary import finish

#: ``--executor`` values: ``inprocess`` is :func:`probe.run_study` itself.
EXECUTORS = ("inprocess", "local", "slurm")
#: Stages in the order they run; one job array each.
STAGES = ("pretrain", "extract", "sweep", "transfer", "finetune", "similarity")
#: Job states in the state files (``submitted`` and ``running`` are not final).
FINAL = ("done", "failed", "skipped")


def job_key(job: Job) -> str:
    """The name of a job's state file (:attr:`probe.study.plan.Job.key`)."""
    return job.key


def _state_path(log_dir: Path, job) -> Path:
    return Path(log_dir) / "state" / f"{job_key(job)}.json"


def read_state(log_dir: str | os.PathLike, job) -> dict:
    """The state record of ``job`` (``{}`` when it was never submitted)."""
    try:
        return json.loads(_state_path(Path(log_dir), job).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(log_dir: Path, job, **fields) -> None:
    path = _state_path(log_dir, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**read_state(log_dir, job), **fields, "job": job.describe(), "updated": time.time()}
    write_text_atomic(path, json.dumps(record, sort_keys=True))


def job_status(log_dir: str | os.PathLike, job) -> dict:
    """``state`` (done, failed, skipped, running, submitted, not submitted, died) and what is known about it.

    A ``running`` record whose process is gone (on this host) is ``died``: killed without a chance to say so.
    """
    record = read_state(log_dir, job)
    state = record.get("state", "not submitted")
    if state == "running" and record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        state = "died"
    return {**record, "state": state}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def pending(study, log_dir: str | os.PathLike) -> list[int]:
    """Indices (in :func:`probe.study.plan_study` order) of the jobs that are not done: what a rerun submits."""
    return [i for i, job in enumerate(plan_study(study)) if job_status(log_dir, job)["state"] != "done"]


class StudyTask:
    """The callable each submitted job runs: one job of a pickled study, by its index in the plan.

    Submitit pickles it with its arguments; on preemption or timeout :meth:`checkpoint` requeues the same call,
    which resumes from what the cache and the fine-tune checkpoints hold.
    """

    def __call__(self, study, index: int, log_dir: str, options: dict) -> str:
        from .. import _distributed

        _join_task_group()
        plan = plan_study(study)
        job, log_dir = plan[index], Path(log_dir)
        main = _distributed.is_main()
        if main:
            _write_state(log_dir, job, state="running", host=socket.gethostname(), pid=os.getpid(), error=None,
                         status=None, **_log_paths())
        try:
            blocked = blocked_by(job, plan, lambda other: job_status(log_dir, other)["state"] == "done")
            if blocked:
                status = f"skipped ({blocked} failed)"
                if main:
                    _write_state(log_dir, job, state="skipped", status=status)
                return status
            pretrained: dict[str, str] = {}
            if job.kind != "pretrain":
                names = {b.name for b in job.backbones}  # a similarity job reads several backbones
                for other in plan:  # done before: answers with its weights file without training
                    if other.kind == "pretrain" and other.backbone.name in names:
                        run_job_on_ranks(other, study, pretrained, **options)
            status = run_job_on_ranks(job, study, pretrained, **options)
        except Exception as exc:
            if main:
                _write_state(log_dir, job, state="failed", error=f"{exc}" or exc.__class__.__name__)
            raise
        if main:
            _write_state(log_dir, job, state="done", status=status)
        return status

    def checkpoint(self, *args, **kwargs):
        """Requeue the same call after a preemption or timeout (the work resumes from what it wrote)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _join_task_group() -> None:
    """Several tasks of one Slurm job (one per GPU) become one torch.distributed group."""
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        if env.num_tasks > 1 and "RANK" not in os.environ:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export()
    except RuntimeError:  # not inside a submitit job
        pass


def _log_paths() -> dict:
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        return {"job_id": env.job_id, "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr)}
    except RuntimeError:
        return {}


def _make_executor(kind: str, log_dir: Path, resources: dict, stage: str):
    """A submitit executor for one stage's array, with the ``[executor]`` resources."""
    try:
        import submitit
    except ModuleNotFoundError:
        raise UsageError(f"--executor {kind} needs submitit; pip install 'probe[slurm]' (or pip install submitit)") \
            from None
    gpus = resources.get("gpus", 0)
    # extraction runs one rank per GPU; the other stages run on one process (rank 0 of one)
    tasks = max(1, gpus) if stage == "extract" else 1
    job_gpus = gpus if stage == "extract" else min(gpus, 1)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=log_dir)
        ex.update_parameters(timeout_min=resources.get("timeout_min", 24 * 60), tasks_per_node=tasks,
                             gpus_per_node=job_gpus, setup=list(resources.get("setup", [])))
        return ex
    try:
        ex = submitit.SlurmExecutor(folder=log_dir)
    except RuntimeError:  # submitit looks for srun
        raise UsageError("--executor slurm needs Slurm (srun and sbatch are not found here); run probe on the "
                         "cluster's login node, or use --executor local on this machine") from None
    params = {"job_name": f"probe-{stage}", "ntasks_per_node": tasks, "gpus_per_node": job_gpus or None,
              "cpus_per_task": resources.get("cpus"), "partition": resources.get("partition"),
              "account": resources.get("account"), "qos": resources.get("qos"),
              "time": resources.get("timeout_min", 240),
              "mem": f"{resources['mem_gb']}GB" if resources.get("mem_gb") else None,
              "array_parallelism": resources.get("array_parallelism", 64),
              "setup": list(resources.get("setup", [])) or None,
              "additional_parameters": dict(resources.get("extra") or {}) or None}
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def submit_study(study, *, executor: str, log_dir: str | os.PathLike, options: dict, out=None) -> dict:
    """Submit the study's jobs that are not done, one job array per stage.

    Parameters
    ----------
    executor : {"local", "slurm"}
        ``local`` runs the arrays as processes on this machine, one stage after the other, and waits for them;
        ``slurm`` submits every array at once (later stages depending on earlier ones) and returns.
    log_dir : path
        submitit's folder (logs, pickles) and the jobs' state files.
    options : dict
        Keyword arguments of :func:`probe.study.jobs.run_job` (cache_dir, results_dir, ... as absolute paths).

    Returns
    -------
    dict
        Stage -> list of submitted plan indices.
    """
    out = out or sys.stdout
    log_dir = Path(log_dir).resolve()
    plan = plan_study(study)
    todo = pending(study, log_dir)
    by_stage = {s: [i for i in todo if plan[i].kind == s] for s in STAGES}
    print(f"study {study.name}: {len(plan)} jobs, {len(plan) - len(todo)} done, {len(todo)} to submit "
          f"({executor}; logs in {log_dir})", file=out, flush=True)
    task = StudyTask()
    previous: list[str] = []  # Slurm job ids of the arrays submitted so far
    for stage in STAGES:
        indices = by_stage[stage]
        if not indices:
            continue
        ex = _make_executor(executor, log_dir, study.executor, stage)
        if executor == "slurm" and previous:
            ex.update_parameters(dependency="afterany:" + ":".join(previous))
        if executor == "local":  # no scheduler to queue an array: at most array_parallelism processes at once
            step = study.executor.get("array_parallelism", os.cpu_count() or 1)
            chunks = [indices[k:k + step] for k in range(0, len(indices), step)]
        else:
            chunks = [indices]
        for chunk in chunks:
            _submit_chunk(ex, task, study, plan, chunk, log_dir, options, executor, stage, out)
        if executor == "slurm":
            previous.append(str(read_state(log_dir, plan[indices[0]])["job_id"]).split("_")[0])
    return by_stage


def _submit_chunk(ex, task, study, plan, indices, log_dir, options, executor, stage, out) -> None:
    """Submit one array; with the local executor, wait for it and print one line per job."""
    jobs = ex.map_array(task, [study] * len(indices), indices, [str(log_dir)] * len(indices),
                        [options] * len(indices))
    for i, sub in zip(indices, jobs):
        paths = sub.paths
        _write_state(log_dir, plan[i], state="submitted", job_id=str(sub.job_id), executor=executor,
                     stdout=str(paths.stdout), stderr=str(paths.stderr), error=None, status=None)
    print(f"{stage}: {len(jobs)} job{'s' if len(jobs) != 1 else ''} submitted "
          f"(job {str(jobs[0].job_id).split('_')[0]})", file=out, flush=True)
    if executor == "slurm":
        return
    for i, sub in zip(indices, jobs):  # local: the next stage needs this one's results
        sub.wait()
        status = job_status(log_dir, plan[i])
        if status["state"] not in FINAL:  # killed before it could say so (e.g. the local timeout)
            _write_state(log_dir, plan[i], state="failed", error=f"job ended without a result ({sub.state})")
            status = job_status(log_dir, plan[i])
        print(f"[{i + 1}/{len(plan)}] {plan[i].describe()} ... {_outcome(status)}", file=out, flush=True)


def _outcome(status: dict) -> str:
    """``done: <what it did>``, ``failed: <error>``, ``skipped (<why>)``..., from a job's state record."""
    state = status["state"]
    if state == "skipped":
        return status.get("status") or state
    detail = status.get("error") if state == "failed" else status.get("status") if state == "done" else ""
    return f"{state}: {detail}" if detail else state


def print_status(study, log_dir: str | os.PathLike, *, out=None) -> dict[str, int]:
    """One line per job of the study: its state, and its log file when it failed; returns counts per state."""
    out = out or sys.stdout
    plan = plan_study(study)
    counts: dict[str, int] = {}
    for i, job in enumerate(plan, 1):
        status = job_status(log_dir, job)
        state = status["state"]
        counts[state] = counts.get(state, 0) + 1
        line = f"[{i}/{len(plan)}] {state:<13} {job.describe()}"
        if state in ("failed", "died"):
            line += f"  log: {status.get('stderr', '?')}"
            if status.get("error"):
                line += f"  ({status['error']})"
        elif state == "skipped":
            line += f"  ({status.get('status', '')})"
        elif state in ("running", "submitted") and status.get("job_id"):
            line += f"  job {status['job_id']}, log: {status.get('stderr', '?')}"
        print(line, file=out)
    print("; ".join(f"{n} {s}" for s, n in sorted(counts.items())), file=out)
    return counts


def run_with_executor(study, *, executor: str, log_dir: str | os.PathLike, cache_dir, results_dir, report_dir,
                      pretrain_dir, device=None, jobs=None, workers=None, progress=False, out=None):
    """``probe run --executor local|slurm``: check the study as in-process, submit what is not done; with
    ``local`` wait for it, then print the summary and write the report as :func:`probe.run_study` does.

    Raises
    ------
    ProbeError
        With ``local``, when some jobs failed (listed with their log files).
    """
    from .._checks import check_output_dirs
    from .._runtime import resolve_device
    from .._schema import WORKERS, Setting, check_setting
    from .checks import check_study

    out = out or sys.stdout
    check_output_dirs({"--cache-dir": cache_dir, "--results-dir": results_dir, "--report-dir": report_dir,
                       "--pretrain-dir": pretrain_dir if study.pretrain is not None else None,
                       "--log-dir": log_dir})
    check_study(study)
    device = device or study.device
    if executor == "local":
        resolve_device(device)  # on Slurm the device is the compute node's
    options = dict(cache_dir=str(Path(cache_dir).resolve()), results_dir=str(Path(results_dir).resolve()),
                   pretrain_dir=str(Path(pretrain_dir).resolve()), device=device,
                   jobs=check_setting(jobs or study.jobs, Setting("int", lo=1), "--jobs", example="--jobs 2"),
                   workers=check_setting(workers, WORKERS, "--workers", example="--workers 4"), progress=progress)
    submit_study(study, executor=executor, log_dir=log_dir, options=options, out=out)
    if executor == "slurm":
        print(f"follow it with: probe run {study.source} --status --log-dir {log_dir}", file=out)
        return None
    plan = plan_study(study)
    bad = [(i, job, job_status(log_dir, job)) for i, job in enumerate(plan, 1)]
    bad = [(i, job, s) for i, job, s in bad if s["state"] != "done"]
    summary, report_path = finish(results_dir, report_dir, out, study.source)
    if bad:
        print(f"probe: {len(bad)} of {len(plan)} study jobs did not finish:", file=sys.stderr)
        for i, job, s in bad:
            print(f"  [{i}/{len(plan)}] {job.describe()}: {_outcome(s)}; log {s.get('stderr', '?')}",
                  file=sys.stderr)
        raise ProbeError(f"{len(bad)} of {len(plan)} study jobs did not finish (listed above); fix them and rerun: "
                         f"finished jobs are not submitted again (probe run {study.source} --status shows each job)")
    return summary, report_path
