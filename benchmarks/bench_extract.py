"""How close does ``extract-features`` run to its slowest part, on each pixel path?

Measures, side by side in one run and on the same images:

(a) the backbone's bare forward throughput on device-resident, already-preprocessed tensors (images/s), as the
    extractor runs it (channels-last, bf16 autocast on CUDA),
(b) per pixel path (``pil``: PIL decode and resize in the loader workers; ``gpu``: JPEG bytes decoded by torchvision,
    resized and normalised as tensor ops, on the device on CUDA), the data pipeline alone up to the backbone's input
    on the device (images/s),
(c) per pixel path, end to end ``probe.extract_features`` into a fresh cache, building the backbone and the HDF5
    writes included (images/s),

and prints (c) / (a), (c) / min(a, b), and each stage's share of the last (c) run's wall time (from the
extractor's own profile: host seconds in each stage, and on CUDA the device seconds between events; stages overlap,
so shares add up to more than 1, and the one near 1 is what the others wait for). The agreement of the two paths is
printed beside: per image, the largest and mean absolute difference of the backbone's input in 8-bit levels, and
the cosine of the pooled features of each image. Every throughput is also a share of the float32 matmul peak
measured in the same run (forward FLOPs counted by torch's FLOP counter). Each stage is timed ``--repeats`` times,
interleaved; medians with the range.

    python benchmarks/bench_extract.py                       # test_vit at 160 px, 512 JPEGs, CPU, both paths
    python benchmarks/bench_extract.py --model test_resnet
    python benchmarks/bench_extract.py --gpu-models          # on CUDA: the figures of issue 25's table
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_probes import cpu_model, matmul_peak  # noqa: E402  (one implementation of each)

#: ImageNet-like sizes (width, height): most ImageNet photos are 500 px on the longer side, 4:3 or 3:2.
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (640, 480), (500, 500), (400, 300))


def _write_jpeg(job) -> None:
    from PIL import Image

    path, width, height, seed = job
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)  # grain: photo-like entropy
    Image.fromarray(img).save(path, quality=90)


def make_jpeg_folder(root: Path, n: int, size: int | None = 256) -> str:
    """``n`` random-texture JPEGs with grain in two class folders: ``size`` x ``size``, or (``size=None``) the
    ImageNet-like sizes of :data:`IMAGENET_SIZES` in turn. Written by a process per core."""
    from multiprocessing import get_context

    jobs = []
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = (size, size) if size else IMAGENET_SIZES[i % len(IMAGENET_SIZES)]
        jobs.append((d / f"{i:05d}.jpg", w, h, i))
    with get_context("fork").Pool(max(1, min(len(os.sched_getaffinity(0)), 16))) as pool:
        pool.map(_write_jpeg, jobs, chunksize=16)
    return f"imagefolder:{root}"


def forward_gflop(model, input_size, dev) -> float:
    """GFLOP of one image's forward (torch's FLOP counter on one image)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from probe._taps import forward_taps

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward_taps(model, torch.zeros(1, *input_size, device=dev), ("pooled",))
    return counter.get_total_flops() / 1e9


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench(model_name: str, spec: str, *, batch_size: int, workers: int | None, device: str, repeats: int,
          img_size: int | None, paths=("pil", "gpu"), compile_forward: bool = False, reuse: bool = False,
          compile_runs: bool = False) -> dict:
    import timm.data
    import torch

    import probe
    from probe import _extract
    from probe._extract import _SplitImages
    from probe._pixels import StoredImages, TensorImages
    from probe._runtime import default_workers, resolve_device
    from probe._taps import forward_taps

    dev = resolve_device(device)
    bf16 = dev.type == "cuda"
    probe.create_backbone("test_vit", random_init=True)  # imports timm's modules: not the backbone's build time
    begin = time.perf_counter()
    bb = probe.create_backbone(model_name, random_init=True, img_size=img_size)
    build_s = time.perf_counter() - begin
    source = probe.open_dataset(spec)
    split = source.split_names[0]
    n = len(source.splits[split])
    n_workers = default_workers(dev) if workers is None else workers
    cfg = bb.data_config
    pil_images = _SplitImages(source, split, timm.data.create_transform(**cfg, is_training=False),
                              tuple(cfg["input_size"]))
    datasets = {"pil": pil_images,
                "gpu": TensorImages(pil_images, source, split, cfg, on_device=dev.type == "cuda")}
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    model = bb.model.to(dev).to(memory_format=torch.channels_last)  # as the extractor runs it, on every device
    gflop = forward_gflop(model, cfg["input_size"], dev)
    # already on the device: (a) is the bare forward
    tensors = pil_images.finish(torch.stack([pil_images[i][1] for i in range(min(n, batch_size))]).to(dev))
    def pooled(x):  # the pooled tap, as forward_taps computes it
        return forward_taps(model, x, ("pooled",))["pooled"]

    # torch.compile of the whole function: compiling the module would compile only its forward(), which
    # forward_taps does not call
    forward_fn = torch.compile(pooled) if compile_forward else pooled

    def forward_only():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            done = 0
            while done < n:
                x = tensors[: min(batch_size, n - done)].contiguous(memory_format=torch.channels_last)
                forward_fn(x).float().cpu()
                done += len(x)
        return n

    def data_only(path, stored=False):
        images = datasets[path]
        if stored:  # read through the pixel store that the warm-up filled (what a later backbone's loader does)
            from probe._extract import _pixel_store

            store = _pixel_store(stores / path, source, split, cfg, repr(pil_images.transform), pixels=path,
                                 device=device)
            assert store is not None and store.written() == n, "the pixel store is not filled"
            images = StoredImages(images, store)
        on_device = getattr(images, "on_device", False)
        loader = torch.utils.data.DataLoader(images, batch_sampler=batches, num_workers=n_workers,
                                             pin_memory=dev.type == "cuda" and not on_device,
                                             collate_fn=images.collate if on_device else None,
                                             prefetch_factor=4 if n_workers > 0 else None)
        count = 0
        for index, x, errors in loader:  # the last steps on the device, as the extractor does them
            if on_device:
                x, _ = images.finish_payloads(index, x, errors, dev)
            else:
                x = images.finish(x.to(dev, non_blocking=True))
            count += len(x)
        return count

    profiles = {}
    keep = Path(tempfile.mkdtemp(prefix="bench-extract-"))  # the last runs' entries, for the agreement

    runs = itertools.count()

    stores = keep / "stores"  # pixel stores filled once (warm-up), for the runs that reuse decoded pixels

    def end_to_end(path, variant=""):
        """One extraction into a fresh cache (no feature is reused). ``variant``: "" (plain), "store" (with
        --reuse-pixels and an empty pixel store: the first backbone's run, which writes it), "reused" (with a
        filled store: any later backbone with the same geometry), "compiled" (--compile)."""
        name = path + (f"_{variant}" if variant else "")
        if name in profiles:
            shutil.rmtree(profiles[name]["cache"], ignore_errors=True)
        cache = keep / f"{name}-{next(runs)}"
        if variant == "reused":
            cache.mkdir()
            (cache / "pixels").symlink_to(stores / path / "pixels", target_is_directory=True)
        _extract._PROFILE.clear()
        probe.extract_features(model_name, spec, random_init=True, img_size=img_size, cache_dir=cache,
                               batch_size=batch_size, workers=workers, device=device, progress=False,
                               pixels=path, splits=[split], reuse_pixels=variant in ("store", "reused"),
                               compile=variant == "compiled")
        assert _extract._PROFILE, "the extraction computed nothing"
        profiles[name] = dict(_extract._PROFILE, cache=cache)
        return n

    forward_only()  # warm-up (allocator, kernels; the compilation with --compile)
    peaks = [matmul_peak(dev)]
    stages = [("forward", forward_only)]
    if compile_runs:  # the bare forward under torch.compile, beside the eager one
        compiled_fn = torch.compile(pooled)

        def forward_compiled():
            nonlocal forward_fn
            forward_fn, eager = compiled_fn, forward_fn
            try:
                return forward_only()
            finally:
                forward_fn = eager

        forward_compiled()  # compiles (not timed)
        stages.append(("forward_compiled", forward_compiled))
    for p in paths:
        stages += [(f"data_{p}", lambda p=p: data_only(p)), (f"end_to_end_{p}", lambda p=p: end_to_end(p))]
        if reuse and not (dev.type == "cuda" and p == "gpu"):  # there the JPEGs are decoded on the GPU: no store
            # fill the store once, as the first backbone of a study does: the later backbones' view of it
            probe.extract_features(model_name, spec, random_init=True, img_size=img_size, cache_dir=stores / p,
                                   batch_size=batch_size, workers=workers, device=device, progress=False, pixels=p,
                                   splits=[split], reuse_pixels=True)
            stages += [(f"data_{p}_reused", lambda p=p: data_only(p, stored=True)),
                       (f"end_to_end_{p}_store", lambda p=p: end_to_end(p, "store")),
                       (f"end_to_end_{p}_reused", lambda p=p: end_to_end(p, "reused"))]
        if compile_runs:
            stages.append((f"end_to_end_{p}_compiled", lambda p=p: end_to_end(p, "compiled")))
    times = {name: [] for name, _ in stages}
    for _ in range(repeats):
        for name, fn in stages:
            _sync(dev)
            t = time.perf_counter()
            count = fn()
            _sync(dev)
            times[name].append(count / (time.perf_counter() - t))
        peaks.append(matmul_peak(dev))
    agreement = _agreement(datasets, profiles, split, min(n, 64), dev) if set(paths) == {"pil", "gpu"} else None
    shutil.rmtree(keep, ignore_errors=True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    return {"model": model_name, "device": f"{dev} ({name})", "images": n, "workers": n_workers,
            "batch_size": batch_size, "input_size": cfg["input_size"], "build_s": build_s,
            "threads": torch.get_num_threads(), "gflop": gflop, "peak": statistics.median(peaks),
            "precision": "bf16" if bf16 else "fp32", "paths": paths, "profiles": profiles,
            "agreement": agreement, "compiled": compile_forward, "reuse": reuse, "compile_runs": compile_runs,
            **times}


def _agreement(datasets, profiles, split, m, dev) -> dict:
    """Per image: max and mean |input difference| in 8-bit levels, and the cosine of the pooled features."""
    import h5py
    import torch

    pil, gpu = datasets["pil"], datasets["gpu"]
    idx = list(range(m))
    _, x, _ = torch.utils.data.default_collate([pil[i] for i in idx])
    a = pil.finish(x)
    if getattr(gpu, "on_device", False):
        b, _ = gpu.finish_payloads(*gpu.collate([gpu[i] for i in idx]), dev)
        b = b.cpu()
    else:
        _, y, _ = torch.utils.data.default_collate([gpu[i] for i in idx])
        b = gpu.finish(y)
    levels = (a - b).abs() * pil.std.view(1, -1, 1, 1) * 255
    feats = []
    for path in ("pil", "gpu"):
        (h5,) = Path(profiles[path]["cache"]).rglob(f"{split}-*.h5")
        with h5py.File(h5, "r") as f:
            feats.append(f["features/pooled"][()].astype(np.float64))
    fa, fb = feats
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    return {"max": levels.amax(dim=(1, 2, 3)).numpy(), "mean": levels.mean(dim=(1, 2, 3)).numpy(), "cos": cos}


def _shares(profile: dict) -> str:
    wall = profile["wall_s"]
    host = ", ".join(f"{k} {v / wall:.0%}" for k, v in profile["host_s"].items())
    out = f"host: {host}"
    if profile["device_s"]:
        out += "; device: " + ", ".join(f"{k} {v / wall:.0%}" for k, v in profile["device_s"].items())
    return out + f" (wall {wall:.2f} s)"


def report(r: dict) -> None:
    med = {k: statistics.median(v) for k, v in r.items() if isinstance(v, list) and v and isinstance(v[0], float)}
    span = {k: f"{min(r[k]):.0f}-{max(r[k]):.0f}" for k in med}
    peak = r["peak"]

    def of_peak(k):  # this throughput's forward FLOP rate as a share of the float32 matmul peak
        return f"{med[k] * r['gflop'] / peak:6.1%} of peak"

    print(f"{r['model']} on {r['device']}, {r['images']} images at {r['input_size'][1]} px, batch {r['batch_size']}, "
          f"{r['workers']} workers, {r['precision']}, {len(r['forward'])} runs each (median, range) in images/s; "
          f"float32 matmul peak {peak:.0f} GFLOP/s, forward {r['gflop']:.2f} GFLOP/image:")
    label = "forward only (device-resident input" + (", torch.compile)" if r["compiled"] else ")")
    print(f"  (a) {label:<44s} {med['forward']:8.1f}  ({span['forward']})  {of_peak('forward')}")
    if "forward_compiled" in med:
        print(f"  (a) {'forward only, torch.compile':<44s} {med['forward_compiled']:8.1f}  ({span['forward_compiled']})"
              f"  {of_peak('forward_compiled')}   compiled / eager = {med['forward_compiled'] / med['forward']:.2f}")
    for p in r["paths"]:
        d, e = f"data_{p}", f"end_to_end_{p}"
        print(f"  --pixels {p}:")
        print(f"    (b) data only                 {med[d]:8.1f}  ({span[d]})")
        if f"{d}_reused" in med:
            print(f"    (b) data only, read from the pixel store  {med[d + '_reused']:8.1f}  ({span[d + '_reused']})"
                  f"  / decoding = {med[d + '_reused'] / med[d]:.1f}")
        print(f"    (c) extract-features          {med[e]:8.1f}  ({span[e]})  {of_peak(e)}")
        print(f"    (c) / (a) = {med[e] / med['forward']:.2f}   (c) / min(a, b) = "
              f"{med[e] / min(med['forward'], med[d]):.2f}")
        prof = r["profiles"].get(p)
        if prof:
            print(f"    stages of the last (c) run: {_shares(prof)}")
            marks = prof["marks_s"]
            if "first_forward" in marks:
                wait = prof["host_s"].get("build_wait", 0.0)
                print(f"    first forward {marks['first_forward']:.2f} s after the start; building the backbone took "
                      f"{prof['host_s'].get('build', 0.0):.2f} s, of which the forward waited {wait:.2f} s")
        for variant, what in (("store", "--reuse-pixels, first backbone (writes the store)"),
                              ("reused", "--reuse-pixels, later backbone (reads it)"),
                              ("compiled", "--compile (compilation included)")):
            k = f"{e}_{variant}"
            if k in med:
                print(f"    (c) {what:<52s} {med[k]:8.1f}  ({span[k]})  / plain (c) = {med[k] / med[e]:.2f}")
        if r["device"].startswith("cpu") and r["workers"] > 0 and p == "pil":
            # On a CPU, decoding and the forward share the cores: no layout beats doing both in
            # threads / (workers / b + threads / a) images/s unless the forward scales worse than linearly
            bound = r["threads"] / (r["workers"] / med[d] + r["threads"] / med["forward"])
            print(f"    shared-core bound {bound:8.1f}: (c) / bound = {med[e] / bound:.2f}")
    if len(r["paths"]) == 2:
        a, b = med["end_to_end_gpu"], med["end_to_end_pil"]
        print(f"  gpu / pil: data {med['data_gpu'] / med['data_pil']:.2f}x, extract-features {a / b:.2f}x")
    ag = r["agreement"]
    if ag is not None:
        print(f"  agreement gpu vs pil on {len(ag['max'])} images: backbone input per image max |diff| "
              f"{np.median(ag['max']):.2f} levels (median; worst {ag['max'].max():.2f}), mean |diff| "
              f"{np.median(ag['mean']):.3f} levels (worst {ag['mean'].max():.3f}); pooled-feature cosine over all "
              f"{len(ag['cos'])} images: min {ag['cos'].min():.5f}, median {np.median(ag['cos']):.5f}")
    print(f"  building the backbone alone took {r['build_s']:.2f} s (before the runs)")
    print("  load average (1, 5, 15 min) at the end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="test_vit", help="timm model (random init)")
    parser.add_argument("--images", type=int, default=512, help="JPEGs to generate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the extractor's)")
    parser.add_argument("--img-size", type=int, default=None, help="input size override (default: the model's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pixels", nargs="+", default=["pil", "gpu"], choices=["pil", "gpu"],
                        help="pixel paths to measure (default both, side by side)")
    parser.add_argument("--imagenet-sizes", action=argparse.BooleanOptionalAction, default=False,
                        help="write JPEGs of ImageNet-like sizes (500 x 375 and the like) instead of 256 x 256")
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=False,
                        help="also time extract-features with --reuse-pixels: the run that writes the pixel store "
                             "(the first backbone) and a run that reads a filled one (any later backbone)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="also time the bare forward and extract-features under torch.compile")
    parser.add_argument("--gpu-models", action="store_true",
                        help="on CUDA, instead of --model: issue 25's table, vit_base_patch16_224 at 224 over 4,096 "
                             "ImageNet-sized JPEGs (batch 256, bf16) and resnetv2_101x3_bit at 448 over 1,024 of "
                             "them (batch 64), both random init; then ViT-B/16's bare forward with torch.compile")
    args = parser.parse_args(argv)
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        if not args.gpu_models:
            spec = make_jpeg_folder(Path(tmp) / "jpegs", args.images, size=None if args.imagenet_sizes else 256)
            report(bench(args.model, spec, batch_size=args.batch_size, workers=args.workers, device=args.device,
                         repeats=args.repeats, img_size=args.img_size, paths=tuple(args.pixels), reuse=args.reuse,
                         compile_runs=args.compile))
            return
        if not torch.cuda.is_available():
            print("--gpu-models: CUDA is not available here; nothing measured")
            return
        begin = time.perf_counter()
        big = make_jpeg_folder(Path(tmp) / "big", 4096, size=None)
        print(f"wrote 4,096 ImageNet-sized JPEGs in {time.perf_counter() - begin:.1f} s", flush=True)
        report(bench("vit_base_patch16_224", big, batch_size=256, workers=args.workers, device="cuda",
                     repeats=args.repeats, img_size=None, paths=tuple(args.pixels)))
        sys.stdout.flush()
        bit = make_jpeg_folder(Path(tmp) / "bit", 1024, size=None)
        report(bench("resnetv2_101x3_bit", bit, batch_size=64, workers=args.workers, device="cuda",
                     repeats=args.repeats, img_size=None, paths=tuple(args.pixels)))  # its own 448 px
        sys.stdout.flush()
        # torch.compile of the bare forward: kept in the extractor only if this beats (a) above clearly
        report(bench("vit_base_patch16_224", big, batch_size=256, workers=args.workers, device="cuda",
                     repeats=1, img_size=None, paths=("gpu",), compile_forward=True))


if __name__ == "__main__":
    main()
