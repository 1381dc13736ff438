"""Identification: which person is this? Retrieval on the features as they are (``cosine``), or identity
classifiers under cross-validation."""

from __future__ import annotations

from ._base import Task, mean_metric
from . import register


class Identification(Task):
    name = "identification"
    metrics = (mean_metric("rank1", "rank-1"), mean_metric("rank5", "rank-5"), mean_metric("map", "mAP"))
    select_metrics = ("top1", "top5", "mean_per_class_acc")  # identity classifiers select as classifiers do
    probes = ("cosine", "logistic", "ridge", "knn", "centroid")
    default_probes = ("cosine",)
    options = frozenset({"cv"})
    learns_classes = True

    # ------------------------------------------------------------------------------------------ engine hooks

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Identification (who is this?)"
    report_group = "Faces and continuous targets"
    group_noun = "people"

    def report_figures(self, report, dataset, evaluation, shown):
        """The retrieved faces of a few queries per configuration (fixed retrieval groups)."""
        return report.retrieval_figure(dataset, evaluation, shown)

    def legacy_evaluation(self, params, protocol):
        """Older retrieval rows record nothing: leave-one-image-out (``loo``); identity classifiers: their folds."""
        return "loo" if "folds" not in params else super().legacy_evaluation(params, protocol)


register(Identification())
