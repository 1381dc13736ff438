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


def carve_splits(labels: np.ndarray | None, *, ids: Sequence[str] | None = None,
                 absent: Mapping[str, int] | None = None, val_fraction: float = 0.0, test_fraction: float = 0.0,
                 seed: int = 0, test_seed: int = DEFAULT_TEST_SEED, stratify: bool = True,
                 groups: Sequence | None = None) -> dict[str, np.ndarray]:
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
    stratify : bool
        Carve val within each class (the tasks whose probes learn classes, :attr:`probe.tasks.Task.stratified`).
        False (a continuous target): val is carved from the ranking of the ids alone, or of ``groups``.
    groups : sequence, optional
        Group of each row (a person), with ``stratify=False``: each carve takes whole groups, no group is in two
        parts (:func:`carve_groups`).

    Both sides of a comparison call this one function: the frozen sweeps (:mod:`probe._fit`, the tasks' jobs) and
    fine-tuning (:func:`probe._finetune.plan_splits`), so both select on the same val images.

    Returns
    -------
    dict
        ``train`` and, when carved, ``val`` / ``test``: sorted indices into ``labels``.
    """
    if labels is None:
        if ids is None:
            raise ValueError("carve_splits needs labels or ids")
        labels = np.zeros(len(ids), dtype=np.int64)
    labels = np.asarray(labels)
    n = len(labels)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} labels")
    if not stratify:  # a continuous target: test, then val, by the ranking of ids (or groups) alone
        if absent:
            raise ValueError("an unstratified carve takes no absent ids")
        rest, out = np.arange(n), {}
        for split, fraction, split_seed in (("test", test_fraction, test_seed), ("val", val_fraction, seed)):
            if fraction:
                _check_fraction(fraction, f"--{split}-fraction")
                keep, carved = _carve_units([ids[i] for i in rest], fraction=fraction, seed=split_seed,
                                            groups=None if groups is None else np.asarray(groups)[rest],
                                            salt="val-group" if split == "val" else "test-group")
                out[split], rest = rest[carved], rest[keep]
        out["train"] = rest
        return out
    if groups is not None:
        raise ValueError("groups are carved without stratification (stratify=False)")
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


# ---------------------------------------------------------------------------------------------------- groups


def _carve_units(ids: Sequence[str], *, fraction: float, seed: int, groups=None,
                 salt: str = "val-group") -> tuple[np.ndarray, np.ndarray]:
    """(train, val) rows by a seeded hash ranking of their groups (of each id without groups): the first
    ``round(fraction * n_groups)`` groups (clipped to [1, n_groups - 1]) go to val; no group is in both."""
    names = np.asarray([str(i) for i in ids] if groups is None else [str(g) for g in groups])
    unique = np.unique(names)
    if len(unique) < 2:
        raise UsageError("cannot carve a val part: the training rows hold a single group; use more people or "
                         "items")
    n_val = int(np.clip(round(fraction * len(unique)), 1, len(unique) - 1))
    keys = _rank_keys(list(unique), salt, seed)
    val_names = unique[np.lexsort((unique, keys))][:n_val]
    is_val = np.isin(names, val_names)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def carve_groups(ids: Sequence[str], *, fraction: float, seed: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into (train, val) by a seeded hash ranking of their groups (of each id without groups).

    The unstratified carve of :func:`carve_splits` (``stratify=False``): ``round(fraction * n_groups)`` groups
    (clipped to [1, n_groups - 1]) go to val; no group is in both.
    """
    parts = carve_splits(None, ids=[str(i) for i in ids], val_fraction=fraction, seed=seed, stratify=False,
                         groups=groups)
    return parts["train"], parts["val"]


# ---------------------------------------------------------------------------------------------------- folds


def cv_folds(ids: Sequence[str], *, k: int, seed: int = 0, labels=None,
             groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds as ``(train_rows, test_rows)`` pairs of sorted indices; every item is tested exactly once.

    Parameters
    ----------
    ids : sequence of str
        Item ids (the ranking hashes them, so the folds do not depend on the order of the list).
    k : int
        Number of folds, at least 2; with ``groups``, at most the number of groups (K = groups: leave one out).
    seed : int
        Seed of the ranking.
    labels : array [n], optional
        Class labels: each class is dealt over the folds on its own (stratified). Ignored with ``groups``.
    groups : array [n], optional
        Group of each item (a person): a group's items are always in the same fold.
    """
    ids = [str(i) for i in ids]
    n = len(ids)
    k = int(k)
    if k < 2:
        raise UsageError(f"--cv must be at least 2 folds; got {k}")
    fold = np.empty(n, dtype=np.int64)
    if groups is not None:
        groups = np.asarray(groups)
        names, inverse = np.unique(groups.astype(str), return_inverse=True)
        if k > len(names):
            raise UsageError(f"--cv {k} asks for more folds than there are groups ({len(names)} people); use "
                             f"--cv {len(names)} for leave-one-person-out")
        if k == len(names):
            order = np.arange(len(names))  # leave one group out, in name order
        else:
            keys = _rank_keys(list(names), "cv-group", seed)
            order = np.empty(len(names), dtype=np.int64)
            order[np.argsort(keys, kind="stable")] = np.arange(len(names))
        fold = order[inverse] % k
    else:
        if n < k:
            raise UsageError(f"--cv {k} asks for more folds than there are items ({n})")
        keys = _rank_keys(ids, "cv", seed)
        strata = np.zeros(n, dtype=np.int64) if labels is None else np.unique(np.asarray(labels),
                                                                               return_inverse=True)[1]
        offset = 0
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            ranked = members[np.lexsort((np.asarray(ids, dtype=object)[members].astype(str), keys[members]))]
            fold[ranked] = (offset + np.arange(len(ranked))) % k
            offset += len(ranked)  # the next class starts where this one stopped: fold sizes stay balanced
    out = []
    for i in range(k):
        test = np.flatnonzero(fold == i)
        if len(test):
            out.append((np.flatnonzero(fold != i), test))
    return out


def check_fold_classes(folds, labels, *, class_names: Sequence[str] | None = None, grouped_by: str | None = None,
                       task: str = "classification") -> None:
    """Refuse folds that hold out a class with no training example (a probe that learns classes cannot predict
    it: the fold would score 0 and report it as a result). One line naming the class, the fold and the fix."""
    labels = np.asarray(labels)
    for i, (tr, te) in enumerate(folds):
        missing = np.setdiff1d(np.unique(labels[te]), np.unique(labels[tr]))
        if len(missing):
            cls = missing[0]
            name = (class_names[int(cls)] if class_names is not None and isinstance(cls, (int, np.integer))
                    and 0 <= int(cls) < len(class_names) else str(cls))
            how = (f"--cv-group {grouped_by} keeps every item of a group in one fold" if grouped_by else
                   "the class has fewer items than folds")
            fix = ("drop --cv-group (the group is the label: each class would only ever be tested, never learned)"
                   if grouped_by else "use fewer folds (--cv) or more items of that class")
            raise UsageError(f"--task {task}: fold {i} tests class {name!r} ({len(missing)} class(es) in all) with "
                             f"no training example, because {how}; {fix}")


def source_carve_groups(source, split: str, ids) -> np.ndarray | None:
    """The groups a dataset's val carve must keep whole (NYUv2's scenes), for ``ids`` of ``split``; None when the
    dataset declares none (``options["carve_groups"]``: split -> one group per image of ``source.ids[split]``).

    The frozen dense sweeps and fine-tuning both pass them to :func:`carve_splits` (``stratify=False``), so both
    carve the same whole scenes.
    """
    groups = (getattr(source, "options", None) or {}).get("carve_groups")
    if not groups or split not in groups:
        return None
    def text(i):
        return i.decode() if isinstance(i, bytes) else str(i)

    where = dict(zip((text(i) for i in source.ids[split]), groups[split]))
    return np.asarray([where[text(i)] for i in ids], dtype=str)
