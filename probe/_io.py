"""Small file helpers used everywhere: atomic writes and file names a person can read."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` (``os.replace``).

    Readers never see a half-written file: on any exception the temporary file is removed and ``path`` is left
    as it was. ``suffix`` is appended to the temporary name for writers that insist on an extension
    (``np.savez`` adds ``.npz`` otherwise).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_npz_atomic(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` to ``path`` atomically; returns the path."""
    import numpy as np

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def safe_name(name: str) -> str:
    """A path component a person can read: anything but ``[A-Za-z0-9._+=-]`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", str(name)).strip("_") or "_"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (streamed; remembered per path, size and mtime, so a checkpoint is read once)."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
