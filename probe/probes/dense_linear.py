"""The frozen dense linear probe: a linear layer on each patch token, bilinearly upsampled to the labels.

As DINOv2's linear dense evaluations: each patch token ``[D]`` of the cached ``patch`` tap goes through one
linear layer (``D -> C`` class logits for segmentation, ``D -> 1`` log-depth for depth); the ``[h, w]`` grid of
outputs is upsampled bilinearly to the label resolution and trained there:

- segmentation: cross-entropy over the labelled pixels (:data:`probe.dense.IGNORE_INDEX` ignored);
- depth: the scale-invariant log loss with variance focus 0.85 (SILog, as in BTS, AdaBins and DINOv2's depth
  heads): ``sqrt(mean(d^2) - 0.85 * mean(d)^2)`` with ``d = log p - log g`` over the valid pixels of a batch. Its
  0.15 share of ``mean(d)^2`` keeps the absolute scale in the loss (scale-aware), while the rest focuses on the
  relative structure. The prediction is ``exp`` of the upsampled output.

Features are standardised per dimension with the mean and standard deviation of the training tokens (one
streamed pass), and the depth bias starts at the mean training log-depth. Training uses AdamW with a cosine
learning-rate decay over ``epochs`` passes of shuffled mini-batches; every grid point (``lr``,
``weight_decay``) trains its own head on the same batches, so a sweep reads the features once per epoch.

Data come from a :class:`DenseBatches`-like object: anything with ``grid`` ((h, w) of the token grid),
``dim`` (D) and ``batches(batch_size, shuffle=, seed=)`` yielding ``(features [B, h*w, D], targets [B, H, W],
rows)`` numpy arrays (targets may also be a list of B maps of their own sizes: the label resolution, where
:meth:`DenseLinearProbe.score_stats` upsamples each image's output to its map), so memory stays one batch
however large the dataset (see :mod:`probe._dense_sweep`, which streams them from the HDF5 feature cache).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Iterator

import numpy as np
from sklearn.base import BaseEstimator

from ..dense import DEPTH_CAP, DEPTH_MIN, IGNORE_INDEX, dense_metrics, dense_stats, depth_valid, silog_loss


class DenseLinearProbe(BaseEstimator):
    """Linear dense probe on patch tokens (segmentation or depth); see the module docstring.

    Parameters
    ----------
    lr : float
        AdamW peak learning rate (cosine decay to 0 over the training steps).
    weight_decay : float
        AdamW decoupled weight decay.
    task : {"segmentation", "depth"}
    n_classes : int
        Segmentation classes (ignored for depth).
    epochs : int
        Passes over the training images.
    batch_size : int
        Images per mini-batch.
    max_depth : float
        Depth cap in metres (validity of ground truth, clip of predictions).
    seed : int
        Seed of the initialisation and the batch order.
    device : str
        Torch device (``auto``: cuda when present).
    """

    name: ClassVar[str] = "linear"
    default_grid: ClassVar[dict[str, list]] = {"lr": [1e-3, 1e-2], "weight_decay": [0.0, 1e-2]}

    def __init__(self, lr: float = 1e-3, weight_decay: float = 0.0, *, task: str = "segmentation",
                 n_classes: int = 2, epochs: int = 10, batch_size: int = 16, max_depth: float = DEPTH_CAP,
                 seed: int = 0, device: str = "auto"):
        self.lr = lr
        self.weight_decay = weight_decay
        self.task = task
        self.n_classes = n_classes
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_depth = max_depth
        self.seed = seed
        self.device = device

    # --------------------------------------------------------------------------------------------- public
    def fit(self, data) -> "DenseLinearProbe":
        """Train one head with this estimator's ``lr`` and ``weight_decay`` on ``data``; returns self."""
        self._check_params()
        point = {"lr": self.lr, "weight_decay": self.weight_decay}
        self._set_state(*_train_heads(self, data, [point]), index=0)
        return self

    def predict_batches(self, data) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(predictions [B, H, W], targets [B, H, W], rows)`` over ``data`` in order: class ids
        (segmentation) or metres (depth, clipped to ``[DEPTH_MIN, max_depth]``)."""
        import torch

        dev = _device(self.device)
        w, b = (torch.as_tensor(a, device=dev) for a in (self.coef_, self.intercept_))
        for feats, targets, rows in data.batches(self.batch_size, shuffle=False):
            with torch.no_grad():
                out = _forward(self, _normalise(self, feats, dev), w, b, data.grid, targets.shape[1:])
            yield _decode(self, out).cpu().numpy(), targets, rows

    def score_stats(self, data) -> dict[str, np.ndarray]:
        """Per-image statistics (:func:`probe.dense.dense_stats`) of this probe's predictions on ``data``."""
        return _collect(self, [(self.coef_, self.intercept_)], data)[0]

    # ------------------------------------------------------------------------------------------ sweeps
    def _sweep_path(self, train, val, points: list[dict[str, Any]]):
        """Train one head per grid point on ``train`` (one read of the features per epoch), then score each on
        ``val``: yields ``(index, val statistics, seconds)``; seconds are the shared training time split evenly."""
        self._check_params()
        start = time.perf_counter()
        heads, _ = _train_heads(self, train, points)
        seconds = (time.perf_counter() - start) / len(points)
        for i, stats in enumerate(_collect(self, heads, val)):
            yield i, stats, seconds

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        """Ties go to the strongest weight decay, then the smallest learning rate."""
        return sorted(range(len(points)), key=lambda i: (-points[i].get("weight_decay", 0.0),
                                                          points[i].get("lr", 0.0), i))

    def _artifact_weights(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_, "feature_mean": self.feature_mean_,
                "feature_scale": self.feature_scale_}

    # ------------------------------------------------------------------------------------------ helpers
    def _set_state(self, heads, norm, index: int) -> None:
        self.coef_, self.intercept_ = heads[index]
        self.feature_mean_, self.feature_scale_ = norm

    def _check_params(self) -> None:
        from ._base import check_positive

        owner = type(self).__name__
        for name in ("lr", "epochs", "batch_size", "max_depth"):
            check_positive(owner, name, getattr(self, name), integer=name in ("epochs", "batch_size"))
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"The 'weight_decay' parameter of {owner} must be a float >= 0. "
                             f"Got {self.weight_decay!r} instead.")
        if self.task not in ("segmentation", "depth"):
            raise ValueError(f"The 'task' parameter of {owner} must be a str among {{'segmentation', 'depth'}}. "
                             f"Got {self.task!r} instead.")
        if self.task == "segmentation":
            check_positive(owner, "n_classes", self.n_classes, integer=True)

    @property
    def n_outputs(self) -> int:
        return int(self.n_classes) if self.task == "segmentation" else 1


