"""Cross-validated fine-tuning (``--cv K``, grouped by person with ``--cv-group``) on a dataset without a test
split: the folds of the frozen probes, a val part carved from each training fold alone, one run per fold, then
the rows of every fold, their summary and the pooled held-out predictions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from .. import _distributed
from .. import tasks as _tasks
from .._errors import UsageError
from .config import CV_TASKS
from .rows import FinetuneResult


def check_cv(source, cv, cv_group, *, tasks: tuple, test_fraction: float, seed: int):
    """The folds of ``--cv`` (with the groups of ``--cv-group``), or None without ``--cv``; a UsageError for a
    combination that cannot run."""
    from .._cv import CV_GROUPS
    from ..splits import cv_folds

    if cv is None:
        if cv_group is not None:
            raise UsageError("--cv-group groups the folds of --cv; give --cv K too (K = number of people for "
                             "leave-one-person-out)")
        return None
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise UsageError(f"--cv must be a number of folds, at least 2; got {cv!r}")
    if cv_group is not None and cv_group not in CV_GROUPS:
        raise UsageError(f"--cv-group must be one of {', '.join(CV_GROUPS)}; got {cv_group!r}")
    if len(tasks) != 1 or tasks[0] not in CV_TASKS:
        raise UsageError(f"--cv cross-validates {', '.join(f'--task {t}' for t in CV_TASKS)} fine-tunes; drop --cv "
                         "(classification uses the dataset's splits, or --test-fraction F for a dataset without a "
                         "test split)")
    if "test" in source.splits:
        raise UsageError(f"dataset {source.name!r} has its own test split; cross-validation (--cv) is for datasets "
                         "without one: drop --cv")
    if test_fraction:
        raise UsageError("--cv and --test-fraction both make the test data; pass one of them")
    if set(source.splits) != {"train"}:
        raise UsageError(f"--cv fine-tuning cross-validates one train split; dataset {source.name!r} also has "
                         f"{', '.join(s for s in source.split_names if s != 'train')}: merge its images into train "
                         "(a manifest without a split column) or drop --cv")
    groups = np.asarray(source.labels["train"]) if cv_group == "subject" else None
    # the frozen regression probes' call (probe.tasks.regression): the same ids, seed and groups give the same folds
    return cv_folds(source.ids["train"], k=int(cv), seed=int(seed), labels=None, groups=groups), groups


def fold_plan(source, tr: np.ndarray, te: np.ndarray, *, groups, val_fraction: float, seed: int) -> dict:
    """One fold's split plan: the val part carved from the training fold alone (by person when grouped), as the
    frozen sweep carves it (:func:`probe._cv.carve_groups`); the held-out fold is test."""
    from ..splits import carve_groups

    ids = np.asarray([str(i) for i in source.ids["train"]])
    a, b = carve_groups(ids[tr], fraction=val_fraction, seed=seed, groups=None if groups is None else groups[tr])
    return {"train": ("train", tr[a]), "val": ("train", tr[b]), "test": ("train", te)}


def cross_validate_runs(make_run: Callable, run_args: dict, plans: list[dict], folds, *, ckpt_dir: Path, cv: int,
                        cv_group: str | None) -> FinetuneResult:
    """Run every fold (each resumable: its checkpoints under ``ckpt_dir/fold<i>``, its outcome kept once done),
    then write the rows of :func:`probe._cv.cross_validate` and the pooled held-out predictions.

    ``make_run(split_plan=, ckpt_dir=, fold=, evaluation=, **run_args)`` builds one fold's run (the loop,
    :class:`probe._finetune.run._Run`); its ``execute()`` returns a :class:`probe._finetune.rows.FoldOutcome`."""
    import polars as pl

    from .._cv import TaskSweep, cross_validate
    from .._io import save_npz_atomic
    from ..results import write_job

    fold_list, groups = folds
    source, verbose = run_args["source"], run_args["verbose"]
    (task,) = run_args["config"].tasks
    evaluation = {"cv": cv, "cv_group": cv_group}
    epochs: list[int] = []

    def run_fold(i, tr, te):
        done = ckpt_dir / f"fold{i}-done.npz"
        if done.is_file():
            with np.load(done, allow_pickle=False) as z:
                rows = json.loads(str(z["rows"]))
                items = {k[len("item:"):]: z[k] for k in z.files if k.startswith("item:")}
                best = int(z["best_epoch"])
        else:
            if verbose:
                print(f"probe: fold {i + 1}/{len(fold_list)}: {len(plans[i]['train'][1])} train, "
                      f"{len(plans[i]['val'][1])} val, {len(te)} held-out images", file=sys.stderr)
            run = make_run(split_plan=plans[i], ckpt_dir=ckpt_dir / f"fold{i}", fold=i, evaluation=evaluation,
                           **run_args)
            try:
                out = run.execute()
            finally:  # the next fold builds its own loaders: stop this one's worker processes now
                run.close()
            rows, items, best = out.rows, out.items, out.best_epoch
            _distributed.on_main(lambda: save_npz_atomic(done, rows=np.asarray(json.dumps(rows, default=str)),
                                                         best_epoch=np.asarray(best),
                                                         **{f"item:{k}": np.asarray(v) for k, v in items.items()}))
        epochs.append(best)
        return TaskSweep(rows=rows, selected_params={"epoch": best}, test=items)

    rows, items = cross_validate(run_fold, fold_list, metrics=_tasks.get(task).metric_names, groups=groups,
                                 ids=[str(i) for i in source.ids["train"]], seed=run_args["seed"])
    # the summary's params (fold count, sd, interval) also name the mode and target, as the fold rows' params do
    first = json.loads(next(r for r in rows if r["fold"] == 0 and r["split"] == "test")["params"])
    rows = [dict(r, params=json.dumps({**json.loads(r["params"]), "mode": first["mode"],
                                       "target": first["target"]}, sort_keys=True))
            if r["fold"] is None else r for r in rows]

    items["target_name"] = np.asarray(_tasks.get(task).target_name(source))
    stem = run_args["stems"][task]
    path = _distributed.on_main(lambda: write_job(stem, rows, items))
    summary = next(r for r in rows if r["selected"] and r["fold"] is None)
    metrics = {m: summary[m] for m in _tasks.get(task).metric_names}
    if verbose:
        print(f"probe: {len(fold_list)} folds; epochs chosen on val in each training fold: {epochs}",
              file=sys.stderr)
    return FinetuneResult(frame=pl.read_parquet(path), results_path=path, weights_path=None,
                          artifacts_path=Path(str(stem) + ".npz"), best_epoch=0, test_metrics=metrics,
                          checkpoint_dir=ckpt_dir, settings=run_args["settings"], task_metrics={task: metrics},
                          results_paths={task: path}, fold_epochs=epochs)
