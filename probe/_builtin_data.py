"""The two built-in datasets' contents (no files, nothing downloaded): scikit-learn's handwritten digits with a
fixed test carve, and ``shapes``, deterministic synthetic images with segmentation and depth targets.

:mod:`probe._datasets` opens them (``digits``, ``shapes``) as :class:`probe._datasets.DatasetSource` objects.
"""

from __future__ import annotations

import numpy as np

DIGITS_VERSION = "digits-v1"
SHAPES_VERSION = "shapes-v1"
DIGITS_CLASSES = [str(c) for c in range(10)]
_DIGITS_TEST_FRACTION = 0.25
SHAPES_CLASSES = ["circle", "cross", "ring", "square", "triangle", "vertical-bar"]
_SHAPES_SPLIT_SIZES = {"train": 360, "val": 120, "test": 240}  # images per split, balanced over 6 classes
SHAPES_SIZE = 48  # pixels, square


def digits_splits() -> tuple[dict, dict, dict]:
    """(sample references, labels, ids) per split of ``digits``: a reference is the 8x8 uint8 image itself."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(20211011)  # fixed forever: part of the built-in split definition
    test = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        test.extend(rng.permutation(members)[: int(round(_DIGITS_TEST_FRACTION * len(members)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    splits, lab, ids = {}, {}, {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        idx = np.flatnonzero(mask)
        # a sample reference is the image itself (8x8 uint8): tiny, picklable, no re-loading in workers
        splits[split] = [(digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8) for i in idx]
        lab[split] = labels[idx]
        ids[split] = [str(i) for i in idx]
    return splits, lab, ids


def digit_image(pixels: np.ndarray):
    """The RGB image of a digit's 8x8 pixels."""
    from PIL import Image

    return Image.fromarray(pixels, mode="L").convert("RGB")


def shapes_splits() -> tuple[dict, dict, dict]:
    """(sample references, labels, ids) per split of ``shapes``: a reference is the sample's index."""
    splits, lab, ids = {}, {}, {}
    offset = 0
    for split, n in _SHAPES_SPLIT_SIZES.items():
        index = np.arange(offset, offset + n)
        offset += n
        splits[split] = [int(i) for i in index]
        lab[split] = (index % len(SHAPES_CLASSES)).astype(np.int64)
        ids[split] = [str(i) for i in index]
    return splits, lab, ids


def shape_sample(index: int, size: int):
    """Deterministic image, segmentation (0 = background, 1 + class) and depth map of shapes sample ``index``."""
    from PIL import Image

    rng = np.random.default_rng([7, index])
    cls = index % len(SHAPES_CLASSES)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    r = rng.uniform(0.18, 0.3)
    dx, dy = xx - cx, yy - cy
    name = SHAPES_CLASSES[cls]
    if name == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif name == "ring":
        d2 = dx**2 + dy**2
        mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    elif name == "square":
        mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif name == "cross":
        w = r * 0.3
        mask = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    elif name == "triangle":
        mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    else:  # vertical-bar
        mask = (np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r * 1.1)
    background = rng.uniform(0, 90, size=3)
    colour = rng.uniform(120, 255, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    img = np.where(mask[..., None], colour, background) + noise
    img = np.clip(img, 0, 255).astype(np.uint8)
    # depth: a tilted background plane (metres), the shape standing closer at its own depth
    depth = (4.0 + 2.0 * yy * rng.uniform(0.5, 1.5)).astype(np.float32)
    depth[mask] = np.float32(rng.uniform(1.0, 3.0))
    seg = np.where(mask, cls + 1, 0).astype(np.int64)
    return Image.fromarray(img, mode="RGB"), seg, depth
