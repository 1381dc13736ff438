"""Run a frozen backbone once over a dataset and write its features to the HDF5 cache.

How an entry is written, so that ``kill -9`` at any moment is harmless:

1. Under a per-entry file lock (a second process waits, then reuses what the first wrote), every finished
   batch goes to its own shard file ``<final>.parts/rows-<start>-<end>.npz`` (written to a temporary name,
   then ``os.replace``): finished work is never lost, peak memory is one batch.
2. A rerun keeps every finished shard and computes the missing batches with the same batch boundaries, so its
   features are identical to an uninterrupted run's.
3. Under ``torchrun`` (:mod:`probe._distributed`) the missing batches are dealt to the ranks round robin; rank 0
   holds the entry lock for the group, every rank writes its own shards, and rank 0 finalises after all are done.
   The entry (key, path, rows in dataset order, features) is the one a single process writes.
4. When every row is done, the shards are streamed into ``<final>.tmp<pid>``, which is marked complete and
   renamed to the final ``<split>-<key[:12]>.h5``; then the shards are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import _distributed
from ._cache import CacheEntry, cache_key, entry_lock, entry_path, read_attrs
from ._checks import disk_full_guard, format_bytes
from ._errors import ProbeError, UsageError
from ._io import atomic_path, save_npz_atomic, write_text_atomic
from ._schema import SEED, WORKERS, Setting, check_setting
from ._runtime import cpu_plan, cpu_threads, default_workers, full_fp32, resolve_device, torch_threads
from ._pixels import StoredImages, TensorImages, check_data_config, check_pixels, pixel_identity
from ._taps import check_taps, forward_taps, parse_taps
from ._version import CACHE_FORMAT, __version__

_FLOAT16_MAX = 65504.0
_SHARD_RE = re.compile(r"^rows-(\d+)-(\d+)\.npz$")


def extract_features(backbone: str, dataset: str, *, splits: Iterable[str] | None = None,
                     taps: Iterable[str] = ("pooled",), weights: str | os.PathLike | None = None,
                     random_init: bool = False, seed: int = 0, img_size: int | None = None,
                     family: str | None = None, data_root: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike = "cache", batch_size: int = 64, workers: int | None = None,
                     device: str = "auto", dtype: str = "float16", precision: str = "auto",
                     skip_bad: bool = False, allow_overlap: bool = False, pixels: str | None = None,
                     reuse_pixels: bool = False, compile: bool = False,
                     full_frame: bool = False, progress: bool = True) -> dict[str, CacheEntry]:
    """Extract (or reuse) cached features of ``backbone`` on every requested split of ``dataset``.

    Parameters
    ----------
    backbone : str
        timm name with its tag (``vit_base_patch16_224.augreg_in21k``).
    dataset : str or DatasetSource
        Dataset spec (``digits``, ``imagefolder:PATH``... see :func:`probe.open_dataset`), or a dataset opened
        from one.
    splits : iterable of str, optional
        Splits to extract; default every split the dataset has.
    taps : iterable of str
        Representations to store (``pooled``, ``cls``, ``mean``, ``block<i>``, ``patch``).
    weights, random_init, seed, img_size, family
        How the backbone is built (see :func:`probe.create_backbone`).
    dtype : {"float16", "float32"}
        Storage dtype; a float16 tap whose values overflow is stored as float32 instead.
    precision : {"auto", "fp32", "bf16"}
        Compute precision of the forward passes: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere. The
        resolved precision is part of the cache key (and of the results' backbone configuration).
    skip_bad : bool
        Skip unreadable images (ids recorded in the ``skipped`` attribute) instead of failing.
    allow_overlap : bool
        Accept the same image (same path, or identical file content) in two splits; by default it is an error
        naming both entries (:func:`probe.splits.check_overlap`).
    pixels : {"pil", "gpu"}, optional
        How images become pixels: ``pil`` (default) decodes and resizes with PIL in the loader workers (timm's eval
        transform); ``gpu`` decodes JPEGs with torchvision (batched with nvJPEG on CUDA, libjpeg-turbo per image on
        the CPU) and resizes, crops and normalises with tensor ops in timm's geometry; other images take the PIL path
        (:mod:`probe._pixels`). The path is part of the cache key.
    reuse_pixels : bool
        Keep the decoded, resized and cropped 8-bit pixels of each split in ``<cache_dir>/pixels/`` and read them
        from there instead of decoding again: the next backbone with the same eval geometry (the data config
        without mean and std) skips decoding (:class:`probe._pixels.PixelStore`; features are identical either
        way). Costs ``rows x H x W x 3`` bytes of disk per split (not used when the disk lacks them, nor on the
        CUDA tensor path, which decodes on the GPU).
    compile : bool
        Run the backbone's feature forward through ``torch.compile`` (compiled on the first batch; features agree
        with the eager forward to float rounding, so the flag is part of the cache key). Off by default: on CPU it
        did not pay (README, "Pixel paths").
    full_frame : bool
        Feed the whole frame, resized to the input size, instead of the eval transform's centre crop
        (:func:`probe.dense.full_frame_config`; what dense tasks extract). The data config is part of the key.

    Returns
    -------
    dict
        Split name -> :class:`probe.CacheEntry` (complete files; ``reused`` tells whether anything was computed).
    """
    from ._backbones import check_model_name, create_backbone, describe_backbone
    from ._datasets import open_dataset

    from ._checks import check_img_size, check_output_dir

    taps = parse_taps(taps)
    img_size = check_img_size(img_size)
    check_output_dir(cache_dir, "--cache-dir")
    if dtype not in ("float16", "float32"):
        raise UsageError(f"dtype must be float16 or float32; got {dtype!r}")
    batch_size = check_setting(batch_size, Setting("int", lo=1), "--batch-size", example="--batch-size 64")
    workers = check_setting(workers, WORKERS, "--workers", example="--workers 4")
    seed = check_setting(seed, SEED, "--seed", example="--seed 0")
    resolve_device(device)  # a missing CUDA is an error before anything is written
    _distributed.init(device)  # under torchrun: join the group; the ranks share the work of each entry
    check_model_name(backbone)
    precision = resolve_precision(precision, device)
    pixels = check_pixels(pixels)
    # an opened dataset travels down as it is (a sweep opens its spec once); a spec is opened here
    source = dataset if not isinstance(dataset, str) else open_dataset(dataset, data_root=data_root)
    wanted = [source.check_split(s) for s in (splits or source.split_names)]
    from .splits import check_overlap

    check_overlap(source, allow=allow_overlap, cache_dir=cache_dir)

    # Everything but the model weights' bytes is known before building anything: a cache hit costs no forward.
    model_state: dict[str, Any] = {}

    def get_backbone():
        if "backbone" not in model_state:
            model_state["backbone"] = create_backbone(backbone, weights=weights, random_init=random_init, seed=seed,
                                                      img_size=img_size, family=family,
                                                      num_classes=None if "logits" in taps else 0)  # keep the head
            check_taps(model_state["backbone"].model, taps, backbone)
        return model_state["backbone"]

    spec = describe_backbone(backbone, weights=weights, random_init=random_init, seed=seed, img_size=img_size,
                             family=family)
    if full_frame:  # dense tasks: the whole frame, no centre crop (one place: probe.dense)
        from .dense import full_frame_config

        spec = {**spec, "data_config": full_frame_config(spec["data_config"])}
    if pixels != "pil":
        check_data_config(spec["data_config"], backbone)
    pixel_key = pixel_identity(pixels, resolve_device(device).type)
    plan = []  # (split, material, key, final) of every split; what is complete is reused without a lock
    entries = {}
    for split in wanted:
        material = {"backbone": backbone, "weights": spec["weights"], "data_config": spec["data_config"],
                    "dataset": {"name": source.name, "kind": source.kind, "fingerprint": source.fingerprint()},
                    "split": split, "dtype": dtype, "precision": precision}
        if pixel_key is not None:  # absent for PIL: the keys made before the pixel paths stay valid
            material["pixels"] = pixel_key
        if compile:  # absent when off: the keys made before the flag stay valid
            material["compile"] = True
        key, final, reuse = _lookup(material, taps, cache_dir, skip_bad)
        if reuse is None and spec["weights"].startswith("hub:") and "@" not in spec["weights"]:
            # the hub checkpoint was not on disk: once downloaded, its file hash is part of the identity
            spec["weights"] = material["weights"] = get_backbone().weights_id
            key, final, reuse = _lookup(material, taps, cache_dir, skip_bad)
        if reuse is not None:
            entries[split] = reuse
            continue
        plan.append((split, material, key, final))
    # every rank follows rank 0's view of the cache (another process may finish an entry between two lookups)
    entries, plan = _distributed.share((entries, plan))
    needed = None
    if plan:  # the space every missing entry needs is known before any forward pass
        needed = _check_space(backbone, img_size, spec["data_config"], taps, dtype, source,
                     [(split, final) for split, _, _, final in plan], cache_dir)
    for split, material, key, final in plan:
        lock = entry_lock(cache_dir, key, wait=True,
                          waiting_message=f"probe: another process is extracting {final}; waiting for it to finish")
        with _distributed.main_process_lock(lock):  # under torchrun rank 0 holds it for the group
            # another process may have finished it
            reuse = _distributed.on_main(lambda: _find_reusable(final, key, cache_key(material), taps, skip_bad))
            if reuse is not None:
                entries[split] = reuse
                continue
            # describe_backbone gave the values the build gives: the backbone is built once the first batches
            # are on their way (_compute_batches), not before
            meta = {"format": CACHE_FORMAT, "key": key, "base_key": cache_key(material), "backbone": backbone,
                    "weights": spec["weights"], "family": spec["family"], "dataset": source.name, "split": split,
                    "classes": source.classes, "taps": list(taps), "data_config": spec["data_config"],
                    "dataset_spec": source.spec, "dtype": dtype, "precision": precision, "pixels": pixels,
                    "versions": _versions()}
            resume = "the extraction resumes from its last finished batch"
            size = f" (the missing entries need about {format_bytes(needed)})" if needed else ""
            store = partial(_pixel_store, cache_dir, source, split, pixels=pixels, device=device) if reuse_pixels \
                else None
            with disk_full_guard(final.parent, f"the cache entry {final.name}{size}", resume):
                _extract_split(get_backbone, source, split, taps, final, meta, batch_size=batch_size, workers=workers,
                               device=device, skip_bad=skip_bad, progress=progress, pixel_store=store,
                               compile=compile)
            entries[split] = CacheEntry(path=final, key=key, split=split, taps=taps, rows=_rows(final))
    return {split: entries[split] for split in wanted}


def _pixel_store(cache_dir, source, split: str, data_config: dict, transform: str, *, pixels: str, device: str):
    """The :class:`probe._pixels.PixelStore` of ``split`` for ``--reuse-pixels`` (``transform``: the text of the PIL
    steps that make its pixels), or None where it cannot serve (the CUDA tensor path decodes on the device; a disk
    without room for it: one line on stderr says so)."""
    from ._pixels import PixelStore, pixel_store_path

    dev = resolve_device(device)
    if pixels != "pil" and dev.type == "cuda":
        return None
    path = pixel_store_path(cache_dir, source, split, data_config, pixels, dev.type, transform)
    _, h, w = (int(v) for v in data_config["input_size"])
    n = len(source.splits[split])
    if not path.is_file():
        need = n * h * w * 3
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(path.parent).free < 2 * need:  # room for it and for the features
            print(f"probe: --reuse-pixels needs {format_bytes(need)} for the pixels of {source.name}/{split} in "
                  f"{path.parent}; decoding without them", file=sys.stderr)
            return None
    return PixelStore.create(path, n, (h, w, 3))


def tap_shapes(backbone: str, img_size: int | None, data_config: dict, taps) -> dict[str, tuple[int, ...]] | None:
    """Per-row shape of every tap, from a forward pass on the meta device (no weights, no compute); None when
    the architecture cannot run there."""
    import torch

    from ._backbones import _create
    from ._taps import forward_taps

    try:
        with torch.device("meta"):
            model = _create(backbone, pretrained=False, img_size=img_size,
                            num_classes=None if "logits" in taps else 0).eval()
            out = forward_taps(model, torch.zeros(1, *data_config["input_size"]), taps)
        return {t: tuple(v.shape[1:]) for t, v in out.items()}
    except Exception:  # an op without a meta kernel: no estimate, no check
        return None


def _check_space(backbone, img_size, data_config, taps, dtype, source, todo, cache_dir) -> int | None:
    """Fail before the first forward when the cache's disk cannot hold the missing entries: float32 shards of the
    rows still to compute plus the final file in the storage dtype (both exist while the file is assembled)."""
    from ._checks import check_free_space, format_bytes

    shapes = tap_shapes(backbone, img_size, data_config, taps)
    if shapes is None:
        return None
    per_row = sum(int(np.prod(s)) for s in shapes.values())
    itemsize = 2 if dtype == "float16" else 4
    needed, rows = 0, 0
    for split, final in todo:
        n = len(source.splits[split])
        done = _contiguous_end(_shards(Path(str(final) + ".parts")))
        needed += (n - done) * per_row * 4 + n * per_row * itemsize
        rows += n
    what = (f"extracting {backbone} on {source.name} ({rows:,} rows x {len(shapes)} tap{'s' if len(shapes) > 1 else ''}"
            f" ({per_row:,} values per row) x {dtype}, with float32 shards while it runs)")
    check_free_space(cache_dir, needed, what,
                     fix=f" or pass a --cache-dir on a larger disk; a rerun resumes from the finished batches "
                         f"({format_bytes(per_row * 4)} per row)")
    return needed


#: Compute precisions of the forward passes (``auto`` resolves to bf16 on CUDA, fp32 elsewhere).
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """``fp32`` or ``bf16``: the compute precision a request resolves to on ``device``."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if resolve_device(device).type == "cuda" else "fp32"


