"""Monocular depth: metres per pixel; a linear probe on the patch tap (NYU Depth V2 metrics)."""

from __future__ import annotations

from ._dense import DenseTask, dense_metric
from . import register

_NAMES = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
_STATS = ("stat/n_valid", "stat/sq_err", "stat/abs_rel", "stat/log10", "stat/delta1", "stat/delta2", "stat/delta3")
_UNITS = {"rmse": "target", "abs_rel": "ratio", "log10": "log10"}
_LABELS = {"rmse": "RMSE", "abs_rel": "abs rel", "log10": "log10", "delta1": "δ<1.25", "delta2": "δ<1.25²",
           "delta3": "δ<1.25³"}


class Depth(DenseTask):
    name = "depth"
    metrics = tuple(dense_metric("depth", n, _STATS, higher_is_better=n.startswith("delta"),
                                 unit=_UNITS.get(n, "fraction"), label=_LABELS[n]) for n in _NAMES)

    # ------------------------------------------------------------------------------------------ engine hooks
    # (the dense probe's jobs: probe.tasks._dense.DenseTask)

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Depth"
    target_unit = "m"


register(Depth())
