"""The rows a job sees: a backbone's cached features of an opened dataset, every split, with ids, labels, the
task's target and the groups its items cluster in.

:func:`load_features` extracts (or reuses) the features through :func:`probe.extract_features`, given the
*opened* dataset (a :class:`probe.DatasetSource`: the spec is parsed once per sweep), and returns a
:class:`FeatureData` that the task's hooks read. The target comes from the task (:meth:`probe.tasks.Task.target`:
class labels by default, a continuous target for regression), aligned with the cached rows (images left out with
``--skip-bad`` are not rows).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .vocab import SPLITS


class FeatureData:
    """Every cached split of one (backbone, dataset), concatenated in :data:`probe.vocab.SPLITS` order.

    Attributes
    ----------
    source : DatasetSource
        The opened dataset.
    splits : dict
        Split -> :class:`probe.CachedSplit` (features of the requested taps).
    parts : dict
        Split -> row indices into the concatenation.
    ids, labels : ndarray [N]
        Item ids and class labels (identities for a face dataset).
    target : ndarray [N] or None
        The task's own target (:meth:`probe.tasks.Task.target`), None when the class labels are the target.
    people : ndarray [N] or None
        The person of each item when the dataset's classes are people (its items cluster in them), else None.
    classes : list of str
    absent : dict
        Id -> label of train images the cache left out (``--skip-bad``), so the carves see the full list.
    """

    def __init__(self, source, splits: dict, *, target=None, absent: Mapping[str, int] | None = None):
        self.source, self.splits = source, splits
        order = [s for s in SPLITS if s in splits]
        self.parts, offset = {}, 0
        for s in order:
            self.parts[s] = np.arange(offset, offset + len(splits[s].ids))
            offset += len(splits[s].ids)
        self.ids = np.asarray([str(i) for s in order for i in splits[s].ids])
        self.labels = np.concatenate([np.asarray(splits[s].labels) for s in order])
        self.classes = list(splits[order[0]].classes)
        self.target = target
        self.people = self.labels if source.options.get("identity_tasks") else None
        self.absent = dict(absent or {})
        self._order = order

    @property
    def first(self):
        """The train split's cache entry (the first split when there is no train)."""
        return self.splits.get("train") or self.splits[self._order[0]]

    @property
    def gallery(self) -> bool:
        """True when the dataset has identification's gallery and query splits."""
        return "gallery" in self.parts and "query" in self.parts

    def features(self, tap: str) -> np.ndarray:
        return np.concatenate([self.splits[s].features[tap] for s in self._order])

    def split(self, name: str, tap: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split."""
        entry = self.splits[name]
        return entry.features[tap], np.asarray(entry.labels)

    def context(self, tap: str, family: str | None = None) -> dict:
        """The results columns of the backbone configuration and the features, for every row of a job."""
        from ._families import resolve_family

        first = self.first
        fam, fam_source = resolve_family(first.backbone, family)
        return dict(backbone=first.backbone, family=fam, family_source=fam_source, weights=first.weights,
                    dataset=first.dataset, tap=tap, cache_key=first.key, n_skipped=skipped_count(self.splits.values()),
                    **backbone_context(first))

    @property
    def feature_tag(self) -> str:
        """The cache key without the tap list (when the cache records it): more taps later reuse the results."""
        first = self.first
        return str(first.attrs.get("base_key") or first.key)[:8]


def load_features(backbone: str, source, *, taps, task, cache_dir, device: str, progress: bool,
                  **extract_kwargs) -> FeatureData:
    """Extract (or reuse) ``taps`` of every split of the opened ``source`` and load them (see the module
    docstring). ``task`` supplies the target (:meth:`probe.tasks.Task.target`)."""
    from ._cache import load_split
    from ._extract import extract_features

    entries = extract_features(backbone, source, taps=tuple(taps), cache_dir=cache_dir, device=device,
                               progress=progress, **extract_kwargs)
    splits = {name: load_split(entry, taps=list(taps)) for name, entry in entries.items()}
    order = [s for s in SPLITS if s in splits]
    target = None
    values = [task.target(source, s) for s in order]
    if any(v is not None for v in values):
        target = np.concatenate([_aligned(source, s, splits[s].ids, v) for s, v in zip(order, values)])
    absent = skipped_labels(splits["train"], source) if "train" in splits else {}
    return FeatureData(source, splits, target=target, absent=absent)


def _aligned(source, split: str, ids, values) -> np.ndarray:
    """The dataset's per-item ``values`` of ``split`` at the cached rows (images left out are not rows)."""
    where = {str(i): k for k, i in enumerate(source.ids[split])}
    values = np.asarray(values)
    return values[np.asarray([where[str(i)] for i in ids], dtype=np.int64)]


def skipped_labels(train, source) -> dict[str, int]:
    """Id -> label of the train images the cache left out (``--skip-bad``), so the carves see the full list."""
    skipped = list(train.attrs.get("skipped") or [])
    if not skipped:
        return {}
    where = {id_: i for i, id_ in enumerate(source.ids["train"])}
    labels = source.labels["train"]
    return {id_: int(labels[where[id_]]) for id_ in skipped if id_ in where}


def skipped_count(entries) -> int:
    """Images left out as unreadable (``--skip-bad``) over the given cached splits (their ``skipped`` attribute)."""
    return sum(len(entry.attrs.get("skipped") or []) for entry in entries)


def backbone_context(entry) -> dict:
    """The backbone-configuration columns of rows computed on a cached split (:mod:`probe._identity`)."""
    from ._identity import identity_columns

    data_config = dict(entry.attrs.get("data_config") or {})
    if entry.attrs.get("pixels", "pil") != "pil":  # --pixels gpu: another preprocessing, another configuration
        data_config["pixels"] = entry.attrs["pixels"]
    return identity_columns(backbone=entry.backbone, weights=entry.weights, data_config=data_config,
                            precision=str(entry.attrs.get("precision") or "fp32"))


def opened(dataset: Any, data_root=None):
    """An opened dataset: ``dataset`` itself when it is one, else the spec opened (:func:`probe.open_dataset`)."""
    from ._datasets import DatasetSource, open_dataset

    return dataset if isinstance(dataset, DatasetSource) else open_dataset(dataset, data_root=data_root)
