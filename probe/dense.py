"""Dense targets and metrics: segmentation and depth, shared by the frozen dense probe and fine-tuning.

Targets
-------
A dataset's dense targets (:meth:`probe.DatasetSource.dense_targets`) come at the image's own resolution:
``segmentation`` int64 [H, W] class ids (:data:`IGNORE_INDEX` = 255 for unlabelled pixels) and ``depth`` float32
[H, W] in metres (0, negative or non-finite = no measurement). Dense tasks feed every backbone the whole frame
resized to its input size, never a centre crop (:func:`full_frame_config`, :data:`FRAME`), train on the targets
mapped through that geometry (:func:`transform_dense_target`: nearest-neighbour, so class ids stay ids and depths
stay measured metres; pixels that a ``border`` crop pads are ignored), and score at the label resolution: the
outputs upsampled bilinearly to the target's own size (:func:`upsample_logits`), so every configuration of a
table is scored on the same pixels, the benchmark's.

Metrics (the standard NYU Depth V2 definitions)
-----------------------------------------------
Every metric is computed from *per-image sufficient statistics* (:func:`segmentation_stats`,
:func:`depth_stats`), so that a paired bootstrap over test images resamples rows of these arrays and calls
:func:`dense_metrics` on the resample, without the predictions.

- ``miou``: per class, intersection over union of the pixel sets summed over the images, averaged over the classes
  whose union is non-empty (predicted or present in the ground truth of those images), as mmsegmentation's
  ``IoUMetric`` and torchmetrics' ``MulticlassJaccardIndex(average="macro")`` define it: a class predicted but
  absent from the ground truth counts with IoU 0; a class neither predicted nor labelled is left out. Pixels
  labelled :data:`IGNORE_INDEX` count nowhere.
  ``pixel_acc``: correct labelled pixels / labelled pixels. Both fractions in [0, 1].
- Depth, on *valid* pixels (ground truth finite and in ``(0, max_depth]``, :data:`DEPTH_CAP` = 10 m by default, the
  NYUv2 sensor range; the NYUv2 reader also marks the pixels outside the Eigen evaluation crop, rows 45:471 and
  columns 41:601 of the 480 x 640 frame, as invalid), with predictions clipped to ``[DEPTH_MIN, max_depth]``:
  ``rmse`` sqrt(mean (p - g)^2) in metres, ``abs_rel`` mean |p - g| / g, ``log10`` mean |log10 p - log10 g|,
  ``delta1..3`` the fraction with max(p / g, g / p) < 1.25, 1.25^2, 1.25^3. Each is computed per image and then
  averaged over the images (as in the Eigen et al. protocol code used by BTS, AdaBins and DINOv2's depth
  evaluation); images without a valid pixel are left out.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

#: Segmentation label of pixels that count nowhere (unlabelled, padded, outside the evaluation crop).
IGNORE_INDEX = 255

#: Depth cap in metres: ground truth beyond it is invalid and predictions are clipped to it (NYUv2's sensor range).
DEPTH_CAP = 10.0

#: Smallest depth in metres a prediction is clipped to (keeps log10 and the ratios finite).
DEPTH_MIN = 1e-3

#: Dense tasks and the per-image statistics each one saves (arrays with one row per image).
STAT_NAMES: dict[str, tuple[str, ...]] = {
    "segmentation": ("intersection", "union", "labelled"),  # each [N, C]: pixels per class
    "depth": ("n_valid", "sq_err", "abs_rel", "log10", "delta1", "delta2", "delta3"),  # each [N]: sums, counts
}

DENSE_TASKS = tuple(STAT_NAMES)


# ---------------------------------------------------------------------------------------------------- statistics


def segmentation_stats(pred, target, n_classes: int) -> dict[str, np.ndarray]:
    """Per-image, per-class pixel counts of a batch of predicted and true label maps.

    Parameters
    ----------
    pred, target : array-like of int, [N, H, W] (or [H, W] for one image)
        Predicted and true class ids; target pixels equal to :data:`IGNORE_INDEX` are left out of every count.
    n_classes : int
        Number of classes C; true labels must lie in ``[0, C)`` or be :data:`IGNORE_INDEX`.

    Returns
    -------
    dict
        ``intersection`` (pixels of class c predicted as c), ``union`` (pixels predicted c or labelled c) and
        ``labelled`` (pixels labelled c): int64 [N, C] each.
    """
    pred, target = _batch(pred).astype(np.int64), _batch(target).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    n = len(target)
    valid = target != IGNORE_INDEX
    if np.any(valid & ((target < 0) | (target >= n_classes))):
        raise ValueError(f"target labels outside [0, {n_classes}) other than {IGNORE_INDEX}")
    rows = np.broadcast_to(np.arange(n)[:, None, None], target.shape)

    def count(mask, labels):
        flat = rows[mask] * n_classes + labels[mask]
        return np.bincount(flat, minlength=n * n_classes).reshape(n, n_classes).astype(np.int64)

    in_range = (pred >= 0) & (pred < n_classes)
    labelled = count(valid, target)
    predicted = count(valid & in_range, np.clip(pred, 0, n_classes - 1))
    intersection = count(valid & (pred == target), target)
    return {"intersection": intersection, "union": labelled + predicted - intersection, "labelled": labelled}


def depth_stats(pred, target, *, max_depth: float = DEPTH_CAP) -> dict[str, np.ndarray]:
    """Per-image sums over the valid pixels of a batch of predicted and true depth maps (metres).

    Parameters
    ----------
    pred, target : array-like of float, [N, H, W] (or [H, W])
        Predicted and true depths in metres. A target pixel is valid when finite and in ``(0, max_depth]``;
        predictions are clipped to ``[DEPTH_MIN, max_depth]``.
    max_depth : float
        The depth cap in metres (:data:`DEPTH_CAP`).

    Returns
    -------
    dict
        float64 [N] each: ``n_valid`` (valid pixels), ``sq_err`` (sum of (p - g)^2), ``abs_rel`` (sum of
        |p - g| / g), ``log10`` (sum of |log10 p - log10 g|), ``delta1..3`` (pixels with max(p/g, g/p) below
        1.25, 1.25^2, 1.25^3).
    """
    pred, target = _batch(pred).astype(np.float64), _batch(target).astype(np.float64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    valid = depth_valid(target, max_depth=max_depth)
    g = np.where(valid, target, 1.0)
    p = np.clip(np.nan_to_num(pred, nan=max_depth), DEPTH_MIN, max_depth)
    ratio = np.maximum(p / g, g / p)
    axes = (1, 2)

    def total(values):
        return np.where(valid, values, 0.0).sum(axis=axes)

    return {"n_valid": valid.sum(axis=axes).astype(np.float64), "sq_err": total((p - g) ** 2),
            "abs_rel": total(np.abs(p - g) / g), "log10": total(np.abs(np.log10(p) - np.log10(g))),
            "delta1": total(ratio < 1.25), "delta2": total(ratio < 1.25 ** 2), "delta3": total(ratio < 1.25 ** 3)}


def depth_valid(target, *, max_depth: float = DEPTH_CAP) -> np.ndarray:
    """Boolean mask of the valid ground-truth depth pixels: finite and in ``(0, max_depth]``."""
    target = np.asarray(target)
    with np.errstate(invalid="ignore"):
        return np.isfinite(target) & (target > 0) & (target <= max_depth)


def _batch(a) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


# ---------------------------------------------------------------------------------------------------- metrics


def segmentation_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """``miou`` and ``pixel_acc`` of per-image statistics (rows summed), see the module docstring."""
    return dense_metrics("segmentation", stats)


def depth_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """``rmse``, ``abs_rel``, ``log10``, ``delta1..3`` of per-image statistics (per image, then averaged)."""
    return dense_metrics("depth", stats)


def dense_metrics(task: str, stats: Mapping[str, Any], index=None) -> dict[str, float]:
    """Metrics of ``task`` from per-image statistics, optionally over the images ``index`` (a bootstrap resample:
    repeated indices count an image as often as it is drawn)."""
    if task not in STAT_NAMES:
        raise ValueError(f"no dense metrics for task {task!r}; dense tasks are {', '.join(DENSE_TASKS)}")
    first = np.asarray(stats[STAT_NAMES[task][0]])
    n = (first.shape[0] if first.ndim == 2 else 1) if task == "segmentation" else np.atleast_1d(first).shape[0]
    counts = np.ones(n) if index is None else np.bincount(np.asarray(index, dtype=np.int64).ravel(), minlength=n)
    return {m: float(resampled_metric(task, m, stats, counts[None, :])[0]) for m in _METRICS[task]}


_METRICS = {"segmentation": ("miou", "pixel_acc"), "depth": ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")}


def resampled_metric(task: str, metric: str, stats: Mapping[str, Any], counts) -> np.ndarray:
    """``metric`` of each resample of the images: ``counts`` [B, N] says how often each image is drawn.

    The one implementation of the dense metrics (:func:`dense_metrics` is the case of one resample drawing every
    image once); linear in the counts, so a paired bootstrap over thousands of resamples is a few matrix products.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if task == "segmentation":
        n_classes = np.shape(stats["labelled"])[-1]
        inter, union, labelled = (counts @ np.asarray(stats[k], dtype=np.float64).reshape(-1, n_classes)
                                  for k in ("intersection", "union", "labelled"))
        with np.errstate(invalid="ignore", divide="ignore"):
            if metric == "pixel_acc":
                return inter.sum(axis=1) / labelled.sum(axis=1)
            # classes predicted or labelled in the resample (mmsegmentation, torchmetrics' macro Jaccard index)
            present = union > 0
            iou = np.where(present, inter / np.where(present, union, 1.0), 0.0)
            return iou.sum(axis=1) / present.sum(axis=1)
    n = np.atleast_1d(np.asarray(stats["n_valid"], dtype=np.float64))
    keep = n > 0  # images without a valid pixel are left out
    safe = np.where(keep, n, 1.0)
    if metric == "rmse":
        per_image = np.sqrt(np.atleast_1d(np.asarray(stats["sq_err"], dtype=np.float64)) / safe)
    else:
        per_image = np.atleast_1d(np.asarray(stats[metric], dtype=np.float64)) / safe
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ np.where(keep, per_image, 0.0)) / (counts @ keep.astype(np.float64))


