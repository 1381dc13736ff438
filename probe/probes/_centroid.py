"""Nearest class mean under cosine similarity."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._base import ProbeBase


class CentroidProbe(ProbeBase):
    """Nearest class centroid under cosine similarity; no hyperparameters.

    Features are L2-normalised, averaged per class, and the class means normalised again; a sample's score for
    a class is the cosine similarity between its feature and that class's centroid.

    Parameters
    ----------
    device : str, default="auto"
        Torch device; ``"auto"`` picks cuda when available.

    Attributes
    ----------
    classes_ : ndarray [n_classes]
    centroids_ : ndarray [n_classes, n_features]
        Unit-norm class centroids.
    """

    name = "centroid"
    default_grid: dict = {}

    def __init__(self, *, device: str = "auto"):
        self.device = device

    def _fit(self, X: torch.Tensor, y_index: torch.Tensor) -> None:
        n_classes = len(self.classes_)
        sums = torch.zeros(n_classes, X.shape[1], device=X.device, dtype=X.dtype)
        sums.index_add_(0, y_index, F.normalize(X, dim=1))
        self._centroids = F.normalize(sums, dim=1)
        self.centroids_ = self._centroids.cpu().numpy()

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        return F.normalize(X, dim=1) @ self._centroids.to(X.device).T

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_}