def _device(device):
    from ._base import resolve_device

    return resolve_device(device)


def _normalise(est, feats: np.ndarray, dev):
    import torch

    x = torch.as_tensor(feats, device=dev).float()
    return (x - torch.as_tensor(est.feature_mean_, device=dev)) / torch.as_tensor(est.feature_scale_, device=dev)


def _forward(est, x, w, b, grid: tuple[int, int], size: tuple[int, int]):
    """Token-wise linear layer, then bilinear upsampling of the [h, w] grid to the label size: [B, C, H, W].

    Bilinear interpolation (``align_corners=False``) is separable and linear, so it is applied as two
    interpolation matrices (:func:`_upsampler`): the same numbers as ``F.interpolate``, with a cheaper backward.
    """
    h, wd = grid
    out = (x @ w + b).reshape(len(x), h, wd, -1).permute(0, 3, 1, 2)  # [B, C, h, w]
    rows, cols = _upsampler(h, int(size[0]), x.device), _upsampler(wd, int(size[1]), x.device)
    return rows @ out @ cols.T


_UPSAMPLERS: dict = {}


def _upsampler(n: int, size: int, device):
    """[size, n] matrix of 1-D bilinear interpolation (``align_corners=False``) from ``n`` to ``size`` points."""
    import torch
    import torch.nn.functional as F

    key = (n, size, str(device))
    if key not in _UPSAMPLERS:
        eye = torch.eye(n).reshape(n, 1, n)
        _UPSAMPLERS[key] = F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()\
            .to(device)
    return _UPSAMPLERS[key]


def _decode(est, out):
    import torch

    if est.task == "segmentation":
        return out.argmax(dim=1)
    return torch.exp(out[:, 0]).clamp(DEPTH_MIN, est.max_depth)


def _loss(est, out, targets):
    import torch.nn.functional as F

    if est.task == "segmentation":
        return F.cross_entropy(out, targets, ignore_index=IGNORE_INDEX)
    # the batch's targets were made valid-or-zero by _prepare_targets
    return silog_loss(out[:, 0], targets, targets > 0)


def _has_labels(est, targets: np.ndarray) -> bool:
    if est.task == "segmentation":
        return bool(np.any(targets != IGNORE_INDEX))
    return bool(np.any(depth_valid(targets, max_depth=est.max_depth)))


def _prepare_targets(est, targets: np.ndarray, dev):
    import torch

    if est.task == "segmentation":
        return torch.as_tensor(targets.astype(np.int64), device=dev)
    t = np.where(depth_valid(targets, max_depth=est.max_depth), targets, 0.0).astype(np.float32)
    return torch.as_tensor(t, device=dev)


