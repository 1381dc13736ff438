"""Read any image file into an 8-bit RGB PIL image, the way a person would expect to see it.

Handles grayscale, palette (with transparency), RGBA/LA (composited on white), CMYK, 16-bit and 32-bit integer
images (scaled to 8 bits by the type's range, never clipped), float images, and EXIF orientation.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from ._errors import ProbeError

#: Most pixels (width x height) an image may declare: PIL's own default, 2**30 // 4 // 3 (about 89.5 million, a
#: 0.25 GiB RGB image), kept here on purpose. A header that declares more (a decompression bomb, or a corrupt size)
#: makes a bad image, refused before decoding, instead of an out-of-memory crash. It holds even where PIL's global
#: ``Image.MAX_IMAGE_PIXELS`` was raised or switched off; a lower PIL limit still applies.
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3

#: File extensions read as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm", ".jfif", ".jpe", ".tga", ".ico"})


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose extension (any case) is an image extension."""
    name = os.path.basename(str(path))
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def load_image(source, *, name: str | None = None):
    """Open ``source`` (a path, bytes or a PIL image) and return an RGB ``PIL.Image`` with 8 bits per channel.

    Raises :class:`probe.ProbeError` naming the file when it cannot be decoded (unreadable or truncated) or when
    its header declares more than :data:`MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    from PIL import Image, ImageOps

    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory image>")
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            with warnings.catch_warnings():
                # PIL warns (below twice its limit) rather than refusing, then decodes: here that is a bad image.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
            if img.width * img.height > MAX_IMAGE_PIXELS:
                img.close()
                raise ProbeError(f"cannot read image {label}: its header declares {img.width}x{img.height} pixels, "
                                 f"more than the {MAX_IMAGE_PIXELS} read at most (a decompression bomb?); fix or "
                                 "remove the file, or pass --skip-bad to skip unreadable images")
            img.load()  # decode now, so truncated files fail here and not later in a worker
        img = ImageOps.exif_transpose(img)
        return to_rgb8(img)
    except ProbeError:
        raise
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise ProbeError(f"cannot read image {label}: {exc.__class__.__name__}: {str(exc).rstrip('.')}; fix or remove the file, "
                         f"or pass --skip-bad to skip unreadable images") from None


def to_rgb8(img):
    """Convert a PIL image of any mode to 8-bit RGB (see module docstring for the rules)."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
            scaled = arr.astype(np.float64) / 65535.0  # 16-bit range -> [0, 1], the full range kept
        else:  # float, or 32-bit integers beyond 16 bits: [0, 1] floats stay, anything else by its own range
            arr = arr.astype(np.float64)
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scaled = arr if (mode == "F" and lo >= 0.0 and hi <= 1.0) else (arr - lo) / max(hi - lo, 1e-12)
        gray = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def visible_dirs(path: Path) -> list[Path]:
    """The sub-folders of ``path`` that are not hidden, sorted by name."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def images_under(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (hidden folders skipped), in a sorted walk."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f))
    return found
