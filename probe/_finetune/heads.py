"""Tasks of a fine-tune: what a head predicts, its training loss and its evaluation on a split.

A task object is what the trainer (:class:`probe._finetune.trainer.Trainer`) is given per head:

- ``name``: the task (:data:`probe.vocab.TASKS`), the key of its output and its target in a batch;
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
