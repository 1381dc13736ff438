"""Dense heads on a timm backbone (imports torch; loaded only for dense fine-tuning).

:class:`DenseModel` runs the backbone's ``forward_intermediates`` once and gives every task its own head:

- ``linear``: one linear layer on each patch token (a 1x1 convolution on the last block's feature map, after the
  final norm), upsampled bilinearly to the input size: the frozen dense probe's head, trained end to end;
- ``multiscale``: a light FPN/DPT-style decoder over four feature maps spread over the depth (blocks
  ``int(L * k / 4) - 1`` for k = 1..4 of the L levels in ``feature_info``: 2, 5, 8, 11 of a 12-block ViT; the
  stages of a ResNet): each map is projected by a 1x1 convolution to :data:`DECODER_WIDTH` channels, resized to
  the finest map's grid and summed, then a 3x3 convolution with batch norm and ReLU and a 1x1 convolution to the
  task's outputs, upsampled bilinearly to the input size.

Outputs are ``{task: [B, C, H, W]}``: class logits for segmentation, one channel of log-depth for depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import UsageError

#: Channels of the multi-scale decoder's fused maps.
DECODER_WIDTH = 64
HEADS = ("linear", "multiscale")


def feature_levels(head: str, n_levels: int) -> list[int]:
    """The ``feature_info`` indices a head reads: the last one (linear), or four spread over the depth."""
    if head == "linear":
        return [n_levels - 1]
    return sorted({max(0, int(n_levels * k / 4) - 1) for k in range(1, 5)})


class _Linear(nn.Module):
    def __init__(self, channels: list[int], n_out: int):
        super().__init__()
        self.proj = nn.Conv2d(channels[-1], n_out, kernel_size=1)

    def forward(self, feats):
        return self.proj(feats[-1])


class _MultiScale(nn.Module):
    def __init__(self, channels: list[int], n_out: int, width: int = DECODER_WIDTH):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, kernel_size=1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(width, n_out, kernel_size=1)

    def forward(self, feats):
        size = max((f.shape[-2:] for f in feats), key=lambda s: s[0] * s[1])  # the finest grid
        fused = sum(F.interpolate(lat(f), size=size, mode="bilinear", align_corners=False)
                    if f.shape[-2:] != size else lat(f) for lat, f in zip(self.lateral, feats))
        return self.out(self.fuse(fused))


class DenseModel(nn.Module):
    """A timm backbone (built with ``num_classes=0``) with one dense head per task.

    Parameters
    ----------
    backbone : torch.nn.Module
        A timm model with ``forward_intermediates`` and ``feature_info``.
    outputs : dict
        Task -> output channels (segmentation classes, or 1 for depth).
    head : {"linear", "multiscale"}
    input_size : tuple
        (C, H, W) of the network input, used once to read the feature maps' channels.
    """

    def __init__(self, backbone, outputs: dict[str, int], *, head: str, input_size):
        super().__init__()
        if not hasattr(backbone, "forward_intermediates") or not getattr(backbone, "feature_info", None):
            name = getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__)
            raise UsageError(f"backbone {name} has no timm forward_intermediates, so dense heads cannot read its "
                             "feature maps; use a ViT, ResNet, ConvNeXt or another timm model that has one")
        self.backbone = backbone
        self.head = head
        self.indices = feature_levels(head, len(backbone.feature_info))
        with torch.no_grad():
            was = backbone.training
            backbone.eval()
            feats = self._features(torch.zeros(1, *input_size))
            backbone.train(was)
        channels = [f.shape[1] for f in feats]
        make = _Linear if head == "linear" else _MultiScale
        self.heads = nn.ModuleDict({task: make(channels, n) for task, n in outputs.items()})

    def _features(self, x):
        return self.backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True,
                                                   norm=self.head == "linear")

    def forward(self, x):
        feats = self._features(x)
        return {task: F.interpolate(h(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
                for task, h in self.heads.items()}

    def no_weight_decay(self) -> set[str]:
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{n}" for n in inner}
