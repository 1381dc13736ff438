"""Tasks of a fine-tune: what a head predicts, its training loss and its evaluation on a split.

A task object is what the trainer (:class:`probe._finetune.trainer.Trainer`) is given per head:

- ``name``: the task (a :mod:`probe.tasks` name), the key of its output and its target in a batch;
- ``loss(output, target)``: the training loss of a micro-batch (a scalar tensor, float32);
- ``evaluator()``: an accumulator with ``add(output, target, keep)`` (CPU tensors of one batch; ``keep`` marks
  the readable images) and ``result()`` -> ``{"metrics": {...}, "loss": float, ...}``.
"""

from __future__ import annotations

import math

import numpy as np


class ClassificationTask:
    """Image classification with a linear head on the pooled features (the backbone's own classifier slot).

    Parameters
    ----------
    n_classes : int
        Classes of the dataset (the head's outputs).
    label_smoothing : float
        Cross-entropy label smoothing of the training loss (the evaluation loss has none).
    """

    name = "classification"

    def n_outputs(self) -> int:
        return self.n_classes

    def __init__(self, n_classes: int, label_smoothing: float = 0.0):
        import torch

        self.n_classes = n_classes
        self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(self, output, target):
        return self.criterion(output.float(), target)

    def evaluator(self):
        return _ClassificationEval()


class _ClassificationEval:
    def __init__(self):
        self.logits, self.labels, self.keep = [], [], []

    def add(self, output, target, keep) -> None:
        self.logits.append(output.float())
        self.labels.append(target)
        self.keep.append(keep)

    def result(self) -> dict:
        import torch

        from ..results import classification_metrics

        mask = torch.cat(self.keep)
        scores, target = torch.cat(self.logits)[mask], torch.cat(self.labels)[mask]
        loss = float(torch.nn.functional.cross_entropy(scores, target))
        scores_np = scores.numpy()
        return {"metrics": classification_metrics(target.numpy(), scores_np), "loss": loss, "scores": scores_np,
                "labels": target.numpy(), "keep": mask.numpy()}


class RegressionTask:
    """Regression of the dataset's continuous target (``age`` for FG-NET and the generated ``faces``, ``target``
    for a manifest: :meth:`probe.tasks.regression.Regression.target_name`, the frozen regression probes' target) with one linear output
    on the pooled features (the backbone's classifier slot with one output).

    The head predicts the *standardised* target ``z = (y - mean) / std``, ``mean`` and ``std`` being those of the
    phase's training targets (train; train+val in the refit), so that one learning rate suits targets in any
    unit. The training loss is the L1 loss on ``z`` (the mean absolute error in units of the training sd).
    Predictions are in the target's own units (``mean + std * z``, e.g. years), and so are the metrics: MAE,
    RMSE and CS(5) (:func:`probe.results.regression_metrics`, the frozen probes' implementation).

    Parameters
    ----------
    mean, std : float
        Statistics of the training targets (``std`` 0 is taken as 1: a constant target).
    """

    name = "regression"

    def __init__(self, mean: float, std: float):
        self.mean = float(mean)
        self.std = float(std) if std > 0 and math.isfinite(std) else 1.0

    @classmethod
    def from_targets(cls, values) -> "RegressionTask":
        """The task standardised by the mean and (population) sd of ``values``, the training targets."""
        values = np.asarray(values, dtype=np.float64)
        return cls(float(values.mean()), float(values.std()))

    def n_outputs(self) -> int:
        return 1

    def loss(self, output, target):
        import torch

        z = (target.float() - self.mean) / self.std
        return torch.nn.functional.l1_loss(output.float()[:, 0], z)

    def predict(self, output) -> np.ndarray:
        """Predictions in the target's units (float64) from head outputs [N, 1]."""
        return self.mean + self.std * np.asarray(output, dtype=np.float64)[:, 0]

    def evaluator(self):
        return _RegressionEval(self)


