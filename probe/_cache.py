"""The HDF5 feature cache: keys, paths, the reader, listing and verification (contract in DESIGN.md).

A cache entry is one file per (backbone, weights, preprocessing, dataset, split, taps, storage dtype) at
``<cache_dir>/<backbone>/<dataset>/<split>-<key[:12]>.h5``. Only complete files carry that name; an extraction
in progress keeps its finished batches as shard files in ``<final>.parts/`` (see :mod:`probe._extract`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ._errors import UsageError
from ._io import safe_name
from ._version import CACHE_FORMAT

#: Attributes every complete file carries; the JSON-encoded ones are decoded by the reader.
JSON_ATTRS = ("classes", "taps", "data_config", "versions", "skipped", "tap_dtypes")
REQUIRED_ATTRS = ("format", "key", "backbone", "weights", "family", "dataset", "split", "classes", "taps",
                  "data_config", "versions", "skipped", "complete")
_FILE_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<key>[0-9a-f]{12})\.h5$")


def cache_key(material: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of everything that determines an entry's features."""
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **material}, sort_keys=True,
                                     default=str).encode()).hexdigest()


def entry_path(cache_dir: str | os.PathLike, backbone: str, dataset: str, split: str, key: str) -> Path:
    """``<cache_dir>/<backbone>/<dataset>/<split>-<key[:12]>.h5``."""
    return Path(cache_dir) / safe_name(backbone) / safe_name(dataset) / f"{split}-{key[:12]}.h5"


@dataclass
class CacheEntry:
    """A complete cache file for one split.

    Attributes
    ----------
    path : Path
        The HDF5 file.
    key : str
        Full content key (the file name holds its first 12 characters).
    split : str
        train, val or test.
    taps : tuple of str
        Taps stored in the file (may be a superset of those requested).
    rows : int
        Number of samples stored.
    reused : bool
        True when the entry existed before this call (nothing was computed).
    """

    path: Path
    key: str
    split: str
    taps: tuple[str, ...] = ()
    rows: int = 0
    reused: bool = False


@dataclass
class CachedSplit:
    """One split read back from the cache as arrays, with its metadata.

    Attributes
    ----------
    features : dict
        Tap -> array [N, D] (or [N, T, D] for ``patch``) in the stored dtype.
    labels : numpy.ndarray
        int64 [N].
    ids : list of str
        Sample ids, aligned with the rows.
    classes : list of str
        Class names; index = label.
    attrs : dict
        Every root attribute, JSON ones decoded.
    """

    path: Path
    features: dict[str, np.ndarray]
    labels: np.ndarray
    ids: list[str]
    classes: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    key = property(lambda self: self.attrs["key"])
    backbone = property(lambda self: self.attrs["backbone"])
    weights = property(lambda self: self.attrs["weights"])
    family = property(lambda self: self.attrs["family"])
    dataset = property(lambda self: self.attrs["dataset"])
    split = property(lambda self: self.attrs["split"])

    def __len__(self) -> int:
        return len(self.labels)


def read_attrs(h5file) -> dict[str, Any]:
    """Root attributes of an open h5py File, JSON ones decoded and numpy scalars made plain."""
    attrs = {}
    for name, value in h5file.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if name in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[name] = value
    return attrs


def load_split(entry: CacheEntry | str | os.PathLike, taps: Iterable[str] | None = None) -> CachedSplit:
    """Read a cached split (a :class:`CacheEntry` or a path) into memory.

    Parameters
    ----------
    taps : iterable of str, optional
        Taps to read; default all stored taps. A tap not in the file is a UsageError naming those it has.
    """
    import h5py

    path = Path(entry.path if isinstance(entry, CacheEntry) else entry)
    if not path.is_file():
        raise UsageError(f"cache file {path} does not exist; run 'probe extract-features' first")
    with h5py.File(path, "r") as f:
        attrs = read_attrs(f)
        if not attrs.get("complete"):
            raise UsageError(f"cache file {path} is incomplete; rerun the extraction to finish it")
        stored = list(f["features"].keys())
        wanted = list(taps) if taps is not None else stored
        missing = [t for t in wanted if t not in stored]
        if missing:
            raise UsageError(f"cache file {path} has no tap(s) {missing}; it has {stored}")
        features = {t: f["features"][t][()] for t in wanted}
        labels = f["labels"][()].astype(np.int64)
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
    return CachedSplit(path=path, features=features, labels=labels, ids=ids, classes=list(attrs["classes"]),
                       attrs=attrs)


