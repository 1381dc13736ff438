"""Fine-tuning as a protocol: choose the epoch on val, refit on train+val, score test once, write result rows.

:func:`finetune` checks the settings, plans the splits, names the job and takes its lock; :class:`_Run` builds
each phase's objects (model, head, optimizer, loaders) and hands them to a
:class:`probe._finetune.trainer.Trainer`, checkpoints after every epoch, and writes the rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import disk_full_guard
from .._errors import ProbeError, UsageError
from .._io import atomic_path
from .. import _distributed
from .._runtime import ProcessLock
from .._schema import check_setting
from .checkpoint import CHECKPOINT_FORMAT, Checkpoints, save_safetensors
from .config import ACCUM_STEPS, POOLED_TASKS, FinetuneConfig, make_config
from .data import plan_splits, pow2_floor

_DEFAULT = FinetuneConfig()
#: Task tuples whose head is the backbone's own classifier slot on the pooled features (one task each).
POOLED = tuple((t,) for t in POOLED_TASKS)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    frame : polars.DataFrame
        Rows in the results contract: one val row per epoch, then the selected test row.
    results_path : Path
        The parquet file.
    weights_path : Path or None
        Best-val weights as safetensors (usable as ``--weights`` for extraction and fine-tuning).
    artifacts_path : Path or None
        Test predictions (``probe.results.load_artifacts``); None without a test split.
    best_epoch : int
        The epoch chosen on val (1-based).
    test_metrics : dict or None
        top1, top5 and mean per-class accuracy on test with the chosen epoch's weights.
    history : list of dict
        Per epoch: train loss, learning rate, images/s, data-wait share, val metrics.
    checkpoint_dir : Path
        Where the per-epoch checkpoints live (removed after success unless ``keep_checkpoints``).
    skipped : bool
        True when the results existed and nothing was trained.
    resumed_from : int
        Completed epochs found in a checkpoint at the start (0 for a fresh run).
    lp : dict or None
        lp-ft only: the probe's ``C``, whether it was selected on val, and its val top1.
    initial_head : dict or None
        The new head's weights (``weight`` [C, D], ``bias`` [C]) as they were before the first step of a fresh
        run; None after a resume (classification only).
    task_metrics : dict
        Task -> its test metrics (one entry for a single-task run; ``test_metrics`` is the first task's).
    results_paths : dict
        Task -> its parquet file (each task of a multi-task run writes its own rows; ``results_path`` is the
        first task's).
    fold_epochs : list of int
        Cross-validation: the epoch chosen on val in each fold (``best_epoch`` is then 0 and ``test_metrics`` the
        mean over folds).
    """

    frame: Any
    results_path: Path
    weights_path: Path | None
    artifacts_path: Path | None
    best_epoch: int
    test_metrics: dict | None
    history: list = field(default_factory=list)
    checkpoint_dir: Path | None = None
    skipped: bool = False
    resumed_from: int = 0
    lp: dict | None = None
    initial_head: dict | None = None
    settings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    task_metrics: dict = field(default_factory=dict)
    results_paths: dict = field(default_factory=dict)
    fold_epochs: list = field(default_factory=list)


