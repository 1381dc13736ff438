"""Does torch's OpenMP pool slow the CPU extractor's decoding threads? PIL vs torch decoding, per OpenMP setting.

The CPU extractor (no ``--workers``) decodes a batch in threads of its own process (``probe._extract._BatchDecoder``)
between forward passes. This script times exactly that, on the same JPEGs, for both pixel paths (``pil``: timm's
PIL transform; ``gpu``: torchvision's CPU decoder and the tensor resize), with 1 and 2 decoding threads, after one
forward of a tiny backbone (as in an extraction, so torch's OpenMP pool has just worked), in a fresh process per
OpenMP setting (read once when torch loads): the default, ``OMP_WAIT_POLICY=passive`` (waiting threads sleep instead of
spinning) and ``OMP_NUM_THREADS=1``. Prints images/s (median of ``--repeats``, with the range) and each setting's
ratio to the default. Decoding does no matrix arithmetic, so no share of the matmul peak is given.

    python benchmarks/bench_decode_threads.py
    python benchmarks/bench_decode_threads.py --extract     # also extract-features end to end per setting
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"default": {}, "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
            "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"}}


def child(spec: str, repeats: int, extract: bool) -> dict:
    """In this process: images/s of the in-process batch decoder per (path, threads), ``repeats`` times each; with
    ``extract`` also of ``probe.extract_features`` per path (test_vit at 160 px, a fresh cache each run)."""
    import timm.data
    import torch

    import probe
    from probe._extract import _BatchDecoder, _SplitImages
    from probe._pixels import TensorImages

    source = probe.open_dataset(spec)
    split = source.split_names[0]
    model = probe.create_backbone("test_vit", random_init=True, img_size=64).model
    cfg = dict(input_size=(3, 160, 160), interpolation="bicubic", crop_pct=0.95, crop_mode="center",
               mean=(0.5,) * 3, std=(0.5,) * 3)
    pil = _SplitImages(source, split, timm.data.create_transform(**cfg, is_training=False), cfg["input_size"])
    images = {"pil": pil, "gpu": TensorImages(pil, source, split, cfg, on_device=False)}
    rows = list(range(len(pil)))
    out = {}
    for _ in range(repeats):
        for path, ds in images.items():
            for threads in (1, 2):
                with torch.inference_mode():
                    model(torch.zeros(8, 3, 64, 64))  # the forward just before, as in an extraction
                with _BatchDecoder(ds, threads) as decode:
                    begin = time.perf_counter()
                    decode(rows)
                    out.setdefault(f"{path} {threads}", []).append(len(rows) / (time.perf_counter() - begin))
            if extract:
                with tempfile.TemporaryDirectory() as cache:
                    begin = time.perf_counter()
                    probe.extract_features("test_vit", spec, random_init=True, cache_dir=cache, pixels=path,
                                           progress=False, splits=[split])
                    out.setdefault(f"{path} extract", []).append(len(rows) / (time.perf_counter() - begin))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="JPEGs to write")
    parser.add_argument("--imagenet-sizes", action=argparse.BooleanOptionalAction, default=True,
                        help="JPEGs of ImageNet-like sizes (default) instead of 256 x 256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract", action=argparse.BooleanOptionalAction, default=False,
                        help="also time extract-features end to end (test_vit at 160 px) per path and setting")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.repeats, args.extract)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_extract import make_jpeg_folder
    from bench_probes import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        spec = make_jpeg_folder(Path(tmp) / "jpegs", args.images, size=None if args.imagenet_sizes else 256)
        results = {}
        for name, env in SETTINGS.items():
            proc = subprocess.run([sys.executable, __file__, "--child", spec, "--repeats", str(args.repeats),
                                   "--extract" if args.extract else "--no-extract"],
                                  env={**os.environ, **env}, capture_output=True, text=True, check=True)
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"in-process batch decoding of {args.images} JPEGs to 160 px, {cpu_model()}, {os.cpu_count()} cores, "
          f"{args.repeats} runs each (median, range) in images/s:")
    for key in results["default"]:
        path, threads = key.split()
        what = "extract-features" if threads == "extract" else f"{threads} thread{'s' if threads != '1' else ' '}"
        base = statistics.median(results["default"][key])
        cells = []
        for name, r in results.items():
            med = statistics.median(r[key])
            cells.append(f"{name} {med:6.1f} ({min(r[key]):.0f}-{max(r[key]):.0f})"
                         + ("" if name == "default" else f" {med / base:4.2f}x"))
        print(f"  --pixels {path:<3s} {what:<16s}: " + ";  ".join(cells))
    print("  load average (1, 5, 15 min) at the end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
