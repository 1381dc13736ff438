"""The sweep engine: plan a task's jobs over a backbone's cached features, skip finished ones, run them, write.

:func:`sweep_cached` knows no task by name. It asks the registry (:func:`probe.tasks.get`) for the task and calls
its engine hooks (:class:`probe.tasks.Task`):

1. ``check_request``: the evaluation options (cv, groups, pairs, whitening, test carve, shots), probes, taps and
   selection metric, each refusal one line, before anything is extracted;
2. the dataset spec is opened once (:func:`probe.open_dataset`) and the opened dataset travels down;
   ``check_source`` refuses what the dataset cannot run;
3. ``load``: the features (and targets) every job reads, extracted or reused from the cache once;
4. ``plan``: one job per (tap, probe, shots, seed) with its protocol id; a job whose parquet file exists is skipped
   unless ``overwrite``;
5. ``run``: the job's rows and per-item arrays, which :func:`probe.results.write_job` writes (the ``.npz`` first,
   the parquet file last: its existence marks the job complete). Every row carries the task's name and the job's
   ``evaluation``.

Every learned probe selects through the one protocol of :mod:`probe._protocol` (select on val, ties to the
strongest regularisation, refit on train+val, test once); see :mod:`probe._fit` for the classification and
regression sweeps on arrays (:func:`probe.sweep`, :func:`probe.sweep_regression`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from ._errors import UsageError
from ._features import backbone_context, skipped_count  # noqa: F401  (kept importable from here)
from ._fit import SweepResult, sweep  # noqa: F401  (probe.sweep; kept importable from here)
from .vocab import DEFAULT_VAL_FRACTION

__all__ = ["sweep_cached", "run_jobs", "sweep", "SweepResult", "backbone_context", "skipped_count"]


def sweep_cached(backbone: str, dataset, *, probes: Sequence[str] | None = None,
                 taps: Sequence[str] | None = None, shots: Sequence[int] = (0,), seeds: Sequence[int] = (0,),
                 grids: Mapping[str, Mapping[str, Sequence]] | None = None, select_metric: str | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0,
                 cache_dir: str | os.PathLike = "cache", results_dir: str | os.PathLike = "results", jobs: int = 1,
                 device: str = "auto", overwrite: bool = False, progress: bool = True, task: str | None = None,
                 cv: int | None = None, cv_group: str | None = None, pairs: str | os.PathLike | None = None,
                 whiten: int | None = None, eval_on: Sequence[str] = (), shared_classes: bool = False,
                 **extract_kwargs) -> list[Path]:
    """Sweep a task's probes on a backbone's cached features of a dataset; one parquet file per job.

    Features come from :func:`probe.extract_features` (which extracts whatever the cache lacks). One job per
    (tap, probe, shots, seed) writes ``job_stem(...) + ".parquet"`` and, beside it, the selected probe's
    predictions and per-item statistics (``.npz``: ``ids``, ``labels``, ``item/<metric>`` or ``stat/<k>``, and
    ``group`` where the items cluster in people). The job stem carries the first 8 characters of the train split's
    cache key (without the tap list) and of the job's protocol id (grid, val and test fraction, selection metric,
    refit policy, evaluation scheme, probe version), so results of different weights, preprocessing or protocol
    never collide, and a job whose parquet exists is skipped unless ``overwrite``.

    Parameters
    ----------
    backbone : str
        timm model name, as for :func:`probe.extract_features`.
    dataset : str or DatasetSource
        Dataset spec, or a dataset opened from one (:func:`probe.open_dataset`); a spec is opened once here.
    probes : sequence of str, optional
        Probe names; default the task's (:attr:`probe.tasks.Task.default_probes`: every classification probe;
        ``linear`` for the dense tasks; ``cosine`` for identification and verification; ``ridge`` and ``knn``
        for regression).
    taps : sequence of str, optional
        Feature taps to probe (all are extracted in one pass); default the task's (``pooled``; ``patch`` for
        the dense tasks).
    shots : sequence of int
        Examples per class (0 = all); see :func:`probe.sweep` for the order of val carve and few-shot draw.
    seeds : sequence of int
        Seeds of the val carve and few-shot draw; one job per seed.
    grids : dict, optional
        Probe name -> grid (dict of lists); probes not named use their default grid.
    select_metric : str, optional
        The val metric that selects each probe's setting; default the task's first selectable metric (``top1``,
        ``miou``, ``rmse`` for depth, ``mae`` for regression).
    val_fraction : float
        Part of train carved off as val when the dataset has no val split (recorded in every row).
    test_fraction : float
        For a classification dataset without a test split: the part of train carved off as test (seeded,
        stratified, the same for every job; see :mod:`probe.splits`). 0 (default) leaves such a dataset without
        test rows.
    cache_dir, results_dir : path
        Feature cache and results directories.
    jobs : int
        Jobs run in parallel (joblib threads: features are shared in memory, torch releases the GIL).
    device : str
        Torch device for extraction and probes.
    overwrite : bool
        Re-run jobs whose results exist.
    progress : bool
        Show progress bars.
    task : str, optional
        A registered task (:func:`probe.tasks.names`; default ``classification``), including one registered at
        run time.
    cv : int, optional
        Cross-validate with this many folds (for a dataset without a test split), selection nested in each
        training fold; one row per fold and a summary row (``fold`` null) computed from the pooled held-out items.
    cv_group : {"subject"}, optional
        Keep each person's images in one fold (``cv`` = number of people: leave-one-person-out).
    pairs : path, optional
        Verification pairs in the LFW pairs.txt format (default: drawn from the identities, 10 folds).
    whiten : int, optional
        Verification: compare the features after a PCA whitening to this many components, fitted for each fold
        of the pairs on the other folds' images (:func:`probe._verify.verify`); a different protocol id.
    eval_on : sequence of str
        Shifted sets (dataset specs sharing the dataset's class names, e.g. ``digits-c?corruption=blur&severity=3``)
        that each job's selected, refitted probe is scored on once (:mod:`probe._shifted`): their features are
        extracted and cached like any dataset's, and each is written as its own file beside the job's
        (``<job stem>.on-<name>.parquet`` and ``.npz``: one selected test row whose ``eval_dataset`` names it).
        Nothing is fitted or selected on them.
    shared_classes : bool
        Score a shifted set that has classes the dataset lacks on its items of the shared classes (recorded in the
        row's params); without it such a set is refused with one line naming the classes.
    **extract_kwargs
        Passed to :func:`probe.extract_features` (weights, random_init, img_size, batch_size, family, ...).

    Returns
    -------
    list of Path
        The parquet file of every job (run now or found), in job order.
    """
    from . import tasks
    from ._checks import check_output_dir
    from ._features import opened
    from ._schema import Setting, check_setting
    from ._shifted import shifted_stem
    from .results import job_stem, write_job
    from .tasks import Request

    the_task = tasks.get(task)
    if int(jobs) < 1:
        raise UsageError(f"jobs must be at least 1; got {jobs}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val fraction must be in (0, 1); got {val_fraction}. Use e.g. --val-fraction 0.2")
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"test fraction must be in [0, 1); got {test_fraction}. Use e.g. --test-fraction 0.2")
    bad_shots = [s for s in shots if int(s) != s or s < 0]
    if bad_shots:
        raise UsageError(f"shots must be non-negative integers (0 = all); got {bad_shots}")
    seeds = check_setting(list(seeds), Setting("int", many=True, nonempty=True, lo=0), "--seeds",
                          example="--seeds 0 1 2")
    request = the_task.check_request(Request(
        probes=None if probes is None else tuple(probes), taps=None if taps is None else tuple(taps),
        shots=tuple(int(k) for k in shots), seeds=tuple(int(s) for s in seeds), grids=dict(grids or {}),
        select_metric=select_metric, val_fraction=float(val_fraction), test_fraction=float(test_fraction), cv=cv,
        cv_group=cv_group, pairs=pairs, whiten=whiten, device=device, family=extract_kwargs.get("family"),
        eval_on=tuple(eval_on or ())))
    _check_grids(the_task, request)
    check_output_dir(results_dir, "--results-dir")
    source = opened(dataset, extract_kwargs.get("data_root"))  # the spec is parsed once; the object travels down
    the_task.check_source(request, source)
    eval_sets = []
    if request.eval_on:
        from ._shifted import open_eval_sets

        eval_sets = open_eval_sets(request.eval_on, source, shared_classes=shared_classes,
                                   data_root=extract_kwargs.get("data_root"))
        if "test" not in source.splits and not request.test_fraction:
            raise UsageError(f"dataset {source.name!r} has no test split: no probe is refitted to score the "
                             "--eval-on sets; pass --test-fraction F, or drop --eval-on")
    data = the_task.load(backbone, source, request, cache_dir=cache_dir, device=device, progress=progress,
                         **extract_kwargs)
    _say_without_test(the_task, request, data)
    # the shifted sets' features: the same extractor and cache rules as the dataset's
    shifted = tuple((es, the_task.load(backbone, es.source, request, cache_dir=cache_dir, device=device,
                                       progress=progress, **extract_kwargs)) for es in eval_sets)

    paths, pending = [], []
    for job in the_task.plan(data, request):
        first = data.first
        stem = job_stem(results_dir, backbone=first.backbone, dataset=first.dataset, probe=job.probe, tap=job.tap,
                        shots=job.shots, seed=job.seed, tag=job.tag)
        path = Path(str(stem) + ".parquet")
        paths.append(path)
        job.shifted = shifted
        shifted_paths = [Path(str(shifted_stem(stem, es)) + ".parquet") for es, _ in shifted]
        if overwrite or not all(p.exists() for p in [path, *shifted_paths]):
            pending.append((job, stem))

    def run(item):
        job, stem = item
        rows, items, *more = the_task.run(data, job)

        def named(rows):  # every row names its task and its evaluation scheme (part of every grouping key)
            return [dict(r, task=the_task.name, evaluation=job.evaluation) for r in rows]

        for es, row, shifted_items in (more[0] if more else ()):  # written first: the job's own file marks it done
            write_job(shifted_stem(stem, es), named([row]), shifted_items)
        return write_job(stem, named(rows), items)

    run_jobs(run, pending, jobs=jobs, progress=progress)
    return paths


def _check_grids(task, request) -> None:
    """Grids given for probes the task does not know (grids of known probes that are not run are ignored, so one
    grids dict can serve many calls)."""
    from .probes import PROBES, REGRESSORS

    known = set(task.probes) | set(PROBES) | set(REGRESSORS)
    unknown = sorted(set(request.grids or {}) - known)
    if unknown:
        raise UsageError(f"grids given for unknown probe(s) {unknown}; probes are {', '.join(task.probes)}")


def _say_without_test(task, request, data) -> None:
    """A split-based job of a dataset without a test split writes no test row: say so once, with the fix."""
    import sys

    if "test" in data.splits or request.test_fraction or request.cv is not None or "test_fraction" not in task.options:
        return
    print(f"probe: dataset {data.first.dataset!r} has no test split: each job selects on val and writes no test "
          "row (nothing to report as a test score); pass --test-fraction F to carve a test split from train",
          file=sys.stderr)


def run_jobs(run, job_list: Sequence, *, jobs: int = 1, progress: bool = False) -> None:
    """Call ``run(job)`` for every job of ``job_list``, ``jobs`` at a time (joblib threads: the loaded features are
    shared in memory and torch releases the GIL), with one progress bar over the jobs.

    Each job writes its own files, so the order in which parallel jobs finish changes no result.
    """
    bar = None
    if progress and job_list:
        from ._console import progress as progress_display

        bar = progress_display(len(job_list), desc="sweep jobs", unit="job", enabled=progress, leave=True)
    if int(jobs) == 1:
        for job in job_list:
            run(job)
            if bar is not None:
                bar.update()
    else:
        from joblib import Parallel, delayed

        for _ in Parallel(n_jobs=int(jobs), prefer="threads", return_as="generator_unordered")(
                delayed(run)(job) for job in job_list):
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()


def _skipped_labels(train, dataset, data_root) -> dict[str, int]:
    """Id -> label of the train images the cache left out (``--skip-bad``), so the carves see the full list."""
    from ._features import opened, skipped_labels

    # the spec as given in this process (the cached one may be a path relative to another working directory)
    return skipped_labels(train, opened(dataset or train.attrs.get("dataset_spec"), data_root))