def finetune(backbone: str, dataset: str, *, tasks: str | tuple[str, ...] = _DEFAULT.tasks,
             head: str = _DEFAULT.head, task_weighting: str = _DEFAULT.task_weighting, mode: str = _DEFAULT.mode,
             trainable_blocks: int | None = _DEFAULT.trainable_blocks, epochs: int = _DEFAULT.epochs,
             lr: float = _DEFAULT.lr, batch_size: int = _DEFAULT.batch_size, accum_steps: int | str = "auto",
             weight_decay: float = _DEFAULT.weight_decay, warmup_epochs: float = _DEFAULT.warmup_epochs,
             label_smoothing: float = _DEFAULT.label_smoothing, layer_decay: float | None = _DEFAULT.layer_decay,
             clip_grad: float | None = _DEFAULT.clip_grad, crop_scale: tuple[float, float] = _DEFAULT.crop_scale,
             hflip: bool = _DEFAULT.hflip, color_jitter: float | None = _DEFAULT.color_jitter,
             lp_C: float | None = _DEFAULT.lp_C, img_size: int | None = None,
             weights: str | os.PathLike | None = None, random_init: bool = False, seed: int = 0,
             family: str | None = None, val_fraction: float = _DEFAULT.val_fraction,
             select_metric: str = _DEFAULT.select_metric, precision: str = _DEFAULT.precision,
             skip_bad: bool = _DEFAULT.skip_bad, refit: bool = _DEFAULT.refit,
             test_fraction: float = _DEFAULT.test_fraction, init_seed: int | None = None,
             allow_overlap: bool = False, data_root: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike = "cache", results_dir: str | os.PathLike = "results",
             checkpoint_dir: str | os.PathLike | None = None, keep_checkpoints: bool = False,
             overwrite: bool = False, device: str = "auto", workers: int | None = None, progress: bool = True,
             verbose: bool = True, sync_batchnorm: bool = False, cv: int | None = None,
             cv_group: str | None = None) -> FinetuneResult:
    """Fine-tune ``backbone`` with a new head on ``dataset``; choose the epoch on val, score test once.

    Parameters
    ----------
    backbone : str
        timm name with its tag (``vit_base_patch16_224.augreg_in21k``).
    dataset : str
        Dataset spec (``digits``, ``imagefolder:PATH``... see :func:`probe.open_dataset`); needs a train split.
    tasks : str or sequence of {"classification", "segmentation", "depth", "regression"}
        The heads on the shared backbone. Classification (default), one dense task, or several dense tasks
        trained jointly (multi-task: one backbone, one head per task, each task writing its own rows whose params
        name the co-trained tasks). See :mod:`probe._finetune` for the dense protocol. ``regression``: the
        dataset's continuous target (``age`` for ``fgnet:`` and ``faces``, ``target`` for a manifest) with one
        linear output on the pooled features and an L1 loss (:class:`probe._finetune.heads.RegressionTask`);
        the epoch is chosen on val MAE, and the test predictions (in the target's units) are saved per image.
    head : {"linear", "multiscale"}
        Dense tasks: a linear layer on the last block's patch features, or a light multi-scale decoder.
    task_weighting : {"equal", "uncertainty"}
        Multi-task loss weights: the losses summed, or weighed by learned per-task uncertainties.
    mode : {"full", "partial", "lp-ft"}
        What is trained; see the module docstring.
    trainable_blocks : int, optional
        ``partial`` (required) and ``lp-ft`` (optional): train only the last N blocks or stages, plus the final
        norm and the head. N may be 0 (head and final norm only); N beyond the model's depth is a UsageError.
    epochs, lr, batch_size, weight_decay, warmup_epochs, label_smoothing, layer_decay, clip_grad
        Optimisation, see :class:`FinetuneConfig` (units there). ``batch_size`` is the images per optimizer
        step; the train split (after the val carve) must hold at least that many.
    accum_steps : int or "auto"
        Micro-batches per step. ``"auto"`` starts with 1 and doubles whenever a step runs out of GPU memory.
    crop_scale, hflip, color_jitter
        Training augmentation (timm's ``create_transform(is_training=True)``, no auto-augment). Evaluation
        always uses the checkpoint's own preprocessing (:meth:`probe.Backbone.eval_transform`).
    lp_C : float, optional
        ``lp-ft``: the logistic probe's C; default: selected on val over the sweeps' grid.
    img_size, weights, random_init, family
        How the backbone is built (see :func:`probe.create_backbone`).
    seed : int
        Seed of the val carve, the new head, the shuffle order and the augmentation (the sweeps' ``--seeds``).
    init_seed : int, optional
        Seed of ``random_init`` (default: ``seed``): the same weights as features extracted with
        ``random_init=True, seed=init_seed``.
    val_fraction : float
        Part of train carved off as val when the dataset has none (recorded in every row).
    test_fraction : float
        For a dataset without a test split: part of train carved off as test (as the sweeps'
        ``test_fraction``: the same images). 0 (default): no test row.
    refit : bool
        Retrain the chosen number of epochs on train+val and score that model on test (default), instead of the
        chosen epoch's weights trained on train alone.
    allow_overlap : bool
        Accept the same image in two splits (:func:`probe.splits.check_overlap`).
    select_metric : {"top1", "top5", "mean_per_class_acc"}
        The val metric that chooses the epoch.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Autocast precision; ``auto`` is bf16 on CUDA (fp16 with a grad scaler where bf16 is missing), fp32 on CPU.
    skip_bad : bool
        Drop unreadable images from their batch instead of stopping with an error naming the file.
    cache_dir : path
        Feature cache (``lp-ft`` extracts the frozen ``pooled`` features there, shared with the sweeps).
    results_dir : path
        Where the parquet file, the test predictions and the exported weights go.
    checkpoint_dir : path, optional
        Per-epoch checkpoints; default ``<results file stem>.ckpt/`` beside the results.
    keep_checkpoints : bool
        Keep the checkpoint folder after success (default: removed once the results are written).
    overwrite : bool
        Retrain even when the results exist (any checkpoint of the same settings is discarded).
    device : str
        ``auto`` (cuda when present), ``cpu``, ``cuda``, ``cuda:N``.
    workers : int, optional
        Data-loading worker processes (default: one fewer than the CPU cores, 1 to 8). On CPU, torch's threads
        are capped at the cores left over during the run (oversubscription makes small models crawl).
    progress, verbose : bool
        A tqdm bar per epoch (loss, lr, images/s); a log line per epoch with the val metrics (stderr).
    sync_batchnorm : bool
        Under torchrun: BatchNorm layers use the statistics of the global batch (SyncBatchNorm, CUDA) instead of
        each rank's share of it. Models without BatchNorm are unaffected.
    cv : int, optional
        Regression on a dataset without a test split: K-fold cross-validation with the folds of the frozen
        regression probes (:func:`probe._cv.cv_folds`: the same ids, seed and groups give the same folds). In
        each fold the val part is carved from the training fold alone (:func:`probe._cv.carve_groups`, by
        person under ``cv_group``), the epoch is chosen on its MAE, the refit runs on the whole training fold
        and the held-out fold is scored once. Rows: each fold's (``fold`` = i) and the summary
        (:func:`probe._cv.cross_validate`: ``fold`` null, mean over folds, sd and interval in ``params``); the
        pooled held-out predictions are saved beside them. No weights are exported (one model per fold).
    cv_group : {"subject"}, optional
        Keep each person's images in one fold (``cv`` = the number of people: leave-one-person-out).

    Notes
    -----
    Under ``torchrun`` (:mod:`probe._distributed`) every global batch is the single process's, split among the
    ranks, and DistributedDataParallel averages the gradients once per step, so a step is the single-process
    step (the same loss within float tolerance). The epoch is chosen on val, test is scored and every file is
    written by rank 0 alone; the checkpoints hold no rank-dependent state, so any number of ranks resumes them.

    Returns
    -------
    FinetuneResult
        Rows, paths and the chosen epoch. When the results already exist (and not ``overwrite``), they are
        read back and nothing is trained (``skipped=True``).

    Raises
    ------
    UsageError
        Bad settings, a train split smaller than the batch, ``trainable_blocks`` beyond the depth.
    ProbeError
        An unreadable image, or a diverging run (non-finite loss; earlier checkpoints are kept).
    """
    from .._backbones import check_model_name, file_sha256
    from .._checks import check_img_size, check_output_dirs
    from .._datasets import open_dataset
    from .._runtime import resolve_device
    from .._schema import SEED, WORKERS
    from ..results import job_stem
    from ..splits import require_two_classes

    config = make_config(tasks=tasks, head=head, task_weighting=task_weighting, mode=mode, trainable_blocks=trainable_blocks, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                         layer_decay=layer_decay, clip_grad=clip_grad, crop_scale=crop_scale, hflip=hflip,
                         color_jitter=color_jitter, lp_C=lp_C, select_metric=select_metric,
                         val_fraction=val_fraction, precision=precision, skip_bad=skip_bad, refit=refit,
                         test_fraction=test_fraction)
    accum_auto = accum_steps == "auto"
    accum_steps = check_setting(accum_steps, ACCUM_STEPS, "--accum-steps")
    workers = check_setting(workers, WORKERS, "--workers", example="--workers 4")
    seed = check_setting(seed, SEED, "--seed", example="--seed 0")
    resolve_device(device)  # a missing CUDA is an error before anything is written
    _distributed.init(device)  # under torchrun: DistributedDataParallel over the ranks
    img_size = check_img_size(img_size)
    check_output_dirs({"--results-dir": results_dir, "--checkpoint-dir": checkpoint_dir,
                       "--cache-dir": cache_dir if config.mode == "lp-ft" else None})  # lp-ft caches features
    if weights is not None and random_init:
        raise UsageError("--weights and --random-init exclude each other; pass one")
    check_model_name(backbone)
    init_seed = int(seed if init_seed is None else init_seed)
    source = open_dataset(dataset, data_root=data_root)
    if "train" not in source.splits:
        raise UsageError(f"dataset {source.name!r} has no train split (it has {source.split_names}); "
                         "fine-tuning needs one")
    from ..splits import check_overlap

    check_overlap(source, allow=allow_overlap, cache_dir=cache_dir)
    regression = config.tasks == ("regression",)
    if regression and "regression" not in source.tasks:
        raise UsageError(f"dataset {source.name!r} has no continuous target for --task regression; use a dataset "
                         "that carries one (fgnet:PATH or faces: age; a csv/parquet manifest with a target column)")
    folds = _check_cv(source, cv, cv_group, regression=regression, test_fraction=config.test_fraction, seed=seed)
    if folds is not None:
        fold_plans = [_fold_plan(source, tr, te, groups=folds[1], val_fraction=config.val_fraction, seed=seed)
                      for tr, te in folds[0]]
        split_plan = min(fold_plans, key=lambda p: len(p["train"][1]))  # the checks below: the smallest fold
    else:
        from .. import tasks

        # the frozen sweeps' carve: stratified as the tasks say (a continuous target is not)
        split_plan = plan_splits(source, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                                 seed=seed, stratify=all(tasks.get(t).stratified for t in config.tasks))
    if "test" not in split_plan and regression:
        raise UsageError(f"dataset {source.name!r} has no test split; add --cv K to cross-validate the regression "
                         "fine-tune (e.g. --cv 5, or --cv-group subject --cv <people> for leave-one-person-out), "
                         "or --test-fraction F to carve a test split")
    if "test" not in split_plan and verbose:
        print(f"probe: dataset {source.name!r} has no test split: the epoch is chosen on val and no test row is "
              "written; pass --test-fraction F to carve a test split from train", file=sys.stderr)
    missing = [t for t in config.tasks if t not in source.tasks]
    if missing:
        raise UsageError(f"dataset {source.name!r} has no {' or '.join(missing)} targets; it has "
                         f"{', '.join(source.tasks)}")
    train_split, train_idx = split_plan["train"]
    if config.tasks == ("classification",):
        require_two_classes(source.labels[train_split][train_idx], source.classes, what="fine-tuning")
    n_train = len(train_idx)
    if n_train < config.batch_size:
        where = "the smallest training fold" if folds is not None else "the train split"
        raise UsageError(f"{where} of {source.name!r} has {n_train} images after the val carve, fewer "
                         f"than the batch size {config.batch_size}; use --batch-size {pow2_floor(n_train)} or less")

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"weights file {weights} does not exist; pass a .safetensors or torch checkpoint")
        weights_key = f"file:{file_sha256(path)[:16]}"
    else:
        weights_key = f"random-init:seed{init_seed}" if random_init else "hub"
    from .._version import PROBE_VERSION

    recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    if config.tasks == ("classification",):  # a classification run keeps the settings hash it always had
        for k in ("tasks", "head", "task_weighting"):
            recipe.pop(k)
    settings = {"format": CHECKPOINT_FORMAT, "backbone": backbone, "weights": weights_key, "img_size": img_size,
                "family": family, "dataset": source.name, "fingerprint": source.fingerprint(), "seed": int(seed),
                "init_seed": init_seed, "probe_version": PROBE_VERSION, **recipe}
    if folds is not None:  # only then: the hashes of split-based runs stay as they were
        settings.update(cv=int(cv), cv_group=cv_group)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    base_tag = f"{config.mode}{'' if config.trainable_blocks is None else config.trainable_blocks}"

    def stem_of(what: str | None):
        tag = f"{base_tag}-{what}-{digest[:10]}" if what else f"{base_tag}-{digest[:10]}"
        return job_stem(results_dir, backbone=backbone, dataset=source.name, probe="finetune", tap="-", shots=0,
                        seed=int(seed), tag=tag)

    # one stem for the run (lock, checkpoints, weights) and one per task for its rows and predictions
    named = config.tasks != ("classification",)  # classification keeps the stems it always had
    stem = stem_of("+".join(config.tasks) if named else None)
    stems = {t: stem_of(t) for t in config.tasks} if named else {"classification": stem}
    results_paths = {t: Path(str(st) + ".parquet") for t, st in stems.items()}
    ckpt_dir = Path(str(stem) + ".ckpt") if checkpoint_dir is None else Path(checkpoint_dir) / (stem.name + ".ckpt")

    def done() -> bool:
        return all(p.is_file() for p in results_paths.values())

    if done() and not overwrite:
        return _read_back(results_paths, stem, ckpt_dir, settings, verbose)

    stem.parent.mkdir(parents=True, exist_ok=True)
    busy = (f"another process is fine-tuning the same job ({stem}.lock is held); wait for it to finish, then "
            "rerun to read its results")
    with _distributed.main_process_lock(ProcessLock(Path(str(stem) + ".lock"), wait=False, busy_error=busy)):
        if done() and not overwrite:  # finished by another process while we looked
            return _read_back(results_paths, stem, ckpt_dir, settings, verbose)
        if overwrite:
            _distributed.on_main(lambda: shutil.rmtree(ckpt_dir, ignore_errors=True))
        run_args = dict(backbone=backbone, source=source, config=config, settings=settings, digest=digest,
                        stem=stem, stems=stems, accum_steps=1 if accum_auto else int(accum_steps),
                        accum_auto=accum_auto, img_size=img_size, weights=weights, random_init=random_init,
                        seed=int(seed), init_seed=init_seed, family=family, data_root=data_root,
                        cache_dir=cache_dir, device=device, workers=workers,
                        progress=progress and _distributed.is_main(), verbose=verbose and _distributed.is_main(),
                        sync_batchnorm=sync_batchnorm)
        if folds is not None:
            result = _cross_validate(run_args, fold_plans, folds, ckpt_dir=ckpt_dir, cv=int(cv), cv_group=cv_group)
        else:
            run = _Run(split_plan=split_plan, ckpt_dir=ckpt_dir, **run_args)
            try:
                result = run.execute()
            finally:  # the loaders' worker processes end with the run, not whenever the loaders are collected
                run.close()
    if not keep_checkpoints:
        _distributed.on_main(lambda: shutil.rmtree(ckpt_dir, ignore_errors=True))
    return result