def _versions() -> dict:
    import timm
    import torch

    return {"probe": __version__, "timm": timm.__version__, "torch": torch.__version__}


def _rows(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f["labels"].shape[0])


def _lookup(material: dict, taps, cache_dir, skip_bad: bool):
    """(key, final path, reusable entry or None) of one split's cache entry described by ``material``."""
    key = cache_key({**material, "taps": list(taps)})
    final = entry_path(cache_dir, material["backbone"], material["dataset"]["name"], material["split"], key)
    return key, final, _find_reusable(final, key, cache_key(material), taps, skip_bad)


def _find_reusable(final: Path, key: str, base_key: str, taps: tuple[str, ...],
                   skip_bad: bool = False) -> CacheEntry | None:
    """The exact entry if complete, else a complete sibling with the same base key and a superset of taps.

    The skip policy is not part of the key (the features of the readable images do not depend on it): an entry
    that left images out with ``--skip-bad`` is reused by a request without ``--skip-bad`` only as the error
    that the bad image would have raised, so dropped images are never silent.
    """
    import h5py

    candidates = [final] + sorted(p for p in final.parent.glob(f"{final.name.split('-')[0]}-*.h5") if p != final)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                attrs = read_attrs(f)
                rows = int(f["labels"].shape[0])
        except OSError:
            continue
        if not attrs.get("complete"):
            continue
        if attrs.get("key") == key or (attrs.get("base_key") == base_key and set(taps) <= set(attrs.get("taps", []))):
            skipped = list(attrs.get("skipped") or [])
            if skipped and not skip_bad:
                raise ProbeError(f"cannot read image {skipped[0]} of {attrs.get('dataset')}/{attrs.get('split')} "
                                 f"({len(skipped)} unreadable images were left out of cache entry {path.name} with "
                                 "--skip-bad); fix or remove the files, or pass --skip-bad to skip unreadable images")
            if skipped:
                _report_skipped(skipped, f"{attrs.get('dataset')}/{attrs.get('split')}", reused=True)
            return CacheEntry(path=path, key=attrs["key"], split=attrs["split"], taps=tuple(attrs["taps"]),
                              rows=rows, reused=True)
    return None


