"""probe: whose visual representations transfer better?

Extract frozen timm backbone features once into a content-addressed HDF5 cache, judge them with cheap probes
(logistic, ridge, kNN, nearest centroid), fine-tune the same backbones on the same splits, and report.

Importing this package is cheap: the public names below are loaded on first use, so ``import probe`` does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._errors import ProbeError, UsageError
from ._version import CACHE_FORMAT, PROBE_VERSION, __version__

# public name -> private module that defines it
_LAZY = {
    "open_dataset": "probe._datasets",
    "DatasetSource": "probe._datasets",
    "create_backbone": "probe._backbones",
    "family_of": "probe._backbones",
    "extract_features": "probe._extract",
    "CacheEntry": "probe._cache",
    "CachedSplit": "probe._cache",
    "load_split": "probe._cache",
    "list_cache": "probe._cache",
    "verify_cache": "probe._cache",
    "LogisticProbe": "probe.probes",
    "RidgeProbe": "probe.probes",
    "KNNProbe": "probe.probes",
    "CentroidProbe": "probe.probes",
    "RidgeRegressionProbe": "probe.probes",
    "KNNRegressionProbe": "probe.probes",
    "sweep_regression": "probe._fit",
    "cv_folds": "probe.splits",
    "loo_retrieval": "probe._retrieval",
    "retrieve": "probe._retrieval",
    "verify": "probe._verify",
    "sweep": "probe._fit",
    "sweep_cached": "probe._sweep",
    "finetune": "probe._finetune",
    "load_study": "probe.study",
    "run_study": "probe.study",
    "write_report": "probe._report",
    "write_html_report": "probe._report_html",
    "paired_bootstrap": "probe.analysis",
    "bootstrap_ci": "probe.analysis",
    "compare_jobs": "probe.analysis",
    "job_ci": "probe.analysis",
    "family_bootstrap": "probe.analysis",
    "scan_results": "probe.results",
    "linear_cka": "probe.similarity",
    "mutual_knn": "probe.similarity",
    "compare_entries": "probe.similarity",
    "config_matrix": "probe.similarity",
    "block_matrix": "probe.similarity",
    "finetune_curve": "probe.similarity",
    "scan_similarity": "probe.similarity",
    "compute_scores": "probe.transfer",
    "scores_from_cache": "probe.transfer",
    "score_backbone": "probe.transfer",
}

__all__ = ["ProbeError", "UsageError", "CACHE_FORMAT", "PROBE_VERSION", "__version__", "analysis", *_LAZY]


#: public submodules, imported on first attribute access (``probe.analysis``: selection, seed means, bootstrap,
#: figures; the layer the report, the notebooks and the console summary share; ``probe.dense``: dense targets and
#: metrics; ``probe.similarity``: CKA and mutual k-NN between cached features; ``probe.study``: study files, plans
#: and runners; ``probe.tasks``: the task registry; ``probe.transfer``: transferability scores)
_SUBMODULES = {"analysis", "dense", "results", "similarity", "study", "tasks", "transfer", "vocab"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"probe.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
