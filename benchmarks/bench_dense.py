"""Frozen dense linear probe: training throughput (patch tokens/s) and peak memory as the dataset grows.

Writes a synthetic feature-cache file (``features/patch`` [N, T, D] float16, as extraction writes it) and a
targets file ([N, H, W] segmentation ids or depths) for each dataset size, then trains the dense linear probe
(:class:`probe.probes.dense_linear.DenseLinearProbe`, mini-batches streamed from the HDF5 files through
:class:`probe._dense_sweep.DenseBatches`) for one epoch per grid point. Each size runs in its own process, so
its peak resident memory (and, on CUDA, peak allocated GPU memory) is its own: streaming keeps it flat as N grows.

Printed per size: images, patch tokens seen, training seconds, patch tokens/s, achieved GFLOP/s as a share of
this machine's float32 matmul peak (FLOPs estimated from the linear layer and the two interpolation matmuls,
forward and backward: about 3x the forward), and the peak memory. The timed training includes the
streamed pass that standardises the features. The CPU model and the matmul peak are
printed first, as in ``bench_probes.py``.

Usage::

    python benchmarks/bench_dense.py                       # N = 64, 256, 1024 images; T = 196, D = 384, 112 px
    python benchmarks/bench_dense.py --sizes 32 128 --task depth --device cuda
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

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_files(folder: Path, n: int, *, tokens: int, dim: int, size: int, n_classes: int, task: str):
    """A feature file and a targets file of ``n`` images, written in chunks (never all in memory)."""
    import h5py

    rng = np.random.default_rng(0)
    feats, targets = folder / f"features-{n}.h5", folder / f"targets-{n}-{task}.h5"
    ids = np.array([str(i) for i in range(n)], dtype=object)
    with h5py.File(feats, "w") as f, h5py.File(targets, "w") as t:
        ds = f.create_group("features").create_dataset("patch", shape=(n, tokens, dim), dtype="float16",
                                                       chunks=(max(1, min(n, (1 << 20) // (tokens * dim * 2))),
                                                               tokens, dim))
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        dtype = np.uint8 if task == "segmentation" else np.float32
        tg = t.create_dataset("targets", shape=(n, size, size), dtype=dtype, chunks=(1, size, size))
        t.create_dataset("ids", data=ids, dtype=h5py.string_dtype("utf-8"))
        for start in range(0, n, 64):
            stop = min(n, start + 64)
            ds[start:stop] = rng.normal(size=(stop - start, tokens, dim)).astype(np.float16)
            if task == "segmentation":
                tg[start:stop] = rng.integers(0, n_classes, size=(stop - start, size, size), dtype=np.uint8)
            else:
                tg[start:stop] = rng.uniform(0.5, 9.5, size=(stop - start, size, size)).astype(np.float32)
    return feats, targets


def run_one(args) -> dict:
    import torch

    from probe._dense_sweep import DenseBatches
    from probe.probes.dense_linear import DenseLinearProbe

    with tempfile.TemporaryDirectory() as tmp:
        feats, targets = write_files(Path(tmp), args.one, tokens=args.tokens, dim=args.dim, size=args.size,
                                     n_classes=args.classes, task=args.task)
        data = DenseBatches([(feats, targets, None)])
        points = [{"lr": lr, "weight_decay": 0.0} for lr in args.lrs]
        est = DenseLinearProbe(task=args.task, n_classes=args.classes, epochs=1, batch_size=args.batch_size,
                               device=args.device)
        if torch.cuda.is_available() and args.device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        from probe.probes.dense_linear import _train_heads

        torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: not timed
        start = time.perf_counter()
        _train_heads(est, data, points)
        seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and args.device != "cpu" else None
    return {"n": args.one, "seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_mib": gpu}


def flops_per_image(tokens: int, dim: int, size: int, n_out: int) -> float:
    """Forward + backward (about 3x forward) FLOPs of one head on one image: linear layer and upsampling."""
    side = int(round(tokens ** 0.5))
    forward = 2 * tokens * dim * n_out + 2 * n_out * (size * side * side + size * side * size)
    return 3.0 * forward


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="dataset sizes (images)")
    p.add_argument("--tokens", type=int, default=196, help="patch tokens per image (a square grid)")
    p.add_argument("--dim", type=int, default=384, help="feature dimension")
    p.add_argument("--size", type=int, default=112, help="label resolution (pixels, square)")
    p.add_argument("--classes", type=int, default=40, help="segmentation classes")
    p.add_argument("--task", choices=["segmentation", "depth"], default="segmentation")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="grid points trained together")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args)))
        return 0

    import torch

    from bench_probes import cpu_model, matmul_peak

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    peak = matmul_peak(device)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"float32 matmul peak on {device}: {peak:.1f} GFLOP/s")
    n_out = args.classes if args.task == "segmentation" else 1
    print(f"task {args.task}: T={args.tokens} tokens x D={args.dim}, labels {args.size}x{args.size}, "
          f"{len(args.lrs)} heads, batch {args.batch_size}, 1 epoch per size")
    print(f"{'images':>7} {'tokens':>10} {'train s':>8} {'tokens/s':>10} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--tokens", str(args.tokens), "--dim", str(args.dim),
               "--size", str(args.size), "--classes", str(args.classes), "--task", args.task, "--batch-size",
               str(args.batch_size), "--device", str(device), "--lrs", *map(str, args.lrs)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        tokens = n * args.tokens * len(args.lrs)
        gflops = n * len(args.lrs) * flops_per_image(args.tokens, args.dim, args.size, n_out) / r["seconds"] / 1e9
        gpu = f"{r['gpu_mib']:.0f}" if r["gpu_mib"] is not None else "-"
        print(f"{n:>7} {tokens:>10,} {r['seconds']:>8.2f} {tokens / r['seconds']:>10,.0f} {gflops:>8.2f} "
              f"{gflops / peak:>8.1%} {r['rss_mib']:>13.0f} {gpu:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
