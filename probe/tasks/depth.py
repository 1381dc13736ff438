"""Monocular depth: metres per pixel; a linear probe on the patch tap (NYU Depth V2 metrics)."""

from __future__ import annotations

from ._base import Metric
from ._dense import DenseTask
from . import register

_NAMES = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
_STATS = ("stat/n_valid", "stat/sq_err", "stat/abs_rel", "stat/log10", "stat/delta1", "stat/delta2", "stat/delta3")
_UNITS = {"rmse": "target", "abs_rel": "ratio", "log10": "log10"}
_LABELS = {"rmse": "RMSE", "abs_rel": "abs rel", "log10": "log10", "delta1": "δ<1.25", "delta2": "δ<1.25²",
           "delta3": "δ<1.25³"}


def _dense(name: str):
    def resample(stats, counts):
        from ..dense import resampled_metric

        return resampled_metric("depth", name, {k.split("/", 1)[1]: stats[k] for k in _STATS if k in stats}, counts)

    return resample


class Depth(DenseTask):
    name = "depth"
    metrics = tuple(Metric(n, n.startswith("delta"), _UNITS.get(n, "fraction"), _LABELS[n], _STATS,
                           resample=_dense(n)) for n in _NAMES)

    # ------------------------------------------------------------------------------------------ engine hooks
    # (the dense probe's jobs: probe.tasks._dense.DenseTask)

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Depth"
    report_group = "Dense transfer: segmentation and depth"
    target_unit = "m"

    group_noun = "scenes"

    def report_section(self, report, jobs):
        """The frozen dense probe beside single-task linear-head fine-tuning (the probe's counterpart), then
        every other fine-tune with its tasks and head named (:meth:`probe._report.Report.dense_section`)."""
        return report.dense_section(self, jobs)


register(Depth())