def dense_stats(task: str, pred, target, *, n_classes: int | None = None,
                max_depth: float = DEPTH_CAP) -> dict[str, np.ndarray]:
    """Per-image statistics of ``task`` (:func:`segmentation_stats` or :func:`depth_stats`)."""
    if task == "segmentation":
        if n_classes is None:
            raise ValueError("segmentation statistics need n_classes")
        return segmentation_stats(pred, target, n_classes)
    if task == "depth":
        return depth_stats(pred, target, max_depth=max_depth)
    raise ValueError(f"no dense statistics for task {task!r}; dense tasks are {', '.join(DENSE_TASKS)}")


# ---------------------------------------------------------------------------------------------------- geometry

#: How every dense task feeds a frame to a backbone, recorded in its protocol id and parameters: the whole frame
#: (no centre crop), resized to the checkpoint's own input size (:func:`full_frame_config`).
FRAME = "full-frame-squash"


def full_frame_config(data_config: Mapping[str, Any]) -> dict:
    """The data config that dense tasks use for ``data_config``'s backbone: the whole frame, no crop.

    timm's eval transform resizes and centre-crops (``crop_pct``), so each backbone would see, and be scored on,
    a different part of the frame. Dense tasks instead resize the whole frame to the checkpoint's input size
    (``crop_mode="squash"``, ``crop_pct=1``: aspect not kept), for frozen probes and fine-tuning alike; every
    backbone then runs at the resolution it was trained at, a file's token grid is one size, and predictions are
    upsampled back to the label resolution, where the metrics are computed (:func:`upsample_logits`).
    """
    return {**dict(data_config), "crop_pct": 1.0, "crop_mode": "squash"}


