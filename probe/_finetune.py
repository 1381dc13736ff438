"""Whole-network fine-tuning on the same splits as the probe sweeps, written to the same results table.

The protocol (the sweeps' protocol, see :mod:`probe._sweep`):

1. ``val`` is the dataset's own val split, or a stratified, seeded part of train carved off with
   :func:`probe.splits.carve_splits` (the same call the sweeps make, so both see the same images); a dataset
   without a test split gets one carved the same way when ``test_fraction`` > 0.
2. Selection: the model is trained on train for ``epochs`` epochs and scored on val after every epoch (one
   ``split="val"`` row per epoch). The epoch with the best val ``select_metric`` is chosen (ties: the earliest).
3. Refit (default, ``refit=True``; Kornblith et al., 2019, as the probes do): the same recipe is trained again
   from the same initial weights on train+val for the chosen number of epochs (its schedule spans those epochs),
   and that model is scored once on test (one ``selected=True`` row whose ``n_train`` is train+val, as for the
   probes). With ``refit=False`` the chosen epoch's weights, kept on disk as the best checkpoint, are scored
   instead. Test is never used for anything else.

Modes:

- ``full``: every parameter is trained.
- ``partial``: only the last ``trainable_blocks`` blocks (ViTs) or stages (ConvNets) are trained, plus
  everything after the trunk (final norm, pooling, head). The stem, earlier blocks and their norm statistics
  are frozen (their modules stay in eval mode). Blocks are the units of timm's coarse ``group_matcher``: the
  first index its block patterns capture (``blocks.<i>``, ``layer<i>``, ``stages.<i>``, ``layers.<i>``).
- ``lp-ft``: linear probing then fine-tuning (Kumar et al., 2022). A :class:`probe.probes.LogisticProbe` is
  fitted on the cached frozen ``pooled`` features of train (extracted with the checkpoint's own preprocessing
  through :func:`probe.extract_features`); its C is selected on val with the sweeps' grid and tie rule unless
  ``lp_C`` is given. The new head starts from the probe's ``coef_``/``intercept_``, then the whole network is
  fine-tuned (or only the last ``trainable_blocks``, when given).

Every run is resumable (in the selection and in the refit phase): after each epoch a checkpoint with the model, optimizer, scheduler, grad scaler, RNG
states, history and the best-val state is written atomically. Randomness is a pure function of
``(seed, epoch, sample)``: the shuffle order comes from a generator seeded by ``(seed, epoch)``, each sample's
augmentation from ``(seed, epoch, index)`` (so the number of loader workers does not matter) and the model's own
randomness (dropout, drop-path) from a reseed at the start of every epoch. A run killed at any point and started
again with the same command ends, on CPU, with the same test scores as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ProbeError, UsageError
from ._runtime import ProcessLock
from ._checks import check_free_space, disk_full_guard, format_bytes
from ._io import atomic_path
from ._schema import Setting, check_setting, constraint, dataclass_settings
from .vocab import DEFAULT_VAL_FRACTION, FINETUNE_MODES as MODES, METRICS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Version of the checkpoint layout; a checkpoint of another version is not resumed from.
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of one fine-tuning run; every field is part of the run's settings hash.

    The defaults are a common transfer recipe (AdamW, short warmup, cosine decay, label smoothing); the study
    tunes ``lr`` per backbone family in practice. Each field's type and range (``metadata``) are the one
    declaration that ``probe finetune``'s flags and a study's ``[finetune]`` keys are checked against
    (:func:`probe._schema.dataclass_settings`).
    """

    mode: str = field(default="full", metadata=constraint(choices=MODES))  # full | partial | lp-ft
    # partial / lp-ft: train the last N blocks or stages (+ norm + head)
    trainable_blocks: int | None = field(default=None, metadata=constraint(lo=0))
    epochs: int = field(default=10, metadata=constraint(lo=0, lo_open=True))  # passes over train
    # peak learning rate of AdamW, reached after warmup, for one step of batch_size images
    lr: float = field(default=1e-4, metadata=constraint(lo=0, lo_open=True))
    # images per optimizer step (summed over accumulation micro-batches)
    batch_size: int = field(default=64, metadata=constraint(lo=0, lo_open=True))
    # AdamW decoupled decay; not applied to biases, norms, tokens, position embeddings
    weight_decay: float = field(default=0.05, metadata=constraint(lo=0))
    # linear warmup from ~0 to lr, then cosine decay to 0, updated every step
    warmup_epochs: float = field(default=1.0, metadata=constraint(lo=0))
    label_smoothing: float = field(default=0.1, metadata=constraint(lo=0, hi=1, hi_open=True))  # target smoothing
    # layer-wise lr decay factor per block (e.g. 0.75); None = off
    layer_decay: float | None = field(default=None, metadata=constraint(lo=0, lo_open=True, hi=1))
    clip_grad: float | None = field(default=1.0, metadata=constraint(lo=0, lo_open=True))  # max grad L2 norm; None = off
    # random resized crop: fraction of the image area kept (MIN, MAX)
    crop_scale: tuple[float, float] = field(default=(0.08, 1.0), metadata=constraint(lo=0, lo_open=True, hi=1))
    hflip: bool = True  # random horizontal flip (p = 0.5)
    color_jitter: float | None = field(default=None, metadata=constraint(lo=0))  # timm jitter strength; None = off
    # lp-ft: logistic probe C; None = selected on val over the sweeps' grid
    lp_C: float | None = field(default=None, metadata=constraint(lo=0, lo_open=True))
    select_metric: str = field(default="top1", metadata=constraint(choices=METRICS))  # val metric choosing the epoch
    # part of train carved off as val when the dataset has no val
    val_fraction: float = field(default=DEFAULT_VAL_FRACTION, metadata=constraint(lo=0, lo_open=True, hi=1,
                                                                                  hi_open=True))
    # auto (bf16 on CUDA, fp16 where bf16 is missing, fp32 on CPU) | fp32 | bf16 | fp16
    precision: str = field(default="auto", metadata=constraint(choices=PRECISIONS))
    skip_bad: bool = False  # drop unreadable images from their batch instead of stopping
    refit: bool = True  # retrain the chosen number of epochs on train+val before scoring test
    # part of train carved off as test when the dataset has no test split; 0 = none
    test_fraction: float = field(default=0.0, metadata=constraint(lo=0, hi=1, hi_open=True))


