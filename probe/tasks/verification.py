"""Verification: are these two images of the same person? Cosine similarity of pairs, threshold chosen on the
other folds (LFW's protocol)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ._base import Job, Task, evaluation_label, mean_metric, scalar_metric
from . import register

#: Verification folds drawn from identities when no pairs file is given (as LFW's 10; fewer for fewer than 20
#: people, each fold needing two).
PAIR_FOLDS = 10


class Verification(Task):
    name = "verification"
    metrics = (mean_metric("verif_acc", "accuracy"), scalar_metric("verif_acc_sd", "sd", higher_is_better=False),
               scalar_metric("verif_acc_se", "SE", higher_is_better=False),
               scalar_metric("roc_auc", "ROC AUC"), scalar_metric("tar_far1e3", "TAR@FAR=1e-3"))
    #: the standard error over folds (LFW's "mean ± standard error"); the sample sd is the contract's verif_acc_sd
    columns = {"verif_acc_se": "Float64"}
    probes = ("cosine",)
    default_probes = ("cosine",)
    options = frozenset({"pairs", "whiten"})
    dataset_probes = True  # a study runs it per dataset with the dataset's probes key

    # ------------------------------------------------------------------------------------------ engine hooks

    def check_request(self, request):
        from .._errors import UsageError

        request = super().check_request(request)
        if request.whiten is not None and int(request.whiten) < 1:
            raise UsageError(f"--whiten must be at least 1 (PCA components); got {request.whiten}. Use e.g. "
                             "--whiten 128, or drop it to compare the features as they are")
        return request

    def check_source(self, request, source) -> None:
        super().check_source(request, source)
        if request.pairs is not None:  # a bad pairs file (a missing image) costs no extraction
            from .._faces import read_pairs

            read_pairs(request.pairs, [i for s in source.split_names for i in source.ids[s]])

    def evaluation(self, request, probe, data) -> dict:
        pairs, tag = _pairs(request.pairs, data, int(request.seeds[0]))
        folds = pairs.n_folds
        label = evaluation_label(pairs="file" if request.pairs is not None else "drawn", pair_folds=folds,
                                 whiten=request.whiten)
        # whitened and plain comparisons are different protocols, never pooled
        return {"label": label, "pairs": tag, "folds": "pairs",
                **({"whiten": int(request.whiten)} if request.whiten is not None else {}), "_pairs": pairs}

    def plan(self, data, request):
        from .._identity import protocol_id
        from .._version import PROBE_VERSION

        scheme = self.evaluation(request, "cosine", data)
        pairs = scheme.pop("_pairs")
        jobs = []
        for tap in request.taps:
            if request.whiten is not None:
                _check_whiten(int(request.whiten), pairs, data.features(tap).shape[1], tap)
            protocol = protocol_id(task=self.name, probe="cosine", tap=tap, grid={}, val_fraction=0.0,
                                   test_fraction=0.0, select_metric=self.headline, shots=0, refit=False,
                                   probe_version=PROBE_VERSION,
                                   evaluation={k: v for k, v in scheme.items() if k != "label"})
            jobs.append(Job(tap=tap, probe="cosine", seed=int(request.seeds[0]), protocol=protocol,
                            evaluation=scheme["label"], tag=f"{data.feature_tag}-{protocol[:8]}",
                            select_metric=self.headline, whiten=request.whiten, device=request.device,
                            context=data.context(tap, request.family), extra={"pairs": pairs}))
        return jobs

    def run(self, data, job):
        import time

        from .._verify import verify
        from ..results import make_row
        from . import GROUP_KEY

        pairs = job.extra["pairs"]
        start = time.perf_counter()
        v = verify(data.features(job.tap), pairs, pca_dim=job.whiten)
        seconds = time.perf_counter() - start
        row = make_row(**job.context, task=self.name, evaluation=job.evaluation, protocol=job.protocol,
                       probe="cosine", shots=0, seed=job.seed, val_fraction=0.0, test_fraction=0.0, selected=True,
                       split="test", params={}, select_metric=self.headline,
                       n_train=int(len(pairs.a) * (1 - 1 / pairs.n_folds)), n_eval=len(pairs.a), n_val=0,
                       fit_seconds=seconds, **v.metrics(pairs.same))
        ids = np.asarray([f"{data.ids[a]}|{data.ids[b]}" for a, b in zip(pairs.a, pairs.b)])
        items = {"ids": ids, "labels": pairs.same.astype(np.int64), "item/verif_acc": v.correct.astype(float),
                 "similarity": v.similarity, "fold": pairs.fold, "thresholds": v.thresholds,
                 # a pair clusters in both its people ([N, 2]; twice the same for a matched pair): intervals
                 # resample people and count a pair as often as both its people are drawn
                 GROUP_KEY: np.stack([data.labels[pairs.a], data.labels[pairs.b]], axis=1).astype(str)}
        return [row], items

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Verification (same person?)"
    report_group = "Faces and continuous targets"

    group_noun = "people"
    item_noun = "pairs"

    def missing_reason(self, metric):
        from .._verify import TAR_REASON

        return TAR_REASON if metric == "tar_far1e3" else None

    def legacy_evaluation(self, params, protocol):
        """Older rows do not record the pairs or the whitening, only a protocol id that differs with them: each
        protocol is its own scheme (``pairs, protocol <id>``), so whitened and plain rows are never pooled."""
        return f"pairs, protocol {str(protocol or '?')[:8]}"


def _pairs(pairs, data, seed: int):
    """The verification pairs (from the file, or drawn from identities) and a tag of them for the protocol id."""
    from .._faces import draw_pairs, read_pairs

    if pairs is not None:
        p = Path(pairs).expanduser()
        pair_set = read_pairs(p, data.ids)
        return pair_set, "file:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    folds = max(2, min(PAIR_FOLDS, len(np.unique(data.labels)) // 2))  # a fold needs two people
    return draw_pairs(data.labels, folds=folds, seed=int(seed)), f"drawn:{folds}folds:seed{int(seed)}"


def _check_whiten(dim: int, pair_set, n_features: int, tap: str) -> None:
    """``--whiten DIM`` fits at most as many components as the features have dimensions and as the smallest
    fitting set (the images of the other folds' pairs) has images, less one (the centring)."""
    from .._errors import UsageError

    fit = min(len(np.unique(np.concatenate([pair_set.a[pair_set.fold != f], pair_set.b[pair_set.fold != f]])))
              for f in range(pair_set.n_folds))
    most = min(n_features, fit - 1)
    if dim > most:
        raise UsageError(f"--whiten {dim} asks for more PCA components than the {tap} features allow ({n_features} "
                         f"dimensions; {fit} images fit the smallest fold's whitening); use --whiten {most} or fewer")


register(Verification())
