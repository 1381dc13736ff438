"""Classification: one class label per image; probes learn the classes from frozen features."""

from __future__ import annotations

import numpy as np

from .. import _calibration
from ._base import Metric, Task, mean_metric
from . import register


def _mean_per_class(stats, counts) -> np.ndarray:
    """Mean over the classes present in each resample of the share of their items that are hits (top-1)."""
    classes, index = np.unique(np.asarray(stats["labels"]), return_inverse=True)
    onehot = np.zeros((len(index), len(classes)))
    onehot[np.arange(len(index)), index] = 1.0
    hits = counts @ (onehot * np.asarray(stats["item/top1"], dtype=np.float64)[:, None])
    seen = counts @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, hits / np.where(seen > 0, seen, 1.0), 0.0).sum(axis=1) / (seen > 0).sum(axis=1)


def _binned(conf: str, which: int):
    """Resampled ECE (``which`` 0) or MCE (1) from the items' confidences ``conf`` and hits ``item/top1``."""
    def resample(stats, counts) -> np.ndarray:
        return _calibration.binned_errors(stats[conf], stats["item/top1"], counts)[which]

    return resample


#: Calibration of the selected test row (:mod:`probe._calibration`): before and after temperature scaling.
CALIBRATION = (
    Metric("ece", False, "fraction", "ECE", ("item/conf", "item/top1"), resample=_binned("item/conf", 0)),
    Metric("ece_ts", False, "fraction", "ECE after TS", ("item/conf_ts", "item/top1"),
           resample=_binned("item/conf_ts", 0)),
    Metric("mce", False, "fraction", "MCE", ("item/conf", "item/top1"), resample=_binned("item/conf", 1)),
    Metric("mce_ts", False, "fraction", "MCE after TS", ("item/conf_ts", "item/top1"),
           resample=_binned("item/conf_ts", 1)),
    mean_metric("nll", "NLL", higher_is_better=False, unit="ratio"),
    mean_metric("nll_ts", "NLL after TS", higher_is_better=False, unit="ratio"),
    mean_metric("brier", "Brier", higher_is_better=False, unit="ratio"),
    mean_metric("brier_ts", "Brier after TS", higher_is_better=False, unit="ratio"),
)


def calibrated(est, scores: np.ndarray, labels, extra: dict) -> tuple[dict, dict]:
    """The calibration columns of a selected test row and the per-item statistics beside its predictions.

    ``est`` is the refitted probe (``classes_``, ``probabilistic``), ``scores`` its test scores, ``extra`` the
    sweep's ``val_scores``/``val_labels``/``val_classes`` (:class:`probe._fit.SweepResult`). Probabilistic probes
    are calibrated from their softmax, the others from their scores as logits. Empty without val scores.
    """
    if extra.get("val_scores") is None or scores is None:
        return {}, {}
    return _calibration.calibrate_model(extra["val_scores"], extra["val_labels"], scores, labels, est.classes_,
                                        probabilistic=bool(getattr(est, "probabilistic", False)),
                                        val_classes=extra["val_classes"])


class Classification(Task):
    name = "classification"
    metrics = (mean_metric("top1", "top-1"), mean_metric("top5", "top-5"),
               Metric("mean_per_class_acc", True, "fraction", "mean per-class", ("item/top1", "labels"),
                      resample=_mean_per_class))
    probes = ("logistic", "ridge", "knn", "centroid")
    default_probes = probes
    options = frozenset({"cv", "cv_group", "test_fraction", "shots", "eval_on"})
    learns_classes = True
    extra_metrics = CALIBRATION
    columns = {**{m.name: "Float64" for m in CALIBRATION}, "temperature": "Float64", "calib_input": "Utf8"}

    # ------------------------------------------------------------------------------------------ engine hooks
    # The target is the class labels (Task.target returns None); a subclass that reads another class target
    # from the dataset overrides ``target`` and runs through the same code.

    def run(self, data, job):
        """The classification sweep (:func:`probe.sweep`) of one (tap, probe, shots, seed) on the dataset's
        splits, or under nested cross-validation (:func:`classify_folds`)."""
        if job.cv is not None:
            return classify_folds(self, data, job)
        return _classify_splits(self, data, job)

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Classification"
    report_group = "Classification"
    frozen_taps_excluded = frozenset({"patch", "patch16"})
    gain_metrics = ("mean_per_class_acc",)

    def item_stats(self, artifacts):
        """Hits from the saved predictions when the job saved no ``item/`` arrays: ``item/top1`` is the top-1
        prediction being the label, ``item/top5`` the label being among the saved five best classes."""
        out = super().item_stats(artifacts)
        labels = artifacts.get("labels")
        if labels is None:
            return out
        labels = np.asarray(labels)
        if "item/top1" not in out and "pred" in artifacts:
            out["item/top1"] = (np.asarray(artifacts["pred"]) == labels).astype(np.float64)
        if "item/top5" not in out and "top5" in artifacts:
            out["item/top5"] = (np.asarray(artifacts["top5"]) == labels[:, None]).any(axis=1).astype(np.float64)
        return out

    def report_section(self, report, jobs):
        """Frozen probes vs fine-tuning, the families, layer-wise and few-shot curves (per evaluation scheme), then
        the calibration of the chosen protocols."""
        return report.classification_sections(self, jobs) + report.calibration_section(self, jobs)


def class_target(task, data) -> np.ndarray:
    """The class of every row: the task's target when it reads one, else the dataset's labels."""
    return data.labels if data.target is None else np.asarray(data.target)


