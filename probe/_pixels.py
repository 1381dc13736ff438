"""The tensor pixel path (``--pixels gpu``): JPEG bytes decoded by torchvision, resized and cropped as tensor ops.

The PIL path (``--pixels pil``, the default) decodes and resizes every image with PIL in the loader workers, through
timm's eval transform. The tensor path does the same steps with torch:

1. a loader worker reads the file's bytes and looks at its header only (PIL's lazy ``Image.open``). An 8-bit RGB or
   grayscale JPEG without an EXIF rotation, within :data:`probe._images.MAX_IMAGE_PIXELS`, travels as its bytes;
   anything else (PNG, palette, CMYK, 16-bit, rotated, a dataset that is not files) falls back, image by image, to
   the PIL path's pixels, so every image gets an answer and a bad one the PIL path's error;
2. :func:`torchvision.io.decode_jpeg` decodes the JPEGs, batched on a GPU (nvJPEG) or image by image on the CPU
   (libjpeg-turbo, in the loader workers); a JPEG that torchvision cannot decode goes to the PIL path too;
3. resize, crop and normalisation follow the checkpoint's own data config with timm's eval geometry
   (:func:`eval_geometry`: ``crop_pct``, ``crop_mode`` center / squash / border, non-square inputs): resized with
   ``torch.nn.functional.interpolate`` (antialiased bilinear or bicubic, whose bicubic kernel is PIL's, a = -0.5),
   rounded and clamped to 8-bit values as PIL's resize does, then cropped (and padded) and normalised with the
   config's mean and std.

The two paths agree to rounding, not bit for bit (different IDCT and chroma upsampling, float vs 8-bit passes in the
resize); tests/test_pixels.py states the agreement on CPU. So the path is part of the preprocessing identity in the
cache key (:func:`pixel_identity`): entries of the two paths never mix.

Decode once for many backbones (``--reuse-pixels``): :class:`PixelStore` keeps a split's 8-bit pixels, as either path
makes them in the loader workers, in a memory-mapped file that :class:`StoredImages` reads for every later backbone
whose pixels come out the same (:func:`pixel_store_path`); normalisation stays per backbone, on the batch.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

from ._errors import ProbeError, UsageError

#: The pixel paths ``--pixels`` chooses from.
PIXEL_PATHS = ("pil", "gpu")
#: The default on every device until a lent GPU measures the tensor path (README, "On a GPU").
DEFAULT_PIXELS = "pil"
_INTERPOLATIONS = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
_CROP_MODES = ("center", "squash", "border")


def check_pixels(pixels: str | None) -> str:
    """The pixel path a request names (``None`` -> :data:`DEFAULT_PIXELS`), or a UsageError naming the choices."""
    pixels = DEFAULT_PIXELS if pixels is None else pixels
    if pixels not in PIXEL_PATHS:
        raise UsageError(f"--pixels must be one of {', '.join(PIXEL_PATHS)}; got {pixels!r}")
    return pixels


def pixel_identity(pixels: str, device_type: str) -> dict | None:
    """What the pixel path adds to an entry's cache key: ``None`` for PIL (keys made before the flag stay valid),
    else the path and the JPEG decoder (nvJPEG on CUDA, libjpeg-turbo on the CPU: they differ by rounding)."""
    if pixels == "pil":
        return None
    return {"path": pixels, "decoder": "nvjpeg" if device_type == "cuda" else "libjpeg"}


def check_data_config(data_config: dict, backbone: str) -> None:
    """A UsageError when the tensor path cannot reproduce ``data_config``'s eval transform (say which, and the fix)."""
    interp = data_config.get("interpolation", "bilinear")
    mode = data_config.get("crop_mode") or "center"
    if interp not in _INTERPOLATIONS:
        raise UsageError(f"--pixels gpu resizes with bilinear, bicubic or nearest interpolation; backbone {backbone} "
                         f"uses {interp!r}: use --pixels pil")
    if mode not in _CROP_MODES:
        raise UsageError(f"--pixels gpu crops in modes {', '.join(_CROP_MODES)}; backbone {backbone} uses crop mode "
                         f"{mode!r}: use --pixels pil")
    if data_config.get("crop_border_pixels"):
        raise UsageError(f"--pixels gpu does not trim borders (crop_border_pixels of {backbone}); use --pixels pil")


