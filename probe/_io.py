"""Small file helpers used everywhere: atomic writes and file names a person can read."""

from __future__ import annotations

import contextlib
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