class _RegressionEval:
    def __init__(self, task: RegressionTask):
        self.task, self.outputs, self.targets, self.keep = task, [], [], []

    def add(self, output, target, keep) -> None:
        self.outputs.append(output.float())
        self.targets.append(target)
        self.keep.append(keep)

    def result(self) -> dict:
        import torch

        from .._cv import regression_items
        from ..results import regression_metrics

        mask = torch.cat(self.keep)
        out, y = torch.cat(self.outputs)[mask], torch.cat(self.targets)[mask]
        loss = float(self.task.loss(out, y)) if len(y) else float("nan")
        y = y.double().numpy()
        pred = self.task.predict(out.numpy())
        return {"metrics": regression_metrics(y, pred), "loss": loss, "pred": pred, "labels": y,
                "keep": mask.numpy(), "items": regression_items(y, pred)}


def silog_loss(log_pred, target):
    """Scale-invariant log loss over the valid pixels (:func:`probe.dense.depth_valid`) of a batch:
    ``sqrt(mean(d^2) - 0.85 mean(d)^2)`` with ``d = log p - log g``; its 0.15 share of ``mean(d)^2`` keeps the
    absolute scale in the loss. ``log_pred`` and ``target`` are [B, H, W]; a batch without a valid pixel gives 0
    (with a gradient, so every parameter still takes part in the step)."""
    import torch

    from ..dense import DEPTH_CAP, silog_loss as silog

    return silog(log_pred, target, torch.isfinite(target) & (target > 0) & (target <= DEPTH_CAP))


class SegmentationTask:
    """Semantic segmentation: per-pixel class logits, cross-entropy over the labelled pixels
    (:data:`probe.dense.IGNORE_INDEX` ignored); evaluated by mIoU and pixel accuracy from per-image statistics
    (:func:`probe.dense.segmentation_stats`)."""

    name = "segmentation"

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def n_outputs(self) -> int:
        return self.n_classes

    def loss(self, output, target):
        import torch

        from ..dense import IGNORE_INDEX

        output = output.float()
        if not bool((target != IGNORE_INDEX).any()):
            return output.sum() * 0.0
        return torch.nn.functional.cross_entropy(output, target, ignore_index=IGNORE_INDEX)

    def predict(self, output):
        return output.argmax(dim=1)

    def evaluator(self):
        return _DenseEval(self)


class DepthTask:
    """Monocular depth: one channel of log-depth per pixel (the prediction is its ``exp``, clipped to
    ``[DEPTH_MIN, DEPTH_CAP]``), trained with :func:`silog_loss`; evaluated by the NYUv2 depth metrics from
    per-image statistics (:func:`probe.dense.depth_stats`)."""

    name = "depth"

    def n_outputs(self) -> int:
        return 1

    def loss(self, output, target):
        return silog_loss(output.float()[:, 0], target)

    def predict(self, output):
        import torch

        from ..dense import DEPTH_CAP, DEPTH_MIN

        return torch.exp(output.float()[:, 0]).clamp(DEPTH_MIN, DEPTH_CAP)

    def evaluator(self):
        return _DenseEval(self)


