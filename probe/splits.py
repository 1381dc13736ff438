"""Deterministic split helpers shared by the probe sweeps and fine-tuning, so both see identical splits.

A carve is a pure function of the dataset's full list of (id, label) pairs, a fraction and a seed: within each
class, the ids are ranked by a seeded hash of the id, and the first ``round(fraction * n)`` of the ranking
(clipped to [1, n - 1]; a class of one stays in train) are carved off. Because the ranking depends on nothing
but the id, the order of the list does not matter, and leaving an image out (``--skip-bad``) removes that image
and moves no other one: callers pass the left-out ids as ``absent`` so that the quota and the ranking are those of
the full list. The same call on the cached features (sweeps) and on the dataset (fine-tuning) selects the same
images.

When a dataset has no test split, :func:`carve_splits` first carves test (``test_fraction``; seeded by
``test_seed``, fixed by default so that every job, seed and fine-tune of a dataset shares one test set), then
carves val from what remains (``val_fraction``, seeded by the job's seed).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import numpy as np

from ._errors import UsageError
from ._io import file_sha256
from .vocab import DEFAULT_VAL_FRACTION

#: Seed of the test carve (``--test-fraction``): one test set per dataset and fraction, whatever the job's seed.
DEFAULT_TEST_SEED = 0


def _rank_keys(ids: Sequence[str], salt: str, seed: int) -> np.ndarray:
    prefix = f"{salt}\0{int(seed)}\0".encode()
    return np.array([int.from_bytes(hashlib.blake2b(prefix + str(i).encode(), digest_size=8).digest(), "big")
                     for i in ids], dtype=np.uint64)


def _carve_mask(ids: Sequence[str], labels: np.ndarray, fraction: float, seed: int, salt: str) -> np.ndarray:
    """Boolean mask over the (full) list: True for the ids carved off, stratified by label."""
    labels = np.asarray(labels)
    keys = _rank_keys(ids, salt, seed)
    id_text = np.asarray([str(i) for i in ids], dtype=object)
    mask = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        n_carve = int(np.clip(round(fraction * len(members)), 1, len(members) - 1))
        order = sorted(members, key=lambda m: (keys[m], id_text[m]))  # the id breaks (astronomically rare) ties
        mask[order[:n_carve]] = True
    return mask


def _check_fraction(fraction: float, flag: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"{flag.lstrip('-').replace('-', ' ')} must be in (0, 1); got {fraction}. "
                         f"Use e.g. {flag} 0.2")


def carve_splits(labels: np.ndarray, *, ids: Sequence[str] | None = None, absent: Mapping[str, int] | None = None,
                 val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                 test_seed: int = DEFAULT_TEST_SEED) -> dict[str, np.ndarray]:
    """Carve test (optional) and then val (optional) off one labelled list; return sorted row indices per split.

    Parameters
    ----------
    labels : array [n]
        Labels of the rows present.
    ids : sequence of str, optional
        The rows' ids (default: the row positions as text, which makes the carve a function of the order).
    absent : dict id -> label, optional
        Members of the full list that are not rows here (e.g. unreadable images skipped with ``--skip-bad``).
        They take part in the quotas and the ranking, so their absence moves no other row.
    val_fraction, test_fraction : float
        Parts carved off as val and test; 0 carves nothing (that split is absent from the result).
    seed : int
        Seed of the val carve.
    test_seed : int
        Seed of the test carve.

    Returns
    -------
    dict
        ``train`` and, when carved, ``val`` / ``test``: sorted indices into ``labels``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} labels")
    absent = dict(absent or {})
    all_ids = ids + [str(i) for i in absent]
    all_labels = np.concatenate([labels, np.asarray(list(absent.values()), dtype=labels.dtype)])
    remaining = np.ones(len(all_ids), dtype=bool)
    out: dict[str, np.ndarray] = {}
    for split, fraction, split_seed in (("test", test_fraction, test_seed), ("val", val_fraction, seed)):
        if not fraction:
            continue
        _check_fraction(fraction, f"--{split}-fraction")
        rest = np.flatnonzero(remaining)
        mask = _carve_mask([all_ids[i] for i in rest], all_labels[rest], fraction, split_seed, split)
        carved = rest[mask]
        remaining[carved] = False
        out[split] = np.sort(carved[carved < n])
        if len(carved) == 0:
            raise UsageError(f"cannot carve a {split} split: every class has a single example; give the dataset "
                             f"a {split} split or more examples per class")
    out["train"] = np.flatnonzero(remaining[:n])
    return out


