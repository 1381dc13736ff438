"""Fine-tuning as a protocol: choose the epoch on val, refit on train+val, score test once, write result rows.

:func:`finetune` checks the settings, plans the splits, names the job and takes its lock; :class:`_Run` is the
loop: it receives each phase's objects (built by :mod:`.assemble`), trains them through a
:class:`probe._finetune.trainer.Trainer`, keeps the epoch its :class:`probe._finetune.selection.EpochRule`
scores best, checkpoints after every epoch (:mod:`.checkpoint`) and hands the outcome to the writer
(:mod:`.rows`). Cross-validated runs are driven by :mod:`.cv`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _distributed
from .. import tasks as _tasks
from .._checks import disk_full_guard
from .._console import say_warning
from .._errors import ProbeError, UsageError
from .._io import atomic_path
from .._runtime import ProcessLock
from .._schema import check_setting
from .assemble import build_eval_loaders, build_model, build_trainer, is_dense
from .checkpoint import CHECKPOINT_FORMAT, Checkpoints, save_safetensors, weights_metadata
from .config import ACCUM_STEPS, FinetuneConfig, make_config
from .cv import check_cv, cross_validate_runs, fold_plan
from .data import plan_splits, pow2_floor
from .rows import FinetuneResult, RunWriter, read_back
from .selection import EpochRule

_DEFAULT = FinetuneConfig()

def finetune(backbone: str, dataset: str, *, tasks: str | tuple[str, ...] = _DEFAULT.tasks,
             head: str = _DEFAULT.head, task_weighting: str = _DEFAULT.task_weighting, mode: str = _DEFAULT.mode,
             trainable_blocks: int | None = _DEFAULT.trainable_blocks, epochs: int = _DEFAULT.epochs,
             lr: float = _DEFAULT.lr, batch_size: int = _DEFAULT.batch_size, accum_steps: int | str = "auto",
             weight_decay: float = _DEFAULT.weight_decay, warmup_epochs: float = _DEFAULT.warmup_epochs,
             label_smoothing: float = _DEFAULT.label_smoothing, layer_decay: float | None = _DEFAULT.layer_decay,
             clip_grad: float | None = _DEFAULT.clip_grad, crop_scale: tuple[float, float] = _DEFAULT.crop_scale,
             hflip: bool = _DEFAULT.hflip, color_jitter: float | None = _DEFAULT.color_jitter,
             depth_zoom: str = _DEFAULT.depth_zoom,
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
             cv_group: str | None = None, eval_on: tuple[str, ...] | list[str] = (),
             shared_classes: bool = False) -> FinetuneResult:
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
        always uses the checkpoint's own preprocessing (:meth:`probe.Backbone.eval_transform`); dense tasks
        feed the whole frame instead (:func:`probe.dense.full_frame_config`) and score at the label resolution.
    depth_zoom : {"divide", "no-zoom"}
        Dense tasks: how training crops treat depth (:class:`probe._finetune.data.DenseTrainTransform`):
        the random resized crop's zoom divides the depth target, or crops keep the evaluation scale.
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

    eval_on : sequence of str
        Shifted sets sharing the dataset's class names (classification, split-based runs): the model that scores
        test (the chosen epoch's, refitted on train+val by default) scores each shifted set's test split once,
        written beside the rows as ``<stem>.on-<name>.parquet``/``.npz`` (:mod:`probe._shifted`; the frozen
        probes of the same configuration are scored on the same images).
    shared_classes : bool
        Score an ``eval_on`` set with classes the dataset lacks on its images of the shared classes.

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
    from .._shifted import shifted_stem
    from ..results import job_stem
    from ..splits import require_two_classes

    config = make_config(tasks=tasks, head=head, task_weighting=task_weighting, mode=mode,
                         trainable_blocks=trainable_blocks, epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                         layer_decay=layer_decay, clip_grad=clip_grad, crop_scale=crop_scale, hflip=hflip,
                         color_jitter=color_jitter, depth_zoom=depth_zoom, lp_C=lp_C, select_metric=select_metric,
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
    folds = check_cv(source, cv, cv_group, tasks=config.tasks, test_fraction=config.test_fraction, seed=seed)
    eval_sets: tuple = ()
    if eval_on:
        from .._shifted import open_eval_sets

        if config.tasks != (_tasks.DEFAULT,) or folds is not None:
            raise UsageError("--eval-on scores a classification fine-tune refitted on the dataset's splits; drop it "
                             "(or --cv / --task)")
        eval_sets = tuple(open_eval_sets(eval_on, source, shared_classes=shared_classes, data_root=data_root))
    if folds is not None:
        fold_plans = [fold_plan(source, tr, te, groups=folds[1], val_fraction=config.val_fraction, seed=seed)
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
    if config.tasks == (_tasks.DEFAULT,):
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
    if config.tasks == (_tasks.DEFAULT,):  # a classification run keeps the settings hash it always had
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
    named = config.tasks != (_tasks.DEFAULT,)  # classification keeps the stems it always had
    stem = stem_of("+".join(config.tasks) if named else None)
    stems = {t: stem_of(t) for t in config.tasks} if named else {_tasks.DEFAULT: stem}
    results_paths = {t: Path(str(st) + ".parquet") for t, st in stems.items()}
    shifted_paths = [Path(str(shifted_stem(stem, es)) + ".parquet") for es in eval_sets]
    ckpt_dir = Path(str(stem) + ".ckpt") if checkpoint_dir is None else Path(checkpoint_dir) / (stem.name + ".ckpt")

    def done() -> bool:
        return all(p.is_file() for p in [*results_paths.values(), *shifted_paths])

    if done() and not overwrite:
        return read_back(results_paths, stem, ckpt_dir, settings, verbose)

    stem.parent.mkdir(parents=True, exist_ok=True)
    busy = (f"another process is fine-tuning the same job ({stem}.lock is held); wait for it to finish, then "
            "rerun to read its results")
    with _distributed.main_process_lock(ProcessLock(Path(str(stem) + ".lock"), wait=False, busy_error=busy)):
        if done() and not overwrite:  # finished by another process while we looked
            return read_back(results_paths, stem, ckpt_dir, settings, verbose)
        if overwrite:
            _distributed.on_main(lambda: shutil.rmtree(ckpt_dir, ignore_errors=True))
        run_args = dict(backbone=backbone, source=source, config=config, settings=settings, digest=digest,
                        stem=stem, stems=stems, accum_steps=1 if accum_auto else int(accum_steps),
                        accum_auto=accum_auto, img_size=img_size, weights=weights, random_init=random_init,
                        seed=int(seed), init_seed=init_seed, family=family, data_root=data_root,
                        cache_dir=cache_dir, device=device, workers=workers,
                        progress=progress if _distributed.is_main() else False, verbose=verbose and _distributed.is_main(),
                        sync_batchnorm=sync_batchnorm, eval_sets=eval_sets)
        if folds is not None:
            result = cross_validate_runs(_Run, run_args, fold_plans, folds, ckpt_dir=ckpt_dir, cv=int(cv),
                                         cv_group=cv_group)
        else:
            run = _Run(split_plan=split_plan, ckpt_dir=ckpt_dir, **run_args)
            try:
                result = run.execute()
            finally:  # the loaders' worker processes end with the run, not whenever the loaders are collected
                run.close()
    if not keep_checkpoints:
        _distributed.on_main(lambda: shutil.rmtree(ckpt_dir, ignore_errors=True))
    return result



def _stop_workers(loader) -> None:
    """Shut down a DataLoader's persistent worker processes, if it started any."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None



