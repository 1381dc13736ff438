"""Names that several modules need, defined once (no torch, no heavy imports).

Everything that lists probes, families, fine-tuning modes or protocol defaults imports them from here (tasks, their
metrics, units and directions are probe.tasks objects), so the CLI choices, the study-file checks, the results
schema and the report always agree.
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

#: Tasks (what a target asks: classification, segmentation, depth, identification, verification, regression) are
#: objects in probe.tasks: their names, probes, metric columns, units and directions come from its registry.

#: The probe of retrieval and verification on the features as they are (cosine similarity, nothing learned).
COSINE = "cosine"

#: Classification metrics (probe.tasks' classification task declares them): a fine-tune's epoch rule may use them.
METRICS = ("top1", "top5", "mean_per_class_acc")

#: Architecture families (see probe.family_of); ``unknown`` is what an architecture outside the table gets.
FAMILIES = ("convnet", "transformer", "hybrid", "mlp", "other")
UNKNOWN_FAMILY = "unknown"

#: Whole-network fine-tuning modes.
FINETUNE_MODES = ("full", "partial", "lp-ft")

#: Part of train carved off as val when a dataset has no val split.
DEFAULT_VAL_FRACTION = 0.2
