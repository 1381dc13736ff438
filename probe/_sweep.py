"""Hyperparameter sweeps of the probes: select on val, refit, score test once; and sweeps over the feature cache.

The protocol (one place, so every probe and every caller follows it):

1. ``val``: the dataset's own val split when it has one; otherwise a stratified, seeded part of the *full* train
   split is carved off (:func:`probe.splits.carve_splits`: a per-id hash ranking over the dataset's full id list,
   so images skipped as unreadable move no other image; fraction and seed recorded in every row). A dataset
   without a test split gets one carved first when ``test_fraction`` > 0 (recorded in every row).
2. Few-shot (``shots > 0``): ``shots`` examples per class are drawn (seeded, :func:`probe.splits.few_shot`) from
   what remains of train *after* the carve, so val never overlaps the few-shot train and is the same set for
   every ``shots``.
3. Every grid point is fitted on train and scored on val (``split="val"``, ``selected=False``). Work is shared
   across the grid (see each probe's ``_sweep_path``).
4. The best point on val by ``select_metric`` is selected; ties go to the strongest regularisation (smallest C,
   largest alpha, largest k; see each probe's ``_strength_order``), so a flat curve picks the simplest model.
5. The selected setting is refitted on train+val (on the few-shot train alone when ``shots > 0``, so a k-shot
   result never sees more than k labelled examples per class) and scored once on test (``split="test"``,
   ``selected=True``). Test is never used for anything else. Without a test split the selected val row is
   marked ``selected=True`` instead.

Every row also names its configuration (:mod:`probe._identity`): the backbone configuration comes from the
caller's ``context`` (:func:`backbone_context` for cached features), the protocol id and ``n_val`` from here.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import UsageError
from ._families import resolve_family
from .results import classification_metrics, job_stem, make_row, results_frame, save_artifacts, write_results
from .splits import few_shot, require_two_classes
from .vocab import DEFAULT_TASK, DEFAULT_VAL_FRACTION, METRICS, PROBES as DEFAULT_PROBES

#: Columns that :func:`sweep` computes itself; ``context`` may set any other results column.
_COMPUTED = {"probe", "params", "selected", "split", "top1", "top5", "mean_per_class_acc", "n_train", "n_eval",
             "shots", "seed", "val_fraction", "test_fraction", "select_metric", "fit_seconds", "created",
             "probe_version", "protocol", "n_val"}


@dataclass
class SweepResult:
    """What :func:`sweep` returns with ``return_result=True``.

    Attributes
    ----------
    frame : polars.DataFrame
        Rows in the results contract (val rows, then the selected test row).
    selected_params : dict
        The grid point chosen on val.
    estimator : ProbeBase or None
        The selected setting refitted (train+val, or the few-shot train); None without a test split.
    test_scores : ndarray [n_test, n_classes] or None
        ``estimator``'s scores on test; columns follow ``estimator.classes_``.
    """

    frame: Any
    selected_params: dict
    estimator: Any = None
    test_scores: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def make_probe(probe, device: str | None = None):
    """Return a fresh estimator for a probe name or a clone of an estimator (``device`` overrides its device)."""
    from sklearn.base import clone

    from .probes import PROBES, ProbeBase

    if isinstance(probe, str):
        if probe not in PROBES:
            raise UsageError(f"unknown probe {probe!r}; choose from {', '.join(PROBES)}")
        est = PROBES[probe]()
    elif isinstance(probe, ProbeBase):
        est = clone(probe)
    else:
        raise UsageError(f"probe must be a name ({', '.join(PROBES)}) or a probe.probes estimator; "
                         f"got {type(probe).__name__}")
    if device is not None:
        est.set_params(device=device)
    return est


def _check_grid(est, grid: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    from .probes._base import expand_grid

    grid = dict(type(est).default_grid if grid is None else grid)
    valid = set(est.get_params()) - {"device"}
    unknown = sorted(set(grid) - valid)
    if unknown:
        raise UsageError(f"grid keys {unknown} are not parameters of the {est.name} probe; "
                         f"valid keys: {sorted(valid) or 'none (it has no hyperparameters)'}")
    grid = {k: (list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]) for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise UsageError(f"grid values for {empty} are empty; give at least one value per key")
    return expand_grid(grid)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _quiet_blas_during(fn):
    """Run ``fn`` with numpy/scipy's BLAS held to one thread (see :func:`probe._runtime.quiet_blas`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ._runtime import quiet_blas

        with quiet_blas():
            return fn(*args, **kwargs)

    return wrapper


