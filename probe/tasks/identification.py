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
    dataset_probes = True  # a study runs it per dataset with the dataset's probes key
    learns_classes = True

    # ------------------------------------------------------------------------------------------ engine hooks

    # ------------------------------------------------------------------------------------------ report hooks


register(Identification())
