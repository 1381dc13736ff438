"""Version numbers recorded in every cache file and results row."""

__version__ = "0.1.0"

#: Bumped whenever the HDF5 layout or what a feature means changes; part of every cache key.
CACHE_FORMAT = 1

#: Bumped whenever a probe's numbers could change for the same inputs; stored in every results row and part of every
#: protocol id, so rows of an older version are never pooled with newer ones. 0.2.0: one select/refit/test rule
#: for every task, pooled cross-validated summaries, mIoU over classes with a non-empty union, retrieval ties scored
#: as scikit-learn does, TAR@FAR=1e-3 null below 1,000 negative pairs, the balanced joint epoch rule, NYUv2's val
#: carved by scene. 0.3.0: dense tasks fed the whole frame and scored at the label resolution (NYUv2 on the Eigen
#: crop), depth fine-tuning crops that divide depth by their zoom, calibration columns on classification rows, rows
#: scored on shifted sets (``eval_dataset``).
PROBE_VERSION = "0.3.0"