# ------------------------------------------------------------------------------------------------ cross-validation


def _check_cv(source, cv, cv_group, *, regression: bool, test_fraction: float, seed: int):
    """The folds of ``--cv`` (with the groups of ``--cv-group``), or None without ``--cv``; a UsageError for a
    combination that cannot run."""
    from .._cv import CV_GROUPS, cv_folds

    if cv is None:
        if cv_group is not None:
            raise UsageError("--cv-group groups the folds of --cv; give --cv K too (K = number of people for "
                             "leave-one-person-out)")
        return None
    if isinstance(cv, bool) or not isinstance(cv, (int, np.integer)) or cv < 2:
        raise UsageError(f"--cv must be a number of folds, at least 2; got {cv!r}")
    if cv_group is not None and cv_group not in CV_GROUPS:
        raise UsageError(f"--cv-group must be one of {', '.join(CV_GROUPS)}; got {cv_group!r}")
    if not regression:
        raise UsageError("--cv cross-validates --task regression fine-tunes; drop --cv (classification uses the "
                         "dataset's splits, or --test-fraction F for a dataset without a test split)")
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
    # the frozen regression probes' call (probe._tasks): the same ids, seed and groups give the same folds
    return cv_folds(source.ids["train"], k=int(cv), seed=int(seed), labels=None, groups=groups), groups