def entry_lock_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """The job lock that an extraction of ``key`` holds while it writes (``<cache_dir>/.locks/<key[:24]>.lock``)."""
    return Path(cache_dir) / ".locks" / f"{key[:24]}.lock"


def entry_lock(cache_dir: str | os.PathLike, key: str, *, wait: bool, **kwargs):
    """A :class:`probe._runtime.ProcessLock` on an entry's job lock (extraction, removal)."""
    from ._runtime import ProcessLock

    return ProcessLock(entry_lock_path(cache_dir, key), wait=wait, **kwargs)


def entry_busy(cache_dir: str | os.PathLike, key: str) -> bool:
    """Whether another process holds the entry's job lock now (it is being written)."""
    if not key or not entry_lock_path(cache_dir, key).exists():
        return False
    try:
        with entry_lock(cache_dir, key, wait=False):
            return False
    except UsageError:
        return True


def find_entries(cache_dir: str | os.PathLike) -> list[Path]:
    """Every complete-named ``*.h5`` file under ``cache_dir``."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.h5") if _FILE_RE.match(p.name))


def list_cache(cache_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One dict per complete entry: backbone, weights, dataset, split, taps, rows, size (bytes), key, path.

    Extractions in progress (``*.parts`` folders) are listed with ``split`` suffixed ``(partial)``.
    """
    import h5py

    rows = []
    for path in find_entries(cache_dir):
        try:
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
                n = int(f["labels"].shape[0])
        except Exception as exc:
            rows.append({"backbone": "?", "weights": "?", "dataset": "?", "split": path.name, "taps": [],
                         "rows": 0, "size": path.stat().st_size, "key": f"unreadable: {exc.__class__.__name__}",
                         "path": str(path), "full_key": "", "partial": False, "mtime": path.stat().st_mtime,
                         "skipped": []})
            continue
        rows.append({"backbone": attrs.get("backbone"), "weights": attrs.get("weights"),
                     "dataset": attrs.get("dataset"), "split": attrs.get("split"), "taps": attrs.get("taps"),
                     "rows": n, "size": path.stat().st_size, "key": attrs.get("key", "")[:12], "path": str(path),
                     "full_key": attrs.get("key", ""), "partial": False, "mtime": path.stat().st_mtime,
                     "skipped": list(attrs.get("skipped") or [])})
    for parts in sorted(Path(cache_dir).rglob("*.h5.parts")) if Path(cache_dir).is_dir() else []:
        meta = _read_json(parts / "meta.json")
        done = sum(int(m.group(2)) - int(m.group(1)) for m in
                   (re.match(r"rows-(\d+)-(\d+)\.npz$", p.name) for p in parts.iterdir()) if m)
        files = list(parts.iterdir())
        rows.append({"backbone": meta.get("backbone", "?"), "weights": meta.get("weights", "?"),
                     "dataset": meta.get("dataset", "?"), "split": f"{meta.get('split', '?')} (partial)",
                     "taps": meta.get("taps", []), "rows": done, "size": sum(p.stat().st_size for p in files),
                     "key": meta.get("key", "")[:12], "path": str(parts), "full_key": meta.get("key", ""),
                     "partial": True, "mtime": max([parts.stat().st_mtime] + [p.stat().st_mtime for p in files]),
                     "skipped": []})
    return rows