def _report_skipped(ids: list[str], where: str, reused: bool = False, show: int = 5) -> None:
    """One stderr line: how many images --skip-bad left out of ``where`` and the first few of them."""
    first = ", ".join(ids[:show]) + (", ..." if len(ids) > show else "")
    when = " when its cache entry was made" if reused else ""
    print(f"probe: --skip-bad left out {len(ids)} unreadable image{'s' if len(ids) != 1 else ''} of {where}{when}: "
          f"{first}", file=sys.stderr, flush=True)


class _SplitImages:
    """Map-style dataset over one split: (index, image tensor, error message or '').

    When the transform ends in timm's to-tensor and normalise steps (every timm eval transform does), items are
    uint8 [H, W, C] tensors and :meth:`finish` applies those two steps to a whole batch at once: the same float
    operations (bit-identical features), a quarter of the bytes between processes, and about a millisecond less
    per image than doing them image by image. Collating [H, W, C] items is a plain copy, and the finished batch
    is channels-last (the layout the extractor runs convolutions in) without another copy.
    """

    def __init__(self, source, split: str, transform, shape):
        self.source, self.split, self.shape = source, split, shape
        self.transform, self.mean, self.std = _split_tail(transform)

    def __len__(self) -> int:
        return len(self.source.splits[self.split])

    def __getitem__(self, i: int):
        import torch

        try:
            out = self.transform(self.source.load(self.split, i))
            if self.mean is not None:
                out = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy())
            return i, out, ""
        except ProbeError as exc:  # reported by the main process: workers cannot print one clean line
            if self.mean is None:
                return i, torch.zeros(self.shape, dtype=torch.float32), str(exc)
            c, h, w = self.shape
            return i, torch.zeros((h, w, c), dtype=torch.uint8), str(exc)

    def finish(self, x):
        """A collated batch as the backbone's input [B, C, H, W]: uint8 -> float in [0, 1], then normalised (as
        timm does).

        Runs on ``x``'s device: on a GPU the batch travels as uint8 (a quarter of the bytes) and these steps cost the
        main process no CPU time.
        """
        import torch

        if self.mean is None:
            return x
        x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)  # a channels-last view of the [B, H, W, C] batch
        mean, std = (v.to(x.device, non_blocking=True).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return x.sub_(mean).div_(std)


def _compile_forward(model):
    """``model`` with its feature forwards (``forward_features``, ``forward_intermediates``) run through
    ``torch.compile``, which compiles them on the first batch (and once more for a last, smaller batch); the head's
    pooling stays eager. The model object is kept, so every caller of :func:`probe._taps.forward_taps` runs it;
    a model compiled before (the next split of the same extraction) is returned as it is."""
    import logging

    import torch

    if getattr(model, "_probe_compiled", False):
        return model
    model._probe_compiled = True
    # without a CUDA runtime, inductor's C++ toolchain logs that it guessed CUDA_HOME: nothing for the user to do
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    for name in ("forward_features", "forward_intermediates"):
        if hasattr(model, name):
            setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
    return model


def _split_tail(transform):
    """(transform without its final to-tensor + normalise steps, mean, std); the transform unchanged and None, None
    when it does not end that way (a custom transform)."""
    import torch
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize) or type(steps[-2]).__name__ not in (
            "ToTensor", "MaybeToTensor") or getattr(steps[-1], "inplace", False):
        return transform, None, None
    mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32)
    std = torch.as_tensor(steps[-1].std, dtype=torch.float32)
    return T.Compose(steps[:-2]), mean, std


