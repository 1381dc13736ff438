"""Regression: a continuous target per image (``age`` for faces, ``target`` for a manifest)."""

from __future__ import annotations

from ._base import Task, mean_metric, root_mean_metric
from . import register

#: Tolerance of the cumulative score ``cs5``, in the target's unit (years for age).
CS_TOLERANCE = 5.0


class Regression(Task):
    name = "regression"
    metrics = (mean_metric("mae", "MAE", higher_is_better=False, unit="target"),
               root_mean_metric("rmse", "RMSE", stat="item/rmse"),  # item/rmse holds the squared error
               mean_metric("cs5", "CS@5"))
    probes = ("ridge", "knn")
    default_probes = probes
    options = frozenset({"cv", "cv_group"})

    # ------------------------------------------------------------------------------------------ engine hooks

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Regression (continuous target, e.g. age)"
    report_group = "Faces and continuous targets"
    group_noun = "people"

    def report_figures(self, report, dataset, evaluation, shown):
        """Predicted vs true target per configuration (frozen probes and fine-tuning)."""
        return report.prediction_scatter(dataset, evaluation, shown)


register(Regression())