def config_settings() -> dict:
    """Field name -> :class:`probe._schema.Setting` of :class:`FinetuneConfig` (types, ranges, choices)."""
    return dataclass_settings(FinetuneConfig)


def cli_flag(name: str) -> str:
    """The ``probe finetune`` flag of a :class:`FinetuneConfig` field: ``lp_C`` -> ``--lp-c``."""
    return "--" + name.lower().replace("_", "-")


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
        run; None after a resume.
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


_DEFAULT = FinetuneConfig()
#: Accepted values of ``accum_steps`` (not a config field: it adapts during a run).
ACCUM_STEPS = Setting(kind="int", lo=0, lo_open=True, also=("auto",))


def finetune(backbone: str, dataset: str, *, mode: str = _DEFAULT.mode,
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
             verbose: bool = True) -> FinetuneResult:
    """Fine-tune ``backbone`` with a new head on ``dataset``; choose the epoch on val, score test once.

    Parameters
    ----------
    backbone : str
        timm name with its tag (``vit_base_patch16_224.augreg_in21k``).
    dataset : str
        Dataset spec (``digits``, ``imagefolder:PATH``... see :func:`probe.open_dataset`); needs a train split.
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
    from ._backbones import check_model_name, file_sha256
    from ._checks import check_img_size, check_output_dirs
    from ._datasets import open_dataset
    from ._runtime import resolve_device
    from ._schema import SEED, WORKERS
    from .results import job_stem
    from .splits import require_two_classes

    config = make_config(mode=mode, trainable_blocks=trainable_blocks, epochs=epochs, lr=lr, batch_size=batch_size,
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
    from .splits import check_overlap

    check_overlap(source, allow=allow_overlap, cache_dir=cache_dir)
    split_plan = _plan_splits(source, config, seed)
    if "test" not in split_plan and verbose:
        print(f"probe: dataset {source.name!r} has no test split: the epoch is chosen on val and no test row is "
              "written; pass --test-fraction F to carve a test split from train", file=sys.stderr)
    train_split, train_idx = split_plan["train"]
    require_two_classes(source.labels[train_split][train_idx], source.classes, what="fine-tuning")
    n_train = len(train_idx)
    if n_train < config.batch_size:
        raise UsageError(f"the train split of {source.name!r} has {n_train} images after the val carve, fewer "
                         f"than the batch size {config.batch_size}; use --batch-size {_pow2_floor(n_train)} or less")

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"weights file {weights} does not exist; pass a .safetensors or torch checkpoint")
        weights_key = f"file:{file_sha256(path)[:16]}"
    else:
        weights_key = f"random-init:seed{init_seed}" if random_init else "hub"
    from ._version import PROBE_VERSION

    settings = {"format": CHECKPOINT_FORMAT, "backbone": backbone, "weights": weights_key, "img_size": img_size,
                "family": family, "dataset": source.name, "fingerprint": source.fingerprint(), "seed": int(seed),
                "init_seed": init_seed, "probe_version": PROBE_VERSION,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    tag = f"{config.mode}{'' if config.trainable_blocks is None else config.trainable_blocks}-{digest[:10]}"
    stem = job_stem(results_dir, backbone=backbone, dataset=source.name, probe="finetune", tap="-", shots=0,
                    seed=int(seed), tag=tag)
    results_path = Path(str(stem) + ".parquet")
    ckpt_dir = Path(str(stem) + ".ckpt") if checkpoint_dir is None else Path(checkpoint_dir) / (stem.name + ".ckpt")
    if results_path.is_file() and not overwrite:
        return _read_back(results_path, stem, ckpt_dir, settings, verbose)

    results_path.parent.mkdir(parents=True, exist_ok=True)
    busy = (f"another process is fine-tuning the same job ({stem}.lock is held); wait for it to finish, then "
            "rerun to read its results")
    with ProcessLock(Path(str(stem) + ".lock"), wait=False, busy_error=busy):
        if results_path.is_file() and not overwrite:  # finished by another process while we looked
            return _read_back(results_path, stem, ckpt_dir, settings, verbose)
        if overwrite:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        run = _Run(backbone=backbone, source=source, config=config, split_plan=split_plan, settings=settings,
                   digest=digest, stem=stem, ckpt_dir=ckpt_dir, accum_steps=1 if accum_auto else int(accum_steps),
                   accum_auto=accum_auto, img_size=img_size, weights=weights, random_init=random_init,
                   seed=int(seed), init_seed=init_seed, family=family, data_root=data_root, cache_dir=cache_dir, device=device,
                   workers=workers, progress=progress, verbose=verbose)
        result = run.execute()
    if not keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ validation


def make_config(**values) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig`: every value against its declared setting (named by its CLI flag),
    then the rules between fields. Raises one UsageError line for the first problem."""
    settings = config_settings()
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise UsageError(f"unknown fine-tune setting(s) {unknown}; known: {', '.join(settings)}")
    checked = {k: check_setting(v, settings[k], cli_flag(k)) for k, v in values.items()}
    config = FinetuneConfig(**checked)
    check_config_rules(config, cli_flag)
    return config