#: Batches each forward process must have left for the forward-in-workers layout to be timed at all.
_BATCHES_PER_PROCESS = 4


class _BatchDecoder:
    """Decode and transform a batch's images in this process on ``threads`` threads, then collate them.

    PIL's decoders and resampling and torch's tensor ops release the GIL, so the threads decode in parallel. Used
    between forward passes (the forward then has every core to itself): decoding a batch takes ``1/threads`` of
    its one-thread time instead of stealing cores from the forward, as loader processes would.
    """

    def __init__(self, images, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.images = images
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="probe-decode")

    def __enter__(self) -> "_BatchDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def __call__(self, rows):
        import torch

        return torch.utils.data.default_collate(list(self.pool.map(self.images.__getitem__, rows)))


class _ForwardInWorkers:
    """Batches decoded, transformed and forwarded in loader worker processes, one torch thread each.

    When a backbone's forward scales poorly over threads (small backbones), separate processes that each decode and
    forward whole batches on one core beat one process that shares the cores between decoding and a multi-thread
    forward; :func:`probe._runtime.cpu_plan` decides from this run's own timings. Batches come back in order; the main
    process only checks them and writes the shards. Workers are forked, sharing the model's weights read-only.
    """

    def __init__(self, images, batches, model, taps, precision: str):
        self.images, self.batches, self.model, self.taps, self.precision = images, batches, model, taps, precision

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int):
        import torch

        # unreadable images come as zeros with their error; the main process skips them or fails
        index, x, errors = torch.utils.data.default_collate([self.images[i] for i in self.batches[j]])
        x = self.images.finish(x).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = forward_taps(self.model, x, self.taps)
        return index, {t: v.float().contiguous().numpy() for t, v in out.items()}, list(errors)

    def run(self, processes: int):
        import multiprocessing

        import torch

        if not self.batches:
            return iter(())
        # fork shares the weights; the DataLoader sets one torch thread in each worker
        return iter(torch.utils.data.DataLoader(self, batch_size=None, shuffle=False, num_workers=processes,
                                                prefetch_factor=2, persistent_workers=False,
                                                multiprocessing_context=multiprocessing.get_context("fork")))