@dataclass(frozen=True)
class Geometry:
    """Where one image of ``height`` x ``width`` pixels goes in timm's eval transform.

    Attributes
    ----------
    resize : tuple of int
        (height, width) after the resize step (the input size when no resize happens).
    pad : tuple of int
        (left, top, right, bottom) padding of the resized image before the crop (zeros unless it is smaller).
    box : tuple of int
        (top, left, height, width) of the crop in the padded, resized image.
    fill : tuple of int
        Pad value per channel (8-bit).
    """

    resize: tuple[int, int]
    pad: tuple[int, int, int, int]
    box: tuple[int, int, int, int]
    fill: tuple[int, int, int] = (0, 0, 0)


def eval_geometry(height: int, width: int, data_config: dict) -> Geometry:
    """The resize size, padding and crop box that timm's eval transform (``create_transform(**data_config,
    is_training=False)``) gives an image of ``height`` x ``width`` pixels (torchvision's integer rules)."""
    _, th, tw = (int(v) for v in data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or 0.875
    mode = data_config.get("crop_mode") or "center"
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    fill = (0, 0, 0)
    if mode == "squash":
        size = (sh, sw)
    elif mode == "border":  # ResizeKeepRatio(longest=1), then CenterCropOrPad filled with the mean colour
        ratio = max(height / sh, width / sw)
        size = (round(height / ratio), round(width / ratio))
        fill = tuple(round(255 * v) for v in data_config.get("mean", (0, 0, 0)))
    elif sh == sw:  # torchvision Resize(int): the shorter side to sh, the longer one truncated
        if width <= height:
            size = (int(sh * height / width), sh)
        else:
            size = (sh, int(sh * width / height))
    else:  # ResizeKeepRatio(longest=0): the side closer to its target decides
        ratio = min(height / sh, width / sw)
        size = (round(height / ratio), round(width / ratio))
    h, w = size
    pad = ((tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0,
           (tw - w + 1) // 2 if tw > w else 0, (th - h + 1) // 2 if th > h else 0)
    ph, pw = h + pad[1] + pad[3], w + pad[0] + pad[2]
    box = (int(round((ph - th) / 2.0)), int(round((pw - tw) / 2.0)), th, tw)
    return Geometry(resize=size, pad=pad, box=box, fill=fill)


def resize_crop(images, data_config: dict):
    """Decoded images (a list of uint8 [3, H, W] tensors, any sizes, one device) -> uint8 [N, 3, h, w] through timm's
    eval geometry: images of the same size are resized together, with values rounded and clamped to 8 bits."""
    import torch
    import torch.nn.functional as F

    interp = _INTERPOLATIONS[data_config.get("interpolation", "bilinear")]
    _, th, tw = (int(v) for v in data_config["input_size"])
    out = torch.empty((len(images), 3, th, tw), dtype=torch.uint8, device=images[0].device if images else "cpu")
    groups: dict[tuple[int, int], list[int]] = {}
    for j, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(j)
    for (h, w), members in groups.items():
        geo = eval_geometry(h, w, data_config)
        x = torch.stack([images[j] for j in members])
        if geo.resize != (h, w):
            x = F.interpolate(x.float(), size=geo.resize, mode=interp, antialias=interp != "nearest-exact",
                              **({} if interp == "nearest-exact" else {"align_corners": False}))
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        if any(geo.pad):
            left, top, right, bottom = geo.pad
            padded = torch.empty((*x.shape[:2], x.shape[2] + top + bottom, x.shape[3] + left + right),
                                 dtype=x.dtype, device=x.device)
            padded[:] = torch.tensor(geo.fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            padded[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
            x = padded
        top, left, ch, cw = geo.box
        out[members] = x[:, :, top:top + ch, left:left + cw]
    return out


def jpeg_bytes(source, split: str, index: int):
    """The file bytes of sample ``index`` as a uint8 tensor when the tensor path can decode it (an 8-bit RGB or gray
    JPEG, upright, within the pixel limit), else None (the PIL path takes it)."""
    import numpy as np
    import torch
    from PIL import Image

    from ._datasets import FILE_KINDS_ON_DISK
    from ._hub_data import hf_image_bytes
    from ._images import MAX_IMAGE_PIXELS

    ref = source.splits[split][index]
    try:
        if source.kind in FILE_KINDS_ON_DISK:
            with open(os.path.join(source.root, ref), "rb") as f:
                data = f.read()
        elif source.kind == "hf":
            data = hf_image_bytes(ref[0], ref[1], source.options["image_column"])
            if not isinstance(data, (bytes, bytearray)):
                return None
        else:
            return None
        if data[:3] != b"\xff\xd8\xff":
            return None
        with Image.open(io.BytesIO(data)) as img:  # the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > MAX_IMAGE_PIXELS:
                return None
            if img.getexif().get(0x0112, 1) != 1:  # an EXIF rotation: PIL applies it
                return None
    except Exception:  # unreadable here: the PIL path reads it again and names the problem
        return None
    return torch.from_numpy(np.frombuffer(bytearray(data), dtype=np.uint8))


def decode_jpegs(datas, device):
    """Decode JPEG byte tensors to uint8 [3, H, W] RGB tensors on ``device`` (batched; one by one when the batch
    fails); an image torchvision cannot decode is None."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    # torchvision 0.29 announces that TorchCodec will take over its decoders (a DeprecationWarning on every call);
    # decode_jpeg is what runs on nvJPEG today, so the notice is not the user's to act on
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)
    try:
        out = decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device)
        if all(isinstance(t, torch.Tensor) and t.shape[0] == 3 for t in out):
            return list(out)
    except RuntimeError:
        pass
    decoded = []
    for d in datas:
        try:
            decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


class TensorImages:
    """Map-style dataset of one split for the tensor path; items and batches as :class:`probe._extract._SplitImages`
    gives them, so every extraction layout runs either path.

    With ``on_device=False`` (CPU) each worker decodes its image with torch's CPU decoder and returns uint8
    [H, W, C], and :meth:`finish` normalises a collated batch. With ``on_device=True`` (CUDA) items carry JPEG bytes;
    :meth:`collate` packs them into one tensor and :meth:`finish_payloads` decodes, resizes and normalises a whole
    batch on the device. Images the tensor path cannot take come from ``fallback`` (the PIL path's dataset) in both
    cases.
    """

    def __init__(self, fallback, source, split: str, data_config: dict, *, on_device: bool):
        self.fallback, self.source, self.split = fallback, source, split
        self.data_config, self.on_device = data_config, on_device
        self.mean, self.std = fallback.mean, fallback.std
        if self.mean is None:
            raise ProbeError("internal error: the tensor pixel path needs a transform that ends in to-tensor and "
                             "normalise")

    def __len__(self) -> int:
        return len(self.fallback)

    def __getitem__(self, i: int):
        data = jpeg_bytes(self.source, self.split, i)
        if data is None:
            return self.fallback[i]
        if self.on_device:
            return i, data, ""
        (img,) = decode_jpegs([data], "cpu")
        if img is None:
            return self.fallback[i]
        return i, resize_crop([img], self.data_config)[0].permute(1, 2, 0).contiguous(), ""

    @staticmethod
    def collate(items):
        """(index tensor, payload, list of errors); the payload holds every JPEG's bytes in one tensor (one shared
        memory block per batch, not one per image) and the PIL path's pixels stacked:
        (bytes, lengths, positions of the JPEGs, pixels [k, H, W, C], positions of those)."""
        import torch

        jpeg = [j for j, it in enumerate(items) if it[1].ndim == 1]
        rest = [j for j, it in enumerate(items) if it[1].ndim != 1]
        blob = torch.cat([items[j][1] for j in jpeg]) if jpeg else torch.zeros(0, dtype=torch.uint8)
        lengths = torch.tensor([len(items[j][1]) for j in jpeg], dtype=torch.long)
        pixels = torch.stack([items[j][1] for j in rest]) if rest else torch.zeros(0, dtype=torch.uint8)
        payload = (blob, lengths, torch.tensor(jpeg, dtype=torch.long), pixels, torch.tensor(rest, dtype=torch.long))
        return torch.tensor([it[0] for it in items], dtype=torch.long), payload, [it[2] for it in items]

    def finish(self, x):
        """A collated uint8 [B, H, W, C] batch as the backbone's float input [B, C, H, W] on its device."""
        return self._normalise(x.permute(0, 3, 1, 2))

    def finish_payloads(self, index, payload, errors, device):
        """A :meth:`collate` batch as the backbone's float input [B, C, H, W] on ``device``, and its errors.

        The JPEGs are decoded together on ``device`` (batched nvJPEG on CUDA) and resized as :func:`resize_crop`
        does; the PIL path's pixels are copied there. A JPEG that torchvision cannot decode is read again by the PIL
        path, whose error (if any) joins ``errors`` (the caller skips or reports it).
        """
        import torch

        device = torch.device(device)
        errors = list(errors)
        blob, lengths, jpeg, fallback, rest = payload
        datas = list(blob.split(lengths.tolist())) if len(lengths) else []
        decoded = decode_jpegs(datas, device)
        pixels = torch.empty((len(index), 3, *self.data_config["input_size"][1:]), dtype=torch.uint8,
                             device=device)
        good = [k for k, img in enumerate(decoded) if img is not None]
        if good:
            pixels[jpeg[good].to(device)] = resize_crop([decoded[k] for k in good], self.data_config)
        if len(rest):
            pixels[rest.to(device)] = fallback.to(device, non_blocking=True).permute(0, 3, 1, 2)
        for k, img in enumerate(decoded):
            if img is None:  # torchvision could not decode it: the PIL path decodes it or names the error
                j = int(jpeg[k])
                _, p, errors[j] = self.fallback[int(index[j])]
                pixels[j] = p.to(device).permute(2, 0, 1)
        return self._normalise(pixels), errors

    def _normalise(self, pixels):
        import torch

        x = pixels.to(torch.float32).div_(255)
        mean, std = (v.to(x.device, non_blocking=True).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return x.sub_(mean).div_(std)


def pixel_store_path(cache_dir, source, split: str, data_config: dict, pixels: str, device_type: str,
                     transform: str = ""):
    """Where the decoded pixels of ``split`` live for every backbone whose eval transform gives the same 8-bit
    pixels: ``<cache_dir>/pixels/<dataset>/<split>-<key[:12]>.npy``.

    The key holds what the uint8 pixels depend on: the dataset's identity and fingerprint, the split, the pixel path
    (and its decoder), the data config without its normalisation (applied later, per backbone, to a whole batch)
    except the mean where it is the pad colour (crop mode ``border``), and ``transform``, the text of the PIL
    steps before that normalisation (so a caller that builds another transform from the same config gets another
    store). Backbones that differ only in mean and std share a store.
    """
    from pathlib import Path

    from ._cache import cache_key
    from ._io import safe_name

    geometry = {k: v for k, v in data_config.items() if k not in ("mean", "std")}
    if (data_config.get("crop_mode") or "center") == "border":
        geometry["mean"] = data_config.get("mean")
    key = cache_key({"what": "pixels", "format": 1, "split": split, "geometry": geometry, "transform": transform,
                     "pixels": pixel_identity(pixels, device_type) or "pil",
                     "dataset": {"name": source.name, "kind": source.kind, "fingerprint": source.fingerprint()}})
    return Path(cache_dir) / "pixels" / safe_name(source.name) / f"{split}-{key[:12]}.npy"


class PixelStore:
    """Decoded, resized and cropped uint8 pixels [N, H, W, 3] of one split in a memory-mapped ``.npy`` file, and a
    ``.rows`` file of N flags (1 = that row is written), so that other backbones with the same eval geometry read
    the pixels instead of decoding the images again (FFCV's decode-once idea, per split).

    Loader workers (forked or spawned) open the files lazily and write the rows they decode; a row's flag is set
    after its pixels, so a reader never sees half a row, and two writers of one row write the same bytes. Made on
    first use with a temporary name and ``os.replace``; delete the ``pixels/`` folder of a cache at any time.
    """

    def __init__(self, path, n: int, shape: tuple[int, int, int]):
        self.path, self.n, self.shape = path, n, tuple(shape)  # shape: (H, W, C)
        self._pixels = self._rows = None

    @classmethod
    def create(cls, path, n: int, shape) -> "PixelStore":
        """The store at ``path`` for ``n`` rows of ``shape`` (H, W, C), made empty when missing or of another
        shape."""
        import numpy as np

        from ._runtime import ProcessLock

        store = cls(path, n, shape)
        path.parent.mkdir(parents=True, exist_ok=True)
        with ProcessLock(path.with_suffix(".lock"), wait=True):  # one maker; the others then open its files
            try:
                ok = np.load(path, mmap_mode="r").shape == (n, *store.shape) and os.path.getsize(store.rows_path) == n
            except (OSError, ValueError):
                ok = False
            if not ok:
                store._make()
        return store

    def _make(self) -> None:
        import numpy as np

        path, n = self.path, self.n
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *self.shape)).flush()
        rows_tmp = self.rows_path.with_name(f"{self.rows_path.name}.tmp{os.getpid()}")
        rows_tmp.write_bytes(bytes(n))
        os.replace(rows_tmp, self.rows_path)  # the flags first: a pixels file never meets stale flags
        os.replace(tmp, path)

    @property
    def rows_path(self):
        return self.path.with_suffix(".rows")

    def _open(self) -> None:
        import numpy as np

        if self._pixels is None:  # in-process decoding threads may race here: both maps map the same files
            rows = np.memmap(self.rows_path, dtype=np.uint8, mode="r+", shape=(self.n,))
            self._rows = rows
            self._pixels = np.load(self.path, mmap_mode="r+")  # set last: a thread that sees it sees the flags too

    def get(self, i: int):
        """Row ``i`` as a uint8 [H, W, C] array (a copy), or None when it is not written yet."""
        self._open()
        return self._pixels[i].copy() if self._rows[i] else None

    def put(self, i: int, pixels) -> None:
        """Write row ``i`` (uint8 [H, W, C]), then its flag."""
        self._open()
        self._pixels[i] = pixels
        self._rows[i] = 1

    def written(self) -> int:
        """How many rows are written."""
        self._open()
        return int(self._rows.sum())

    def __getstate__(self):  # the memory maps are opened again in each worker process
        return {"path": self.path, "n": self.n, "shape": self.shape}

    def __setstate__(self, state):
        self.__init__(state["path"], state["n"], state["shape"])


class StoredImages:
    """A split's images (a :class:`probe._extract._SplitImages`, or a :class:`TensorImages` that decodes in the
    loader workers) read through a :class:`PixelStore`: a written row is read from it, any other is decoded by
    ``images`` and written to it. Items, batches and :meth:`finish` are ``images``'; an image that fails is not
    stored (its error comes back each time)."""

    def __init__(self, images, store: PixelStore):
        self.images, self.store = images, store
        self.mean, self.std = images.mean, images.std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch

        stored = self.store.get(i)
        if stored is not None:
            return i, torch.from_numpy(stored), ""
        index, pixels, error = self.images[i]
        if not error:
            self.store.put(i, pixels.numpy())
        return index, pixels, error

    def finish(self, x):
        """As ``images.finish``: a collated uint8 batch as the backbone's normalised float input."""
        return self.images.finish(x)
