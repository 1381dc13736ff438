"""Reading datasets that live outside plain files: torchvision dataset objects and Hugging Face parquet
repositories (downloaded once into the data root). :mod:`probe._datasets` opens them (``torchvision:NAME``,
``hf:REPO``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ProbeError, UsageError

#: Parquet columns read per file, kept for sequential access (one file at a time).
_HF_TABLES: dict[str, Any] = {}


def torchvision_object(name: str, root: str, kwargs: dict):
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    try:
        return cls(**({"root": root} if "root" in init_params(cls) else {}), **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise UsageError(f"torchvision dataset {name} is not under {root} ({exc}); download it there first "
                         f"(e.g. torchvision.datasets.{name}(root={str(root)!r}, download=True) on a machine with "
                         f"internet) and pass --data-root") from None


def init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def torchvision_targets(obj) -> np.ndarray:
    for attr in ("targets", "_labels", "labels", "y", "_samples_labels"):
        value = getattr(obj, attr, None)
        if value is not None and len(value) == len(obj):
            return np.asarray([int(v) for v in value], dtype=np.int64)
    return np.asarray([int(obj[i][1]) for i in range(len(obj))], dtype=np.int64)  # slow path: reads every image


def hf_download(repo: str, local: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo, repo_type="dataset", local_dir=str(local),
                                      allow_patterns=["*.parquet", "*.json", "*.md"]))
    except Exception as exc:
        raise UsageError(f"hf:{repo} is not under {local.parent} and could not be downloaded "
                         f"({exc.__class__.__name__}); put its parquet files in {local} or pass --data-root") from None


def hf_class_names(schema, label_column: str) -> list[str] | None:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][label_column]
        names = feature.get("names")
        return [str(n) for n in names] if names else None
    except (KeyError, TypeError, ValueError):
        return None


def hf_image_bytes(path: str, row: int, column: str) -> bytes:
    import pyarrow.parquet as pq

    # parquet reads whole row groups; a per-file reader cache keeps this cheap for sequential access
    table = _HF_TABLES.get(path)
    if table is None:
        _HF_TABLES.clear()
        table = _HF_TABLES[path] = pq.read_table(path, columns=[column]).column(0)
    value = table[row].as_py()
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            with open(os.path.join(os.path.dirname(path), value["path"]), "rb") as fh:
                return fh.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ProbeError(f"row {row} of {path} has no image bytes in column {column!r}")
