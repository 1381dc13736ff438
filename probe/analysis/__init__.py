"""One analysis layer: selection by configuration, seed aggregation, bootstrap intervals and figures.

The report (:func:`probe.write_report`), the notebooks and ``probe run``'s console summary all call these
functions and hold no selection or plotting code of their own, so they cannot disagree.

The flow, for any task and metric (the metric and its direction are parameters, never a hard-coded top-1)::

    jobs = analysis.job_table("results")             # one row per job: selected test row + its val score
    protocols = analysis.aggregate_seeds(jobs)       # per (dataset, task, evaluation, backbone_config, protocol)
    best = analysis.best_by_val(protocols.filter(...))  # per configuration: the protocol with the best val mean
    gains = analysis.finetune_gains(frozen_best, finetune_best)   # + paired bootstrap CIs
    mt = analysis.multitask_gains(jobs)              # multi-task minus single-task fine-tuning, + CIs
    fams = analysis.compare_families(frozen_best)    # two-level bootstrap (images and backbones), sign test
    fig = analysis.layerwise_figure(protocols.filter(...), relative_depth=True)   # a matplotlib Figure
    ci = analysis.resample_interval([files_a, files_b], "mae", task="regression")  # the one bootstrap path
    print("\n".join(analysis.summary_lines("results")))   # what `probe run` prints at the end

Metrics, their direction, unit and label, and how they are computed from a job's saved per-item statistics come
from the task registry (:mod:`probe.tasks`); intervals resample items, or the groups (people, scenes) a job saved
for them.

Importing this package is cheap (no torch, no polars, no matplotlib until a function needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    # selection by configuration
    "job_table": "._select", "with_identity": "._select", "aggregate_seeds": "._select", "best_by_val": "._select",
    "configurations": "._select", "weights_kind": "._select", "lower_is_better": "._select",
    "primary_metric": "._select", "GROUP": "._select", "skipped_images": "._select",
    # bootstrap over test images
    "BootstrapResult": "._stats", "BOOTSTRAP_METRICS": "._stats", "paired_bootstrap": "._stats",
    "bootstrap_ci": "._stats", "compare_jobs": "._stats", "job_ci": "._stats", "pair_by_id": "._stats",
    "align_by_id": "._stats", "job_hits": "._stats", "job_predictions": "._items", "seed_mean_hits": "._stats",
    "PairedPredictions": "._stats", "Aligned": "._stats",
    "DENSE_METRICS": "._stats", "job_dense_stats": "._items", "job_preview": "._items",
    "job_items": "._items", "JobItems": "._items", "resampling": "._stats", "Resampling": "._stats",
    "resample_interval": "._stats", "resampled_values": "._stats",
    # distribution shift: shifted vs in-distribution accuracy, effective robustness
    "shift_points": "._shift", "effective_robustness": "._shift", "shift_section": "._shift",
    "shift_figure": "._shift", "fit_line": "._shift", "shift_rows": "._shift",
    # comparisons
    "FamilyComparison": "._compare", "family_bootstrap": "._compare", "sign_test": "._compare",
    "compare_families": "._compare", "family_wins": "._compare", "finetune_gains": "._compare",
    "with_intervals": "._compare", "family_order": "._compare", "multitask_gains": "._compare",
    "finetune_tasks": "._compare", "two_level_bootstrap": "._compare", "task_of": "._select", "metric_of": "._select",
    "report_groups": "._compare",
    "task_metrics": "._select",
    # figures
    "FAMILY_COLORS": "._figures", "FAMILY_NAMES": "._figures", "Styles": "._figures", "new_figure": "._figures",
    "layerwise_figure": "._figures", "few_shot_figure": "._figures", "frozen_vs_finetune_figure": "._figures",
    "gain_figure": "._figures", "multitask_figure": "._figures", "finetune_scatter_figure": "._figures",
    "family_figure": "._figures", "block_index": "._figures", "metric_name": "._figures",
    "dense_examples_figure": "._figures", "segmentation_palette": "._figures",
    # face and continuous-target figures
    "retrieval_examples": "._faces", "retrieval_figure": "._faces", "prediction_scatter_figure": "._faces",
    # representation similarity (rows of probe.similarity)
    "similarity_section": "._similarity", "config_heatmap_figure": "._similarity",
    "block_heatmap_figure": "._similarity", "finetune_curve_figure": "._similarity",
    "config_matrix_values": "._similarity", "family_pairs_table": "._similarity",
    # can frozen features predict fine-tuning? (transferability scores judged against fine-tuning)
    "score_table": "._transfer", "target_table": "._transfer", "agreement": "._transfer",
    "mean_agreement": "._transfer", "score_figure": "._transfer", "transfer_section": "._transfer",
    # calibration: ECE before/after temperature scaling of the chosen protocols, reliability diagrams
    "calibration_table": "._calibration", "calibration_groups": "._calibration",
    "calibration_section": "._calibration", "reliability_bins": "._calibration",
    "reliability_figure": "._calibration",
    # notebooks
    "notebook_setup": "._notebook",
    # the console summary of probe run
    "summary_lines": "._summary", "summary_tables": "._summary",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probe.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
