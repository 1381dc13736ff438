"""Representation similarity from the cache: time of a block x block CKA matrix and memory against the row count.

Two synthetic cache files (float16, the cache's default storage) of the same images, each with ``--blocks``
block taps of ``--dim`` features, are compared block by block (``probe.block_matrix``, CKA biased and debiased:
both come from the same accumulators). Each timed case runs in a fresh subprocess, which also reports its own
peak resident memory (``ru_maxrss``) and its resident memory after the imports (so the difference is what the
comparison added). Printed per case: wall time, the FLOPs of the block products (2 n p q per pair of taps, self
pairs included, the jackknife's per-group work not counted), GFLOP/s, and that as a share of the float32 and
float64 matmul peaks measured just before the case in the same run.

Memory against the row count: the same comparison of ``--memory-blocks`` taps per side at each of
``--memory-rows`` (default 10,000 and 100,000 images); the accumulators depend on the taps and dimensions, never
on the rows, so fewer taps keep the 100,000-row run short without changing what is measured.

Usage::

    python benchmarks/bench_similarity.py                  # 12 x 12 blocks, 10,000 images, 768-d; memory at 10k/100k
    python benchmarks/bench_similarity.py --quick          # 4 x 4 blocks, 2,000 images; memory at 2k/20k
    python benchmarks/bench_similarity.py --knn            # also mutual k-NN (k = 10) on one pair of taps

The figures measured on this project's hosts, with the command and the CPU, are in the README ("Representation
similarity").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_entry(path: Path, *, rows: int, blocks: int, dim: int, seed: int, backbone: str, chunk: int = 5000):
    """A complete cache file (float16) with ``blocks`` block taps: each block a random map of a shared latent plus
    its own noise, so neighbouring blocks and the two files are partly alike. Written chunk by chunk."""
    import h5py

    rng = np.random.default_rng(seed)
    latent_dim = 64
    maps = [rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim) for _ in range(blocks)]
    with h5py.File(path, "w") as f:
        f["labels"] = np.zeros(rows, dtype=np.int64)
        f["ids"] = np.array([f"img{i:07d}" for i in range(rows)], dtype=h5py.string_dtype())
        ds = [f.create_dataset(f"features/block{i}", shape=(rows, dim), dtype=np.float16) for i in range(blocks)]
        latent_rng = np.random.default_rng(12345)  # the same images on both sides
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            z = latent_rng.normal(size=(stop - start, latent_dim))
            for i in range(blocks):
                x = np.tanh(z @ maps[i]) + 0.5 * rng.normal(size=(stop - start, dim)) + 0.3
                ds[i][start:stop] = x.astype(np.float16)
        attrs = {"format": 1, "key": f"bench-{backbone}-{rows}", "backbone": backbone, "weights": "random-init:seed0",
                 "family": "convnet" if "resnet" in backbone else "transformer", "dataset": "bench", "split": "test",
                 "complete": True, "precision": "fp32"}
        for k, v in attrs.items():
            f.attrs[k] = v
        for k, v in {"classes": ["x"], "taps": [f"block{i}" for i in range(blocks)],
                     "data_config": {"input_size": [3, 224, 224]}, "versions": {}, "skipped": []}.items():
            f.attrs[k] = json.dumps(v)
    return path


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of n x n matmuls in ``dtype`` on the CPU."""
    import torch

    t = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=t), torch.randn(n, n, dtype=t)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def cpu_seconds() -> float:
    """CPU seconds of this process, all threads (on a shared host less tenant-dependent than the wall time)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """One timed comparison in this (fresh) process; prints a JSON line."""
    import torch  # noqa: F401  (imported before the baseline memory is read)

    import probe
    from probe import similarity  # noqa: F401

    base = rss_mb()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    if args.child == "cka":
        frame = probe.block_matrix(args.a, args.b, measures=["cka", "cka_debiased"], product_dtype=args.product_dtype,
                                   device="cpu")
    else:
        frame = probe.compare_entries(args.a, args.b, taps=["block0"], measures=["mutual_knn"], k=10, device="cpu")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds() - start_cpu, "rss_base_mb": base, "rss_peak_mb": rss_mb(), "rows": frame.height,
                      "mean_value": float(frame["value"].mean())}))


def run_child(mode: str, a: Path, b: Path, product_dtype: str = "float64") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--a", str(a), "--b", str(b), "--product-dtype", product_dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="images of the timed block x block matrix")
    parser.add_argument("--dim", type=int, default=768, help="features per tap")
    parser.add_argument("--blocks", type=int, default=12, help="block taps per side")
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[10_000, 100_000],
                        help="row counts of the memory comparison")
    parser.add_argument("--memory-blocks", type=int, default=3, help="block taps per side of the memory comparison")
    parser.add_argument("--knn", action=argparse.BooleanOptionalAction, default=False,
                        help="also time mutual k-NN (k = 10) on one pair of taps at --rows")
    parser.add_argument("--products", nargs="+", default=["float64", "float32"], choices=["float64", "float32"],
                        help="dtypes of the block products timed on the block x block matrix (default both)")
    parser.add_argument("--quick", action="store_true", help="4 x 4 blocks, 2,000 images, memory at 2k and 20k")
    parser.add_argument("--dir", default=None, help="where the synthetic cache files go (default: a temporary folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--a", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--b", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--product-dtype", default="float64", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rows, args.blocks, args.memory_rows = 2000, 4, [2000, 20_000]
    import platform

    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.lower().startswith("model name")),
               platform.processor())
    print(f"CPU: {cpu}; {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} at the start (the host is shared)")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        a = write_entry(tmp / "a.h5", rows=args.rows, blocks=args.blocks, dim=args.dim, seed=1, backbone="bench_resnet")
        b = write_entry(tmp / "b.h5", rows=args.rows, blocks=args.blocks, dim=args.dim, seed=2, backbone="bench_vit")
        print(f"wrote 2 x {args.rows:,} rows x {args.blocks} taps x {args.dim}-d float16 in "
              f"{time.perf_counter() - t0:.1f} s\n")
        pairs = args.blocks * args.blocks + 2 * args.blocks
        flops = 2.0 * args.rows * args.dim * args.dim * pairs
        print(f"{args.blocks} x {args.blocks} block CKA (biased + debiased, jackknife intervals), {args.rows:,} "
              f"images, {args.dim}-d: {flops / 1e12:.2f} TFLOP of block products ({pairs} pairs with the self pairs)")
        print(f"{'products':>9s} {'seconds':>8s} {'CPU s':>7s} {'GFLOP/s':>8s} {'fp32 peak':>9s} {'of fp32':>8s} "
              f"{'fp64 peak':>9s} {'of fp64':>8s} {'RSS MB':>7s} {'+ after imports':>15s} {'load':>5s}")
        for dtype in args.products:
            p32, p64 = matmul_peak("float32"), matmul_peak("float64")
            r = run_child("cka", a, b, dtype)
            rate = flops / r["seconds"] / 1e9
            print(f"{dtype:>9s} {r['seconds']:8.1f} {r['cpu_seconds']:7.1f} {rate:8.1f} {p32:9.1f} "
                  f"{rate / p32 * 100:7.1f}% {p64:9.1f} {rate / p64 * 100:7.1f}% {r['rss_peak_mb']:7.0f} "
                  f"{r['rss_peak_mb'] - r['rss_base_mb']:15.0f} {os.getloadavg()[0]:5.1f}")
        if args.knn:
            p32 = matmul_peak("float32")
            r = run_child("knn", a, b)
            kflops = 2 * 2.0 * args.rows * args.rows * args.dim  # two neighbour lists, n x n x D each
            rate = kflops / r["seconds"] / 1e9
            print(f"\nmutual k-NN (k = 10), one pair of taps, {args.rows:,} images: {r['seconds']:.1f} s, "
                  f"{rate:.1f} GFLOP/s of similarity products = {rate / p32 * 100:.1f}% of the float32 peak "
                  f"({p32:.1f}); RSS {r['rss_peak_mb']:.0f} MB (+{r['rss_peak_mb'] - r['rss_base_mb']:.0f})")
        a.unlink()
        b.unlink()
        print(f"\nmemory against the row count: {args.memory_blocks} x {args.memory_blocks} block CKA, "
              f"{args.dim}-d, float32 products")
        print(f"{'rows':>9s} {'seconds':>8s} {'GFLOP/s':>8s} {'of fp32':>8s} {'RSS MB':>7s} {'+ after imports':>15s}")
        for rows in args.memory_rows:
            a = write_entry(tmp / "a.h5", rows=rows, blocks=args.memory_blocks, dim=args.dim, seed=1,
                            backbone="bench_resnet")
            b = write_entry(tmp / "b.h5", rows=rows, blocks=args.memory_blocks, dim=args.dim, seed=2,
                            backbone="bench_vit")
            p32 = matmul_peak("float32")
            r = run_child("cka", a, b, "float32")
            mflops = 2.0 * rows * args.dim * args.dim * (args.memory_blocks ** 2 + 2 * args.memory_blocks)
            rate = mflops / r["seconds"] / 1e9
            print(f"{rows:9,d} {r['seconds']:8.1f} {rate:8.1f} {rate / p32 * 100:7.1f}% {r['rss_peak_mb']:7.0f} "
                  f"{r['rss_peak_mb'] - r['rss_base_mb']:15.0f}")
            a.unlink()
            b.unlink()


if __name__ == "__main__":
    main()
