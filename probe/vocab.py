"""Names that several modules need, defined once (no torch, no heavy imports).

Everything that lists probes, tasks, metrics, families, fine-tuning modes or protocol defaults imports them from
here, so the CLI choices, the study-file checks, the results schema and the report always agree.
"""

from __future__ import annotations

#: Dataset splits, in the order data moves through the protocol.
SPLITS = ("train", "val", "test")

#: Frozen-feature probes for classification targets (``probe sweep --probes``).
PROBES = ("logistic", "ridge", "knn", "centroid")

#: The ``probe`` value of fine-tuning rows in the results table (a protocol, not an estimator).
FINETUNE = "finetune"

#: What a target asks; each result row names its task, and a task brings its own metric columns.
TASKS = ("classification", "segmentation", "depth", "identification", "verification", "regression")
DEFAULT_TASK = "classification"

#: Metric columns per task (fractions in [0, 1] unless noted in probe.results.RESULT_COLUMNS).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1", "top5", "mean_per_class_acc"),
}

#: Classification metrics: the ones a selection rule may use for classification jobs.
METRICS = TASK_METRICS["classification"]

#: Metrics for which a smaller value is better (selection and "best" flip their sign).
LOWER_IS_BETTER = frozenset({"rmse", "abs_rel", "log10", "mae"})

#: Architecture families (see probe.family_of); ``unknown`` is what an architecture outside the table gets.
FAMILIES = ("convnet", "transformer", "hybrid", "mlp", "other")
UNKNOWN_FAMILY = "unknown"

#: Whole-network fine-tuning modes.
FINETUNE_MODES = ("full", "partial", "lp-ft")

#: Part of train carved off as val when a dataset has no val split.
DEFAULT_VAL_FRACTION = 0.2