# ------------------------------------------------------------------------------------------------ the run


@dataclass
class _Run:
    """One fine-tuning job: the loop. Each phase's objects come from :mod:`.assemble`, the epoch from an
    :class:`EpochRule`, the rows from a :class:`probe._finetune.rows.RunWriter`."""

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
    eval_sets: tuple = ()  # shifted sets the model that scores test scores too (probe._shifted.EvalSet)

    def __post_init__(self) -> None:
        self.rule = EpochRule.for_tasks(self.config.tasks, self.config.select_metric)
        self.writer = RunWriter(backbone=self.backbone, source=self.source, config=self.config,
                                split_plan=self.split_plan, stems=self.stems, seed=self.seed,
                                init_seed=self.init_seed if self.random_init else None, digest=self.digest,
                                rule=self.rule, fold=self.fold, evaluation=self.evaluation)

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
        far (the run's :class:`EpochRule` scores the epoch; the first best epoch is kept)."""
        val = trainer.evaluate("val")
        if _tasks.DEFAULT in val:
            cls = val[_tasks.DEFAULT]
            record.update({f"val_{k}": v for k, v in cls["metrics"].items()}, val_loss=cls["loss"])
        record.update(val={t: r["metrics"] for t, r in val.items()},
                      val_losses={t: r["loss"] for t, r in val.items()})
        score = self.rule.score(record["val"], self.history[0]["val"] if self.history else None)
        improved = score > self.best["value"]
        if improved:
            name = self.ckpts.save_best(trainer.model, epoch, self._metadata(epoch))
            self.best = {"epoch": epoch, "value": score, "file": name}
        self.history.append(record)
        self._save(trainer, epoch, "select")
        if self.verbose:
            self._log(epoch, record, improved)
        return self.best

    def select_metrics(self) -> dict[str, str]:
        """Task -> the val metric that selects its epoch (:attr:`EpochRule.monitor`)."""
        return dict(self.rule.monitor)

    # ------------------------------------------------------------------------------------------ building
    def _build_phase(self, phase: str, state: dict | None):
        """Build the objects of a phase and the Trainer over them; resume from ``state`` when given.

        ``select`` trains on train for ``epochs`` epochs; ``refit`` on train+val for the chosen epoch count. Both
        start from the same weights (:func:`.assemble.build_model`). Returns (trainer, epochs already done, the
        fresh head's weights or None).
        """
        from .data import regression_targets
        from .heads import make_task

        c = self.config
        if getattr(self, "trainer", None) is not None:  # micro-batches grown on an earlier phase's OOM stay
            self.accum_steps = self.trainer.accum_steps
            _stop_workers(self.trainer.train_loader)
        self.trainer = None  # free the previous phase's model first
        parts = [self.split_plan["train"]] + ([self.split_plan["val"]] if phase == "refit" else [])
        # a regression head is standardised by the phase's training targets (train, or train+val)
        train_targets = regression_targets(self.source, parts) if "regression" in c.tasks else None
        self.tasks = {t: make_task(t, self.source, c, train_targets=train_targets) for t in c.tasks}
        self.bb, model, frozen = build_model(
            self.backbone, config=c, heads=self.tasks, source=self.source, split_plan=self.split_plan,
            weights=self.weights, random_init=self.random_init, init_seed=self.init_seed, seed=self.seed,
            img_size=self.img_size, family=self.family, device=self.dev)
        # last.pt (weights + two AdamW moments, the old one until the new one replaces it), best weights, export
        self.ckpts.check_space(4 * 8 * sum(p.numel() for p in model.parameters()),
                               f"the checkpoints of {self.backbone}")
        if not self.eval_loaders:  # the same loaders (and workers) serve both phases
            self.eval_loaders = build_eval_loaders(bb=self.bb, config=c, source=self.source,
                                                   split_plan=self.split_plan, n_workers=self.n_workers,
                                                   device=self.dev)
        trainer = build_trainer(
            model=model, frozen=frozen, bb=self.bb, heads=self.tasks, config=c, source=self.source, parts=parts,
            epochs=c.epochs if phase == "select" else self.best["epoch"], eval_loaders=self.eval_loaders,
            seed=self.seed, n_workers=self.n_workers, device=self.dev, amp_dtype=self.amp_dtype,
            use_scaler=self.use_scaler, accum_steps=self.accum_steps, accum_auto=self.accum_auto,
            ckpt_dir=self.ckpt_dir, progress=self.progress, verbose=self.verbose, skipped=self.skipped,
            sync_batchnorm=self.sync_batchnorm)
        self.trainer = trainer

        start_epoch, initial_head = 0, None
        if state is not None:
            start_epoch = self._load(trainer, state)
        elif c.mode == "lp-ft":
            self.lp = self._probe_head(model, refit=phase == "refit")
        if phase == "select" and start_epoch == 0 and not is_dense(c):
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

    # ------------------------------------------------------------------------------------------ checkpoints
    def _metadata(self, epoch: int) -> dict[str, str]:
        return weights_metadata(backbone=self.backbone, bb=self.bb, source=self.source, epoch=epoch,
                                mode=self.config.mode, digest=self.digest)

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
    def _chosen_val(self, trainer, best_file: Path, refit: bool) -> dict | None:
        """Val scored by the weights of the chosen epoch (the material of temperature scaling), after test was
        scored: the model as it is without a refit; after a refit (trained on val too) the chosen epoch's weights
        are loaded back. None when no task has calibration metrics or those weights are gone."""
        from safetensors.torch import load_file

        if not any(_tasks.get(t).extra_metrics for t in self.config.tasks):
            return None
        if refit:
            if not best_file.is_file():
                return None
            trainer.model.load_state_dict(load_file(str(best_file), device=str(self.dev)))
        return trainer.evaluate("val")

    def _evaluate_shifted(self, trainer) -> list:
        """The model that scored test scores each shifted set's test split once (the same evaluation transform):
        ``[(eval set, source aligned to it, its evaluation)]``, written by :meth:`_write_shifted`."""
        import numpy as np

        out = []
        for es in self.eval_sets:
            aligned = es.aligned_source(self.source.classes)
            n = len(aligned.ids["test"])
            loaders = build_eval_loaders(bb=self.bb, config=self.config, source=aligned,
                                         split_plan={"shifted": ("test", np.arange(n))}, n_workers=self.n_workers,
                                         device=self.dev)
            trainer.eval_loaders["shifted"] = loaders["shifted"]
            try:
                out.append((es, aligned, trainer.evaluate("shifted")[_tasks.DEFAULT]))
            finally:
                _stop_workers(trainer.eval_loaders.pop("shifted"))
        return out

    def _write_shifted(self, shifted: list, row: dict, val: dict | None) -> None:
        """Each shifted set's row and arrays beside the job's (:func:`probe._shifted.shifted_result`,
        :func:`probe._shifted.shifted_stem`), calibrated with the temperature fitted on the source's val."""
        import numpy as np

        from .._shifted import shifted_result, shifted_stem
        from ..results import write_job
        from .rows import calibration_of

        val = None if val is None else val.get(_tasks.DEFAULT)
        for es, aligned, result in shifted:
            ids = np.asarray(aligned.ids["test"], dtype=str)[result["keep"]]
            shifted_row, items = shifted_result(
                row, es, ids=ids, labels=result["labels"], scores=result["scores"],
                score_classes=np.arange(len(self.source.classes)), classes=self.source.classes,
                calibration=lambda s, y: calibration_of(_tasks.DEFAULT, val, {"scores": s, "labels": y}))
            write_job(shifted_stem(self.stems[_tasks.DEFAULT], es), [shifted_row], items)

    def _finish(self, trainer, start_epoch: int, initial_head, refit: bool) -> FinetuneResult:
        """Export the weights that score test, score it, and hand the rows to the writer."""
        from safetensors.torch import load_file

        c = self.config
        self.accum_steps = trainer.accum_steps
        best_epoch, best_file = self.best["epoch"], self.ckpt_dir / str(self.best["file"])
        if not refit:
            if not best_file.is_file():
                raise ProbeError(f"best checkpoint {best_file} is missing; rerun with --overwrite")
            trainer.model.load_state_dict(load_file(str(best_file), device=str(self.dev)))
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
        # shifted sets are scored by the model that scored test, before the chosen epoch's weights are reloaded
        shifted = self._evaluate_shifted(trainer) if test is not None and self.fold is None and self.eval_sets else []
        val = self._chosen_val(trainer, best_file, refit) if test is not None else None
        written = self.writer.write(bb=self.bb, amp_dtype=self.amp_dtype, accum_steps=self.accum_steps, test=test,
                                    history=self.history, refit_history=self.refit_history, best=self.best,
                                    lp=self.lp, skipped=self.skipped, refit=refit, val=val)
        if self.fold is not None:
            return written  # a FoldOutcome: the cross-validation writes every fold's rows
        frames, paths, task_metrics, artifacts = written
        if shifted:  # a classification run (finetune() refuses eval_on otherwise)
            self._write_shifted(shifted, frames[_tasks.DEFAULT].row(-1, named=True), val)
        if self.skipped:
            names = sorted(self.skipped)
            print(f"probe: --skip-bad left out {len(names)} unreadable image{'s' if len(names) != 1 else ''} of "
                  f"{self.source.name}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}", file=sys.stderr)
        if self.verbose:
            rule = (f"{c.select_metric} {self.best['value']:.4f}" if c.tasks == (_tasks.DEFAULT,) else
                    f"{self.rule.name} {self.best['value']:.4f}")
            print(f"probe: chose epoch {best_epoch} on val ({rule})"
                  + ("; retrained on train+val for that many epochs" if refit else ""), file=sys.stderr)
        warnings = self.writer.warnings(self.best, self.eval_loaders["val"].dataset.labels)
        for w in warnings:
            say_warning(w)  # one line, once, counted in probe run's summary (probe._console)
        import polars as pl

        first = c.tasks[0]
        return FinetuneResult(frame=pl.concat(list(frames.values())), results_path=paths[first],
                              weights_path=weights_path, artifacts_path=artifacts, best_epoch=best_epoch,
                              test_metrics=task_metrics.get(first), history=self.history,
                              checkpoint_dir=self.ckpt_dir, resumed_from=start_epoch, lp=self.lp,
                              initial_head=initial_head, settings=self.settings, warnings=warnings,
                              task_metrics=task_metrics, results_paths=paths)