def protocol_of(est, points: list[dict], *, tap: str, task: str, val_fraction: float, test_fraction: float,
                select_metric: str, shots: int, refit: bool, evaluation: Mapping[str, Any] | None = None) -> str:
    """The protocol id (:func:`probe._identity.protocol_id`) of a sweep of ``est`` over ``points``.

    The grid is the expanded list of points plus the estimator's other parameters (e.g. ``max_iter``), so a
    change to anything that moves the numbers is a different protocol; the device is not part of it.
    """
    from ._identity import protocol_id
    from ._version import PROBE_VERSION

    fixed = {k: _plain(v) for k, v in est.get_params().items() if k != "device"}
    grid = {"points": [{k: _plain(v) for k, v in p.items()} for p in points], "estimator": fixed}
    return protocol_id(task=task, probe=est.name, tap=tap, grid=grid, val_fraction=val_fraction,
                       test_fraction=test_fraction, select_metric=select_metric, shots=shots, refit=refit,
                       probe_version=PROBE_VERSION, evaluation=evaluation)


def _converged(est) -> dict:
    """``{"converged": bool}`` for an iterative probe that reports it (the last fit's), else nothing."""
    flag = getattr(est, "_last_converged", None)
    return {} if flag is None else {"converged": bool(flag)}


@_quiet_blas_during
def sweep(probe, train: tuple, val: tuple | None = None, test: tuple | None = None, *,
          grid: Mapping[str, Sequence] | None = None, select_metric: str = "top1",
          val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0, seed: int = 0, shots: int = 0,
          class_names: Sequence[str] | None = None, refit_on_val: bool | None = None, device: str | None = None,
          train_ids: Sequence[str] | None = None, absent: Mapping[str, int] | None = None,
          context: Mapping[str, Any] | None = None, return_result: bool = False):
    """Sweep a probe's hyperparameters on val, refit the best, and score test once.

    See the module docstring for the protocol (val carve, few-shot draw, selection, ties, refit).

    Parameters
    ----------
    probe : str or ProbeBase
        ``"logistic"``, ``"ridge"``, ``"knn"``, ``"centroid"``, or an estimator from :mod:`probe.probes` (its
        non-grid parameters, e.g. ``max_iter``, are kept).
    train, val, test : tuple of (X [n, d], y [n])
        Features and integer labels. ``val=None`` carves val from train; ``test=None`` carves test from train
        when ``test_fraction`` > 0 and otherwise skips the test row.
    grid : dict of lists, optional
        E.g. ``{"C": [...]}``, ``{"alpha": [...]}``, ``{"k": [...], "temperature": [...]}``; default: the
        probe's ``default_grid``.
    select_metric : {"top1", "top5", "mean_per_class_acc"}
        The val metric that selects the setting.
    val_fraction : float
        Part of each class of train carved off as val when ``val`` is None (recorded in every row; 0 otherwise).
    test_fraction : float
        Part of each class of train carved off as test (before the val carve) when ``test`` is None; 0 (default)
        carves nothing. Recorded in every row. The test carve's seed is fixed (:mod:`probe.splits`).
    seed : int
        Seed of the val carve and the few-shot draw (recorded in every row).
    shots : int
        Examples per class drawn from train (after the carve); 0 means all.
    class_names : list of str, optional
        Names of the labels, used in the error for a class with too few examples.
    refit_on_val : bool, optional
        Refit the selected setting on train+val; default True for ``shots == 0`` and False for few-shot.
    device : str, optional
        Torch device for the probe (default: the estimator's own, ``"auto"`` for names).
    train_ids : sequence of str, optional
        Ids of the train rows: the carves rank them (:func:`probe.splits.carve_splits`); default the positions.
    absent : dict id -> label, optional
        Train images of the full dataset that are not rows of ``train`` (skipped as unreadable), so the carves
        are those of the full list.
    context : dict, optional
        Values of the other results columns (backbone, family, weights, dataset, tap, cache_key, and the backbone
        configuration: img_size, precision, backbone_config, config_label) for every row.
    return_result : bool
        Return a :class:`SweepResult` (frame, selected estimator, test scores) instead of the frame alone.

    Returns
    -------
    polars.DataFrame or SweepResult
    """
    from .probes._base import check_features, check_labels, resolve_device, to_tensor
    from .splits import carve_splits
    import torch

    est = make_probe(probe, device)
    if select_metric not in METRICS:
        raise UsageError(f"select_metric must be one of {', '.join(METRICS)}; got {select_metric!r}")
    context = dict(context or {})
    clash = sorted(set(context) & _COMPUTED)
    if clash:
        raise UsageError(f"context may not set {clash}; sweep computes those columns (pass shots=/seed= instead)")
    if not isinstance(shots, (int, np.integer)) or shots < 0:
        raise UsageError(f"shots must be a non-negative integer (0 = all); got {shots!r}")
    points = _check_grid(est, grid)
    refit_on_val = (shots == 0) if refit_on_val is None else bool(refit_on_val)

    X_train = check_features(train[0], name="train X")
    y_train = check_labels(train[1], len(X_train), name="train y", min_classes=1)
    ids = np.asarray([str(i) for i in range(len(y_train))] if train_ids is None else [str(i) for i in train_ids])
    if len(ids) != len(y_train):
        raise UsageError(f"train_ids has {len(ids)} ids for {len(y_train)} train rows")
    d = X_train.shape[1]
    carve_test = test is None and bool(test_fraction)
    parts = carve_splits(y_train, ids=ids, absent=absent, val_fraction=val_fraction if val is None else 0.0,
                         test_fraction=test_fraction if carve_test else 0.0, seed=seed)
    test_ids = None
    if carve_test:
        test = (X_train[parts["test"]], y_train[parts["test"]])
        test_ids = ids[parts["test"]]
    recorded_test_fraction = float(test_fraction) if carve_test else 0.0
    if val is None:
        X_val, y_val = X_train[parts["val"]], y_train[parts["val"]]
        recorded_fraction = float(val_fraction)
    else:
        X_val = check_features(val[0], name="val X", n_features=d)
        y_val = check_labels(val[1], len(X_val), name="val y", min_classes=1)
        recorded_fraction = 0.0
    if not (len(parts["train"]) == len(y_train) and (parts["train"] == np.arange(len(y_train))).all()):
        X_train, y_train = X_train[parts["train"]], y_train[parts["train"]]  # (no copy when every row stays)
    if shots:
        pick = few_shot(y_train, int(shots), seed, list(class_names) if class_names is not None else None)
        X_train, y_train = X_train[pick], y_train[pick]
    require_two_classes(y_train, list(class_names) if class_names is not None else None,
                        after="the val carve and few-shot draw")
    if test is not None:
        X_test = check_features(test[0], name="test X", n_features=d)
        y_test = check_labels(test[1], len(X_test), name="test y", min_classes=1)

    dev = resolve_device(est.get_params().get("device"))
    classes, y_index = np.unique(y_train, return_inverse=True)
    Xt, Xv = to_tensor(X_train, dev), to_tensor(X_val, dev)
    yt = torch.as_tensor(y_index, device=dev)

    protocol = protocol_of(est, points, tap=str(context.get("tap", "-")), task=str(context.get("task") or DEFAULT_TASK),
                           val_fraction=recorded_fraction, test_fraction=recorded_test_fraction,
                           select_metric=select_metric, shots=int(shots), refit=refit_on_val)
    base = dict(context, probe=est.name, shots=int(shots), seed=int(seed), val_fraction=recorded_fraction,
                test_fraction=recorded_test_fraction, select_metric=select_metric, protocol=protocol,
                n_val=len(y_val))
    val_rows: list[dict] = [None] * len(points)  # type: ignore[list-item]
    not_converged = []
    for i, scores, seconds in est._sweep_path(Xt, yt, len(classes), Xv, points):
        metrics = classification_metrics(y_val, scores.float().cpu().numpy(), classes)
        status = _converged(est)  # the fit of point i has just finished
        if status and not status["converged"]:
            not_converged.append(points[i])
        val_rows[i] = make_row(**base, params={**{k: _plain(v) for k, v in points[i].items()}, **status},
                               selected=False, split="val", n_train=len(X_train), n_eval=len(X_val),
                               fit_seconds=seconds, **metrics)
    del Xv
    if not_converged:
        from ._console import not_converged_warning

        warnings.warn(not_converged_warning(est.name, context, not_converged, len(points)), stacklevel=3)

    best_value = max(row[select_metric] for row in val_rows)
    best = next(i for i in est._strength_order(points) if val_rows[i][select_metric] == best_value)
    selected_params = dict(points[best])

    fitted, test_scores, rows = None, None, list(val_rows)
    if test is None:
        rows[best] = dict(rows[best], selected=True)
    else:
        fitted = est.set_params(**selected_params)
        fitted._prepare_refit(best)
        if refit_on_val:
            # torch's allocator: numpy asks the kernel for huge pages on large arrays, which stalls in page
            # compaction on a host whose memory another process has just fragmented
            with warnings.catch_warnings():  # read-only inputs (memory maps) are only read
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                X_fit = torch.cat([torch.from_numpy(np.ascontiguousarray(X_train)),
                                   torch.from_numpy(np.ascontiguousarray(X_val))]).numpy()
            y_fit = np.concatenate([y_train, y_val])
        else:
            X_fit, y_fit = X_train, y_train
        start = time.perf_counter()
        fitted.fit(X_fit, y_fit)
        seconds = time.perf_counter() - start
        test_scores = fitted._scores(to_tensor(X_test, dev)).float().cpu().numpy()
        metrics = classification_metrics(y_test, test_scores, fitted.classes_)
        rows.append(make_row(**base, params={**{k: _plain(v) for k, v in selected_params.items()},
                                             **_converged(fitted)}, selected=True,
                             split="test", n_train=len(X_fit), n_eval=len(X_test), fit_seconds=seconds, **metrics))
    frame = results_frame(rows)
    if return_result:
        return SweepResult(frame=frame, selected_params=selected_params, estimator=fitted, test_scores=test_scores,
                           extra={"test_ids": test_ids, "test_labels": None if test is None else y_test})
    return frame