def skipped_images(cache_dir: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Images left out with ``--skip-bad``, per complete entry: key -> backbone, dataset, split, skipped ids.

    ``keys`` (full keys or prefixes, e.g. the ``cache_key`` column of results) limits the answer to those
    entries; entries that skipped nothing are included with an empty list, so a reader can tell "none skipped"
    from "entry not found".
    """
    wanted = None if keys is None else [str(k) for k in keys if k and k != "-"]
    out = {}
    for row in list_cache(cache_dir):
        if row["partial"] or not row["full_key"]:
            continue
        if wanted is not None and not any(row["full_key"].startswith(k) for k in wanted):
            continue
        out[row["full_key"]] = {"backbone": row["backbone"], "dataset": row["dataset"], "split": row["split"],
                                "skipped": row["skipped"]}
    return out


def select_entries(cache_dir: str | os.PathLike, *, backbone: str | None = None, dataset: str | None = None,
                   split: str | None = None, key: str | None = None, partial: bool | None = None,
                   older_than_days: float | None = None) -> list[dict[str, Any]]:
    """The :func:`list_cache` rows that match every filter given (``backbone``/``dataset`` accept shell
    wildcards; ``key`` is a prefix; ``older_than_days`` compares the newest modification time)."""
    import fnmatch
    import time as _time

    out = []
    now = _time.time()
    for row in list_cache(cache_dir):
        plain_split = str(row["split"]).removesuffix(" (partial)")
        if backbone is not None and not fnmatch.fnmatchcase(str(row["backbone"]), backbone):
            continue
        if dataset is not None and not fnmatch.fnmatchcase(str(row["dataset"]), dataset):
            continue
        if split is not None and plain_split != split:
            continue
        if key is not None and not (row["full_key"] or row["key"]).startswith(key):
            continue
        if partial is not None and row["partial"] != partial:
            continue
        if older_than_days is not None and now - row["mtime"] < older_than_days * 86400:
            continue
        out.append(row)
    return out


def remove_entry(cache_dir: str | os.PathLike, row: dict[str, Any]) -> bool:
    """Remove one entry (a complete file or a partial ``.parts`` folder, with its stale temporary files) under
    its job lock. Returns False, removing nothing, when another process holds the lock (it is writing it)."""
    import shutil

    path = Path(row["path"])
    key = row.get("full_key") or ""
    lock = entry_lock(cache_dir, key, wait=False) if key else None
    if lock is not None:
        try:
            lock.acquire()
        except UsageError:
            return False
    try:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        final = path.with_name(path.name.removesuffix(".parts"))
        for stale in final.parent.glob(final.name + ".tmp*"):  # a finalisation killed midway
            stale.unlink(missing_ok=True)
    finally:
        if lock is not None:
            lock.release()
    return True


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def verify_entry(path: str | os.PathLike) -> list[str]:
    """Problems found in one cache file (empty when it honours the contract)."""
    import h5py

    path = Path(path)
    problems = []
    m = _FILE_RE.match(path.name)
    try:
        with h5py.File(path, "r") as f:
            attrs = read_attrs(f)
            missing = [a for a in REQUIRED_ATTRS if a not in attrs]
            if missing:
                return [f"missing attributes {missing}"]
            if attrs["format"] != CACHE_FORMAT:
                problems.append(f"format {attrs['format']} is not the current {CACHE_FORMAT}; re-extract")
            if not attrs["complete"]:
                problems.append("not marked complete")
            if m is None or not attrs["key"].startswith(m.group("key")) or m.group("split") != attrs["split"]:
                problems.append("file name does not match its key and split attributes")
            n = f["labels"].shape[0]
            if f["ids"].shape[0] != n:
                problems.append(f"ids has {f['ids'].shape[0]} rows, labels {n}")
            labels = f["labels"][()]
            if n and (labels.min() < 0 or labels.max() >= len(attrs["classes"])):
                problems.append("labels outside the range of classes")
            stored = sorted(f["features"].keys())
            if sorted(attrs["taps"]) != stored:
                problems.append(f"taps attribute {attrs['taps']} does not match stored features {stored}")
            for tap in stored:
                ds = f["features"][tap]
                if ds.shape[0] != n:
                    problems.append(f"features/{tap} has {ds.shape[0]} rows, labels {n}")
                    continue
                for start in range(0, n, 4096):  # chunked: verification must not load a whole tap
                    if not np.isfinite(ds[start:start + 4096]).all():
                        problems.append(f"features/{tap} has non-finite values")
                        break
    except OSError as exc:
        return [f"unreadable HDF5 ({exc})"]
    return problems


def verify_cache(cache_dir: str | os.PathLike) -> dict[str, list[str]]:
    """Verify every entry under ``cache_dir``; returns path -> problems for the entries that have any."""
    return {str(p): probs for p in find_entries(cache_dir) if (probs := verify_entry(p))}
