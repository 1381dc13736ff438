"""Taps: which representations of one forward pass are stored.

- ``pooled``: ``forward_head(features, pre_logits=True)``, the representation the classifier sees.
- ``cls``: the class token after the final norm (token models with a class token).
- ``mean``: the mean of the patch tokens after the final norm (prefix tokens excluded), or the spatial mean of
  the final feature map for ConvNets.
- ``block<i>``: the spatial mean (over patch tokens or positions) of intermediate block / stage ``i`` as
  returned by timm's ``forward_intermediates`` (``i`` may be negative: ``block-1`` is the last), without the
  final norm; for layer-wise curves.
- ``patch``: the final patch-token grid ``[T, D]`` (ConvNets: the final feature map flattened to ``[H*W, C]``),
  for dense probes.
- ``patch16``: the token grid at output stride 16, for a matched-stride comparison of dense probes: a ConvNet's
  final map is stride 32 (7 x 7 at 224 px) where a ViT/16's is 16 (14 x 14). For a model whose final grid is at
  stride 16 it is ``patch``; otherwise the last stage of stride 16 in ``feature_info`` (a ConvNet's stage before
  the last) from ``forward_intermediates``, without a final norm, flattened to ``[H*W, C]``.
- ``logits``: the backbone's own classifier head output ``[Z]`` (its source classes), for the transferability
  scores that need a source head (LEEP, NCE); only for checkpoints that have a head.

All requested taps come from one forward pass.
"""

from __future__ import annotations

import re

from ._errors import UsageError

TAP_PATTERN = re.compile(r"^(pooled|cls|mean|patch|patch16|logits|block-?\d+)$")


def parse_taps(taps) -> tuple[str, ...]:
    """Validate tap names and return them sorted and de-duplicated (the canonical order used in cache keys)."""
    if isinstance(taps, str):
        taps = [taps]
    taps = list(taps or [])
    if not taps:
        raise UsageError("no taps requested; use e.g. --taps pooled")
    bad = [t for t in taps if not TAP_PATTERN.match(str(t))]
    if bad:
        raise UsageError(f"unknown tap(s) {bad}; taps are pooled, cls, mean, patch, patch16, logits and block<i> "
                         "(e.g. block3, block-1)")
    return tuple(sorted(set(taps), key=_tap_order))


def _tap_order(tap: str):
    if tap.startswith("block"):
        return (1, int(tap[5:]) if int(tap[5:]) >= 0 else 10_000 + int(tap[5:]), tap)
    return (0, ["pooled", "cls", "mean", "patch", "patch16", "logits"].index(tap), tap)


def block_count(model) -> int:
    """Number of indices ``forward_intermediates`` accepts (blocks for ViTs, stem + stages for ResNets...)."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            return len(info)
        except TypeError:
            pass
    blocks = getattr(model, "blocks", None) or getattr(model, "stages", None)
    return len(blocks) if blocks is not None else 0


def stride16_index(model) -> int | None:
    """The ``forward_intermediates`` index of the ``patch16`` tap: None when the final grid is already at stride
    16 (the tap is ``patch``); -1 when the model has no stride-16 stage. Raises nothing."""
    info = getattr(model, "feature_info", None)
    try:
        reductions = [int(f["reduction"]) for f in info]
    except (TypeError, KeyError):
        return -1
    if reductions and reductions[-1] == 16:
        return None
    at16 = [i for i, r in enumerate(reductions) if r == 16]
    return at16[-1] if at16 and hasattr(model, "forward_intermediates") else -1


def check_taps(model, taps: tuple[str, ...], name: str) -> None:
    """Raise a UsageError for a tap that ``model`` cannot give, before any image is read."""
    n_prefix = getattr(model, "num_prefix_tokens", 0)
    blocks = [t for t in taps if t.startswith("block")]
    if blocks:
        if not hasattr(model, "forward_intermediates"):
            raise UsageError(f"backbone {name} has no forward_intermediates in timm, so block taps are unavailable; "
                             f"use pooled, mean or patch")
        n = block_count(model)
        for t in blocks:
            i = int(t[5:])
            if not -n <= i < n:
                raise UsageError(f"tap {t} is out of range: backbone {name} has {n} blocks "
                                 f"(block0..block{n - 1}, or block-1..block-{n})")
    if "logits" in taps and not getattr(model, "num_classes", 0):
        raise UsageError(f"backbone {name} has no classifier head, so tap 'logits' (needed by LEEP and NCE) is "
                         "unavailable; use a checkpoint with a head, or leave out the scores that need it")
    if "patch16" in taps and stride16_index(model) == -1:
        raise UsageError(f"backbone {name} has no stage at output stride 16, so tap 'patch16' is unavailable; "
                         "use patch")
    if "cls" in taps and (n_prefix < 1 or getattr(model, "cls_token", None) is None):
        raise UsageError(f"backbone {name} has no class token, so tap 'cls' is unavailable; use pooled or mean")


def forward_taps(model, x, taps: tuple[str, ...]) -> dict:
    """Run one forward pass of ``model`` on batch ``x`` and return ``{tap: tensor}`` ([B, D] or [B, T, D])."""
    import torch

    blocks = [t for t in taps if t.startswith("block")]
    at16 = stride16_index(model) if "patch16" in taps else None
    intermediates = []
    if blocks or at16 is not None:
        n = block_count(model)
        indices = [int(t[5:]) % n for t in blocks] + ([at16] if at16 is not None else [])
        final, intermediates = model.forward_intermediates(x, indices=sorted(set(indices)), norm=False,
                                                           output_fmt="NCHW", intermediates_only=False)
        by_index = dict(zip(sorted(set(indices)), intermediates))
    else:
        final = model.forward_features(x)
    out = {}
    if "pooled" in taps:
        out["pooled"] = model.forward_head(final, pre_logits=True)
    if "logits" in taps:
        out["logits"] = model.forward_head(final)
    grid = None  # final features as [B, T, D] patch tokens
    if final.ndim == 3:
        n_prefix = getattr(model, "num_prefix_tokens", 0)
        if "cls" in taps:
            out["cls"] = final[:, 0]
        grid = final[:, n_prefix:]
    elif final.ndim == 4:
        nchw = final.permute(0, 3, 1, 2) if getattr(model, "output_fmt", "NCHW") == "NHWC" else final
        grid = nchw.flatten(2).transpose(1, 2)
    if "mean" in taps:
        out["mean"] = grid.mean(dim=1)
    if "patch" in taps:
        out["patch"] = grid
    if "patch16" in taps:
        out["patch16"] = grid if at16 is None else by_index[at16].flatten(2).transpose(1, 2)
    for t in blocks:
        feat = by_index[int(t[5:]) % n]
        out[t] = feat.mean(dim=(2, 3)) if feat.ndim == 4 else feat.mean(dim=1)
    return {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
