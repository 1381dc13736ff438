"""Building what the trainer is given: the freezing of a partial fine-tune, the optimizer and its schedule,
the autocast precision.

Blocks are the units of timm's coarse ``group_matcher``: the first index its block patterns capture
(``blocks.<i>``, ``layer<i>``, ``stages.<i>``, ``layers.<i>``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from .._errors import UsageError


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


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Per-step lr factor: linear warmup to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        rest = max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup_steps) / rest)))

    return factor


def param_groups(model, *, lr: float, weight_decay: float, layer_decay: float | None) -> list[dict]:
    """AdamW parameter groups: no decay on biases, norms, tokens and position embeddings (the model's
    ``no_weight_decay``), and with ``layer_decay`` a per-block lr scale (timm's layer decay)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None:
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                          no_weight_decay_list=skip)
    else:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    for g in groups:  # LambdaLR scales each group's own initial lr, so layer decay survives the schedule
        g["lr"] = lr * g.pop("lr_scale", 1.0)
    return groups


def build_optimizer(groups: list[dict], *, lr: float, warmup_steps: int, total_steps: int):
    """AdamW over ``groups`` with a per-step linear-warmup, cosine-decay schedule: (optimizer, scheduler)."""
    import torch

    # fused: one kernel for all tensors (CPU and CUDA); the per-tensor loop dominates a small model's step
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps))
    return optimizer, scheduler


def resolve_precision(precision: str, device):
    """(autocast dtype or None, whether a grad scaler is needed) for ``precision`` on ``device``."""
    import torch

    p = precision
    if p == "auto":
        if device.type != "cuda":
            return None, False
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "fp32":
        return None, False
    if p == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs CUDA; use fp32 or bf16 on CPU")
    return (torch.bfloat16, False) if p == "bf16" else (torch.float16, True)


def precision_name(amp_dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for an autocast dtype (None = fp32)."""
    return {None: "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[None if amp_dtype is None
                                                                               else str(amp_dtype)]
