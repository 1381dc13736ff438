"""Helpers shared by the tests: a CLI runner (real subprocesses, or in-process for quick checks), the one-line
error check, and small image folders made in the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def run_cli(*args, env=None, timeout=300, cwd=None, check=None) -> subprocess.CompletedProcess:
    """Run ``python -m probe ARGS`` in a subprocess and return the completed process (text output)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "probe", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
    if check is not None and proc.returncode != check:
        raise AssertionError(f"exit {proc.returncode} != {check}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """Run the CLI in this process (``probe.cli.main``), for the many quick checks; subprocess tests cover the rest."""
    from probe.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with ``code``, printed no traceback, and its error line mentions every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("probe: error:") or ": error:" in ln]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_image_folder(root: Path, *, classes=("cat", "dog"), per_class=6, splits=("train", "test"), size=20,
                       seed=0) -> Path:
    """Write a small ``root/<split>/<class>/img_<i>.png`` dataset of class-dependent colour images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.array([200 * (c == 0), 200 * (c == 1), 100], dtype=float)
                img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"img_{i}.png")
    return root


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header declares ``width`` x ``height`` RGB pixels (a decompression bomb's header; the
    pixels themselves are never written, so nothing that size is allocated)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
