"""Deterministic split helpers shared by the probe sweeps and fine-tuning, so both see identical splits.

Everything here is a pure function of the labels in dataset order, a fraction and a seed: the same call on the
cached features (sweeps) and on the dataset (fine-tuning) selects the same examples.
"""

from __future__ import annotations

import numpy as np

from ._errors import UsageError
from .vocab import DEFAULT_VAL_FRACTION

#: Default part of train held out as val when a dataset has no val split of its own.


def carve_val(labels: np.ndarray, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into (train, val), stratified by class and seeded.

    Each class with n >= 2 examples gives ``round(fraction * n)`` of them to val, clipped to [1, n - 1]; a
    class with a single example stays in train. Both index arrays are sorted (dataset order).
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"val fraction must be in (0, 1); got {fraction}. Use e.g. --val-fraction 0.2")
    rng = np.random.default_rng(seed)
    val_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        n_val = int(np.clip(round(fraction * len(members)), 1, len(members) - 1))
        val_parts.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    train = np.flatnonzero(mask)
    if len(val) == 0:
        raise UsageError("cannot carve a val split: every class has a single training example; "
                         "give the dataset a val split or more examples per class")
    return train, val


def few_shot(labels: np.ndarray, shots: int, seed: int = 0, class_names: list[str] | None = None) -> np.ndarray:
    """Return sorted indices of ``shots`` examples per class drawn (seeded) from ``labels``.

    ``shots <= 0`` means all examples. A class with fewer than ``shots`` examples is an error naming it.
    """
    labels = np.asarray(labels)
    if shots <= 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < shots:
            name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
            raise UsageError(f"class {name!r} has {len(members)} training examples, fewer than shots={shots}; "
                             f"use --shots {len(members)} or fewer")
        picked.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def require_two_classes(labels: np.ndarray, class_names: list[str] | None = None, *, what: str = "a probe",
                        after: str = "the val carve") -> None:
    """Raise the one 'needs at least two classes' error (sweeps and fine-tuning alike) when ``labels`` (train,
    after ``after``) hold fewer than two classes."""
    present = np.unique(np.asarray(labels))
    if len(present) >= 2:
        return
    if len(present) == 0:
        raise UsageError(f"train is empty after {after}; {what} needs at least two classes with examples")
    cls = int(present[0])
    name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else str(cls)
    raise UsageError(f"train has a single class ({name!r}) after {after}; {what} needs at least two classes: "
                     "add images of another class")
