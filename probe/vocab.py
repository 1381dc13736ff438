"""Names that several modules need, defined once (no torch, no heavy imports).

Everything that lists probes, tasks, metrics, families, fine-tuning modes or protocol defaults imports them from
here, so the CLI choices, the study-file checks, the results schema and the report always agree.
"""

from __future__ import annotations

#: Dataset splits, in the order data moves through the protocol; ``gallery`` and ``query`` (always together) are
#: identification's gallery/probe splits: each query image ranks the gallery.
SPLITS = ("train", "val", "test", "gallery", "query")

#: Frozen-feature probes for classification targets (``probe sweep --probes``).
PROBES = ("logistic", "ridge", "knn", "centroid")

#: Frozen dense probes for segmentation and depth targets, on the ``patch`` tap (``--task segmentation``).
DENSE_PROBES = ("linear",)
#: Settings a dense probe's grid may list (``grids = { linear = { lr = [...] } }``).
DENSE_GRID_KEYS = ("lr", "weight_decay", "epochs", "batch_size")

#: The ``probe`` value of fine-tuning rows in the results table (a protocol, not an estimator).
FINETUNE = "finetune"

#: What a target asks; each result row names its task, and a task brings its own metric columns.
TASKS = ("classification", "segmentation", "depth", "identification", "verification", "regression")
DEFAULT_TASK = "classification"

#: The probe of retrieval and verification on the features as they are (cosine similarity, nothing learned).
COSINE = "cosine"

#: Probes each task accepts (``--probes``); the first ones listed in TASK_DEFAULT_PROBES run by default. The
#: classification probes of an ``identification`` task are identity classifiers scored under cross-validation.
TASK_PROBES: dict[str, tuple[str, ...]] = {
    "classification": PROBES,
    "identification": (COSINE, *PROBES),
    "verification": (COSINE,),
    "regression": ("ridge", "knn"),
}
TASK_DEFAULT_PROBES: dict[str, tuple[str, ...]] = {
    "classification": PROBES, "identification": (COSINE,), "verification": (COSINE,), "regression": ("ridge", "knn"),
}

#: Metric columns per task (fractions in [0, 1] unless noted in probe.results.RESULT_COLUMNS).
#: The first metric of a task is its default ``select_metric`` and the report's headline.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1", "top5", "mean_per_class_acc"),
    "segmentation": ("miou", "pixel_acc"),
    "depth": ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3"),
    "identification": ("rank1", "rank5", "map"),
    "verification": ("verif_acc", "verif_acc_sd", "roc_auc", "tar_far1e3"),
    "regression": ("mae", "rmse", "cs5"),
}

#: Unit of each metric column, for formatting: ``fraction`` values print as percentages, the others as numbers
#: with their unit (``rmse`` is metres for depth and the target's unit, e.g. years, for regression).
METRIC_UNITS: dict[str, str] = {
    "top1": "fraction", "top5": "fraction", "mean_per_class_acc": "fraction",
    "miou": "fraction", "pixel_acc": "fraction",
    "rmse": "target", "abs_rel": "ratio", "log10": "log10", "delta1": "fraction", "delta2": "fraction",
    "delta3": "fraction",
    "rank1": "fraction", "rank5": "fraction", "map": "fraction",
    "verif_acc": "fraction", "verif_acc_sd": "fraction", "roc_auc": "fraction", "tar_far1e3": "fraction",
    "mae": "target", "cs5": "fraction",
}

#: Classification metrics: the ones a selection rule may use for classification jobs.
METRICS = TASK_METRICS["classification"]

#: Metrics for which a smaller value is better (selection and "best" flip their sign).
LOWER_IS_BETTER = frozenset({"rmse", "abs_rel", "log10", "mae", "verif_acc_sd"})

#: Architecture families (see probe.family_of); ``unknown`` is what an architecture outside the table gets.
FAMILIES = ("convnet", "transformer", "hybrid", "mlp", "other")
UNKNOWN_FAMILY = "unknown"

#: Whole-network fine-tuning modes.
FINETUNE_MODES = ("full", "partial", "lp-ft")

#: Part of train carved off as val when a dataset has no val split.
DEFAULT_VAL_FRACTION = 0.2