def _standardiser(est, data) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """Per-dimension mean and standard deviation of the training tokens, and the mean valid log-depth: one
    streamed pass (float64 sums, memory one batch)."""
    total, total_sq, count, log_sum, log_n = 0.0, 0.0, 0, 0.0, 0
    for feats, targets, _ in data.batches(est.batch_size, shuffle=False):
        x = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
        total = total + x.sum(0)
        total_sq = total_sq + (x ** 2).sum(0)
        count += len(x)
        if est.task == "depth":
            valid = depth_valid(targets, max_depth=est.max_depth)
            log_sum += float(np.log(targets[valid]).sum())
            log_n += int(valid.sum())
    mean = total / max(count, 1)
    scale = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
    scale = np.where(scale > 1e-6, scale, 1.0)
    return (mean.astype(np.float32), scale.astype(np.float32)), (log_sum / log_n if log_n else 0.0)


#: Output cells (batch x outputs x label pixels) per CPU thread: a smaller step runs on fewer threads, since
#: OpenMP hand-offs cost more than they save there (measured: 8x slower on 2 busy cores for 16 x 7 x 48 x 48).
CELLS_PER_THREAD = 2_000_000


def _threads(est, data):
    """A torch-threads context for training or scoring on ``data`` (CPU only; see :data:`CELLS_PER_THREAD`)."""
    import contextlib

    import torch

    from .._runtime import torch_threads

    if _device(est.device).type != "cpu":
        return contextlib.nullcontext()
    cells = int(est.batch_size) * est.n_outputs * int(np.prod(data.size))
    return torch_threads(max(1, min(torch.get_num_threads(), cells // CELLS_PER_THREAD)))


def _train_heads(est, data, points: list[dict[str, Any]]):
    """Train one head per grid point on the same shuffled batches; returns ([(coef, intercept)], norm)."""
    with _threads(est, data):
        return _train_heads_on(est, data, points)


def _train_heads_on(est, data, points: list[dict[str, Any]]):
    import torch

    dev = _device(est.device)
    norm, mean_log_depth = _standardiser(est, data)
    est.feature_mean_, est.feature_scale_ = norm
    gen = torch.Generator().manual_seed(int(est.seed))
    dim, n_out = int(data.dim), est.n_outputs
    weights, biases, groups = [], [], []
    for p in points:
        w = torch.nn.Parameter((torch.randn(dim, n_out, generator=gen) * 0.01).to(dev))
        b = torch.nn.Parameter(torch.full((n_out,), mean_log_depth if est.task == "depth" else 0.0, device=dev))
        weights.append(w)
        biases.append(b)
        groups += [{"params": [w], "lr": float(p["lr"]), "weight_decay": float(p["weight_decay"]),
                    "peak": float(p["lr"])},
                   {"params": [b], "lr": float(p["lr"]), "weight_decay": 0.0, "peak": float(p["lr"])}]
    opt = torch.optim.AdamW(groups)
    steps = int(est.epochs) * math.ceil(len(data) / int(est.batch_size))
    step = 0
    for epoch in range(int(est.epochs)):
        for feats, targets, _ in data.batches(est.batch_size, shuffle=True, seed=int(est.seed) * 1000 + epoch):
            if not _has_labels(est, targets):
                continue  # nothing to learn from (every pixel ignored or unmeasured)
            x = _normalise(est, feats, dev)
            t = _prepare_targets(est, targets, dev)
            for group in opt.param_groups:
                group["lr"] = group["peak"] * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
            opt.zero_grad(set_to_none=True)
            for w, b in zip(weights, biases):  # one head at a time: memory of one upsampled output
                _loss(est, _forward(est, x, w, b, data.grid, t.shape[1:]), t).backward()
            opt.step()
            step += 1
    heads = [(w.detach().cpu().numpy(), b.detach().cpu().numpy()) for w, b in zip(weights, biases)]
    return heads, norm


def _collect(est, heads, data) -> list[dict[str, np.ndarray]]:
    """Per-image statistics of every head on ``data`` (one read of the features)."""
    with _threads(est, data):
        return _collect_on(est, heads, data)


def _collect_on(est, heads, data) -> list[dict[str, np.ndarray]]:
    import torch

    dev = _device(est.device)
    tensors = [(torch.as_tensor(w, device=dev), torch.as_tensor(b, device=dev)) for w, b in heads]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in heads]
    for feats, targets, _ in data.batches(est.batch_size, shuffle=False):
        x = _normalise(est, feats, dev)
        # a list of maps (the label resolution): one image at a time, each upsampled to its own map's size
        pieces = [(x, targets)] if not isinstance(targets, list) else [(x[j:j + 1], t[None])
                                                                      for j, t in enumerate(targets)]
        for k, (w, b) in enumerate(tensors):
            for xs, ts in pieces:
                with torch.no_grad():
                    pred = _decode(est, _forward(est, xs, w, b, data.grid, ts.shape[1:])).cpu().numpy()
                parts[k].append(dense_stats(est.task, pred, ts, n_classes=est.n_outputs, max_depth=est.max_depth))
    return [{name: np.concatenate([p[name] for p in head]) for name in head[0]} for head in parts]


def metrics_of(est, stats: dict[str, np.ndarray]) -> dict[str, float]:
    """The results-table metrics of per-image statistics for ``est``'s task."""
    return dense_metrics(est.task, stats)