def _fold_plan(source, tr: np.ndarray, te: np.ndarray, *, groups, val_fraction: float, seed: int) -> dict:
    """One fold's split plan: the val part carved from the training fold alone (by person when grouped), as the
    frozen sweep carves it (:func:`probe._cv.carve_groups`); the held-out fold is test."""
    from .._cv import carve_groups

    ids = np.asarray([str(i) for i in source.ids["train"]])
    a, b = carve_groups(ids[tr], fraction=val_fraction, seed=seed, groups=None if groups is None else groups[tr])
    return {"train": ("train", tr[a]), "val": ("train", tr[b]), "test": ("train", te)}


@dataclass
class _FoldOutcome:
    """What one cross-validation fold's run hands back: its rows (val per epoch, the test row) and the held-out
    per-item arrays."""

    rows: list
    items: dict
    best_epoch: int


def _cross_validate(run_args: dict, plans: list[dict], folds, *, ckpt_dir: Path, cv: int,
                    cv_group: str | None) -> FinetuneResult:
    """Run every fold (each resumable: its checkpoints under ``ckpt_dir/fold<i>``, its outcome kept once done),
    then write the rows of :func:`probe._cv.cross_validate` and the pooled held-out predictions."""
    import polars as pl

    from .._cv import TaskSweep, cross_validate
    from .._io import save_npz_atomic
    from .._tasks import _write
    from ..vocab import TASK_METRICS

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
            run = _Run(split_plan=plans[i], ckpt_dir=ckpt_dir / f"fold{i}", fold=i, evaluation=evaluation,
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

    rows, items = cross_validate(run_fold, fold_list, metrics=TASK_METRICS[task], groups=groups,
                                 ids=[str(i) for i in source.ids["train"]], seed=run_args["seed"])
    # the summary's params (fold count, sd, interval) also name the mode and target, as the fold rows' params do
    first = json.loads(next(r for r in rows if r["fold"] == 0 and r["split"] == "test")["params"])
    rows = [dict(r, params=json.dumps({**json.loads(r["params"]), "mode": first["mode"],
                                       "target": first["target"]}, sort_keys=True))
            if r["fold"] is None else r for r in rows]
    from .._tasks import target_name

    items["target_name"] = np.asarray(target_name(source, task))
    stem = run_args["stems"][task]
    path = _distributed.on_main(lambda: _write(stem, rows, items))
    summary = next(r for r in rows if r["selected"] and r["fold"] is None)
    metrics = {m: summary[m] for m in TASK_METRICS[task]}
    if verbose:
        print(f"probe: {len(fold_list)} folds; epochs chosen on val in each training fold: {epochs}",
              file=sys.stderr)
    return FinetuneResult(frame=pl.read_parquet(path), results_path=path, weights_path=None,
                          artifacts_path=Path(str(stem) + ".npz"), best_epoch=0, test_metrics=metrics,
                          checkpoint_dir=ckpt_dir, settings=run_args["settings"], task_metrics={task: metrics},
                          results_paths={task: path}, fold_epochs=epochs)


def _stop_workers(loader) -> None:
    """Shut down a DataLoader's persistent worker processes, if it started any."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """One fine-tuning job: builds each phase's objects, runs them through a Trainer, writes the rows."""

    backbone: str
    source: Any
    config: FinetuneConfig
    split_plan: dict
    settings: dict
    digest: str
    stem: Path
    stems: dict  # task -> the stem of its rows and predictions
    ckpt_dir: Path
    accum_steps: int
    accum_auto: bool
    img_size: int | None
    weights: Any
    random_init: bool
    seed: int
    init_seed: int
    family: str | None
    data_root: Any
    cache_dir: Any
    device: str
    workers: int | None
    progress: bool
    verbose: bool
    sync_batchnorm: bool = False
    fold: int | None = None  # cross-validation: this fold's rows and items are returned, nothing is written
    evaluation: dict | None = None  # how test is made when not a test split (the protocol id's ``evaluation``)

    def execute(self) -> FinetuneResult:
        from .._runtime import cpu_threads, default_workers, resolve_device

        dev = resolve_device(self.device)
        self.n_workers = default_workers(dev) if self.workers is None else int(self.workers)
        with cpu_threads(dev, self.n_workers):
            return self._execute()

    def _execute(self) -> FinetuneResult:
        from .._runtime import resolve_device
        from .build import resolve_precision

        c = self.config
        self.dev = _distributed.local_device(resolve_device(self.device))
        self.amp_dtype, self.use_scaler = resolve_precision(c.precision, self.dev)
        self.ckpts = Checkpoints(self.ckpt_dir, self.digest)
        self.history: list[dict] = []
        self.refit_history: list[dict] = []
        self.best = {"epoch": 0, "value": -math.inf, "file": None}
        self.lp: dict | None = None
        self.eval_loaders: dict[str, Any] = {}
        self.skipped: set[str] = set()  # unreadable images left out with skip_bad, over both phases
        refit = c.refit and "test" in self.split_plan
        state = self.ckpts.read()
        phase = state["phase"] if state is not None else "select"
        if phase == "refit":  # the selection is done: its outcome sets the refit's length
            self.best, self.lp = dict(state["best"]), state["lp"]
        start_epoch, initial_head = 0, None
        if phase == "select":
            trainer, start_epoch, initial_head = self._build_phase("select", state)
            for epoch in range(start_epoch + 1, c.epochs + 1):
                record = trainer.train_epoch(epoch)
                # val, the best weights and the checkpoint: rank 0 alone under torchrun, the others wait
                self.best = _distributed.on_main(lambda: self._select_epoch(trainer, epoch, record))
            state = None
        if refit:
            # the chosen number of epochs again, from the same initial weights, on train+val
            trainer, start, _ = self._build_phase("refit", state)
            for epoch in range(start + 1, self.best["epoch"] + 1):
                record = trainer.train_epoch(epoch)
                self.refit_history.append(record)
                _distributed.on_main(lambda: self._save(trainer, epoch, "refit"))
                if self.verbose:
                    print(f"probe: refit epoch {epoch}/{self.best['epoch']} on train+val: train loss "
                          f"{record['train_loss']:.4f}; {record['images_per_s']:.0f} img/s", file=sys.stderr)
        return _distributed.on_main(lambda: self._finish(trainer, start_epoch, initial_head, refit))

    def _select_epoch(self, trainer, epoch: int, record: dict) -> dict:
        """Score val after ``epoch`` (every task), keep the best weights, write the checkpoint; returns the best so
        far (:meth:`_score` is the selection rule)."""
        val = trainer.evaluate("val")
        if "classification" in val:
            cls = val["classification"]
            record.update({f"val_{k}": v for k, v in cls["metrics"].items()}, val_loss=cls["loss"])
        record.update(val={t: r["metrics"] for t, r in val.items()},
                      val_losses={t: r["loss"] for t, r in val.items()})
        score = self._score(record)
        improved = score > self.best["value"]
        if improved:
            name = self.ckpts.save_best(trainer.model, epoch, self._metadata(epoch))
            self.best = {"epoch": epoch, "value": score, "file": name}
        self.history.append(record)
        self._save(trainer, epoch, "select")
        if self.verbose:
            self._log(epoch, record, improved)
        return self.best

    # ------------------------------------------------------------------------------------------ selection
    def select_metrics(self) -> dict[str, str]:
        """Task -> the val metric that selects its epoch: ``select_metric`` for classification, the task's first
        metric for a dense task (``miou``; ``rmse``, lower is better)."""
        from ..vocab import TASK_METRICS

        return {t: self.config.select_metric if t == "classification" else TASK_METRICS[t][0]
                for t in self.config.tasks}

    def _score(self, record: dict) -> float:
        """The selection score of an epoch (higher is better; the first best epoch is chosen).

        One task: its select metric (negated when lower is better). Several tasks (the declared combined score):
        the mean over the tasks of the select metric's ratio to its value after epoch 1, inverted for the metrics
        where lower is better, so every task counts by its relative improvement whatever its unit."""
        from ..vocab import LOWER_IS_BETTER

        metrics = self.select_metrics()
        if len(metrics) == 1:
            (task, metric), = metrics.items()
            value = float(record["val"][task][metric])
            return -value if metric in LOWER_IS_BETTER else value
        first = (self.history[0] if self.history else record)["val"]
        ratios = []
        for task, metric in metrics.items():
            now, then = float(record["val"][task][metric]), float(first[task][metric])
            ratios.append(max(then, 1e-12) / max(now, 1e-12) if metric in LOWER_IS_BETTER
                          else now / max(then, 1e-12))
        return float(np.mean(ratios))

    # ------------------------------------------------------------------------------------------ building
    def _build_model(self):
        """The initial model of a phase: the backbone built exactly as extraction builds it (``num_classes=0``,
        ``random_init`` seeded by ``init_seed``, so lp-ft's cached features are this trunk's), then a new head for
        the dataset's classes seeded by ``seed`` (never a checkpoint's classifier), then the freezing of
        ``partial``. Returns (backbone, model on the device, frozen module names)."""
        import torch

        from .._backbones import create_backbone
        from .build import freeze_for_partial
        from .data import mix

        bb = create_backbone(self.backbone, weights=self.weights, random_init=self.random_init, seed=self.init_seed,
                             num_classes=0, img_size=self.img_size, family=self.family)
        model = bb.model
        torch.manual_seed(mix(self.seed, 0))
        frozen = []
        if self.config.tasks in POOLED:  # the backbone's classifier slot: class logits, or one regression output
            model.reset_classifier(self.tasks[self.config.tasks[0]].n_outputs())
            if self.config.trainable_blocks is not None:
                frozen = freeze_for_partial(model, self.config.trainable_blocks, self.backbone)
        else:
            from .build import frozen_modules
            from .decoders import DenseModel

            if self.config.trainable_blocks is not None:
                freeze_for_partial(model, self.config.trainable_blocks, self.backbone)
            model = DenseModel(model, {t: task.n_outputs() for t, task in self.tasks.items()},
                               head=self.config.head, input_size=tuple(bb.data_config["input_size"]))
            if "depth" in self.tasks:  # the depth head starts at the mean log-depth of (up to 64) train images
                with torch.no_grad():
                    list(model.heads["depth"].modules())[-1].bias.fill_(self._mean_log_depth())
            if self.config.task_weighting == "uncertainty" and len(self.tasks) > 1:
                # learned log-variances s_t, part of the model so that they are trained, saved and resumed with it
                model.loss_log_vars = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.zeros(()))
                                                              for t in self.tasks})
            frozen = frozen_modules(model)
        model = model.to(self.dev)
        if self.dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        return bb, model, frozen

    def _mean_log_depth(self) -> float:
        from ..dense import depth_valid

        split, idx = self.split_plan["train"]
        logs = []
        for i in idx[:64]:
            d = self.source.dense_targets(split, int(i))["depth"]
            logs.append(np.log(d[depth_valid(d)]))
        values = np.concatenate(logs) if logs else np.zeros(0)
        return float(values.mean()) if values.size else 0.0

    def _build_phase(self, phase: str, state: dict | None):
        """Build the objects of a phase and the Trainer over them; resume from ``state`` when given.

        ``select`` trains on train for ``epochs`` epochs; ``refit`` on train+val for the chosen epoch count. Both
        start from the same weights (:meth:`_build_model`). Returns (trainer, epochs already done, the fresh
        head's weights or None).
        """
        import torch

        from .build import build_optimizer, param_groups
        from .data import (Batches, DenseEvalTransform, DenseTrainTransform, ImageOnly, ImageSet, make_loader,
                           regression_targets, shuffled_batches, train_transform)
        from .heads import make_task
        from .trainer import Objective, Trainer

        c = self.config
        if getattr(self, "trainer", None) is not None:  # micro-batches grown on an earlier phase's OOM stay
            self.accum_steps = self.trainer.accum_steps
            _stop_workers(self.trainer.train_loader)
        self.trainer = None  # free the previous phase's model first
        parts = [self.split_plan["train"]] + ([self.split_plan["val"]] if phase == "refit" else [])
        # a regression head is standardised by the phase's training targets (train, or train+val)
        train_targets = regression_targets(self.source, parts) if "regression" in c.tasks else None
        self.tasks = {t: make_task(t, self.source, c, train_targets=train_targets) for t in c.tasks}
        self.bb, model, frozen = self._build_model()
        dense = c.tasks not in POOLED
        epochs = c.epochs if phase == "select" else self.best["epoch"]
        n_images = sum(len(idx) for _, idx in parts)
        steps_per_epoch = n_images // c.batch_size
        optimizer, scheduler = build_optimizer(
            param_groups(model, lr=c.lr, weight_decay=c.weight_decay, layer_decay=c.layer_decay), lr=c.lr,
            warmup_steps=int(round(c.warmup_epochs * steps_per_epoch)), total_steps=steps_per_epoch * epochs)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        # last.pt (weights + two AdamW moments, the old one until the new one replaces it), best weights, export
        self.ckpts.check_space(4 * 8 * sum(p.numel() for p in model.parameters()),
                               f"the checkpoints of {self.backbone}")

        data_config = self.bb.data_config
        shape = tuple(data_config["input_size"])
        train_tf = DenseTrainTransform(data_config, c) if dense else ImageOnly(train_transform(data_config, c))
        train_images = ImageSet(self.source, parts, train_tf, shape, tasks=c.tasks, augment_seed=self.seed)
        if not self.eval_loaders:  # the same loaders (and workers) serve both phases
            eval_tf = (DenseEvalTransform(self.bb.eval_transform(), data_config) if dense
                       else ImageOnly(self.bb.eval_transform()))
            self.eval_loaders = {s: make_loader(ImageSet(self.source, [plan], eval_tf, shape, tasks=c.tasks),
                                                Batches(), self.n_workers, self.dev, 0)
                                 for s, plan in self.split_plan.items() if s != "train"}
        train_batches = Batches()
        trainer = Trainer(
            model=model, tasks=self.tasks, objective=Objective(self.tasks, log_vars=getattr(model, "loss_log_vars",
                                                                                            None)),
            optimizer=optimizer, scheduler=scheduler, scaler=scaler,
            train_loader=make_loader(train_images, train_batches, self.n_workers, self.dev, self.seed),
            train_batches=train_batches,
            # under torchrun each rank loads its share of every global batch (the same batches on every rank)
            plan_batches=lambda epoch: [_distributed.rank_batches(b) for b in shuffled_batches(
                n_images, c.batch_size, steps_per_epoch, seed=self.seed, epoch=epoch)],
            step_model=_distributed.wrap_model(model, sync_batchnorm=self.sync_batchnorm),
            eval_loaders=self.eval_loaders, device=self.dev, batch_size=c.batch_size, epochs=epochs, seed=self.seed,
            amp_dtype=self.amp_dtype, accum_steps=self.accum_steps, accum_auto=self.accum_auto,
            clip_grad=c.clip_grad, frozen=frozen, skip_bad=c.skip_bad, lr_hint=c.lr, checkpoint_dir=self.ckpt_dir,
            progress=self.progress, verbose=self.verbose, skipped=self.skipped)
        self.trainer = trainer

        start_epoch, initial_head = 0, None
        if state is not None:
            start_epoch = self._load(trainer, state)
        elif c.mode == "lp-ft":
            self.lp = self._probe_head(model, refit=phase == "refit")
        if phase == "select" and start_epoch == 0 and not dense:
            head = model.get_classifier()
            initial_head = {"weight": head.weight.detach().cpu().numpy().copy(),
                            "bias": head.bias.detach().cpu().numpy().copy()}
        return trainer, start_epoch, initial_head

    def close(self) -> None:
        """Stop the loader worker processes of this run (persistent workers otherwise live as long as their
        loaders are referenced)."""
        for loader in [*getattr(self, "eval_loaders", {}).values(),
                       getattr(getattr(self, "trainer", None), "train_loader", None)]:
            _stop_workers(loader)

    def _probe_head(self, model, refit: bool) -> dict:
        from .lpft import probe_initialised_head

        c = self.config
        extract = dict(weights=self.weights, random_init=self.random_init, seed=self.init_seed,
                       img_size=self.img_size, family=self.family, data_root=self.data_root,
                       cache_dir=self.cache_dir, batch_size=max(1, c.batch_size), workers=self.workers,
                       skip_bad=c.skip_bad, progress=self.progress)
        return probe_initialised_head(model, backbone=self.backbone, source=self.source, split_plan=self.split_plan,
                                      lp_C=c.lp_C, select_metric=c.select_metric, seed=self.seed, extract=extract,
                                      device=self.dev, ckpt_dir=self.ckpt_dir, previous=self.lp, refit=refit,
                                      verbose=self.verbose)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _metadata(self, epoch: int) -> dict[str, str]:
        return {"format": "probe-finetune", "backbone": self.backbone, "weights": self.bb.weights_id,
                "dataset": self.source.name, "classes": json.dumps(self.source.classes), "epoch": str(epoch),
                "mode": self.config.mode, "settings_hash": self.digest,
                "data_config": json.dumps(self.bb.data_config)}

    def _save(self, trainer, epoch: int, phase: str) -> None:
        self.ckpts.save({"phase": phase, "epoch": epoch, **trainer.state_dict(), "history": self.history,
                         "refit_history": self.refit_history, "best": self.best, "lp": self.lp},
                        best_file=self.best["file"])

    def _load(self, trainer, state: dict) -> int:
        """Restore a checkpoint into the phase just built; returns the epochs it had completed."""
        from .checkpoint import set_rng_state

        trainer.load_state_dict(state)
        set_rng_state(state["rng"])
        self.history, self.best, self.lp = list(state["history"]), dict(state["best"]), state["lp"]
        self.refit_history = list(state.get("refit_history", []))
        self.ckpts.keep_only(self.best["file"])
        if self.verbose:
            self.ckpts.announce(self.stem.name, state)
        return int(state["epoch"])

    def _log(self, epoch: int, r: dict, improved: bool) -> None:
        if "val_top1" not in r:
            scores = "; ".join(f"val {t} " + ", ".join(f"{m} {v:.4f}" for m, v in ms.items())
                               for t, ms in r["val"].items())
            print(f"probe: epoch {epoch}/{self.config.epochs}: train loss {r['train_loss']:.4f}; {scores}; "
                  f"{r['images_per_s']:.0f} img/s{' (best so far)' if improved else ''}", file=sys.stderr)
            return
        print(f"probe: epoch {epoch}/{self.config.epochs}: train loss {r['train_loss']:.4f}, val loss "
              f"{r['val_loss']:.4f}, val top1 {r['val_top1']:.4f}, top5 {r['val_top5']:.4f}, mean per class "
              f"{r['val_mean_per_class_acc']:.4f}; {r['images_per_s']:.0f} img/s, data wait "
              f"{r['data_wait_share']:.0%}{' (best so far)' if improved else ''}", file=sys.stderr)

    # ------------------------------------------------------------------------------------------ results
    def _finish(self, trainer, start_epoch: int, initial_head, refit: bool) -> FinetuneResult:
        from safetensors.torch import load_file

        from .._identity import identity_columns, protocol_id
        from .._version import PROBE_VERSION
        from ..results import make_row, results_frame, write_results
        from .build import precision_name

        c = self.config
        self.accum_steps = trainer.accum_steps
        best_epoch, best_file = self.best["epoch"], self.ckpt_dir / str(self.best["file"])
        if not refit:
            if not best_file.is_file():
                raise ProbeError(f"best checkpoint {best_file} is missing; rerun with --overwrite")
            trainer.model.load_state_dict(load_file(str(best_file), device=str(self.dev)))
        params = self._params()
        n_train, n_val = len(self.split_plan["train"][1]), len(self.split_plan["val"][1])
        val_fraction = 0.0 if "val" in self.source.splits else c.val_fraction
        test_fraction = 0.0 if "test" in self.source.splits else c.test_fraction
        recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()
                  if k not in ("select_metric", "val_fraction", "test_fraction", "refit", "precision", "skip_bad")}
        if c.tasks == ("classification",):  # the protocol id classification runs always had
            for k in ("tasks", "head", "task_weighting"):
                recipe.pop(k)
        identity = identity_columns(backbone=self.backbone, weights=self.bb.weights_id,
                                    data_config=self.bb.data_config, precision=precision_name(self.amp_dtype))
        total_seconds = sum(r["train_seconds"] for r in self.history + self.refit_history)
        weights_path = Path(str(self.stem) + ".safetensors")
        if self.fold is None:  # a cross-validation fold's model is not exported (one per fold)
            with disk_full_guard(weights_path.parent, f"the fine-tuned weights {weights_path.name}",
                                 "the fine-tune resumes from its last checkpoint"):
                if refit:  # the exported weights are the ones that scored test
                    save_safetensors(trainer.model, weights_path,
                                     {**self._metadata(best_epoch), "refit": "train+val"})
                else:
                    with atomic_path(weights_path) as tmp:
                        shutil.copyfile(best_file, tmp)
        test = trainer.evaluate("test") if "test" in self.eval_loaders else None
        select = self.select_metrics()
        frames, paths, task_metrics, artifacts = {}, {}, {}, None
        for task in c.tasks:  # each task its own rows (and predictions), written after the weights
            protocol = protocol_id(task=task, probe="finetune", tap="-", grid=recipe, val_fraction=val_fraction,
                                   test_fraction=test_fraction, select_metric=select[task], shots=0, refit=refit,
                                   probe_version=PROBE_VERSION, evaluation=self.evaluation)
            base = dict(backbone=self.backbone, family=self.bb.family, family_source=self.bb.family_source,
                        weights=self.bb.weights_id, dataset=self.source.name, tap="-", probe="finetune", shots=0,
                        seed=self.seed, val_fraction=val_fraction, test_fraction=test_fraction,
                        select_metric=select[task], cache_key="-", protocol=protocol, n_val=n_val, task=task,
                        n_skipped=len(self.skipped), **identity)
            rows = [make_row(**base, params={**params, "epoch": r["epoch"]}, selected=False, split="val",
                             n_train=n_train, n_eval=n_val, fit_seconds=r["train_seconds"], **r["val"][task])
                    for r in self.history]
            stem = self.stems[task]
            if test is not None:
                result = test[task]
                task_metrics[task] = result["metrics"]
                rows.append(make_row(**base, params={**params, "epoch": best_epoch}, selected=True, split="test",
                                     n_train=n_train + n_val if refit else n_train,
                                     n_eval=int(result["keep"].sum()), fit_seconds=total_seconds,
                                     **result["metrics"]))
                if self.fold is not None:  # the caller writes every fold's rows and the pooled items
                    return _FoldOutcome(rows=rows, items=self._test_items(task, result), best_epoch=best_epoch)
                saved = self._save_predictions(stem, task, result)
                artifacts = saved if artifacts is None else artifacts
            else:
                rows[best_epoch - 1] = dict(rows[best_epoch - 1], selected=True)
            frames[task] = results_frame(rows)
            paths[task] = write_results(frames[task], Path(str(stem) + ".parquet"))
        if self.skipped:
            names = sorted(self.skipped)
            print(f"probe: --skip-bad left out {len(names)} unreadable image{'s' if len(names) != 1 else ''} of "
                  f"{self.source.name}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}", file=sys.stderr)
        if self.verbose:
            rule = (f"{c.select_metric} {self.best['value']:.4f}" if c.tasks == ("classification",) else
                    f"{self._rule()} {self.best['value']:.4f}")
            print(f"probe: chose epoch {best_epoch} on val ({rule})"
                  + ("; retrained on train+val for that many epochs" if refit else ""), file=sys.stderr)
        warnings = self._warnings(best_epoch)
        for w in warnings:
            print(f"probe: warning: {w}", file=sys.stderr)
        import polars as pl

        first = c.tasks[0]
        return FinetuneResult(frame=pl.concat(list(frames.values())), results_path=paths[first],
                              weights_path=weights_path, artifacts_path=artifacts, best_epoch=best_epoch,
                              test_metrics=task_metrics.get(first), history=self.history,
                              checkpoint_dir=self.ckpt_dir, resumed_from=start_epoch, lp=self.lp,
                              initial_head=initial_head, settings=self.settings, warnings=warnings,
                              task_metrics=task_metrics, results_paths=paths)

    def _rule(self) -> str:
        """The selection rule in words (the params' ``select_rule``)."""
        metrics = self.select_metrics()
        if len(metrics) == 1:
            (metric,) = metrics.values()
            return f"val {metric}"
        return "mean over tasks of val " + ", ".join(metrics.values()) + " relative to epoch 1"

    def _test_items(self, task: str, result: dict) -> dict:
        """A regression's per-image test arrays, as the frozen regression probes save them (:mod:`probe._tasks`):
        ``ids``, ``labels`` (true targets), ``pred`` (in the target's units) and ``item/<metric>``."""
        split, idx = self.split_plan["test"]
        ids = np.asarray([str(i) for i in np.asarray(self.source.ids[split], dtype=object)[idx]])
        keep = result["keep"]
        if self.fold is not None and not keep.all():  # cross_validate pairs each held-out image with its person
            raise ProbeError(f"{int((~keep).sum())} held-out images of fold {self.fold} are unreadable; "
                             "cross-validated fine-tuning needs every image: fix or remove them")
        return {"ids": ids[keep], "labels": result["labels"], "pred": result["pred"], **result["items"]}

    def _save_predictions(self, stem: Path, task: str, result: dict) -> Path:
        """The test predictions beside the rows: class scores (classification), per-image predictions and errors
        (regression, with each image's person as ``group`` and ``target_name``) or, for a dense task, the
        per-image statistics (``stat/<name>``, which the analysis layer's bootstrap resamples) and a few
        previews."""
        from .. import dense as dense_mod
        from .._io import save_npz_atomic
        from ..results import save_artifacts

        split, idx = self.split_plan["test"]
        ids = np.asarray(self.source.ids[split])[idx][result["keep"]]
        if task == "regression":
            from .._tasks import target_name

            items = self._test_items(task, result)
            items.update(group=np.asarray(self.source.labels[split])[idx][result["keep"]],
                         target_name=np.asarray(target_name(self.source, task)))
            arrays = {k: np.asarray(v) for k, v in items.items()}
            arrays["ids"], arrays["group"] = arrays["ids"].astype(str), arrays["group"].astype(str)
            path = Path(str(stem) + ".npz")
            save_npz_atomic(path, **arrays)
            return path
        if task == "classification":
            return save_artifacts(stem, ids=ids, labels=result["labels"], scores=result["scores"],
                                  classes=self.source.classes)
        preview = {f"preview/{k}": v for k, v in result["preview"].items()}
        if preview:
            k = len(result["preview"]["pred"])
            preview["preview/ids"] = ids[:k].astype(str)
            view = getattr(dense_mod, "network_view", None)  # the pixels the network saw, for the report's figure
            if view is not None:
                positions = np.asarray(idx)[result["keep"]][:k]
                preview["preview/image"] = np.stack([view(self.source.load(split, int(i)), self.bb.data_config)
                                                     for i in positions])
        classes = self.source.segmentation_classes if task == "segmentation" else []
        path = Path(str(stem) + ".npz")
        save_npz_atomic(path, task=np.asarray(task), ids=ids.astype(str), classes=np.asarray(classes, dtype=str),
                        **{f"stat/{k}": v for k, v in result["stats"].items()}, **preview)
        return path

    def _warnings(self, best_epoch: int) -> list[str]:
        from .heads import chance_level

        c = self.config
        if c.tasks != ("classification",):
            return []
        chance = chance_level(self.eval_loaders["val"].dataset.labels, c.select_metric, len(self.source.classes))
        if self.best["value"] <= chance["threshold"]:
            return [f"the best val {c.select_metric} ({self.best['value']:.3f}, epoch {best_epoch}) is at chance "
                    f"level ({chance['chance']:.3f} with {len(self.source.classes)} classes): the network learned "
                    "nothing the val split can see; try a larger --lr, more --epochs or pretrained weights"]
        return []

    def _params(self) -> dict:
        c = self.config
        params = {"mode": c.mode, "trainable_blocks": c.trainable_blocks, "epochs": c.epochs, "lr": c.lr,
                  "batch_size": c.batch_size, "accum_steps": self.accum_steps, "weight_decay": c.weight_decay,
                  "warmup_epochs": c.warmup_epochs, "label_smoothing": c.label_smoothing,
                  "layer_decay": c.layer_decay, "clip_grad": c.clip_grad, "crop_scale": list(c.crop_scale),
                  "hflip": c.hflip, "color_jitter": c.color_jitter, "img_size": self.bb.data_config["input_size"][-1],
                  "precision": "fp32" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", ""),
                  "chosen_epoch": self.best["epoch"], "refit": bool(c.refit and "test" in self.split_plan),
                  "init_seed": self.init_seed if self.random_init else None, "settings_hash": self.digest[:10]}
        if self.lp is not None:
            params["lp_C"] = self.lp["C"]
        if c.tasks != ("classification",):  # the heads, the co-trained tasks and how the epoch was chosen
            params.update(tasks=list(c.tasks), head=c.head, select_rule=self._rule(),
                          task_weighting=c.task_weighting if len(c.tasks) > 1 else None)
        if "regression" in c.tasks:  # the target the head predicts (standardised by its phase's train statistics)
            from .._tasks import target_name

            params["target"] = target_name(self.source, "regression")
        return params



