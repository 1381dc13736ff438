"""Semantic segmentation: a class id per pixel; a linear probe on the patch tap."""

from __future__ import annotations

from ._base import Metric
from ._dense import DenseTask
from . import register

_STATS = ("stat/intersection", "stat/union", "stat/labelled")


def _dense(name: str):
    def resample(stats, counts):
        from ..dense import resampled_metric

        return resampled_metric("segmentation", name, {k.split("/", 1)[1]: stats[k] for k in _STATS}, counts)

    return resample


class Segmentation(DenseTask):
    name = "segmentation"
    metrics = (Metric("miou", True, "fraction", "mIoU", _STATS, resample=_dense("miou")),
               Metric("pixel_acc", True, "fraction", "pixel acc", _STATS, resample=_dense("pixel_acc")))

    # ------------------------------------------------------------------------------------------ engine hooks
    # (the dense probe's jobs: probe.tasks._dense.DenseTask)

    def classes(self, source) -> list:
        return list(source.segmentation_classes)

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Segmentation"
    report_group = "Dense transfer: segmentation and depth"

    group_noun = "scenes"

    def report_section(self, report, jobs):
        """The frozen dense probe beside single-task linear-head fine-tuning (the probe's counterpart), then
        every other fine-tune with its tasks and head named (:meth:`probe._report.Report.dense_section`)."""
        return report.dense_section(self, jobs)


register(Segmentation())
