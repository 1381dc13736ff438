"""Regression: a continuous target per image (``age`` for faces, ``target`` for a manifest)."""

from __future__ import annotations

import numpy as np

from ._base import Task, mean_metric, root_mean_metric
from . import register

#: Tolerance of the cumulative score ``cs5``, in the target's unit (years for age).
CS_TOLERANCE = 5.0


def target_name(source, task: str = "regression") -> str:
    """The continuous target a regression job uses: ``age`` when the dataset carries it, else its only target."""
    if "age" in source.targets:
        return "age"
    if len(source.targets) == 1:
        return next(iter(source.targets))
    source.target("age", "train")  # raises the error listing what the dataset has
    raise AssertionError


class Regression(Task):
    name = "regression"
    metrics = (mean_metric("mae", "MAE", higher_is_better=False, unit="target"),
               root_mean_metric("rmse", "RMSE", stat="item/rmse"),  # item/rmse holds the squared error
               mean_metric("cs5", "CS@5"))
    probes = ("ridge", "knn")
    default_probes = probes
    options = frozenset({"cv", "cv_group"})
    dataset_probes = True  # a study runs it per dataset with the dataset's probes key
    stratified = False  # a continuous target: val by the ranking of ids (or people), as fine-tuning carves it

    # ------------------------------------------------------------------------------------------ engine hooks

    def check_source(self, request, source) -> None:
        from .._errors import UsageError

        super().check_source(request, source)
        if request.cv is None and "test" not in source.splits:
            raise UsageError(f"dataset {source.name!r} has no test split; add --cv K to cross-validate the "
                             "regression (e.g. --cv 5, or --cv-group subject --cv <people> for "
                             "leave-one-person-out)")
        target_name(source)  # a dataset without a continuous target: one line naming what it has

    def target_name(self, source) -> str:
        """The name of the dataset's continuous target this task reads (:func:`target_name`)."""
        return target_name(source)

    def target(self, source, split: str):
        return np.asarray(source.target(target_name(source), split), dtype=np.float64)

    def estimator(self, probe: str):
        from .._protocol import make_probe
        from ..probes import REGRESSORS

        return make_probe(probe, registry=REGRESSORS, kind="regression probe")

    def run(self, data, job):
        """The regression sweep (:func:`probe.sweep_regression`) on the dataset's splits (val carved from train
        when missing, unstratified), or under nested cross-validation (grouped by person with ``cv_group``)."""
        from .._fit import sweep_regression
        from . import GROUP_KEY

        X, y = data.features(job.tap), np.asarray(data.target)
        base = dict(job.context, task=self.name, evaluation=job.evaluation, protocol=job.protocol)
        name = {"target_name": np.asarray(target_name(data.source))}
        if job.cv is not None:
            from .._cv import cross_validate, fold_plan

            folds, groups = fold_plan(self, data, job)

            def run_fold(i, tr, te):
                return sweep_regression(job.probe, (X[tr], y[tr]), None, (X[te], y[te]), grid=job.grid,
                                        select_metric=job.select_metric, val_fraction=job.val_fraction,
                                        seed=job.seed, train_ids=data.ids[tr], test_ids=data.ids[te],
                                        groups=None if groups is None else groups[tr], device=job.device, base=base)

            rows, items = cross_validate(run_fold, folds, task=self, groups=groups, people=data.people,
                                         ids=data.ids, seed=job.seed)
            return rows, dict(items, **name)
        parts = data.parts
        tr, te = parts["train"], parts["test"]
        val = (X[parts["val"]], y[parts["val"]]) if "val" in parts else None
        result = sweep_regression(job.probe, (X[tr], y[tr]), val, (X[te], y[te]), grid=job.grid,
                                  select_metric=job.select_metric, val_fraction=job.val_fraction, seed=job.seed,
                                  train_ids=data.ids[tr], test_ids=data.ids[te], device=job.device, base=base)
        items = dict(result.test, **name)
        if result.val_ids is not None:
            items["val_ids"] = np.asarray(result.val_ids, dtype=str)
        if data.people is not None:
            items[GROUP_KEY] = data.people[te].astype(str)
        return result.rows, items

    # ------------------------------------------------------------------------------------------ report hooks

    title = "Regression (continuous target, e.g. age)"
    report_group = "Faces and continuous targets"
    group_noun = "people"

    def report_figures(self, report, dataset, evaluation, shown):
        """Predicted vs true target per configuration (frozen probes and fine-tuning)."""
        return report.prediction_scatter(dataset, evaluation, shown)


register(Regression())