def _names(task, data):
    return data.classes if data.target is None else None


def _classify_splits(task, data, job):
    from .._fit import sweep
    from ..results import prediction_arrays
    from . import GROUP_KEY

    y = class_target(task, data)

    def part(split):
        if split not in data.parts:
            return None
        X, _ = data.split(split, job.tap)
        return X, y[data.parts[split]]

    train, val, test = part("train"), part("val"), part("test")
    if train is None:
        from .._errors import UsageError

        raise UsageError(f"dataset {data.source.name!r} has no train split (found {sorted(data.splits)}); "
                         "probes need one")
    result = sweep(job.probe, train, val, test, grid=job.grid, select_metric=job.select_metric,
                   val_fraction=job.val_fraction, test_fraction=job.test_fraction, seed=job.seed, shots=job.shots,
                   class_names=_names(task, data), device=job.device, train_ids=data.ids[data.parts["train"]],
                   absent=data.absent if data.target is None else None, return_result=True,
                   context=dict(job.context, task=task.name, evaluation=job.evaluation))
    rows = result.frame.to_dicts()
    if rows[0]["protocol"] != job.protocol:
        raise AssertionError("internal error: the job's file name and its rows disagree on the protocol id")
    if result.estimator is None:
        return rows, {}
    est = result.estimator
    if test is not None:
        rows_test = data.parts["test"]
        ids, labels = data.ids[rows_test], test[1]
        people = None if data.people is None else data.people[rows_test]
    else:
        ids, labels = result.extra["test_ids"], result.extra["test_labels"]
        where = {i: k for k, i in enumerate(data.ids)}
        people = None if data.people is None else data.people[[where[i] for i in ids]]
    items = prediction_arrays(ids=ids, labels=labels, scores=result.test_scores, weights=est._artifact_weights(),
                              classes=list(data.classes) if data.target is None else None,
                              score_classes=est.classes_)
    if people is not None:
        items[GROUP_KEY] = np.asarray(people).astype(str)
    if task.extra_metrics:
        columns, calibration_items = calibrated(est, result.test_scores, labels, result.extra)
        rows[-1] = dict(rows[-1], **columns)
        items.update(calibration_items)
    rows[-1] = dict(rows[-1], **{k: v for k, v in task.item_metrics(items).items() if rows[-1].get(k) is None})
    if job.shifted:  # the selected, refitted probe scored once on each shifted set
        from .._shifted import score_frozen

        classes = list(data.classes)
        calibration = ((lambda s, y: calibrated(est, s, y, result.extra)) if task.extra_metrics else None)
        shifted = [(es, *score_frozen(est, es, fd, job.tap, rows[-1], classes, calibration=calibration))
                   for es, fd in job.shifted]
        return rows, items, shifted
    return rows, items


def classify_folds(task, data, job, *, rank_columns: bool = False):
    """Nested cross-validation of a classification probe (identity classifiers too): each fold runs
    :func:`probe.sweep` on its training rows (val carved there) and scores its held-out rows once; the summary
    comes from the pooled held-out items (:func:`probe._cv.cross_validate`). ``rank_columns``: an identity
    classifier's rank-k is its top-k over the identities."""
    import warnings

    from .._cv import cross_validate, fold_plan
    from .._fit import TaskSweep, sweep
    from ..results import top_k

    X = data.features(job.tap)
    y = class_target(task, data)
    folds, groups = fold_plan(task, data, job, labels=y)
    context = dict(job.context, task=task.name, evaluation=job.evaluation)
    material = {"cv": job.cv, "cv_group": job.cv_group}

    def run_fold(i, tr, te):
        with warnings.catch_warnings():  # a few images per person is what identity classification is
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            result = sweep(job.probe, (X[tr], y[tr]), None, (X[te], y[te]), grid=job.grid,
                           select_metric=job.select_metric, val_fraction=job.val_fraction, seed=job.seed,
                           class_names=_names(task, data), device=job.device, train_ids=data.ids[tr],
                           context=context, evaluation=material, return_result=True)
        classes = np.asarray(result.estimator.classes_)
        top = classes[top_k(result.test_scores, 5)]
        labels = y[te]
        hits1 = (top[:, 0] == labels).astype(float)
        hits5 = (top == labels[:, None]).any(axis=1).astype(float)
        if top.shape[1] < 5:
            top = np.pad(top, ((0, 0), (0, 5 - top.shape[1])), constant_values=-1)
        items = {"ids": data.ids[te], "labels": labels, "pred": top[:, 0], "top5": top, "item/top1": hits1,
                 "item/top5": hits5}
        rows = []
        for r in result.frame.to_dicts():
            r["protocol"] = job.protocol
            if rank_columns:
                r["rank1"], r["rank5"] = r["top1"], r["top5"]
            rows.append(r)
        if rank_columns:
            items.update({"item/rank1": hits1, "item/rank5": hits5})
        if task.extra_metrics and rows[-1]["split"] == "test":
            columns, calibration_items = calibrated(result.estimator, result.test_scores, labels, result.extra)
            rows[-1].update(columns)
            items.update(calibration_items)
        if rows[-1]["split"] == "test":
            rows[-1].update({k: v for k, v in task.item_metrics(items).items() if rows[-1].get(k) is None})
        return TaskSweep(rows=rows, selected_params=result.selected_params, estimator=result.estimator,
                         test=items, val_ids=result.extra.get("val_ids"))

    return cross_validate(run_fold, folds, task=task, groups=groups, people=data.people, ids=data.ids,
                          seed=job.seed)


register(Classification())
