"""Checks made before any work starts, shared by every command and entry point (no heavy imports).

Each raises :class:`probe.UsageError` (or :class:`probe.ProbeError` for a full disk) with one line that names
the problem, the path or flag, and the fix:

- :func:`check_output_dir`: an output folder (``--cache-dir``, ``--results-dir``, ``--out``...) is a folder, or
  can be created, and is writable;
- :func:`check_img_size`: ``--img-size`` is a positive integer;
- :func:`check_free_space` and :func:`disk_full_guard`: enough free space before a write starts, and one clear
  line instead of a traceback when the disk fills up anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from ._errors import ProbeError, UsageError


def check_output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Check that ``path`` can hold outputs: an existing writable folder, or creatable under a writable one.

    Nothing is created: the nearest existing ancestor is probed with a temporary file (which also catches
    read-only file systems, where permission bits say nothing).

    Parameters
    ----------
    path : path
        The output folder.
    flag : str
        The option that named it (``--cache-dir``), used in the error.

    Returns
    -------
    Path
        ``path``, with ``~`` expanded.
    """
    target = Path(path).expanduser()
    probe_dir = target
    while not probe_dir.exists():
        if probe_dir.is_symlink():  # a dangling link: mkdir would fail
            raise UsageError(f"{flag} {path}: {probe_dir} is a broken symbolic link; pass another {flag}")
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        what = "is not a directory" if probe_dir == target else f"cannot be created: {probe_dir} is not a directory"
        raise UsageError(f"{flag} {path} {what}; pass a folder (or a path where one can be created) to {flag}")
    try:
        fd, name = tempfile.mkstemp(prefix=".probe-write-check-", dir=probe_dir)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        where = "" if probe_dir == target else f" (its parent {probe_dir})"
        raise UsageError(f"{flag} {path}{where} is not writable ({reason}); pass a writable folder to {flag}") \
            from None
    os.close(fd)
    os.unlink(name)
    return target


def check_output_dirs(dirs: Mapping[str, str | os.PathLike | None]) -> None:
    """:func:`check_output_dir` for every ``flag -> path`` given (None values are skipped)."""
    for flag, path in dirs.items():
        if path is not None:
            check_output_dir(path, flag)


def check_img_size(value, flag: str = "--img-size") -> int | None:
    """``None`` (the checkpoint's own size) or a positive integer; anything else is a UsageError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) and not _is_integer(value) or int(value) < 1:
        raise UsageError(f"{flag} must be a positive integer (pixels, e.g. 224); got {value!r}. "
                         f"Leave it out to use the checkpoint's own size")
    return int(value)


def _is_integer(value) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, np.integer)


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: sizes for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing ancestor)."""
    p = Path(path).expanduser()
    while not p.exists() and p.parent != p:
        p = p.parent
    return shutil.disk_usage(p).free


def check_free_space(folder: str | os.PathLike, needed: int, what: str, fix: str = "") -> None:
    """Raise a ProbeError before writing when ``folder``'s file system has less than ``needed`` bytes free.

    Parameters
    ----------
    what : str
        What will be written, for the error (``"the cache entry train-1a2b (1,347 rows x 2 taps x float16)"``).
    fix : str
        Extra advice appended to the standard one (free space, or point the flag at a larger disk).
    """
    free = free_bytes(folder)
    if needed > free:
        raise ProbeError(f"not enough free space in {folder}: {what} needs about {format_bytes(needed)}, "
                         f"{format_bytes(free)} free; free some space{fix}")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, or a library's own error around one) means the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)  # h5py, torch and polars wrap the OSError in their own types; their messages keep its text
    return any(m in text for m in ("No space left on device", "errno = 28", "os error 28", "Disk quota exceeded"))


@contextlib.contextmanager
def disk_full_guard(folder: str | os.PathLike, what: str, resume: str) -> Iterator[None]:
    """Turn a full disk inside the block into one ProbeError line naming ``folder``, ``what`` and ``resume``.

    Temporary files are the writers' business (:func:`probe._io.atomic_path` removes its own on any exception).
    """
    try:
        yield
    except ProbeError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise ProbeError(f"no space left in {folder} while writing {what}; free some space and rerun: "
                         f"{resume}") from None