def sweep_cached(backbone: str, dataset: str, *, probes: Sequence[str] | None = None,
                 taps: Sequence[str] | None = None, shots: Sequence[int] = (0,), seeds: Sequence[int] = (0,),
                 grids: Mapping[str, Mapping[str, Sequence]] | None = None, select_metric: str | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION, test_fraction: float = 0.0,
                 cache_dir: str | os.PathLike = "cache", results_dir: str | os.PathLike = "results", jobs: int = 1,
                 device: str = "auto", overwrite: bool = False, progress: bool = True, task: str = DEFAULT_TASK,
                 cv: int | None = None, cv_group: str | None = None, pairs: str | os.PathLike | None = None,
                 whiten: int | None = None, **extract_kwargs) -> list[Path]:
    """Sweep probes on a backbone's cached features of a dataset; one parquet file per job.

    Features come from :func:`probe.extract_features` (which extracts whatever the cache lacks). One job per
    (tap, probe, shots, seed) runs :func:`sweep` and writes ``job_stem(...) + ".parquet"``, plus the selected
    probe's weights and test predictions (:func:`probe.results.save_artifacts`) beside it. The job stem carries
    the first 8 characters of the train split's cache key (without the tap list) and of the job's protocol id
    (grid, val and test fraction, selection metric, refit policy, probe version), so results of different
    weights, preprocessing or protocol never collide, and a job whose parquet exists is skipped unless
    ``overwrite``.

    Parameters
    ----------
    backbone, dataset : str
        timm model name and dataset spec, as for :func:`probe.extract_features`.
    probes : sequence of str, optional
        Probe names; default every probe of the task (``logistic``, ``ridge``, ``knn``, ``centroid``; ``linear``
        for the dense tasks).
    taps : sequence of str, optional
        Feature taps to probe (all are extracted in one pass); default ``pooled`` (``patch`` for dense tasks).
    shots : sequence of int
        Examples per class (0 = all); see :func:`sweep` for the order of val carve and few-shot draw.
    seeds : sequence of int
        Seeds of the val carve and few-shot draw; one job per seed.
    grids : dict, optional
        Probe name -> grid (dict of lists); probes not named use their default grid.
    select_metric, val_fraction
        As for :func:`sweep`; ``select_metric`` defaults to the task's first metric (``top1``, ``miou``, ``rmse``).
    test_fraction : float
        For a dataset without a test split: the part of train carved off as test (seeded, stratified, the same
        for every job; see :mod:`probe.splits`). 0 (default) leaves such a dataset without test rows.
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
    task : str
        ``classification`` (default), or a dense task (``segmentation``, ``depth``) of a dataset that carries it:
        the ``linear`` dense probe on the ``patch`` tap (:func:`probe._dense_sweep.sweep_dense_cached`);
        ``identification``, ``verification`` and ``regression`` (and ``classification`` with ``cv``) run through
        :mod:`probe._tasks`, with their own probes (``cosine`` retrieval; ``ridge``/``knn`` regressors) and metric
        columns.
    cv : int, optional
        Cross-validate with this many folds (for a dataset without a test split), selection nested in each
        training fold; one row per fold and a summary row (``fold`` null).
    cv_group : {"subject"}, optional
        Keep each person's images in one fold (``cv`` = number of people: leave-one-person-out).
    pairs : path, optional
        Verification pairs in the LFW pairs.txt format (default: drawn from the identities, 10 folds).
    whiten : int, optional
        Verification: compare the features after a PCA whitening to this many components, fitted for each fold
        of the pairs on the other folds' images (:func:`probe._verify.verify`); a different protocol id.
    **extract_kwargs
        Passed to :func:`probe.extract_features` (weights, random_init, img_size, batch_size, ...).

    Returns
    -------
    list of Path
        The parquet file of every job (run now or found), in job order.
    """
    from ._dense_sweep import DENSE_PROBES, DENSE_TASKS, check_task, sweep_dense_cached
    from .probes import PROBES

    if int(jobs) < 1:
        raise UsageError(f"jobs must be at least 1; got {jobs}")
    if check_task(task) in DENSE_TASKS:
        if test_fraction:
            raise UsageError(f"--test-fraction is for classification sweeps; {task} probes need a test split")
        return sweep_dense_cached(backbone, dataset, task=task, probes=probes or DENSE_PROBES,
                                  taps=taps or ("patch",), seeds=seeds, grids=grids,
                                  select_metric=select_metric, val_fraction=val_fraction, cache_dir=cache_dir,
                                  results_dir=results_dir, device=device, overwrite=overwrite, progress=progress,
                                  **extract_kwargs)
    if task != DEFAULT_TASK or cv is not None or cv_group is not None or pairs is not None or whiten is not None:
        from ._tasks import sweep_task_cached

        return sweep_task_cached(backbone, dataset, task=task, probes=list(probes) if probes else None,
                                 taps=list(taps or ("pooled",)), seeds=list(seeds), grids=grids,
                                 select_metric=select_metric, val_fraction=val_fraction, cv=cv, cv_group=cv_group,
                                 pairs=pairs, whiten=whiten, cache_dir=cache_dir, results_dir=results_dir,
                                 jobs=jobs, device=device, overwrite=overwrite, progress=progress, **extract_kwargs)
    select_metric = select_metric or "top1"
    probes, taps = list(probes or DEFAULT_PROBES), list(taps or ("pooled",))
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise UsageError(f"unknown probe(s) {unknown}; choose from {', '.join(PROBES)}")
    if select_metric not in METRICS:
        raise UsageError(f"select metric must be one of {', '.join(METRICS)}; got {select_metric!r}")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val fraction must be in (0, 1); got {val_fraction}. Use e.g. --val-fraction 0.2")
    if not 0.0 <= test_fraction < 1.0:
        raise UsageError(f"test fraction must be in [0, 1); got {test_fraction}. Use e.g. --test-fraction 0.2")
    bad_shots = [s for s in shots if int(s) != s or s < 0]
    if bad_shots:
        raise UsageError(f"shots must be non-negative integers (0 = all); got {bad_shots}")
    grids = dict(grids or {})
    unknown = sorted(set(grids) - set(PROBES))
    if unknown:  # grids of known probes that are not run are ignored, so one grids dict can serve many calls
        raise UsageError(f"grids given for unknown probe(s) {unknown}; probes are {', '.join(PROBES)}")

    from ._cache import load_split
    from ._checks import check_output_dir
    from ._datasets import open_dataset
    from ._extract import extract_features
    from ._schema import Setting, check_setting

    seeds = check_setting(list(seeds), Setting("int", many=True, nonempty=True, lo=0), "--seeds",
                          example="--seeds 0 1 2")
    check_output_dir(results_dir, "--results-dir")
    if test_fraction and "test" in open_dataset(dataset, data_root=extract_kwargs.get("data_root")).splits:
        raise UsageError(f"dataset {dataset!r} has its own test split; drop --test-fraction (it carves a test "
                         "split only for datasets without one)")
    entries = extract_features(backbone, dataset, taps=tuple(taps), cache_dir=cache_dir, device=device,
                               progress=progress, **extract_kwargs)
    if "train" not in entries:
        raise UsageError(f"dataset {dataset!r} has no train split (found {sorted(entries)}); probes need one")
    splits = {name: load_split(entry, taps=list(taps)) for name, entry in entries.items()}
    train = splits["train"]
    if "test" not in splits and not test_fraction:
        print(f"probe: dataset {train.dataset!r} has no test split: each job selects on val and writes no test "
              "row (nothing to report as a test score); pass --test-fraction F to carve a test split from train",
              file=sys.stderr)
    absent = _skipped_labels(train, dataset, extract_kwargs.get("data_root"))
    # The key without the tap list (when the cache records it): asking for more taps later reuses the results.
    feature_tag = str(train.attrs.get("base_key") or train.key)[:8]
    recorded = dict(val_fraction=0.0 if "val" in splits else float(val_fraction),
                    test_fraction=0.0 if "test" in splits else float(test_fraction))

    job_list, paths = [], []
    for tap in taps:
        for name in probes:
            points = _check_grid(make_probe(name), grids.get(name))
            for k in shots:
                protocol = protocol_of(make_probe(name), points, tap=tap, task=DEFAULT_TASK,
                                       select_metric=select_metric, shots=int(k), refit=int(k) == 0, **recorded)
                for seed in seeds:
                    stem = job_stem(results_dir, backbone=train.backbone, dataset=train.dataset, probe=name,
                                    tap=tap, shots=int(k), seed=int(seed), tag=f"{feature_tag}-{protocol[:8]}")
                    path = Path(str(stem) + ".parquet")
                    paths.append(path)
                    if overwrite or not path.exists():
                        job_list.append(dict(tap=tap, probe=name, shots=int(k), seed=int(seed), stem=stem,
                                             grid=grids.get(name), protocol=protocol))

    def run(job):
        return _run_job(splits, job, select_metric=select_metric, val_fraction=val_fraction,
                        test_fraction=test_fraction, absent=absent, device=device,
                        family=extract_kwargs.get("family"))

    run_jobs(run, job_list, jobs=jobs, progress=progress)
    return paths


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


