"""Semantic segmentation: a class id per pixel; a linear probe on the patch tap."""

from __future__ import annotations

from ._dense import DenseTask, dense_metric
from . import register

_STATS = ("stat/intersection", "stat/union", "stat/labelled")


class Segmentation(DenseTask):
    name = "segmentation"
    metrics = (dense_metric(name, "miou", _STATS, higher_is_better=True, unit="fraction", label="mIoU"),
               dense_metric(name, "pixel_acc", _STATS, higher_is_better=True, unit="fraction", label="pixel acc"))

    # ------------------------------------------------------------------------------------------ engine hooks
    # (the dense probe's jobs: probe.tasks._dense.DenseTask)

    def classes(self, source) -> list:
        return list(source.segmentation_classes)

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Segmentation"


register(Segmentation())