def _shards(parts: Path) -> list[tuple[int, int, Path]]:
    found = []
    for p in parts.iterdir() if parts.is_dir() else []:
        m = _SHARD_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def _contiguous_end(shards) -> int:
    end = 0
    for start, stop, _ in shards:
        if start != end:
            break
        end = stop
    return end


def _extract_split(get_backbone, source, split: str, taps, final: Path, meta: dict, *, batch_size: int,
                   workers: int | None, device: str, skip_bad: bool, progress: bool, pixel_store=None,
                   compile: bool = False) -> None:
    """Compute the missing batches of one entry (under torchrun: this rank's share of them), then finalise it on
    rank 0 once every rank's shards are written."""
    n = len(source.splits[split])
    parts = Path(str(final) + ".parts")
    done, todo = _distributed.on_main(lambda: _prepare_parts(parts, meta, n, batch_size))
    if 0 < done < n and _distributed.is_main():
        print(f"probe: resuming {final.name} ({meta['dataset']}/{split}) from row {done} of {n}", file=sys.stderr)
    error = None
    try:
        _compute_batches(get_backbone, source, split, taps, parts, meta, _distributed.rank_batches(todo), n=n,
                         batch_size=batch_size, workers=workers, device=device, skip_bad=skip_bad,
                         progress=progress if _distributed.is_main() else False, pixel_store=pixel_store,
                         compile=compile)
    except Exception as exc:  # every rank must reach the collective below, failed or not
        error = exc
    _distributed.gather_errors(error)  # under torchrun: every rank's shards are written once this returns
    _distributed.on_main(lambda: _finalize(parts, final, source, split, taps, meta))


def _prepare_parts(parts: Path, meta: dict, n: int, batch_size: int) -> tuple[int, list[list[int]]]:
    """Make ``parts`` ready for ``meta``'s entry; returns (rows done contiguously from 0, batches still to do).

    Finished shards are kept; the missing rows are cut into batches with the boundaries of an uninterrupted run
    (multiples of ``batch_size`` from the end of the contiguous prefix, which is a multiple of it when the batch
    size did not change). A shard that does not sit on those boundaries is recomputed.
    """
    if parts.is_dir():
        old = json.loads((parts / "meta.json").read_text()) if (parts / "meta.json").is_file() else {}
        if old.get("key") != meta["key"]:
            shutil.rmtree(parts)  # leftovers of something else: never mix
    parts.mkdir(parents=True, exist_ok=True)
    write_text_atomic(parts / "meta.json", json.dumps(meta, sort_keys=True, default=str))
    shards = _shards(parts)
    done = _contiguous_end(shards)
    grid = [(s, min(s + batch_size, n)) for s in range(done, n, batch_size)]
    have = set()
    for start, stop, p in shards:
        if start >= done:
            if (start, stop) in grid:  # a later batch another rank finished before an interruption
                have.add((start, stop))
            else:
                p.unlink()
    return done, [list(range(a, b)) for a, b in grid if (a, b) not in have]


#: Decode the tensor path's batches in this process (the CUDA layout) on CPU too: tests run that code on CPU tensors.
_DECODE_ON_DEVICE = False

