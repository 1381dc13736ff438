"""Fine-tuning data: the split plan, seeded per-sample augmentation, and loaders whose batches are set per pass.

Randomness is a pure function of ``(seed, epoch, sample)``: the shuffle order comes from a generator seeded by
``(seed, epoch)``, each sample's augmentation from ``(seed, epoch, split, index)`` (so neither the number of
loader workers nor which worker loads a sample matters) and the model's own randomness (dropout, drop-path)
from a reseed at the start of every epoch (:func:`seed_everything`).
"""

from __future__ import annotations

import random
import re

import numpy as np

from .._errors import ProbeError, UsageError

#: Independent random streams of one run, mixed into every seed with :func:`mix`.
STREAM_SHUFFLE, STREAM_MODEL, STREAM_AUGMENT = 1, 2, 3
_SPLIT_NUMBER = {"train": 0, "val": 1, "test": 2}


def mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), so nearby (seed, epoch, index) give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x >> 1


def seed_everything(value: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    import torch

    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def plan_splits(source, *, val_fraction: float, test_fraction: float, seed: int,
                stratify: bool = True) -> dict[str, tuple[str, np.ndarray]]:
    """Split -> (dataset split, indices into it): the sweeps' train/val/test, carved from train where missing
    (:func:`probe.splits.carve_splits` over the dataset's full id list, as the sweeps carve it; ``stratify`` as
    the task's :attr:`probe.tasks.Task.stratified`: False for a continuous target)."""
    from ..splits import carve_splits, source_carve_groups

    has_val, has_test = "val" in source.splits, "test" in source.splits
    if has_test and test_fraction:
        raise UsageError(f"dataset {source.name!r} has its own test split; drop --test-fraction (it carves a test "
                         "split only for datasets without one)")
    groups = source_carve_groups(source, "train", source.ids["train"])  # NYUv2: whole scenes, as the sweeps
    parts = carve_splits(source.labels["train"], ids=source.ids["train"],
                         val_fraction=0.0 if has_val else val_fraction,
                         test_fraction=0.0 if has_test else test_fraction, seed=seed,
                         **({"stratify": stratify} if groups is None else {"stratify": False, "groups": groups}))
    plan = {"train": ("train", parts["train"]),
            "val": ("val", np.arange(len(source.labels["val"]))) if has_val else ("train", parts["val"])}
    if has_test:
        plan["test"] = ("test", np.arange(len(source.labels["test"])))
    elif "test" in parts:
        plan["test"] = ("train", parts["test"])
    return plan


class ImageSet:
    """Map-style dataset over chosen indices of one or more splits: ``(image tensor, targets, error or '')``.

    ``parts`` is a list of (dataset split, indices) concatenated in that order (train+val for the refit).
    ``targets`` is a dict task -> target; ``tasks`` names them (``classification``: the integer label).
    ``transform(image, targets) -> (tensor, targets)`` applies one geometry to both (:class:`ImageOnly` wraps an
    image transform). Training items are ``(epoch, k)`` pairs: with ``augment_seed`` set, each sample reseeds
    python's and torch's RNGs from (seed, epoch, split, index) before its transform, so its augmentation depends
    neither on which worker loads it nor on what came before. Evaluation items are plain positions ``k``.
    """

    def __init__(self, source, parts, transform, shape, *, tasks=("classification",), augment_seed: int | None = None):
        self.source, self.transform, self.shape, self.augment_seed = source, transform, tuple(shape), augment_seed
        self.tasks = tuple(tasks)
        self.split_of = [split for split, idx in parts for _ in range(len(idx))]
        self.indices = np.concatenate([np.asarray(idx, dtype=np.int64) for _, idx in parts])
        self.labels = np.concatenate([source.labels[split][np.asarray(idx, dtype=np.int64)] for split, idx in parts])
        # the continuous target of a regression fine-tune, float64 as the dataset holds it (exact in the rows)
        self.values = regression_targets(source, parts) if "regression" in self.tasks else None

    def __len__(self) -> int:
        return len(self.indices)

    def targets(self, k: int) -> dict:
        """The raw targets of item ``k`` (before the transform): the class label, and the dense maps at the
        image's resolution (:meth:`probe.DatasetSource.dense_targets`)."""
        out = {"classification": int(self.labels[k])} if "classification" in self.tasks else {}
        if self.values is not None:
            out["regression"] = float(self.values[k])
        if any(t not in ("classification", "regression") for t in self.tasks):
            dense = self.source.dense_targets(self.split_of[k], int(self.indices[k]))
            out.update({t: dense[t] for t in self.tasks if t != "classification"})
        return out

    def _placeholder(self, k: int) -> dict:
        """Targets of an unreadable item (left out of every loss and metric by its error)."""
        import torch

        from ..dense import IGNORE_INDEX

        out = {}
        for t in self.tasks:
            if t == "classification":
                out[t] = int(self.labels[k])
            elif t == "regression":
                out[t] = float(self.values[k])
            else:
                out[t] = (torch.full(self.shape[1:], IGNORE_INDEX, dtype=torch.int64) if t == "segmentation"
                          else torch.zeros(self.shape[1:], dtype=torch.float32))
        return out

    def __getitem__(self, item):
        import torch

        epoch, k = item if isinstance(item, tuple) else (0, item)
        i, split = int(self.indices[k]), self.split_of[k]
        if self.augment_seed is not None:
            s = mix(self.augment_seed, STREAM_AUGMENT, epoch, _SPLIT_NUMBER[split], i)
            random.seed(s)
            torch.default_generator.manual_seed(s)  # the CPU generator only: torch.manual_seed costs 30x more
        try:
            x, targets = self.transform(self.source.load(split, i), self.targets(k))
            return x, targets, ""
        except ProbeError as exc:  # reported by the main process: workers cannot print one clean line
            return torch.zeros(self.shape), self._placeholder(k), str(exc)


def regression_targets(source, parts) -> np.ndarray:
    """The continuous target (the regression task's :meth:`~probe.tasks.regression.Regression.target_name`:
    ``age``, or a manifest's ``target``) of the images of ``parts`` (a list of (dataset split, indices)), in that
    order, float64."""
    from .. import tasks

    name = tasks.get("regression").target_name(source)
    return np.concatenate([np.asarray(source.target(name, split), dtype=np.float64)[np.asarray(idx, dtype=np.int64)]
                           for split, idx in parts])


class ImageOnly:
    """A joint transform that applies an image transform and leaves the targets as they are."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image, targets):
        return self.transform(image), targets


class DenseTrainTransform:
    """Training augmentation applied with one geometry to the image and its dense targets, then a horizontal flip
    (p = 0.5 with ``hflip``), colour jitter on the image only and the checkpoint's normalisation. The crop follows
    ``config.depth_zoom`` (the checkpoint's interpolation for the image, nearest for the targets, so class ids stay
    ids and depths stay measured metres):

    - ``divide``: a random resized crop (``crop_scale`` of the area, aspect 3/4..4/3) to the input size. Relative
      to the whole-frame view that evaluation feeds (:func:`probe.dense.full_frame_config`) it magnifies by
      ``z = sqrt((H / h) (W / w))`` for an ``h x w`` crop of an ``H x W`` frame, as a camera ``z`` times nearer
      would; the depth target is divided by ``z`` so the scale cue stays honest.
    - ``no-zoom``: the whole frame resized to the input size (the evaluation view), a random window of the same
      area and aspect ranges kept in place, the rest set to the mean colour (0 after normalisation) and left out
      of the targets (ignored label, unmeasured depth): objects keep the size and depth they have at evaluation.

    A run without depth among its tasks always crops as ``divide`` does (nothing to divide; its protocol id
    records no ``depth_zoom``).
    """

    #: Aspect ratio range of the random crop (torchvision's default).
    RATIO = (3 / 4, 4 / 3)

    def __init__(self, data_config: dict, config):
        import torch
        from torchvision.transforms import InterpolationMode, v2

        self.size = tuple(int(v) for v in data_config["input_size"][1:])
        self.mode = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
            data_config.get("interpolation", "bilinear"), InterpolationMode.BILINEAR)
        # without a depth target there is nothing to divide: every such run crops with zoom (its protocol id
        # records no depth_zoom)
        self.scale = tuple(config.crop_scale)
        self.zoom = config.depth_zoom if "depth" in tuple(config.tasks) else "divide"
        steps = [v2.RandomHorizontalFlip(0.5)] if config.hflip else []
        if config.color_jitter:
            j = float(config.color_jitter)
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        steps += [v2.ToDtype(torch.float32, scale=True),
                  v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"]))]
        self.transform = v2.Compose(steps)

    def __call__(self, image, targets):
        import torch
        from torchvision import transforms as T, tv_tensors
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        from ..dense import IGNORE_INDEX

        img = F.to_image(image)  # the image becomes a tensor first: image and targets share one pixel grid
        dense = {t: torch.as_tensor(np.asarray(v)) for t, v in targets.items() if t != "classification"}
        H, W = img.shape[-2:]
        i, j, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.RATIO))
        nearest = InterpolationMode.NEAREST
        if self.zoom == "divide":
            img = F.resized_crop(img, i, j, h, w, list(self.size), interpolation=self.mode, antialias=True)
            dense = {t: F.resized_crop(v[None], i, j, h, w, list(self.size), interpolation=nearest)[0]
                     for t, v in dense.items()}
            if "depth" in dense:  # unmeasured pixels (0) stay 0
                dense["depth"] = dense["depth"] / float(np.sqrt((H / h) * (W / w)))
        else:  # no-zoom: the evaluation view, a window kept in place
            img = F.resize(img, list(self.size), interpolation=self.mode, antialias=True)
            dense = {t: F.resize(v[None], list(self.size), interpolation=nearest)[0] for t, v in dense.items()}
            sh, sw = self.size
            keep = torch.zeros(self.size, dtype=torch.bool)
            keep[round(i * sh / H):round((i + h) * sh / H), round(j * sw / W):round((j + w) * sw / W)] = True
            mean = torch.tensor([round(255 * float(m)) for m in self.transform.transforms[-1].mean],
                                dtype=img.dtype)
            img = torch.where(keep, img, mean[:, None, None])
            dense = {t: torch.where(keep, v, torch.full_like(v, IGNORE_INDEX if t == "segmentation" else 0))
                     for t, v in dense.items()}
        x, dense = self.transform(tv_tensors.Image(img), {t: tv_tensors.Mask(v) for t, v in dense.items()})
        out = {t: v.as_subclass(torch.Tensor) for t, v in dense.items()}
        if "classification" in targets:
            out["classification"] = targets["classification"]
        return x.as_subclass(torch.Tensor), out


class DenseEvalTransform:
    """Dense evaluation: the image through the whole-frame view (:func:`probe.dense.full_frame_config`: resized to
    the checkpoint's input size, no centre crop, the checkpoint's interpolation and normalisation); the dense
    targets stay at the label resolution (the image's own), where the outputs are scored after upsampling."""

    def __init__(self, data_config: dict):
        import timm.data

        from ..dense import full_frame_config

        self.data_config = full_frame_config(data_config)
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)

    def __call__(self, image, targets):
        import torch

        out = {t: (v if t == "classification" else torch.as_tensor(np.asarray(v))) for t, v in targets.items()}
        return self.transform(image), out


def collate_dense(items):
    """Collate ``(image, targets, error)`` items; dense targets of different sizes (label resolutions) stay a list
    of maps, one per image, instead of a stacked batch."""
    import torch
    from torch.utils.data import default_collate

    xs, targets, errors = zip(*items)
    out = {}
    for t in targets[0]:
        values = [d[t] for d in targets]
        same = all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
        out[t] = default_collate(values) if same or t == "classification" else list(values)
    return default_collate(list(xs)), out, list(errors)


class Batches:
    """A batch sampler whose batches are set before each pass, so one loader (and its workers) serves every epoch."""

    def __init__(self):
        self.batches: list[list] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(images: ImageSet, batches: Batches, workers: int, device, seed: int, *, collate_fn=None):
    """A DataLoader over ``images`` whose batches are ``batches`` (set before each pass); ``collate_fn`` as
    torch's (:func:`collate_dense` for dense evaluation)."""
    import torch

    generator = torch.Generator().manual_seed(seed)  # workers' base seed; keeps the global RNG untouched
    # Persistent workers on CPU: forking them again every epoch costs more than a small model's epoch on a busy
    # CPU. Not on CUDA: with pinned memory, PyTorch's shutdown of persistent workers waits up to 5 s per worker
    # (pytorch/pytorch#81794); on an H200 machine (8 workers) a fine-tune's process then stayed alive for over
    # 30 s after its last epoch.
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=workers, pin_memory=cuda,
                                       generator=generator, prefetch_factor=4 if workers > 0 else None,
                                       persistent_workers=workers > 0 and not cuda, collate_fn=collate_fn)


