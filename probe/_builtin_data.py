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


def shape_sample(index: int, size: int, *, texture: bool = False):
    """Deterministic image, segmentation (0 = background, 1 + class) and depth map of shapes sample ``index``.

    ``texture``: the texture-shifted image of ``shapes-texture`` (the same shape, mask and depth; the shape filled
    with stripes and the background with a checkerboard, in the sample's own colours) instead of flat colours.
    """
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
    if texture:
        trng = np.random.default_rng([11, index])  # the clean image's draws above stay as they were
        period = trng.uniform(0.08, 0.16)
        angle = trng.uniform(0, np.pi)
        stripes = (np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0)[..., None]
        cells = int(trng.integers(3, 7))
        checker = (((xx * cells).astype(int) + (yy * cells).astype(int)) % 2 == 0)[..., None]
        fill = np.where(stripes, colour, 0.45 * colour)
        back = np.where(checker, background, background + trng.uniform(40, 90))
        img = np.where(mask[..., None], fill, back) + noise
    else:
        img = np.where(mask[..., None], colour, background) + noise
    img = np.clip(img, 0, 255).astype(np.uint8)
    # depth: a tilted background plane (metres), the shape standing closer at its own depth
    depth = (4.0 + 2.0 * yy * rng.uniform(0.5, 1.5)).astype(np.float32)
    depth[mask] = np.float32(rng.uniform(1.0, 3.0))
    seg = np.where(mask, cls + 1, 0).astype(np.int64)
    return Image.fromarray(img, mode="RGB"), seg, depth


# ---------------------------------------------------------------------------------------------------- shifted sets
# Offline distribution shifts of the built-ins, scored by probes and fine-tunes selected on the clean sets
# (``eval_on``): a corrupted copy of digits' test split in the manner of ImageNet-C (Hendrycks & Dietterich 2019)
# and shapes' test images with textures in place of flat colours. Both keep the clean set's ids, so an image and
# its shifted copy share an id.

DIGITS_C_VERSION = "digits-c-v1"
SHAPES_TEXTURE_VERSION = "shapes-texture-v1"
#: Corruption name -> its strength at severity 1..5 (unit in the comment of each).
DIGITS_CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # noise sd, fraction of the 0..255 range
    "blur": (0.4, 0.55, 0.7, 0.9, 1.2),  # gaussian blur sd, pixels of the 8x8 image
    "contrast": (0.4, 0.3, 0.2, 0.12, 0.06),  # contrast kept around the image mean
    "rotation": (10.0, 20.0, 30.0, 45.0, 60.0),  # degrees, direction drawn per image
    "invert": (0.55, 0.65, 0.75, 0.85, 1.0),  # weight of the inverted image in the blend
    "jpeg": (30.0, 20.0, 15.0, 10.0, 7.0),  # JPEG quality of the 8x8 image
}
_CORRUPTION_SEED = 20261207  # fixed forever: part of digits-c's definition


def corrupt_digit(pixels: np.ndarray, corruption: str, severity: int, image_id: str) -> np.ndarray:
    """The 8x8 uint8 digit ``pixels`` with ``corruption`` at ``severity`` (1..5) applied, deterministically: the
    random parts (noise, rotation direction) are seeded by the corruption, the severity and the image's id."""
    from scipy import ndimage

    names = list(DIGITS_CORRUPTIONS)
    strength = DIGITS_CORRUPTIONS[corruption][int(severity) - 1]
    rng = np.random.default_rng([_CORRUPTION_SEED, names.index(corruption), int(severity), int(image_id)])
    x = pixels.astype(np.float64)
    if corruption == "gaussian_noise":
        x = x + rng.normal(0.0, strength * 255.0, size=x.shape)
    elif corruption == "blur":
        x = ndimage.gaussian_filter(x, sigma=strength, mode="nearest")
    elif corruption == "contrast":
        x = (x - x.mean()) * strength + x.mean()
    elif corruption == "rotation":
        x = ndimage.rotate(x, strength * rng.choice([-1.0, 1.0]), reshape=False, order=1, mode="constant")
    elif corruption == "invert":
        x = (1.0 - strength) * x + strength * (255.0 - x)
    elif corruption == "jpeg":
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=int(strength))
        x = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float64)
    else:  # the spec's parser refuses unknown names first
        raise AssertionError(corruption)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def digits_c_splits(corruption: str, severity: int) -> tuple[dict, dict, dict]:
    """(sample references, labels, ids) of ``digits-c``: digits' test split only, every image corrupted."""
    splits, labels, ids = digits_splits()
    images = [corrupt_digit(p, corruption, severity, i) for p, i in zip(splits["test"], ids["test"])]
    return {"test": images}, {"test": labels["test"]}, {"test": ids["test"]}


def shapes_texture_splits() -> tuple[dict, dict, dict]:
    """(sample references, labels, ids) of ``shapes-texture``: the test images of ``shapes`` (same ids, same
    geometry), drawn with textures (:func:`shape_sample` with ``texture=True``)."""
    splits, labels, ids = shapes_splits()
    return {"test": splits["test"]}, {"test": labels["test"]}, {"test": ids["test"]}
