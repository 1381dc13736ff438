"""Fine-tuning throughput: training images/s and the share of training time spent waiting for data.

CPU part: tiny timm models (``test_vit``, ``test_resnet``) at random init, fine-tuned on the built-in ``digits``
through :func:`probe.finetune` itself (the real loader, augmentation, step, per-epoch checkpoint). Reported per
model: images/s and data-wait share of the epochs after the first (the first includes worker start-up), median
and range over ``--repeats`` runs. The target is a data-wait share under 10%.

GPU part (CUDA only; skipped and said so otherwise): images/s of ``vit_base_patch16_224`` at 224 pixels, random
init, bf16 autocast, full fine-tuning, batch 64, on ``digits`` upsampled to 224.

Usage::

    python benchmarks/bench_finetune.py                     # CPU part (about a minute on 2 cores) + GPU part
    python benchmarks/bench_finetune.py --img-size 64 --repeats 3
    python benchmarks/bench_finetune.py --skip-gpu
    python benchmarks/bench_finetune.py --skip-cpu          # GPU part only

Numbers depend on what else runs on the machine: the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch

import probe


def run_once(model: str, *, img_size: int, epochs: int, batch_size: int, workers: int | None, device: str,
             precision: str = "auto") -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        result = probe.finetune(model, "digits", random_init=True, img_size=img_size, epochs=epochs,
                                batch_size=batch_size, lr=1e-3, results_dir=tmp, cache_dir=tmp, device=device,
                                workers=workers, precision=precision, progress=False, verbose=False)
    return result.history


def summarise(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} (range {format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["test_vit", "test_resnet"])
    parser.add_argument("--img-size", type=int, default=64, help="CPU part input size (pixels)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is not counted")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: probe's, cores - 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-gpu", action="store_true", help="run the CPU part only")
    parser.add_argument("--skip-cpu", action="store_true", help="run the GPU part only")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_cpu:
        print(f"CPU: digits (1078 train images after the val carve), img {args.img_size}, batch {args.batch_size}, "
              f"{args.epochs} epochs per run (epoch 1 not counted), {args.repeats} runs")
        for model in args.models:
            speed, wait = [], []
            for _ in range(args.repeats):
                history = run_once(model, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
                                   workers=args.workers, device="cpu")
                later = history[1:] or history
                seconds = sum(r["train_seconds"] for r in later)
                speed.append(sum(r["images_per_s"] * r["train_seconds"] for r in later) / seconds)
                wait.append(sum(r["data_wait_share"] * r["train_seconds"] for r in later) / seconds)
            waits = summarise([100 * w for w in wait], ".1f")
            print(f"  {model:12s} {summarise(speed, '.0f')} img/s   data wait {waits}%")
        print(f"load average {os.getloadavg()[0]:.1f} at the end of the CPU part")

    if args.skip_gpu:
        return
    if not torch.cuda.is_available():
        print("GPU: skipped (no CUDA device on this machine)")
        return
    name = torch.cuda.get_device_name(0)
    start = time.perf_counter()
    history = run_once("vit_base_patch16_224", img_size=224, epochs=3, batch_size=64, workers=None, device="cuda",
                       precision="bf16")
    later = history[1:]
    speeds = [r["images_per_s"] for r in later]
    waits = [100 * r["data_wait_share"] for r in later]
    print(f"GPU: {name}: vit_base_patch16_224 at 224, random init, bf16, full fine-tuning, batch 64: "
          f"{summarise(speeds, '.0f')} img/s over epochs 2-3, data wait {summarise(waits, '.1f')}% "
          f"({time.perf_counter() - start:.0f} s in all, with model creation and evaluation)")


if __name__ == "__main__":
    main()
