"""Classification: one class label per image; probes learn the classes from frozen features."""

from __future__ import annotations

import numpy as np

from ._base import Metric, Task, mean_metric
from . import register


def _mean_per_class(stats, counts) -> np.ndarray:
    """Mean over the classes present in each resample of the share of their items that are hits (top-1)."""
    classes, index = np.unique(np.asarray(stats["labels"]), return_inverse=True)
    onehot = np.zeros((len(index), len(classes)))
    onehot[np.arange(len(index)), index] = 1.0
    hits = counts @ (onehot * np.asarray(stats["item/top1"], dtype=np.float64)[:, None])
    seen = counts @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, hits / np.where(seen > 0, seen, 1.0), 0.0).sum(axis=1) / (seen > 0).sum(axis=1)


class Classification(Task):
    name = "classification"
    metrics = (mean_metric("top1", "top-1"), mean_metric("top5", "top-5"),
               Metric("mean_per_class_acc", True, "fraction", "mean per-class", ("item/top1", "labels"),
                      resample=_mean_per_class))
    probes = ("logistic", "ridge", "knn", "centroid")
    default_probes = probes
    options = frozenset({"cv", "cv_group", "test_fraction", "shots"})
    learns_classes = True

    # ------------------------------------------------------------------------------------------ engine hooks

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Classification"
    report_group = "Classification"

    def item_stats(self, artifacts):
        """Hits from the saved predictions when the job saved no ``item/`` arrays: ``item/top1`` is the top-1
        prediction being the label, ``item/top5`` the label being among the saved five best classes."""
        out = super().item_stats(artifacts)
        labels = artifacts.get("labels")
        if labels is None:
            return out
        labels = np.asarray(labels)
        if "item/top1" not in out and "pred" in artifacts:
            out["item/top1"] = (np.asarray(artifacts["pred"]) == labels).astype(np.float64)
        if "item/top5" not in out and "top5" in artifacts:
            out["item/top5"] = (np.asarray(artifacts["top5"]) == labels[:, None]).any(axis=1).astype(np.float64)
        return out

    def report_section(self, report, jobs):
        """Frozen probes vs fine-tuning, the families, layer-wise and few-shot curves (per evaluation scheme)."""
        return report.classification_sections(self, jobs, extra=("mean_per_class_acc",))


register(Classification())