#: Stage times of the last :func:`_compute_batches` call in this process (``benchmarks/bench_extract.py`` prints them).
_PROFILE: dict[str, Any] = {}


class _Profile:
    """Seconds each stage of an extraction took, on the host and (CUDA) on the device, and its wall time.

    Host stages are timed around the calls; device stages (decode and preprocessing, forward, device-to-host copy)
    between CUDA events, read once at the end. The stages overlap, so their shares of the wall time add up to more
    than 1: the stage whose share is near 1 is the one the others wait for.
    """

    def __init__(self, dev):
        self.begin = time.perf_counter()
        self.dev = dev
        self.host: dict[str, float] = {}
        self.events: dict[str, list] = {}
        self.marks: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, stream=None, device: bool = False):
        """Time a block on the host; with ``device`` on CUDA also the work it queues on ``stream`` (default: the
        current stream)."""
        import torch

        events = None
        if device and self.dev.type == "cuda":
            stream = stream or torch.cuda.current_stream(self.dev)
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record(stream)
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.host[name] = self.host.get(name, 0.0) + time.perf_counter() - begin
            if events is not None:
                events[1].record(stream)
                self.events.setdefault(name, []).append(events)

    def mark(self, name: str) -> None:
        """Seconds from the start to the first time ``name`` happened."""
        self.marks.setdefault(name, time.perf_counter() - self.begin)

    def summary(self) -> dict[str, Any]:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize(self.dev)
        wall = time.perf_counter() - self.begin
        device = {k: sum(a.elapsed_time(b) for a, b in v) / 1000 for k, v in self.events.items()}
        return {"wall_s": wall, "host_s": dict(self.host), "device_s": device, "marks_s": dict(self.marks)}