def _read_back(results_paths: dict, stem: Path, ckpt_dir: Path, settings: dict, verbose: bool) -> FinetuneResult:
    import polars as pl

    from ..vocab import TASK_METRICS

    frames, task_metrics, best_epoch, fold_epochs = {}, {}, 0, []
    for task, path in results_paths.items():
        frame = frames[task] = pl.read_parquet(path)
        test = frame.filter(pl.col("selected"))
        if "fold" in frame.columns and test["fold"].null_count() < len(test):  # cross-validated: the summary row
            fold_epochs = [int(json.loads(p)["epoch"]) for p in test.filter(pl.col("fold").is_not_null())
                           .sort("fold")["params"]]
            test = test.filter(pl.col("fold").is_null())
        best_epoch = int(json.loads(test["params"][0]).get("epoch", 0)) if len(test) else 0
        if len(test) and test["split"][0] == "test":
            task_metrics[task] = {m: float(test[m][0]) for m in TASK_METRICS[task]}
    first = next(iter(results_paths))
    weights_path = Path(str(stem) + ".safetensors")
    artifacts = Path(str(results_paths[first]).replace(".parquet", ".npz"))
    if verbose:
        print(f"probe: results exist, nothing trained: {', '.join(map(str, results_paths.values()))} (pass "
              "--overwrite to retrain)", file=sys.stderr)
    return FinetuneResult(frame=pl.concat(list(frames.values())), results_path=results_paths[first],
                          weights_path=weights_path if weights_path.is_file() else None,
                          artifacts_path=artifacts if artifacts.is_file() else None, best_epoch=best_epoch,
                          test_metrics=task_metrics.get(first), checkpoint_dir=ckpt_dir, skipped=True,
                          settings=settings, task_metrics=task_metrics, results_paths=dict(results_paths),
                          fold_epochs=fold_epochs)
