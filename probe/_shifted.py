"""Distribution shift: a probe or fine-tune selected and refitted on a dataset, scored once on shifted sets.

A dataset of a sweep or a fine-tune may name shifted evaluation sets (``eval_on``; ``--eval-on SPEC``) that share
its class names: ``digits-c?corruption=blur&severity=3``, ``shapes-texture``, or any dataset spec with a test
split. Nothing is fitted or selected on a shifted set: the model the source's protocol chose (the probe selected on
the source's val and refitted, the fine-tune's chosen epoch) scores the shifted set's test split once, and that
score is written as its own results file beside the job's (:func:`shifted_stem`), one selected ``test`` row whose
``eval_dataset`` names the shifted set, with its per-image arrays (``.npz``) for the bootstrap.

Class names are matched by name (:func:`open_eval_sets`): a shifted set with a class the source lacks is refused
with one line naming it, unless ``shared_classes`` scores the items of the shared classes only (recorded in the
row's params: ``eval_classes = "shared"`` and ``eval_dropped``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import UsageError

#: What separates a job's stem from the shifted set its file was scored on: ``<job stem>.on-<eval name>``.
SHIFT_MARK = ".on-"


@dataclass(frozen=True)
class EvalSet:
    """One shifted set, opened and matched to a source dataset's classes.

    Attributes
    ----------
    spec : str
        The spec as given.
    source : DatasetSource
        The shifted set as opened (its own labels and class names; cached like any dataset).
    to_source : ndarray [C_shifted]
        The source's label of each of the shifted set's classes (-1: a class the source lacks, dropped).
    dropped : tuple of str
        The shifted set's classes the source lacks (empty unless ``shared_classes``).
    shared_classes : bool
        Whether the items of classes the source lacks are left out (``--shared-classes``).
    """

    spec: str
    source: Any
    to_source: np.ndarray
    dropped: tuple[str, ...] = ()
    shared_classes: bool = False

    @property
    def name(self) -> str:
        """The ``eval_dataset`` of its rows (the shifted set's dataset name)."""
        return self.source.name

    def params(self) -> dict:
        """What the rows' params record about the scoring: the spec and which classes were scored."""
        out = {"eval_spec": self.spec, "eval_classes": "shared" if self.shared_classes else "all"}
        if self.dropped:
            out["eval_dropped"] = list(self.dropped)
        return out

    def labels(self, labels) -> tuple[np.ndarray, np.ndarray]:
        """(kept mask, labels in the source's label space) of items with the shifted set's ``labels``."""
        mapped = self.to_source[np.asarray(labels, dtype=np.int64)]
        keep = mapped >= 0
        return keep, mapped

    def aligned_source(self, classes: Sequence[str]):
        """The shifted set's test split as a dataset in the source's label space (items of dropped classes left
        out): what a fine-tuned model's evaluation loader reads."""
        s = self.source
        keep, mapped = self.labels(s.labels["test"])
        idx = np.flatnonzero(keep)
        return replace(s, classes=list(classes), splits={"test": [s.splits["test"][i] for i in idx]},
                       labels={"test": mapped[idx]}, ids={"test": [s.ids["test"][i] for i in idx]}, targets={},
                       _fingerprint=None)


def open_eval_sets(specs: Sequence[str], source, *, shared_classes: bool = False, data_root=None) -> list[EvalSet]:
    """Open the shifted sets ``specs`` of the opened ``source`` and match their classes to it by name.

    Raises
    ------
    UsageError
        One line: a shifted set without a test split, one that is the source itself, or one with classes the source
        lacks (naming them, and the fix ``--shared-classes``) unless ``shared_classes``.
    """
    from ._datasets import open_dataset

    out, names = [], set()
    for spec in specs or ():
        shifted = open_dataset(spec, data_root=data_root)
        if "test" not in shifted.splits:
            raise UsageError(f"eval-on dataset {spec!r} has no test split (it has {shifted.split_names}); a shifted "
                             "set is scored on its test split")
        if shifted.name == source.name or shifted.name in names:
            raise UsageError(f"eval-on dataset {spec!r} is named {shifted.name!r} like the source or another "
                             "shifted set; name each shifted set once, and not the source itself")
        names.add(shifted.name)
        index = {c: i for i, c in enumerate(source.classes)}
        extra = [c for c in shifted.classes if c not in index]
        if extra and not shared_classes:
            shown = ", ".join(map(repr, extra[:8])) + (", ..." if len(extra) > 8 else "")
            raise UsageError(f"eval-on dataset {spec!r} has {len(extra)} class(es) that {source.name!r} lacks: "
                             f"{shown}; pass --shared-classes (study: shared_classes = true) to score the shared "
                             "classes only")
        to_source = np.asarray([index.get(c, -1) for c in shifted.classes], dtype=np.int64)
        if not (to_source >= 0).any():
            raise UsageError(f"eval-on dataset {spec!r} shares no class name with {source.name!r}")
        out.append(EvalSet(spec=spec, source=shifted, to_source=to_source, dropped=tuple(extra),
                           shared_classes=bool(shared_classes)))
    return out


def shifted_stem(stem, eval_set: EvalSet) -> Path:
    """The stem of a job's results on a shifted set: ``<job stem>.on-<eval name>`` (``.parquet``, ``.npz``)."""
    from ._io import safe_name

    return Path(str(stem) + SHIFT_MARK + safe_name(eval_set.name))


def source_file(path: str) -> str:
    """The results file of the job that a shifted results file belongs to (itself for a job's own file)."""
    p = Path(path)
    if SHIFT_MARK not in p.name:
        return str(path)
    return str(p.with_name(p.name.split(SHIFT_MARK)[0] + ".parquet"))


def shifted_result(row: dict, eval_set: EvalSet, *, ids, labels, scores, score_classes, classes: Sequence[str],
                   cache_key: str = "-", calibration=None) -> tuple[dict, dict]:
    """The row and per-item arrays of a selected model scored on a shifted set: the one place where a shifted
    row's test scores exist (frozen probes and fine-tunes both come here).

    Parameters
    ----------
    row : dict
        The job's selected test row on the source (its identity, protocol, params and training counts are kept).
    eval_set : EvalSet
    ids, labels : array [N]
        The shifted items scored (labels already in the source's label space, dropped classes left out).
    scores : array [N, C]
        The model's class scores; ``score_classes`` the source label of each column.
    classes : sequence of str
        The source's class names (index = label).
    cache_key : str
        The shifted features' cache key ("-" for a fine-tune).
    calibration : callable, optional
        ``(scores, labels) -> (columns, items)``: the model's calibration on these scores with the temperature
        fitted on the source's val (:func:`probe._calibration.calibrate_model`). Without it the row's calibration
        columns are null (never the source's values).

    Returns
    -------
    (dict, dict)
        The shifted row (``selected`` True, ``split`` "test", ``eval_dataset`` the shifted set's name; top1, top5,
        mean per-class accuracy on it) and its arrays (:func:`probe.results.prediction_arrays`).
    """
    from .results import classification_metrics, make_row, prediction_arrays

    if len(ids) == 0:
        raise UsageError(f"eval-on dataset {eval_set.spec!r} has no test item of a class the source has")
    from ._calibration import COLUMNS as CALIBRATION_COLUMNS

    metrics = classification_metrics(np.asarray(labels), np.asarray(scores), np.asarray(score_classes))
    cal_columns, cal_items = calibration(scores, labels) if calibration is not None else ({}, {})
    cal_columns = {**{c: None for c in CALIBRATION_COLUMNS if c in row}, **cal_columns}
    params = dict(_json(row.get("params")), **eval_set.params())
    out = make_row(**dict(row, **metrics, **cal_columns, params=params, selected=True, split="test",
                          eval_dataset=eval_set.name, n_eval=int(len(ids)), cache_key=cache_key, fold=None,
                          created=None))
    items = prediction_arrays(ids=np.asarray(ids), labels=np.asarray(labels), scores=np.asarray(scores),
                              classes=list(classes), score_classes=np.asarray(score_classes))
    items.update(cal_items)
    return out, items


def _json(value) -> dict:
    import json

    if isinstance(value, dict):
        return dict(value)
    try:
        parsed = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def score_frozen(estimator, eval_set: EvalSet, data, tap: str, row: dict, classes: Sequence[str], *,
                 calibration=None) -> tuple[dict, dict]:
    """A refitted frozen probe scored once on a shifted set's cached test features (``data``: its
    :class:`probe._features.FeatureData`); see :func:`shifted_result` (``calibration`` passed on)."""
    from ._fit import class_scores

    X, labels = data.split("test", tap)
    keep, mapped = eval_set.labels(labels)
    ids = np.asarray(data.splits["test"].ids).astype(str)[keep]
    return shifted_result(row, eval_set, ids=ids, labels=mapped[keep], scores=class_scores(estimator, X[keep]),
                          score_classes=estimator.classes_, classes=classes, cache_key=data.splits["test"].key,
                          calibration=calibration)