def _compute_batches(get_backbone, source, split: str, taps, parts: Path, meta: dict, batches: list[list[int]], *,
                     n: int, batch_size: int, workers: int | None, device: str, skip_bad: bool,
                     progress: bool, pixel_store=None, compile: bool = False) -> None:
    """Forward ``batches`` (lists of row indices) and write one shard per batch into ``parts``.

    The backbone (``get_backbone()``) is built once the loader's workers are decoding the first batches. Images come
    through a :class:`probe._pixels.PixelStore` when ``pixel_store`` is given (``pixel_store(data_config,
    transform_text)`` opens it, or gives None); with ``compile`` the forward runs through ``torch.compile``.
    """
    import timm.data
    import torch

    from ._console import progress as progress_display

    _PROFILE.clear()
    if not batches:
        return
    dev = _distributed.local_device(resolve_device(device))
    prof = _Profile(dev)
    data_config = meta["data_config"]
    transform = timm.data.create_transform(**data_config, is_training=False)
    images = _SplitImages(source, split, transform, tuple(data_config["input_size"]))
    if meta.get("pixels", "pil") != "pil":
        images = TensorImages(images, source, split, data_config, on_device=dev.type == "cuda" or _DECODE_ON_DEVICE)
    on_device = getattr(images, "on_device", False)
    if pixel_store is not None and not on_device and images.mean is not None:  # items are uint8 pixels
        # keyed by the pixels' own recipe: the data config and the PIL steps before to-tensor and normalise
        pixel_store = pixel_store(data_config, repr(getattr(images, "fallback", images).transform))
        if pixel_store is not None:
            images = StoredImages(images, pixel_store)
    model_state: dict[str, Any] = {}

    def prepare_model():
        begin = time.perf_counter()
        bb = get_backbone()
        # channels-last on every device: oneDNN's and cuDNN's convolutions run on it natively (ConvNets gain on CPU
        # too; transformers are unchanged); features agree with the default layout to float rounding
        model_state["model"] = bb.model.to(dev).to(memory_format=torch.channels_last)
        if compile:
            model_state["model"] = _compile_forward(model_state["model"])
        prof.host["build"] = time.perf_counter() - begin
        return model_state["model"]

    bar = progress_display(n, initial=n - sum(map(len, batches)), unit="img",
                           desc=f"{meta['backbone']} {meta['dataset']}/{split}", enabled=progress)
    ids = source.ids[split]

    def consume(index, x, errors) -> float:
        """Forward one batch and write its shard; returns the forward's seconds."""
        check_errors(errors)
        begin = time.perf_counter()
        with prof.stage("forward"):
            out = forward_batch(x)
            arrays = {t: v.float().contiguous().cpu().numpy() for t, v in out.items()}
        seconds = time.perf_counter() - begin
        with prof.stage("write"):
            write(index, arrays, errors)
        return seconds

    def forward_batch(x):
        """The taps of one collated batch, on the device (asynchronous there)."""
        model = model_state.get("model") or prepare_model()
        x = images.finish(x.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        prof.mark("first_forward")
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=meta["precision"] == "bf16"):
            return forward_taps(model, x, taps)

    def check_errors(errors) -> None:
        if not skip_bad and any(errors):
            raise ProbeError(next(e for e in errors if e))

    def write(index, arrays, errors) -> None:
        """Check one batch's features and write its shard."""
        ok = np.array([not e for e in errors])
        arrays = {t: np.asarray(a) for t, a in arrays.items()}  # forward-in-workers batches arrive as tensors
        for t, a in arrays.items():
            finite = np.isfinite(a.reshape(len(a), -1)).all(axis=1) | ~ok
            if not finite.all():
                bad = ids[int(index[int(np.argmin(finite))])]
                raise ProbeError(f"non-finite features for sample {bad} of {meta['dataset']}/{split} "
                                 f"(tap {t}); check the image and the weights, or use --dtype float32")
        start, stop = int(index[0]), int(index[-1]) + 1
        save_npz_atomic(parts / f"rows-{start:010d}-{stop:010d}.npz",
                        ok=ok, **{f"tap_{i}": arrays[t] for i, t in enumerate(taps)})
        bar.update(stop - start)

    def drain(index, host, arrived, errors) -> None:
        begin = time.perf_counter()
        if arrived is not None:
            arrived.synchronize()
        write(index, {t: v.numpy() for t, v in host.items()}, errors)
        prof.host["write"] = prof.host.get("write", 0.0) + time.perf_counter() - begin

    def loader(rest, n_workers):
        return torch.utils.data.DataLoader(images, batch_sampler=rest, num_workers=n_workers,
                                           pin_memory=dev.type == "cuda" and not on_device,
                                           persistent_workers=False,
                                           collate_fn=images.collate if on_device else None,
                                           prefetch_factor=4 if n_workers > 0 else None)

    def timed(iterable):
        """The loader's batches, with the time spent waiting for each."""
        it = iter(iterable)
        while True:
            with prof.stage("wait_data"):
                item = next(it, None)
            if item is None:
                return
            yield item

    with torch.inference_mode(), full_fp32(dev, meta["precision"]):
        if workers is not None or dev.type != "cpu":
            n_workers = default_workers(dev) if workers is None else workers
            with cpu_threads(dev, n_workers):
                _pipeline(images, loader(batches, n_workers), prepare_model, model_state, dev, taps,
                          meta["precision"], prof, timed, check_errors, drain)
        else:
            prepare_model()
            # CPU, workers not given: the first batches run in this process and are timed (the first
            # forward warms up, so the second pair is the measurement); the rest use the layout that
            # cpu_plan predicts fastest for these times.
            threads = torch.get_num_threads()
            data_s = forward_s = 0.0
            forward1_s = None
            with _BatchDecoder(images, threads) as decode:
                # a third batch times the forward on one thread when enough batches remain for processes that
                # each forward on one core to pay off (their start and the last, uneven round cost a batch each)
                # (not under --compile: compiled code is not forked into processes)
                timed_n = 3 if threads > 1 and not compile and len(batches) >= 3 + _BATCHES_PER_PROCESS * threads else 2
                for j, batch_rows in enumerate(batches[:timed_n]):
                    begin = time.perf_counter()
                    with prof.stage("decode"):
                        batch = decode(batch_rows)
                    seconds = (time.perf_counter() - begin) * batch_size / len(batch_rows)
                    with torch_threads(1 if j == 2 else threads):
                        forward = consume(*batch) * batch_size / len(batch_rows)
                    if j == 2:  # the third batch times the forward on one thread
                        forward1_s = forward
                    else:
                        data_s, forward_s = seconds, forward
                rest = batches[timed_n:]
                plan = cpu_plan(data_s, forward_s, threads, forward1_seconds=forward1_s)
                if plan.forward_processes:  # whole batches, forward included, in processes on one thread each
                    check = _ForwardInWorkers(images, rest, model_state["model"], taps, meta["precision"])
                    for index, arrays, errors in timed(check.run(plan.forward_processes)):
                        check_errors(errors)
                        with prof.stage("write"):
                            write(index, arrays, errors)
                else:
                    with torch_threads(plan.threads):
                        if plan.workers == 0:  # decode and forward take turns, each on every core
                            for batch_rows in rest:
                                with prof.stage("decode"):
                                    batch = decode(batch_rows)
                                consume(*batch)
                        else:
                            for batch in timed(loader(rest, plan.workers)) if rest else ():
                                consume(*batch)
    bar.close()
    _PROFILE.update(prof.summary())