def shuffled_batches(n: int, batch_size: int, steps: int, *, seed: int, epoch: int) -> list[list]:
    """The ``steps`` training batches of an epoch as ``(epoch, position)`` items; the order is seeded by
    ``(seed, epoch)`` and the last partial batch is dropped."""
    import torch

    g = torch.Generator().manual_seed(mix(seed, STREAM_SHUFFLE, epoch))
    order = torch.randperm(n, generator=g).tolist()
    return [[(epoch, k) for k in order[s:s + batch_size]] for s in range(0, steps * batch_size, batch_size)]


def train_transform(data_config: dict, config):
    """timm's standard training transform at the checkpoint's input size, interpolation, mean and std."""
    import timm.data

    return timm.data.create_transform(
        input_size=tuple(data_config["input_size"]), is_training=True, scale=tuple(config.crop_scale),
        hflip=0.5 if config.hflip else 0.0, color_jitter=config.color_jitter, auto_augment=None,
        interpolation=data_config.get("interpolation", "bilinear"), mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]), re_prob=0.0)


def image_name(error: str) -> str:
    """The file named by an image-loading error (``cannot read image NAME: ...``), else the message."""
    m = re.match(r"cannot read image (.+?): ", error)
    return m.group(1) if m else error


def pow2_floor(n: int) -> int:
    """The largest power of two not above ``n`` (at least 1)."""
    return 1 << max(0, int(n).bit_length() - 1)
