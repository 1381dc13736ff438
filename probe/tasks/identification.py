"""Identification: which person is this? Retrieval on the features as they are (``cosine``), or identity
classifiers under cross-validation."""

from __future__ import annotations

import numpy as np

from ._base import Job, Task, evaluation_label, mean_metric
from . import register

#: The probe of retrieval on the features as they are (nothing learned).
COSINE = "cosine"


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

    def check_request(self, request):
        from .._errors import UsageError

        request = super().check_request(request)
        learned = [p for p in request.probes if p != COSINE]
        if learned and request.cv is None:
            raise UsageError(f"identity classifiers ({', '.join(learned)}) are scored under cross-validation; add "
                             "--cv K (or use --probes cosine for leave-one-image-out retrieval)")
        return request

    def evaluation(self, request, probe, data) -> dict:
        if probe == COSINE:
            scheme = "gallery-query" if data.gallery else "leave-one-image-out"
            return {"label": evaluation_label(retrieval=scheme), "retrieval": scheme}
        return super().evaluation(request, probe, data)

    def plan(self, data, request):
        from dataclasses import replace

        from .._identity import protocol_id
        from .._version import PROBE_VERSION

        learned = [p for p in request.probes if p != COSINE]
        jobs = super().plan(data, replace(request, probes=tuple(learned))) if learned else []
        if COSINE in request.probes:
            for tap in request.taps:  # nothing is learned: no val, no seed but the first
                scheme = self.evaluation(request, COSINE, data)
                protocol = protocol_id(task=self.name, probe=COSINE, tap=tap, grid={}, val_fraction=0.0,
                                       test_fraction=0.0, select_metric=self.headline, shots=0, refit=False,
                                       probe_version=PROBE_VERSION,
                                       evaluation={k: v for k, v in scheme.items() if k != "label"})
                jobs.append(Job(tap=tap, probe=COSINE, seed=int(request.seeds[0]), protocol=protocol,
                                evaluation=scheme["label"], tag=f"{data.feature_tag}-{protocol[:8]}",
                                select_metric=self.headline, device=request.device,
                                context=data.context(tap, request.family)))
        order = {p: i for i, p in enumerate(request.probes)}
        return sorted(jobs, key=lambda j: (request.taps.index(j.tap), order[j.probe]))

    def run(self, data, job):
        if job.probe != COSINE:
            from .classification import classify_folds

            return classify_folds(self, data, job, rank_columns=True)
        return _retrieval(self, data, job)

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


def _retrieval(task, data, job):
    """Each query against the gallery split when the dataset has them, else every image against all others."""
    import time

    from .._retrieval import retrieve
    from ..results import make_row
    from . import GROUP_KEY

    X = data.features(job.tap)
    q, g = (data.parts["query"], data.parts["gallery"]) if data.gallery else (np.arange(len(X)), None)
    start = time.perf_counter()
    r = retrieve(X[q], data.labels[q], None if g is None else X[g], None if g is None else data.labels[g],
                 device=job.device)
    seconds = time.perf_counter() - start
    g = np.arange(len(X)) if g is None else g
    row = make_row(**job.context, task=task.name, evaluation=job.evaluation, protocol=job.protocol, probe=COSINE,
                   shots=0, seed=job.seed, val_fraction=0.0, test_fraction=0.0, selected=True, split="test",
                   params={}, select_metric=task.headline, n_train=len(g) - (0 if data.gallery else 1),
                   n_eval=int(r.valid.sum()), n_val=0, fit_seconds=seconds, **r.metrics())
    v = r.valid
    items = {"ids": data.ids[q][v], "labels": data.labels[q][v], "item/rank1": r.rank1[v],
             "item/rank5": r.rank5[v], "item/map": r.ap[v], "neighbours": r.neighbours[v],
             GROUP_KEY: data.labels[q][v].astype(str),  # a query's items cluster in its person
             "gallery_ids": data.ids[g], "gallery_labels": data.labels[g],
             "classes": np.asarray(data.classes, dtype=str),
             "dataset_spec": np.asarray(str(data.first.attrs.get("dataset_spec") or data.source.spec))}
    return [row], items


register(Identification())
