"""Verification: are these two images of the same person? Cosine similarity of pairs, threshold chosen on the
other folds (LFW's protocol)."""

from __future__ import annotations

from ._base import Task, mean_metric, scalar_metric
from . import register


class Verification(Task):
    name = "verification"
    metrics = (mean_metric("verif_acc", "accuracy"), scalar_metric("verif_acc_sd", "sd", higher_is_better=False),
               scalar_metric("roc_auc", "ROC AUC"), scalar_metric("tar_far1e3", "TAR@FAR=1e-3"))
    probes = ("cosine",)
    default_probes = ("cosine",)
    options = frozenset({"pairs", "whiten"})

    # ------------------------------------------------------------------------------------------ engine hooks

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Verification (same person?)"
    report_group = "Faces and continuous targets"

    group_noun = "people"
    item_noun = "pairs"

    def legacy_evaluation(self, params, protocol):
        """Older rows do not record the pairs or the whitening, only a protocol id that differs with them: each
        protocol is its own scheme (``pairs, protocol <id>``), so whitened and plain rows are never pooled."""
        return f"pairs, protocol {str(protocol or '?')[:8]}"


register(Verification())