def _pipeline(images, loader, prepare_model, model_state, dev, taps, precision, prof, timed, check_errors,
              drain) -> None:
    """The loader layout (every GPU run; on CPU when --workers is given): the stages of neighbouring batches overlap.

    Loader workers read (and, on the PIL path, decode) the next batches while this thread turns batch j+1 into the
    backbone's input (on CUDA on a side stream; on the tensor path there: nvJPEG decoding, resize, crop,
    normalisation, whose host part runs in this thread and device part beside the forward); the default stream runs
    batch j's forward and copies its features back to pinned memory; a writer thread waits for batch j-1's copy and
    writes its shard. The backbone is built in a thread once the workers have started, while the first batches
    decode. On CPU the same code runs without streams and events (the copy back is the forward's own output), and
    each shard is written before the next batch's forward, as a kill then loses no finished batch.
    """
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    import torch

    cuda = dev.type == "cuda"
    side = torch.cuda.Stream(dev) if cuda else None
    main = torch.cuda.current_stream(dev) if cuda else None
    batch_iter = iter(loader)  # forks the loader's workers (before any thread starts); they start decoding
    with ThreadPoolExecutor(1, thread_name_prefix="probe-build") as builder, \
            ThreadPoolExecutor(1, thread_name_prefix="probe-write") as writer:
        building = builder.submit(prepare_model)
        pending = None
        for index, x, errors in timed(batch_iter):
            with torch.cuda.stream(side) if cuda else nullcontext(), prof.stage("input", side, device=True):
                if getattr(images, "on_device", False):  # JPEG bytes: decoded, resized and normalised here
                    x, errors = images.finish_payloads(index, x, errors, dev)
                else:
                    x = images.finish(x.to(dev, non_blocking=True))
                x = x.contiguous(memory_format=torch.channels_last)
            check_errors(errors)
            if cuda:
                main.wait_stream(side)
                x.record_stream(main)
            with prof.stage("build_wait"):
                model = model_state.get("model") or building.result()
            prof.mark("first_forward")
            bf16 = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
            with prof.stage("forward", device=True), bf16:
                out = forward_taps(model, x, taps)
            with prof.stage("to_host", device=True):
                host = {t: v.float().contiguous().to("cpu", non_blocking=True) for t, v in out.items()}
            arrived = torch.cuda.Event() if cuda else None
            if cuda:
                arrived.record(main)
            if pending is not None:
                with prof.stage("write_wait"):
                    pending.result()
            pending = writer.submit(drain, index, host, arrived, errors)
            if not cuda:  # the forward ran synchronously: write its shard now, so a kill loses no finished batch
                pending.result()
        if pending is not None:
            pending.result()
        building.result()


def _finalize(parts: Path, final: Path, source, split: str, taps, meta: dict) -> None:
    """Stream the shards into a temporary HDF5 file, mark it complete, rename it into place, drop the shards."""
    import h5py

    shards = _shards(parts)
    n = len(source.splits[split])
    if _contiguous_end(shards) != n:
        raise ProbeError(f"internal error: shards of {final} do not cover all {n} rows; rerun to resume")
    keep = np.concatenate([np.load(p)["ok"] for _, _, p in shards])
    ids = source.ids[split]
    skipped = [ids[i] for i in np.flatnonzero(~keep)]
    if skipped:
        _report_skipped(skipped, f"{meta['dataset']}/{split}")
    n_keep = int(keep.sum())
    if n_keep == 0:
        raise ProbeError(f"every image of {meta['dataset']}/{split} was unreadable; nothing to cache")
    # storage dtype per tap: float16 unless a value would overflow it
    tap_dtypes = {}
    shapes = {}
    with np.load(shards[0][2]) as first:
        for i, t in enumerate(taps):
            shapes[t] = first[f"tap_{i}"].shape[1:]
    for i, t in enumerate(taps):
        if meta["dtype"] == "float32":
            tap_dtypes[t] = "float32"
            continue
        peak = 0.0
        for _, _, p in shards:
            with np.load(p) as z:
                a = z[f"tap_{i}"][z["ok"]]
                peak = max(peak, float(np.abs(a).max()) if a.size else 0.0)
        tap_dtypes[t] = "float16" if peak <= _FLOAT16_MAX else "float32"
    for stale in final.parent.glob(final.name + ".tmp*"):  # a finalize killed midway; we hold the lock
        stale.unlink()
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("labels", data=source.labels[split][keep].astype(np.int64))
        f.create_dataset("ids", data=np.array([ids[i] for i in np.flatnonzero(keep)], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
        group = f.create_group("features")
        datasets = {}
        for t in taps:
            rows_per_chunk = max(1, min(n_keep, (1 << 20) // max(1, int(np.prod(shapes[t])) * 2)))
            datasets[t] = group.create_dataset(t, shape=(n_keep, *shapes[t]), dtype=tap_dtypes[t],
                                               chunks=(rows_per_chunk, *shapes[t]))
        row = 0
        for _, _, p in shards:
            with np.load(p) as z:
                ok = z["ok"]
                m = int(ok.sum())
                for i, t in enumerate(taps):
                    datasets[t][row:row + m] = z[f"tap_{i}"][ok].astype(tap_dtypes[t])
                row += m
        for name in ("format", "key", "base_key", "backbone", "weights", "family", "dataset", "split",
                     "dataset_spec", "dtype", "precision", "pixels"):
            f.attrs[name] = meta[name]
        for name in ("classes", "taps", "data_config", "versions"):
            f.attrs[name] = json.dumps(meta[name])
        f.attrs["skipped"] = json.dumps(skipped)
        f.attrs["tap_dtypes"] = json.dumps(tap_dtypes)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        f.attrs["complete"] = True
    shutil.rmtree(parts, ignore_errors=True)