def _skipped_labels(train, dataset: str, data_root) -> dict[str, int]:
    """Id -> label of the train images the cache left out (``--skip-bad``), so the carves see the full list."""
    skipped = list(train.attrs.get("skipped") or [])
    if not skipped:
        return {}
    from ._datasets import open_dataset

    # the spec as given in this process (the cached one may be a path relative to another working directory)
    source = open_dataset(dataset or train.attrs.get("dataset_spec"), data_root=data_root)
    where = {id_: i for i, id_ in enumerate(source.ids["train"])}
    labels = source.labels["train"]
    return {id_: int(labels[where[id_]]) for id_ in skipped if id_ in where}


def skipped_count(entries) -> int:
    """Images left out as unreadable (``--skip-bad``) over the given cached splits (their ``skipped`` attribute)."""
    return sum(len(entry.attrs.get("skipped") or []) for entry in entries)


def backbone_context(entry) -> dict:
    """The backbone-configuration columns of rows computed on a cached split (:mod:`probe._identity`)."""
    from ._identity import identity_columns

    data_config = dict(entry.attrs.get("data_config") or {})
    if entry.attrs.get("pixels", "pil") != "pil":  # --pixels gpu: another preprocessing, another configuration
        data_config["pixels"] = entry.attrs["pixels"]
    return identity_columns(backbone=entry.backbone, weights=entry.weights, data_config=data_config,
                            precision=str(entry.attrs.get("precision") or "fp32"))