def check_config_rules(c: FinetuneConfig, name=cli_flag) -> None:
    """The rules between fields of a (type-checked) config; ``name(field)`` spells a key in the error."""
    lo, hi = c.crop_scale
    if lo > hi:
        raise UsageError(f"{name('crop_scale')} must be MIN <= MAX (e.g. 0.08 1.0); got {lo} {hi}")
    if c.mode == "partial" and c.trainable_blocks is None:
        raise UsageError(f"mode partial needs {name('trainable_blocks')} N (the last N blocks or stages are "
                         "trained)")
    if c.mode == "full" and c.trainable_blocks is not None:
        raise UsageError(f"{name('trainable_blocks')} applies to mode partial or lp-ft; drop it or change the mode")


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


def _plan_splits(source, config: FinetuneConfig, seed: int) -> dict[str, tuple[str, np.ndarray]]:
    """Split -> (dataset split, indices into it): the sweeps' train/val/test, carved from train where missing
    (:func:`probe.splits.carve_splits` over the dataset's full id list, as the sweeps carve it)."""
    from .splits import carve_splits

    has_val, has_test = "val" in source.splits, "test" in source.splits
    if has_test and config.test_fraction:
        raise UsageError(f"dataset {source.name!r} has its own test split; drop --test-fraction (it carves a test "
                         "split only for datasets without one)")
    parts = carve_splits(source.labels["train"], ids=source.ids["train"],
                         val_fraction=0.0 if has_val else config.val_fraction,
                         test_fraction=0.0 if has_test else config.test_fraction, seed=seed)
    plan = {"train": ("train", parts["train"]),
            "val": ("val", np.arange(len(source.labels["val"]))) if has_val else ("train", parts["val"])}
    if has_test:
        plan["test"] = ("test", np.arange(len(source.labels["test"])))
    elif "test" in parts:
        plan["test"] = ("train", parts["test"])
    return plan


# ------------------------------------------------------------------------------------------------ freezing


def block_groups(model) -> tuple[dict[str, str | int], int]:
    """Assign every parameter of a timm model to ``"stem"``, a block index ``0..depth-1``, or ``"post"``.

    Blocks are the units of timm's coarse ``group_matcher`` (transformer blocks for ViTs, stages for ResNets,
    ConvNeXts and Swins): the first index captured by one of its block patterns. Parameters matched by the stem
    pattern are the stem; everything else (the final norm, pooling, pre-logits and the classifier) is ``post``.

    Returns
    -------
    (dict, int)
        Parameter name -> group, and the depth (number of blocks).
    """
    matcher = model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else None
    if not isinstance(matcher, dict):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise UsageError(f"backbone {arch} has no timm group matcher, so its blocks are unknown; "
                         "use --mode full or lp-ft without --trainable-blocks")
    compiled = []  # (regex, is_stem), in timm's matching order (first match wins)
    for name, spec in matcher.items():
        if spec is None:
            continue
        for pattern in ([s[0] for s in spec] if isinstance(spec, (list, tuple)) else [spec]):
            compiled.append((re.compile(pattern), name == "stem"))
    raw: dict[str, Any] = {}
    for pname, _ in model.named_parameters():
        group: Any = "post"
        for regex, is_stem in compiled:
            m = regex.match(pname)
            if m:
                if is_stem:
                    group = "stem"
                elif m.groups() and m.group(1) is not None:
                    group = ("block", int(m.group(1)))
                break  # matched without an index (e.g. the final norm): after the trunk
        raw[pname] = group
    order = sorted({g[1] for g in raw.values() if isinstance(g, tuple)})
    index = {b: i for i, b in enumerate(order)}
    groups = {p: (index[g[1]] if isinstance(g, tuple) else g) for p, g in raw.items()}
    return groups, len(order)


def freeze_for_partial(model, trainable_blocks: int, name: str = "backbone") -> list[str]:
    """Freeze all but the last ``trainable_blocks`` blocks and the ``post`` group; return the frozen modules.

    The returned names are the top-most modules whose parameters are all frozen: they must be kept in eval
    mode during training (see :func:`set_train_mode`), so that their norm statistics and stochastic layers stay
    as they are.
    """
    groups, depth = block_groups(model)
    if trainable_blocks > depth:
        raise UsageError(f"--trainable-blocks {trainable_blocks} is beyond the depth of {name}: it has {depth} "
                         f"blocks; use 0..{depth}")
    first = depth - trainable_blocks
    for pname, p in model.named_parameters():
        g = groups[pname]
        p.requires_grad_(g == "post" or (isinstance(g, int) and g >= first))
    return frozen_modules(model)


def frozen_modules(model) -> list[str]:
    """Top-most submodules that own parameters, all of which are frozen."""
    frozen = []
    for mname, module in model.named_modules():
        if not mname or any(mname.startswith(f + ".") for f in frozen):
            continue
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            frozen.append(mname)
    return frozen


def set_train_mode(model, frozen: list[str]) -> None:
    """``model.train()``, except the frozen modules, which stay in eval mode."""
    model.train()
    modules = dict(model.named_modules())
    for mname in frozen:
        modules[mname].eval()


# --------------------------------------------------------------------------------------------- randomness


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), so nearby (seed, epoch, index) give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1


_STREAM_SHUFFLE, _STREAM_MODEL, _STREAM_AUGMENT = 1, 2, 3


