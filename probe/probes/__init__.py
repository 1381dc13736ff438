"""Probes on frozen features: scikit-learn-compatible estimators computed in torch (CPU or GPU).

- :class:`LogisticProbe`: multinomial L2 logistic regression, ``C`` as in scikit-learn.
- :class:`RidgeProbe`: as scikit-learn's ``RidgeClassifier`` (targets +-1, centred, intercept).
- :class:`KNNProbe`: cosine k-nearest neighbours with DINO's ``exp(sim / T)`` weighting (or uniform votes).
- :class:`CentroidProbe`: nearest class mean under cosine similarity.
- :class:`RidgeRegressionProbe`, :class:`KNNRegressionProbe`: the same ideas for continuous targets
  (``--task regression``), as scikit-learn's ``Ridge`` and ``KNeighborsRegressor(metric="cosine")``.

Importing this package imports torch and scikit-learn; ``import probe`` alone does not.
"""

from __future__ import annotations

from ._base import ProbeBase
from ._centroid import CentroidProbe
from ._knn import KNNProbe
from ._logistic import LogisticProbe
from ._regress import REGRESSORS, KNNRegressionProbe, RegressionProbeBase, RidgeRegressionProbe
from ._ridge import RidgeProbe

#: probe name (results table, CLI) -> estimator class
PROBES: dict[str, type[ProbeBase]] = {cls.name: cls for cls in (LogisticProbe, RidgeProbe, KNNProbe, CentroidProbe)}

__all__ = ["LogisticProbe", "RidgeProbe", "KNNProbe", "CentroidProbe", "ProbeBase", "PROBES",
           "RidgeRegressionProbe", "KNNRegressionProbe", "RegressionProbeBase", "REGRESSORS"]