def _run_job(splits: dict, job: dict, *, select_metric: str, val_fraction: float, test_fraction: float,
             absent: Mapping[str, int], device: str, family: str | None = None) -> Path:
    """Run one (tap, probe, shots, seed) sweep on loaded splits; write artifacts, then the parquet file."""
    train, val, test = splits["train"], splits.get("val"), splits.get("test")
    tap = job["tap"]
    # a family is a label, not part of the features' key: the request's override, else the families table
    family, family_source = resolve_family(train.backbone, family)
    context = dict(backbone=train.backbone, family=family, family_source=family_source, weights=train.weights,
                   dataset=train.dataset, tap=tap, cache_key=train.key, n_skipped=skipped_count(splits.values()),
                   **backbone_context(train))
    result = sweep(job["probe"], (train.features[tap], train.labels),
                   (val.features[tap], val.labels) if val is not None else None,
                   (test.features[tap], test.labels) if test is not None else None,
                   grid=job["grid"], select_metric=select_metric, val_fraction=val_fraction,
                   test_fraction=0.0 if test is not None else test_fraction, seed=job["seed"],
                   shots=job["shots"], class_names=train.classes, device=device, train_ids=train.ids,
                   absent=absent, context=context, return_result=True)
    if result.frame["protocol"][0] != job["protocol"]:
        raise AssertionError("internal error: the job's file name and its rows disagree on the protocol id")
    stem = job["stem"]
    if result.estimator is not None:
        est = result.estimator
        ids = np.asarray(test.ids) if test is not None else result.extra["test_ids"]
        labels = test.labels if test is not None else result.extra["test_labels"]
        save_artifacts(stem, ids=ids, labels=labels, scores=result.test_scores, weights=est._artifact_weights(),
                       classes=list(train.classes), score_classes=est.classes_)
    # The parquet file is written last: its existence marks the job complete (artifacts included).
    return write_results(result.frame, Path(str(stem) + ".parquet"))