def _seed_everything(value: int) -> None:
    import torch

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v
                       for v in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(v.numpy() if isinstance(v, torch.Tensor) else v for v in state["numpy"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ data


class _Images:
    """Map-style dataset over chosen indices of one or more splits: (image tensor, label, error message or '').

    ``parts`` is a list of (dataset split, indices) concatenated in that order (train+val for the refit).
    Training items are ``(epoch, k)`` pairs: with ``augment_seed`` set, each sample reseeds python's and torch's
    RNGs from (seed, epoch, split, index) before its transform, so its augmentation depends neither on which
    worker loads it nor on what came before. Evaluation items are plain positions ``k``.
    """

    def __init__(self, source, parts, transform, shape, augment_seed: int | None = None):
        self.source, self.transform, self.shape, self.augment_seed = source, transform, tuple(shape), augment_seed
        self.split_of = [split for split, idx in parts for _ in range(len(idx))]
        self.indices = np.concatenate([np.asarray(idx, dtype=np.int64) for _, idx in parts])
        self.labels = np.concatenate([source.labels[split][np.asarray(idx, dtype=np.int64)] for split, idx in parts])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        import torch

        epoch, k = item if isinstance(item, tuple) else (0, item)
        i, split = int(self.indices[k]), self.split_of[k]
        if self.augment_seed is not None:
            s = _mix(self.augment_seed, _STREAM_AUGMENT, epoch, _SPLIT_NUMBER[split], i)
            random.seed(s)
            torch.default_generator.manual_seed(s)  # the CPU generator only: torch.manual_seed costs 30x more
        try:
            return self.transform(self.source.load(split, i)), int(self.labels[k]), ""
        except ProbeError as exc:  # reported by the main process: workers cannot print one clean line
            return torch.zeros(self.shape), int(self.labels[k]), str(exc)


_SPLIT_NUMBER = {"train": 0, "val": 1, "test": 2}


class _Batches:
    """A batch sampler whose batches are set before each pass, so one loader (and its workers) serves every epoch."""

    def __init__(self):
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(images: _Images, batches: _Batches, workers: int, device, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)  # workers' base seed; keeps the global RNG untouched
    # persistent workers: forking them again every epoch costs more than a small model's epoch on a busy CPU
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers,
                                       pin_memory=device.type == "cuda", generator=generator,
                                       prefetch_factor=4 if workers > 0 else None, persistent_workers=workers > 0)


def train_transform(data_config: dict, config: FinetuneConfig):
    """timm's standard training transform at the checkpoint's input size, interpolation, mean and std."""
    import timm.data

    return timm.data.create_transform(
        input_size=tuple(data_config["input_size"]), is_training=True, scale=tuple(config.crop_scale),
        hflip=0.5 if config.hflip else 0.0, color_jitter=config.color_jitter, auto_augment=None,
        interpolation=data_config.get("interpolation", "bilinear"), mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]), re_prob=0.0)