class _DenseEval:
    """Per-image statistics of a dense task over a split (:func:`probe.dense.dense_stats`), and the metrics.

    The outputs (at the network input) are upsampled bilinearly to each image's label resolution
    (:func:`probe.dense.upsample_logits`) before the argmax or ``exp``, and scored there: the frozen dense probe's
    rule. One image at a time, so memory stays one full-resolution map of outputs."""

    def __init__(self, task):
        self.task, self.stats, self.losses, self.keep = task, [], [], []
        self.preview: dict[str, list] = {"target": [], "pred": []}
        self.scored = 0  # images scored so far: the previews are the first ones

    def add(self, output, target, keep) -> None:
        from ..dense import dense_stats, upsample_logits

        self.keep.append(keep)
        for k in np.flatnonzero(keep.numpy()):
            t = target[int(k)]
            out = upsample_logits(output[int(k):int(k) + 1], tuple(t.shape[-2:]))
            self.losses.append((float(self.task.loss(out, t[None])), 1))
            pred = self.task.predict(out)
            self.stats.append(dense_stats(self.task.name, pred.numpy(), t[None].numpy(),
                                          n_classes=getattr(self.task, "n_classes", None)))
            shown = self.preview["target"]
            if len(shown) == self.scored < PREVIEW_IMAGES and (not shown or shown[0].shape[1:] == tuple(t.shape)):
                self.preview["target"].append(t[None].numpy())  # the first images, while of one size
                self.preview["pred"].append(pred.numpy())
            self.scored += 1

    def result(self) -> dict:
        import torch

        from ..dense import STAT_NAMES, dense_metrics

        stats = {k: np.concatenate([s[k] for s in self.stats]) for k in STAT_NAMES[self.task.name]}
        n = sum(w for _, w in self.losses)
        return {"metrics": dense_metrics(self.task.name, stats), "loss": sum(v * w for v, w in self.losses) / n,
                "stats": stats, "keep": torch.cat(self.keep).numpy(),
                "preview": {k: np.concatenate(v) for k, v in self.preview.items() if v}}


#: Test images whose targets and predictions a dense fine-tune saves for the report's figure.
PREVIEW_IMAGES = 4


#: The head of each task a fine-tune trains, by task name: ``name -> build(source, config, train_targets)``.
HEADS = {
    "classification": lambda source, config, targets: ClassificationTask(len(source.classes), config.label_smoothing),
    "regression": lambda source, config, targets: RegressionTask.from_targets(targets),
    "segmentation": lambda source, config, targets: SegmentationTask(len(source.segmentation_classes)),
    "depth": lambda source, config, targets: DepthTask(),
}


def make_task(name: str, source, config, *, train_targets=None):
    """The task object of ``name`` for a dataset (``source``) and a config (label smoothing); ``train_targets``
    are the continuous targets of the phase's training images (regression standardises by them)."""
    return HEADS[name](source, config, train_targets)


def chance_level(labels: np.ndarray, metric: str, n_classes: int) -> dict[str, float]:
    """The val score a model gets without learning anything, and the score not distinguishable from it.

    ``chance`` is what always predicting the most frequent classes scores (top1: the largest class share;
    top5: the five largest; mean per-class accuracy: one over the classes present). ``threshold`` adds two
    binomial standard errors over the val examples, so a tiny val split does not call noise learning.
    """
    labels = np.asarray(labels)
    counts = np.sort(np.bincount(labels, minlength=n_classes))[::-1]
    n = max(1, len(labels))
    if metric == "mean_per_class_acc":
        chance = 1.0 / max(1, int((counts > 0).sum()))
    else:
        chance = float(counts[: 5 if metric == "top5" else 1].sum()) / n
    return {"chance": chance, "threshold": chance + 2.0 * math.sqrt(chance * (1.0 - chance) / n)}


def probe_head(est, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted LogisticProbe as a linear head over all ``n_classes`` labels: (weight [C, D], bias [C]).

    Two classes are one logit z in the probe (class scores [0, z]); the head gets those scores exactly. A class
    the probe never saw scores like the least likely seen class (zero weight, the smallest bias).
    """
    coef = np.asarray(est.coef_, dtype=np.float32)
    intercept = np.asarray(est.intercept_, dtype=np.float32).reshape(-1)
    classes = np.asarray(est.classes_, dtype=np.int64)
    W = np.zeros((n_classes, coef.shape[1]), dtype=np.float32)
    if coef.shape[0] == 1 and len(classes) == 2:
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros(1, np.float32), intercept])
    b = np.full(n_classes, intercept.min(), dtype=np.float32)
    W[classes] = coef
    b[classes] = intercept
    return W, b
