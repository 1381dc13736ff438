"""Building a fine-tune's objects: the model with its heads, the evaluation loaders, and one phase's Trainer.

The loop (:class:`probe._finetune.run._Run`) receives what these functions build and never assembles anything
itself (the way dinov2's ``eval_linear`` receives its model, heads and loaders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import _distributed
from .config import POOLED_TASKS, FinetuneConfig


def is_dense(config: FinetuneConfig) -> bool:
    """True when the run's heads sit on the backbone's feature maps (not its pooled classifier slot)."""
    return tuple(config.tasks) not in {(t,) for t in POOLED_TASKS}


def build_model(backbone: str, *, config: FinetuneConfig, heads: dict, source, split_plan: dict, weights,
                random_init: bool, init_seed: int, seed: int, img_size: int | None, family: str | None, device):
    """The initial model of a phase, on ``device``.

    The backbone is built exactly as extraction builds it (``num_classes=0``, ``random_init`` seeded by
    ``init_seed``, so lp-ft's cached features are this trunk's), then a new head per task seeded by ``seed``
    (never a checkpoint's classifier), then the freezing of ``partial``. A pooled task uses the backbone's
    classifier slot; dense tasks get :class:`probe._finetune.decoders.DenseModel` heads (the depth head starting
    at the mean log-depth of up to 64 train images), and learned per-task uncertainties when the loss weighting
    asks for them.

    Returns
    -------
    (Backbone, model, frozen module names)
    """
    import torch

    from .._backbones import create_backbone
    from .build import freeze_for_partial, frozen_modules
    from .data import mix

    bb = create_backbone(backbone, weights=weights, random_init=random_init, seed=init_seed, num_classes=0,
                         img_size=img_size, family=family)
    model = bb.model
    torch.manual_seed(mix(seed, 0))
    frozen = []
    if not is_dense(config):  # the backbone's classifier slot: class logits, or one regression output
        model.reset_classifier(heads[config.tasks[0]].n_outputs())
        if config.trainable_blocks is not None:
            frozen = freeze_for_partial(model, config.trainable_blocks, backbone)
    else:
        from .decoders import DenseModel

        if config.trainable_blocks is not None:
            freeze_for_partial(model, config.trainable_blocks, backbone)
        model = DenseModel(model, {t: task.n_outputs() for t, task in heads.items()}, head=config.head,
                           input_size=tuple(bb.data_config["input_size"]))
        if "depth" in heads:  # the depth head starts at the mean log-depth of (up to 64) train images
            with torch.no_grad():
                list(model.heads["depth"].modules())[-1].bias.fill_(mean_log_depth(source, split_plan))
        if config.task_weighting == "uncertainty" and len(heads) > 1:
            # learned log-variances s_t, part of the model so that they are trained, saved and resumed with it
            model.loss_log_vars = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.zeros(())) for t in heads})
        frozen = frozen_modules(model)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    return bb, model, frozen


def mean_log_depth(source, split_plan: dict) -> float:
    """The mean log-depth over the valid pixels of up to 64 train images (0 when there are none)."""
    from ..dense import depth_valid

    split, idx = split_plan["train"]
    logs = []
    for i in idx[:64]:
        d = source.dense_targets(split, int(i))["depth"]
        logs.append(np.log(d[depth_valid(d)]))
    values = np.concatenate(logs) if logs else np.zeros(0)
    return float(values.mean()) if values.size else 0.0


def build_eval_loaders(*, bb, config: FinetuneConfig, source, split_plan: dict, n_workers: int, device) -> dict:
    """One loader per evaluated split (val, test) with the checkpoint's own evaluation transform; dense tasks see
    the whole frame and keep their targets at the label resolution (:class:`probe._finetune.data.DenseEvalTransform`),
    as the frozen dense probe."""
    from .data import Batches, DenseEvalTransform, ImageOnly, ImageSet, collate_dense, make_loader

    data_config = bb.data_config
    shape = tuple(data_config["input_size"])
    dense = is_dense(config)
    eval_tf = DenseEvalTransform(data_config) if dense else ImageOnly(bb.eval_transform())
    return {s: make_loader(ImageSet(source, [plan], eval_tf, shape, tasks=config.tasks), Batches(), n_workers,
                           device, 0, collate_fn=collate_dense if dense else None)
            for s, plan in split_plan.items() if s != "train"}


def build_trainer(*, model, frozen: list, bb, heads: dict, config: FinetuneConfig, source, parts: list,
                  epochs: int, eval_loaders: dict, seed: int, n_workers: int, device, amp_dtype, use_scaler: bool,
                  accum_steps: int, accum_auto: bool, ckpt_dir: Path, progress: bool, verbose: bool,
                  skipped: set, sync_batchnorm: bool) -> Any:
    """One phase's :class:`probe._finetune.trainer.Trainer`: the optimizer and warmup-cosine schedule over the
    phase's steps, the grad scaler, the training loader over ``parts`` (train, or train+val) with the seeded
    augmentation, and the evaluation loaders."""
    import torch

    from .build import build_optimizer, param_groups
    from .data import Batches, DenseTrainTransform, ImageOnly, ImageSet, make_loader, shuffled_batches, \
        train_transform
    from .trainer import Objective, Trainer

    c = config
    n_images = sum(len(idx) for _, idx in parts)
    steps_per_epoch = n_images // c.batch_size
    optimizer, scheduler = build_optimizer(
        param_groups(model, lr=c.lr, weight_decay=c.weight_decay, layer_decay=c.layer_decay), lr=c.lr,
        warmup_steps=int(round(c.warmup_epochs * steps_per_epoch)), total_steps=steps_per_epoch * epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    data_config = bb.data_config
    shape = tuple(data_config["input_size"])
    train_tf = DenseTrainTransform(data_config, c) if is_dense(c) else ImageOnly(train_transform(data_config, c))
    train_images = ImageSet(source, parts, train_tf, shape, tasks=c.tasks, augment_seed=seed)
    train_batches = Batches()
    return Trainer(
        model=model, tasks=heads, objective=Objective(heads, log_vars=getattr(model, "loss_log_vars", None)),
        optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        train_loader=make_loader(train_images, train_batches, n_workers, device, seed),
        train_batches=train_batches,
        # under torchrun each rank loads its share of every global batch (the same batches on every rank)
        plan_batches=lambda epoch: [_distributed.rank_batches(b) for b in shuffled_batches(
            n_images, c.batch_size, steps_per_epoch, seed=seed, epoch=epoch)],
        step_model=_distributed.wrap_model(model, sync_batchnorm=sync_batchnorm),
        eval_loaders=eval_loaders, device=device, batch_size=c.batch_size, epochs=epochs, seed=seed,
        amp_dtype=amp_dtype, accum_steps=accum_steps, accum_auto=accum_auto, clip_grad=c.clip_grad, frozen=frozen,
        skip_bad=c.skip_bad, lr_hint=c.lr, checkpoint_dir=ckpt_dir, progress=progress, verbose=verbose,
        skipped=skipped)