def carve_val(labels: np.ndarray, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0, *,
              ids: Sequence[str] | None = None, absent: Mapping[str, int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``labels`` into (train, val), stratified by class and seeded (see :func:`carve_splits`).

    Each class with n >= 2 examples gives ``round(fraction * n)`` of them to val, clipped to [1, n - 1]; a
    class with a single example stays in train. Both index arrays are sorted (dataset order).
    """
    _check_fraction(fraction, "--val-fraction")
    parts = carve_splits(labels, ids=ids, absent=absent, val_fraction=fraction, seed=seed)
    return parts["train"], parts["val"]


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

def check_overlap(source, *, allow: bool = False, cache_dir=None) -> list[tuple[str, str]]:
    """Refuse a dataset whose splits share an image: the same file (path) or identical file content.

    Only file-backed datasets (``imagefolder:``, ``csv:``/``.parquet`` manifests) are checked. Content is
    compared by SHA-256, hashing only files whose size occurs in another split too. A dataset found clean is
    remembered under ``<cache_dir>/.checks/`` by its fingerprint, so the files are hashed once per version.

    Parameters
    ----------
    source : DatasetSource
        An opened dataset (:func:`probe.open_dataset`).
    allow : bool
        Accept overlaps knowingly (``--allow-overlap``): the pairs are returned, nothing is raised.
    cache_dir : path, optional
        Where the "checked and clean" marker is kept.

    Returns
    -------
    list of (str, str)
        The overlapping pairs as ``"<path> (<split>)"`` entries (empty when clean).

    Raises
    ------
    UsageError
        On the first overlap when ``allow`` is False, naming both entries.
    """
    import os
    from pathlib import Path

    if source.kind not in ("imagefolder", "manifest") or len(source.split_names) < 2:
        return []
    marker = None
    if cache_dir is not None:
        marker = Path(cache_dir) / ".checks" / f"no-overlap-{source.fingerprint()[:24]}"
        if marker.is_file():
            return []
    entries = [(split, ref) for split in source.split_names for ref in source.splits[split]]
    name = lambda entry: f"{entry[1]} ({entry[0]})"  # noqa: E731
    found: list[tuple[tuple[str, str], tuple[str, str]]] = []
    seen_path: dict[str, tuple[str, str]] = {}
    for entry in entries:
        where = os.path.realpath(os.path.join(source.root, entry[1]))
        first = seen_path.setdefault(where, entry)
        if first[0] != entry[0]:
            found.append((first, entry))
    by_size: dict[int, list[tuple[str, str]]] = {}
    for entry in entries:
        by_size.setdefault(os.stat(os.path.join(source.root, entry[1])).st_size, []).append(entry)
    for group in by_size.values():
        if len({split for split, _ in group}) < 2:
            continue
        by_hash: dict[str, tuple[str, str]] = {}
        for entry in group:
            first = by_hash.setdefault(file_sha256(os.path.join(source.root, entry[1])), entry)
            if first[0] != entry[0] and (first, entry) not in found:
                found.append((first, entry))
    pairs = [(name(a), name(b)) for a, b in found]
    if pairs and not allow:
        a, b = pairs[0]
        more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
        raise UsageError(f"dataset {source.name!r} has the same image in two splits: {a} and {b}{more}; remove "
                         "the duplicate, or pass --allow-overlap to accept it knowingly")
    if not pairs and marker is not None:
        from ._io import write_text_atomic

        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, "checked: no image in two splits\n")
    return pairs