def upsample_logits(output, size: tuple[int, int]):
    """Bilinear upsampling (``align_corners=False``) of a dense output [B, C, h, w] to the label resolution
    ``size`` = (H, W); class logits or log-depth, before the argmax or ``exp``."""
    import torch.nn.functional as F

    if tuple(output.shape[-2:]) == tuple(size):
        return output
    return F.interpolate(output, size=tuple(int(v) for v in size), mode="bilinear", align_corners=False)



def transform_dense_target(target, data_config: Mapping[str, Any], *, task: str) -> np.ndarray:
    """Map one dense target through the geometry of the backbone's evaluation transform.

    The transform is timm's own (``timm.data.create_transform(**data_config, is_training=False)``, as
    :meth:`probe._backbones.Backbone.eval_transform` builds it for the image) with nearest-neighbour
    interpolation and without its tensor conversion and normalisation, so the target lands on exactly the
    pixels of the network input.

    Parameters
    ----------
    target : array-like [H, W]
        ``segmentation``: class ids (int); ``depth``: metres (float), at the image's resolution.
    data_config : dict
        The backbone's resolved timm data config (``input_size``, ``crop_pct``, ``crop_mode``...).
    task : {"segmentation", "depth"}

    Returns
    -------
    numpy.ndarray
        [input_size[1], input_size[2]]: int64 ids (padding = :data:`IGNORE_INDEX`) or float32 metres
        (padding = 0, invalid).
    """
    from PIL import Image

    target = np.asarray(target)
    if task == "segmentation":
        img, fill = Image.fromarray(target.astype(np.int32), mode="I"), IGNORE_INDEX
    elif task == "depth":
        img, fill = Image.fromarray(np.nan_to_num(target.astype(np.float32), nan=0.0), mode="F"), 0
    else:
        raise ValueError(f"no dense target geometry for task {task!r}; dense tasks are {', '.join(DENSE_TASKS)}")
    for step in _geometry_steps(data_config):
        if hasattr(step, "fill"):
            step.fill = fill  # a border crop pads: padded pixels are unlabelled / unmeasured
        img = step(img)
    out = np.asarray(img)
    return out.astype(np.int64) if task == "segmentation" else out.astype(np.float32)