# ------------------------------------------------------------------------------------------------ the run


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_safetensors(model, path: Path, metadata: dict[str, str]) -> Path:
    """Write ``model``'s state dict (with its head) as safetensors, atomically, with string metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


@dataclass
class _Run:
    backbone: str
    source: Any
    config: FinetuneConfig
    split_plan: dict
    settings: dict
    digest: str
    stem: Path
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

    # ------------------------------------------------------------------------------------------ setup
    def execute(self) -> FinetuneResult:
        from ._runtime import cpu_threads, default_workers, resolve_device

        self.n_workers = default_workers() if self.workers is None else int(self.workers)
        with cpu_threads(resolve_device(self.device), self.n_workers):
            return self._execute()

    def _execute(self) -> FinetuneResult:
        import torch

        from ._runtime import resolve_device

        c = self.config
        self.skipped: set[str] = set()  # unreadable images left out with skip_bad
        self.dev = resolve_device(self.device)
        self.amp_dtype, self.use_scaler = self._precision()
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.history: list[dict] = []
        self.refit_history: list[dict] = []
        self.best = {"epoch": 0, "value": -math.inf, "file": None}
        self.lp: dict | None = None
        self.eval_loaders: dict[str, Any] = {}
        refit = c.refit and "test" in self.split_plan
        state = self._read_checkpoint()
        phase = state["phase"] if state is not None else "select"
        if phase == "refit":  # the selection is done: its outcome sets the refit's length
            self.best, self.lp = dict(state["best"]), state["lp"]
        start_epoch, initial_head = 0, None
        if phase == "select":
            start_epoch, initial_head = self._setup_phase("select", state)
            for epoch in range(start_epoch + 1, c.epochs + 1):
                record = self._train_epoch(epoch)
                val = self._evaluate("val")
                record.update({f"val_{k}": v for k, v in val["metrics"].items()}, val_loss=val["loss"])
                improved = val["metrics"][c.select_metric] > self.best["value"]
                if improved:
                    self._save_best(epoch, val["metrics"][c.select_metric])
                self.history.append(record)
                self._save_checkpoint(epoch, "select")
                if self.verbose:
                    self._log(epoch, record, improved)
            state = None
        if refit:
            # the chosen number of epochs again, from the same initial weights, on train+val
            start = self._setup_phase("refit", state)
            for epoch in range(start + 1, self.best["epoch"] + 1):
                record = self._train_epoch(epoch)
                self.refit_history.append(record)
                self._save_checkpoint(epoch, "refit")
                if self.verbose:
                    print(f"probe: refit epoch {epoch}/{self.best['epoch']} on train+val: train loss "
                          f"{record['train_loss']:.4f}; {record['images_per_s']:.0f} img/s", file=sys.stderr)
        return self._finish(start_epoch, initial_head, refit)

    def _setup_phase(self, phase: str, state: dict | None):
        """Build the initial model, the optimizer and the loaders of a phase; resume from ``state`` when given.

        ``select`` trains on train for ``epochs`` epochs; ``refit`` on train+val for the chosen epoch count. Both
        start from the same weights: the backbone built exactly as extraction builds it (``num_classes=0``,
        ``random_init`` seeded by ``init_seed``), then a new head seeded by ``seed``. Returns the epochs already
        done (and, for ``select``, the fresh head's weights).
        """
        import torch

        from ._backbones import create_backbone

        c = self.config
        self.model = None  # free the previous phase's model first
        bb = create_backbone(self.backbone, weights=self.weights, random_init=self.random_init, seed=self.init_seed,
                             num_classes=0, img_size=self.img_size, family=self.family)
        self.bb = bb
        model = bb.model
        # The trunk is built exactly as extraction builds it (num_classes=0), so lp-ft's cached features are this
        # trunk's; then a new, seeded head for the dataset's classes (never a checkpoint's classifier).
        torch.manual_seed(_mix(self.seed, 0))
        model.reset_classifier(len(self.source.classes))
        self.frozen: list[str] = []
        if c.trainable_blocks is not None:
            self.frozen = freeze_for_partial(model, c.trainable_blocks, self.backbone)
        self.model = model.to(self.dev)
        if self.dev.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True

        parts = [self.split_plan["train"]] + ([self.split_plan["val"]] if phase == "refit" else [])
        epochs = c.epochs if phase == "select" else self.best["epoch"]
        self.phase_epochs = epochs
        self.steps_per_epoch = sum(len(idx) for _, idx in parts) // c.batch_size
        self.total_steps = self.steps_per_epoch * epochs
        self.warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))
        # fused: one kernel for all tensors (CPU and CUDA); the per-tensor loop dominates a small model's step
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=c.lr, betas=(0.9, 0.999), fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           warmup_cosine(self.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)

        # last.pt (weights + two AdamW moments, the old one until the new one replaces it), best weights, export
        self.ckpt_bytes = 4 * 8 * sum(p.numel() for p in self.model.parameters())
        check_free_space(self.ckpt_dir, self.ckpt_bytes, f"the checkpoints of {self.backbone}",
                         fix=" or pass --checkpoint-dir on a larger disk")
        start_epoch, initial_head = 0, None
        if state is not None:
            start_epoch = self._load_state(state)
        elif c.mode == "lp-ft":
            self.lp = self._linear_probe_head(refit=phase == "refit")
        if phase == "select" and start_epoch == 0:
            head = self.model.get_classifier()
            initial_head = {"weight": head.weight.detach().cpu().numpy().copy(),
                            "bias": head.bias.detach().cpu().numpy().copy()}

        data_config = bb.data_config
        shape = tuple(data_config["input_size"])
        self.train_images = _Images(self.source, parts, train_transform(data_config, c), shape,
                                    augment_seed=self.seed)
        if not hasattr(self, "eval_images"):
            eval_tf = bb.eval_transform()
            self.eval_images = {s: _Images(self.source, [plan], eval_tf, shape)
                                for s, plan in self.split_plan.items() if s != "train"}
        self.train_batches = _Batches()
        self.train_loader = _loader(self.train_images, self.train_batches, self.n_workers, self.dev, self.seed)
        return start_epoch if phase == "refit" else (start_epoch, initial_head)

    def _precision(self):
        import torch

        p = self.config.precision
        if p == "auto":
            if self.dev.type != "cuda":
                return None, False
            p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if p == "fp32":
            return None, False
        if p == "fp16" and self.dev.type != "cuda":
            raise UsageError("--precision fp16 needs CUDA; use fp32 or bf16 on CPU")
        return (torch.bfloat16, False) if p == "bf16" else (torch.float16, True)

    def _param_groups(self) -> list[dict]:
        from timm.optim import param_groups_layer_decay, param_groups_weight_decay

        c = self.config
        skip = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        if c.layer_decay is not None:
            groups = param_groups_layer_decay(self.model, weight_decay=c.weight_decay, layer_decay=c.layer_decay,
                                              no_weight_decay_list=skip)
        else:
            groups = param_groups_weight_decay(self.model, weight_decay=c.weight_decay, no_weight_decay_list=skip)
        for g in groups:  # LambdaLR scales each group's own initial lr, so layer decay survives the schedule
            g["lr"] = c.lr * g.pop("lr_scale", 1.0)
        return groups

    # -------------------------------------------------------------------------------------------- lp-ft
    def _linear_probe_head(self, refit: bool = False) -> dict:
        import torch

        from ._cache import load_split
        from ._extract import extract_features
        from ._sweep import sweep
        from .probes import LogisticProbe

        c = self.config
        splits = sorted({split for s, (split, _) in self.split_plan.items() if s in ("train", "val")})
        entries = extract_features(self.backbone, self.source.spec, splits=splits, taps=("pooled",),
                                   weights=self.weights, random_init=self.random_init, seed=self.init_seed,
                                   img_size=self.img_size, family=self.family, data_root=self.data_root,
                                   cache_dir=self.cache_dir, batch_size=max(1, self.config.batch_size),
                                   workers=self.workers, device=str(self.dev), skip_bad=c.skip_bad,
                                   progress=self.progress)
        cached = {split: load_split(e, taps=["pooled"]) for split, e in entries.items()}

        def rows(which):
            split, idx = self.split_plan[which]
            data = cached[split]
            where = {id_: r for r, id_ in enumerate(data.ids)}
            ids = self.source.ids[split]
            keep = [where[ids[i]] for i in idx if ids[i] in where]  # ids dropped with skip_bad are left out
            return data.features["pooled"][keep].astype(np.float32), data.labels[keep]

        X_train, y_train = rows("train")
        X_val, y_val = rows("val")
        probe_device = str(self.dev)
        selected = c.lp_C is None
        if refit and self.lp is not None:  # the C chosen in the selection phase, fitted on train+val
            C, selected = float(self.lp["C"]), bool(self.lp["selected"])
        elif selected:
            res = sweep(LogisticProbe(device=probe_device), train=(X_train, y_train), val=(X_val, y_val),
                        test=None, select_metric=c.select_metric, seed=self.seed, return_result=True)
            C = float(res.selected_params["C"])
        else:
            C = float(c.lp_C)
        X_fit, y_fit = ((np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])) if refit
                        else (X_train, y_train))
        est = LogisticProbe(C=C, device=probe_device).fit(X_fit, y_fit)
        val_top1 = float(np.mean(est.predict(X_val) == y_val))
        W, b = probe_head(est, len(self.source.classes))
        head = self.model.get_classifier()
        if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != W.shape:
            raise UsageError(f"lp-ft needs a linear classifier on the pooled features; {self.backbone}'s head is "
                             f"{type(head).__name__}; use --mode full")
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(W))
            head.bias.copy_(torch.from_numpy(b))
        np.savez(self.ckpt_dir / f"lp_head{'_refit' if refit else ''}.npz", weight=W, bias=b, C=C)
        if self.verbose:
            print(f"probe: lp-ft: logistic probe C={C:g} ({'selected on val' if selected else 'fixed'}"
                  f"{', fitted on train+val' if refit else ''}), val top1 {val_top1:.4f}; head initialised from it",
                  file=sys.stderr)
        return {"C": C, "selected": selected, "val_top1": val_top1}

    # -------------------------------------------------------------------------------------------- training
    def _train_epoch(self, epoch: int) -> dict:
        import torch
        from tqdm.auto import tqdm

        c = self.config
        # (seed, epoch) fixes the shuffle, and the model's own randomness starts from a fresh seed each epoch
        g = torch.Generator().manual_seed(_mix(self.seed, _STREAM_SHUFFLE, epoch))
        order = torch.randperm(len(self.train_images), generator=g).tolist()
        batches = [[(epoch, k) for k in order[s:s + c.batch_size]]
                   for s in range(0, self.steps_per_epoch * c.batch_size, c.batch_size)]
        _seed_everything(_mix(self.seed, _STREAM_MODEL, epoch))
        self.train_batches.batches = batches
        set_train_mode(self.model, self.frozen)
        bar = tqdm(total=len(batches) * c.batch_size, unit="img", desc=f"epoch {epoch}/{self.phase_epochs}",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        loss_sum, seen, wait, start = 0.0, 0, 0.0, time.perf_counter()
        it = iter(self.train_loader)
        for step in range(len(batches)):
            t0 = time.perf_counter()
            x, y, errors = next(it)
            wait += time.perf_counter() - t0
            x, y = self._check_batch(x, y, errors)
            if len(y) == 0:  # every image of the batch was unreadable (--skip-bad)
                continue
            loss = self._step(x, y)
            if not math.isfinite(loss):
                bar.close()
                kept = (f"checkpoints up to epoch {epoch - 1} are kept in {self.ckpt_dir}" if epoch > 1
                        else "no epoch had completed")
                raise ProbeError(f"fine-tuning diverged: the loss is {loss} at epoch {epoch} (step {step + 1}) "
                                 f"with --lr {c.lr:g}; use a lower --lr (e.g. {c.lr / 10:g}); {kept}")
            loss_sum += loss * len(y)
            seen += len(y)
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{self._lr():.2e}", refresh=False)  # + tqdm's img/s
        bar.close()
        del it
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": self._lr(),
                "images_per_s": seen / seconds, "data_wait_share": wait / seconds, "train_seconds": seconds,
                "accum_steps": self.accum_steps}

    def _lr(self) -> float:
        """The peak learning rate now (the top layer's under layer decay)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _check_batch(self, x, y, errors):
        bad = [e for e in errors if e]
        if bad:
            if not self.config.skip_bad:
                raise ProbeError(bad[0] + "; fix or remove it, or pass --skip-bad")
            self.skipped.update(_image_name(e) for e in bad)
            keep = [i for i, e in enumerate(errors) if not e]
            x, y = x[keep], y[keep]
        return x, y

    def _step(self, x, y) -> float:
        """One optimizer step over the batch, in ``accum_steps`` micro-batches; returns the batch's mean loss."""
        import torch

        x = x.to(self.dev, non_blocking=True)
        y = y.to(self.dev, non_blocking=True)
        if self.dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        while True:
            try:
                return self._accumulate(x, y)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                micro = math.ceil(len(y) / self.accum_steps)
                if not self.accum_auto or micro <= 1:
                    raise ProbeError(f"out of GPU memory with micro-batches of {micro} images "
                                     f"({self.config.batch_size} per step / {self.accum_steps} accumulation steps); "
                                     "use a smaller --img-size, --mode partial, or --accum-steps auto") from None
                torch.cuda.empty_cache()
                self.accum_steps *= 2
                if self.verbose:
                    print(f"probe: out of GPU memory; accumulating {self.accum_steps} micro-batches of "
                          f"{math.ceil(len(y) / self.accum_steps)} images per step", file=sys.stderr)

    def _accumulate(self, x, y) -> float:
        import torch

        micro = math.ceil(len(y) / self.accum_steps)
        total = torch.zeros((), device=self.dev)
        for xs, ys in zip(x.split(micro), y.split(micro)):
            with torch.autocast(self.dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.model(xs)
            loss = self.criterion(logits.float(), ys) * (len(ys) / len(y))
            self.scaler.scale(loss).backward()
            total += loss.detach()
        value = float(total)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return value
        if self.config.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return value

    # -------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, which: str) -> dict:
        import torch

        from .results import classification_metrics

        images = self.eval_images[which]
        micro = max(1, math.ceil(self.config.batch_size / self.accum_steps))
        if which not in self.eval_loaders:
            self.eval_loaders[which] = _loader(images, _Batches(), self.n_workers, self.dev, 0)
        loader = self.eval_loaders[which]
        loader.batch_sampler.batches = [list(range(s, min(s + micro, len(images))))
                                        for s in range(0, len(images), micro)]
        self.model.eval()
        logits, labels, keep = [], [], []
        with torch.inference_mode():
            for x, y, errors in loader:
                ok = [not e for e in errors]
                if not all(ok) and not self.config.skip_bad:
                    raise ProbeError(next(e for e in errors if e) + "; fix or remove it, or pass --skip-bad")
                self.skipped.update(_image_name(e) for e in errors if e)
                x = x.to(self.dev, non_blocking=True)
                if self.dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.model(x)
                logits.append(out.float().cpu())
                labels.append(y)
                keep.extend(ok)
        scores = torch.cat(logits)
        target = torch.cat(labels)
        mask = torch.tensor(keep)
        scores, target = scores[mask], target[mask]
        loss = float(torch.nn.functional.cross_entropy(scores, target))
        scores_np = scores.numpy()
        return {"metrics": classification_metrics(target.numpy(), scores_np),
                "loss": loss, "scores": scores_np, "labels": target.numpy(), "keep": mask.numpy()}

    # -------------------------------------------------------------------------------------------- checkpoints
    def _metadata(self, epoch: int) -> dict[str, str]:
        return {"format": "probe-finetune", "backbone": self.backbone, "weights": self.bb.weights_id,
                "dataset": self.source.name, "classes": json.dumps(self.source.classes), "epoch": str(epoch),
                "mode": self.config.mode, "settings_hash": self.digest,
                "data_config": json.dumps(self.bb.data_config)}

    def _space_guard(self, what: str):
        return disk_full_guard(self.ckpt_dir, what, "the fine-tune resumes after its last completed epoch "
                                                    f"(checkpoints need about {format_bytes(self.ckpt_bytes)})")

    def _save_best(self, epoch: int, value: float) -> None:
        name = f"best-epoch{epoch:04d}.safetensors"
        with self._space_guard(f"the best weights {name}"):
            save_safetensors(self.model, self.ckpt_dir / name, self._metadata(epoch))
        self.best = {"epoch": epoch, "value": float(value), "file": name}

    def _save_checkpoint(self, epoch: int, phase: str) -> None:
        state = {"format": CHECKPOINT_FORMAT, "settings_hash": self.digest, "phase": phase, "epoch": epoch,
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": _rng_state(), "history": self.history, "refit_history": self.refit_history,
                 "best": self.best, "lp": self.lp, "accum_steps": self.accum_steps}
        with self._space_guard(f"the epoch-{epoch} checkpoint last.pt"):
            _atomic_torch_save(state, self.ckpt_dir / "last.pt")
        # only the best file that the checkpoint names is kept (an improvement written just before a kill is
        # recomputed on resume)
        for p in self.ckpt_dir.glob("best-epoch*.safetensors"):
            if p.name != self.best["file"]:
                p.unlink(missing_ok=True)

    def _read_checkpoint(self) -> dict | None:
        """The last checkpoint of these settings, or None for a fresh run."""
        import torch

        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ProbeError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); delete it to start over "
                             "or pass --overwrite") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("settings_hash") != self.digest:
            raise ProbeError(f"checkpoint {path} belongs to other settings; delete {self.ckpt_dir} or pass "
                             "--overwrite")
        state.setdefault("phase", "select")
        return state

    def _load_state(self, state: dict) -> int:
        """Restore a checkpoint into the phase just built; returns the epochs it had completed."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.history, self.best, self.lp = list(state["history"]), dict(state["best"]), state["lp"]
        self.refit_history = list(state.get("refit_history", []))
        self.accum_steps = int(state["accum_steps"])
        for p in self.ckpt_dir.glob("best-epoch*.safetensors"):
            if p.name != self.best["file"]:
                p.unlink(missing_ok=True)
        if self.verbose:
            where = "the refit on train+val" if state["phase"] == "refit" else "selection"
            print(f"probe: resuming {self.stem.name} ({where}) after epoch {state['epoch']} from "
                  f"{self.ckpt_dir / 'last.pt'}", file=sys.stderr)
        return int(state["epoch"])

    def _log(self, epoch: int, r: dict, improved: bool) -> None:
        print(f"probe: epoch {epoch}/{self.config.epochs}: train loss {r['train_loss']:.4f}, val loss "
              f"{r['val_loss']:.4f}, val top1 {r['val_top1']:.4f}, top5 {r['val_top5']:.4f}, mean per class "
              f"{r['val_mean_per_class_acc']:.4f}; {r['images_per_s']:.0f} img/s, data wait "
              f"{r['data_wait_share']:.0%}{' (best so far)' if improved else ''}", file=sys.stderr)

    # -------------------------------------------------------------------------------------------- results
    def _finish(self, start_epoch: int, initial_head, refit: bool) -> FinetuneResult:
        from safetensors.torch import load_file

        from ._identity import identity_columns, protocol_id
        from ._version import PROBE_VERSION
        from .results import make_row, results_frame, save_artifacts, write_results

        c = self.config
        best_epoch, best_file = self.best["epoch"], self.ckpt_dir / str(self.best["file"])
        if not refit:
            if not best_file.is_file():
                raise ProbeError(f"best checkpoint {best_file} is missing; rerun with --overwrite")
            self.model.load_state_dict(load_file(str(best_file), device=str(self.dev)))
        params = self._params()
        n_train, n_val = len(self.split_plan["train"][1]), len(self.split_plan["val"][1])
        val_fraction = 0.0 if "val" in self.source.splits else c.val_fraction
        test_fraction = 0.0 if "test" in self.source.splits else c.test_fraction
        recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()
                  if k not in ("select_metric", "val_fraction", "test_fraction", "refit", "precision", "skip_bad")}
        protocol = protocol_id(task="classification", probe="finetune", tap="-", grid=recipe,
                               val_fraction=val_fraction, test_fraction=test_fraction, select_metric=c.select_metric,
                               shots=0, refit=refit, probe_version=PROBE_VERSION)
        base = dict(backbone=self.backbone, family=self.bb.family, family_source=self.bb.family_source,
                    weights=self.bb.weights_id,
                    dataset=self.source.name, tap="-", probe="finetune", shots=0, seed=self.seed,
                    val_fraction=val_fraction, test_fraction=test_fraction, select_metric=c.select_metric,
                    cache_key="-", protocol=protocol, n_val=n_val,
                    **identity_columns(backbone=self.backbone, weights=self.bb.weights_id,
                                       data_config=self.bb.data_config, precision=self._precision_name()))
        rows = [make_row(**base, params={**params, "epoch": r["epoch"]}, selected=False, split="val",
                         n_train=n_train, n_eval=n_val, fit_seconds=r["train_seconds"], top1=r["val_top1"],
                         top5=r["val_top5"], mean_per_class_acc=r["val_mean_per_class_acc"]) for r in self.history]
        total_seconds = sum(r["train_seconds"] for r in self.history + self.refit_history)
        weights_path = Path(str(self.stem) + ".safetensors")
        with disk_full_guard(weights_path.parent, f"the fine-tuned weights {weights_path.name}",
                             "the fine-tune resumes from its last checkpoint"):
            if refit:  # the exported weights are the ones that scored test
                save_safetensors(self.model, weights_path, {**self._metadata(best_epoch), "refit": "train+val"})
            else:
                with atomic_path(weights_path) as tmp:
                    shutil.copyfile(best_file, tmp)
        test_metrics, artifacts = None, None
        if "test" in self.eval_images:
            test = self._evaluate("test")
            test_metrics = test["metrics"]
            rows.append(make_row(**base, params={**params, "epoch": best_epoch}, selected=True, split="test",
                                 n_train=n_train + n_val if refit else n_train, n_eval=int(test["keep"].sum()),
                                 fit_seconds=total_seconds, **test_metrics))
            split, idx = self.split_plan["test"]
            ids = np.asarray(self.source.ids[split])[idx][test["keep"]]
            artifacts = save_artifacts(self.stem, ids=ids, labels=test["labels"], scores=test["scores"],
                                       classes=self.source.classes)
        else:
            rows[best_epoch - 1] = dict(rows[best_epoch - 1], selected=True)
        if self.skipped:
            names = sorted(self.skipped)
            print(f"probe: --skip-bad left out {len(names)} unreadable image{'s' if len(names) != 1 else ''} of "
                  f"{self.source.name}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}", file=sys.stderr)
        frame = results_frame(rows)
        results_path = write_results(frame, Path(str(self.stem) + ".parquet"))
        if self.verbose:
            print(f"probe: chose epoch {best_epoch} on val ({c.select_metric} {self.best['value']:.4f})"
                  + ("; retrained on train+val for that many epochs" if refit else ""), file=sys.stderr)
        warnings = []
        chance = chance_level(self.eval_images["val"].labels, c.select_metric, len(self.source.classes))
        if self.best["value"] <= chance["threshold"]:
            warnings.append(f"the best val {c.select_metric} ({self.best['value']:.3f}, epoch {best_epoch}) is at "
                            f"chance level ({chance['chance']:.3f} with {len(self.source.classes)} classes): the "
                            "network learned nothing the val split can see; try a larger --lr, more --epochs or "
                            "pretrained weights")
        for w in warnings:
            print(f"probe: warning: {w}", file=sys.stderr)
        return FinetuneResult(frame=frame, results_path=results_path, weights_path=weights_path,
                              artifacts_path=artifacts, best_epoch=best_epoch, test_metrics=test_metrics,
                              history=self.history, checkpoint_dir=self.ckpt_dir, resumed_from=start_epoch,
                              lp=self.lp, initial_head=initial_head, settings=self.settings, warnings=warnings)

    def _precision_name(self) -> str:
        import torch

        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

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
        return params


def chance_level(labels: np.ndarray, metric: str, n_classes: int) -> dict[str, float]:
    """The val score a model gets without learning anything, and the score not distinguishable from it.

    ``chance`` is what always predicting the most frequent classes scores (top1: the largest class share;
    top5: the five largest; mean per-class accuracy: one over the classes present). ``threshold`` adds two
    binomial standard errors over the val examples, so a tiny val split does not call noise learning.
    """
    labels = np.asarray(labels)
    counts = np.sort(np.bincount(labels, minlength=n_classes))[::-1]
    n = max(1, len(labels))
    if metric == "mean_per_class_acc":
        chance = 1.0 / max(1, int((counts > 0).sum()))
    else:
        chance = float(counts[: 5 if metric == "top5" else 1].sum()) / n
    return {"chance": chance, "threshold": chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)}


def _image_name(error: str) -> str:
    """The file named by an image-loading error (``cannot read image NAME: ...``), else the message."""
    m = re.match(r"cannot read image (.+?): ", error)
    return m.group(1) if m else error


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Per-step lr factor: linear warmup to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        rest = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / rest)))

    return factor


def probe_head(est, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted LogisticProbe as a linear head over all ``n_classes`` labels: (weight [C, D], bias [C]).

    Two classes are one logit z in the probe (class scores [0, z]); the head gets those scores exactly. A class
    the probe never saw scores like the least likely seen class (zero weight, the smallest bias).
    """
    coef = np.asarray(est.coef_, dtype=np.float32)
    intercept = np.asarray(est.intercept_, dtype=np.float32).reshape(-1)
    classes = np.asarray(est.classes_, dtype=np.int64)
    W = np.zeros((n_classes, coef.shape[1]), dtype=np.float32)
    if coef.shape[0] == 1 and len(classes) == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1, np.float32), intercept])
    b = np.full(n_classes, intercept.min(), dtype=np.float32)
    W[classes] = coef
    b[classes] = intercept
    return W, b


def _read_back(results_path: Path, stem: Path, ckpt_dir: Path, settings: dict, verbose: bool) -> FinetuneResult:
    import polars as pl

    frame = pl.read_parquet(results_path)
    test = frame.filter(pl.col("selected"))
    best_epoch = int(json.loads(test["params"][0]).get("epoch", 0)) if len(test) else 0
    test_metrics = ({m: float(test[m][0]) for m in METRICS}
                    if len(test) and test["split"][0] == "test" else None)
    weights_path = Path(str(stem) + ".safetensors")
    artifacts = Path(str(stem) + ".npz")
    if verbose:
        print(f"probe: results exist, nothing trained: {results_path} (pass --overwrite to retrain)",
              file=sys.stderr)
    return FinetuneResult(frame=frame, results_path=results_path,
                          weights_path=weights_path if weights_path.is_file() else None,
                          artifacts_path=artifacts if artifacts.is_file() else None, best_epoch=best_epoch,
                          test_metrics=test_metrics, checkpoint_dir=ckpt_dir, skipped=True, settings=settings)