def _geometry_steps(data_config: Mapping[str, Any]) -> list:
    """The resize / crop steps of timm's eval transform for ``data_config``, nearest-neighbour."""
    import timm.data

    cfg = {k: v for k, v in data_config.items() if k in ("input_size", "crop_pct", "crop_mode", "mean", "std")}
    transform = timm.data.create_transform(**cfg, interpolation="nearest", is_training=False)
    steps = []
    for step in transform.transforms:
        if type(step).__name__ in ("MaybeToTensor", "ToTensor", "Normalize", "MaybePILToTensor", "PILToTensor"):
            break
        steps.append(step)
    return steps


def target_size(data_config: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) of a transformed dense target: the network input's."""
    return int(data_config["input_size"][1]), int(data_config["input_size"][2])


def check_dense_target(task: str, target, *, name: str, n_classes: int | None = None,
                       image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Validate one dense target at the image's resolution; a :class:`probe.ProbeError` names ``name`` otherwise.

    Checks: a 2-D map; the image's (height, width) when ``image_size`` is given; segmentation ids in
    ``[0, n_classes)`` or :data:`IGNORE_INDEX`; depth without negative or NaN values (0 = no measurement).
    """
    from ._errors import ProbeError

    target = np.asarray(target)
    if target.ndim != 2:
        raise ProbeError(f"{task} target {name} has shape {target.shape}; expected a single-channel [H, W] map")
    if image_size is not None and tuple(target.shape) != tuple(image_size):
        raise ProbeError(f"{task} target {name} is {target.shape[1]}x{target.shape[0]} pixels but its image is "
                         f"{image_size[1]}x{image_size[0]}; masks and depth maps must match their image's size")
    if task == "segmentation" and n_classes is not None:
        bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= n_classes))
        if bad.any():
            values = sorted({int(v) for v in np.unique(target[bad])[:5]})
            raise ProbeError(f"segmentation mask {name} has class ids {values} outside the {n_classes} classes "
                             f"(0..{n_classes - 1}, {IGNORE_INDEX} = ignore); fix the mask or the class list")
    if task == "depth":
        if np.isnan(target).any():
            raise ProbeError(f"depth map {name} has NaN values; write 0 where there is no measurement")
        if (target < 0).any():
            raise ProbeError(f"depth map {name} has negative depths (min {float(target.min()):g}); depths are "
                             "metres >= 0, with 0 where there is no measurement")
    return target


def network_view(image, data_config: Mapping[str, Any]) -> np.ndarray:
    """The pixels the network sees of a PIL image (timm's eval transform, un-normalised): uint8 [H, W, 3]."""
    import timm.data

    x = timm.data.create_transform(**data_config, is_training=False)(image).numpy()
    mean, std = np.asarray(data_config["mean"])[:, None, None], np.asarray(data_config["std"])[:, None, None]
    return np.clip(np.rint((x * std + mean) * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)


#: Variance focus of the SILog depth loss (1 = fully scale-invariant, 0 = plain log-RMSE), as in BTS, AdaBins and
#: DINOv2's depth heads; the frozen dense probe and dense fine-tuning both train depth with it.
SILOG_VARIANCE_FOCUS = 0.85


def silog_loss(log_pred, target, valid):
    """Scale-invariant log loss over the ``valid`` pixels: ``sqrt(mean(d^2) - 0.85 mean(d)^2)`` with
    ``d = log p - log g``; its 0.15 share of ``mean(d)^2`` keeps the absolute scale in the loss. Tensors share one
    shape; a batch without a valid pixel gives 0 (with a gradient, so every parameter still takes part in the step).
    """
    import torch

    if not bool(valid.any()):
        return log_pred.sum() * 0.0
    d = log_pred[valid] - torch.log(target[valid])
    return torch.sqrt(torch.clamp((d ** 2).mean() - SILOG_VARIANCE_FOCUS * d.mean() ** 2, min=1e-12))

