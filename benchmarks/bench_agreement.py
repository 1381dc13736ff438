"""Do the two pixel paths give the same answer? Features of the tensor path vs timm's PIL transform, on the same JPEGs.

Writes a built-in dataset's images (scikit-learn's ``digits`` by default, or ``shapes``) as JPEG files, upscaled to
ImageNet-like aspect ratios so that the resize and crop do real work, with the dataset's own splits; extracts a tiny
timm backbone's features with ``--pixels pil`` and with ``--pixels gpu`` (torchvision's decoder and tensor resize:
libjpeg-turbo per image on a CPU, batched nvJPEG on CUDA); and prints

- per image, the cosine of the two paths' pooled features (min, 1st percentile, median over every image),
- per path, the test top-1 of probe's own logistic probe (C selected on the dataset's val split, or on a seeded
  val carve of train when it has none, refit on train+val, test scored once: ``probe.sweep_cached``) with its
  bootstrap interval (``probe.job_ci``),
- the paired bootstrap interval of the difference tensor - PIL over the same test images (``probe.compare_jobs``).

Both paths run the same backbone weights (random init, seeded), the same carve and grid; only the pixels differ.

    python benchmarks/bench_agreement.py                         # digits, test_vit at 64 px, CPU
    python benchmarks/bench_agreement.py --dataset shapes --model test_resnet
    python benchmarks/bench_agreement.py --device cuda           # on a GPU: nvJPEG against PIL
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

#: (width, height) of the written JPEGs, in turn: landscape, portrait and square, as photos come.
SIZES = ((96, 72), (72, 96), (90, 60), (80, 80))


def write_jpegs(dataset: str, root: Path, *, quality: int = 90) -> str:
    """Every image of ``dataset``'s splits as an upscaled RGB JPEG in ``root/<split>/<class>/``; the imagefolder
    spec."""
    import probe

    source = probe.open_dataset(dataset)
    for split in source.split_names:
        for i in range(len(source.splits[split])):
            img = source.load(split, i).convert("RGB")
            w, h = SIZES[i % len(SIZES)]
            d = root / split / source.classes[int(source.labels[split][i])]
            d.mkdir(parents=True, exist_ok=True)
            img.resize((w, h), resample=3).save(d / f"{i:05d}.jpg", quality=quality)  # bicubic
    return f"imagefolder:{root}"


def measure(dataset: str, model: str, *, img_size: int, device: str, n_boot: int, seed: int, tmp: Path) -> dict:
    import probe

    spec = write_jpegs(dataset, tmp / "jpegs")
    kwargs = dict(random_init=True, seed=seed, img_size=img_size, device=device, progress=False)
    out = {"dataset": dataset, "model": model, "img_size": img_size}
    files, feats = {}, {}
    for path in ("pil", "gpu"):
        entries = probe.extract_features(model, spec, cache_dir=tmp / "cache", pixels=path, **kwargs)
        feats[path] = {s: probe.load_split(e) for s, e in entries.items()}
        (files[path],) = probe.sweep_cached(model, spec, probes=["logistic"], taps=["pooled"], cache_dir=tmp / "cache",
                                            results_dir=tmp / f"results-{path}", pixels=path, **kwargs)
    cos = []
    for split, a in feats["pil"].items():
        b = feats["gpu"][split]
        assert a.ids == b.ids, "the two paths' entries hold other images"
        fa, fb = a.features["pooled"].astype(np.float64), b.features["pooled"].astype(np.float64)
        cos.append((fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1))
    out["cos"] = np.concatenate(cos)
    for path, f in files.items():
        out[f"ci_{path}"] = probe.job_ci(f, metric="top1", n_boot=n_boot, seed=seed)
    out["diff"] = probe.compare_jobs(files["gpu"], files["pil"], metric="top1", n_boot=n_boot, seed=seed)
    out["n_images"] = {s: e.rows for s, e in entries.items()}
    return out


def report(r: dict, device_name: str) -> None:
    cos = r["cos"]
    splits = ", ".join(f"{s} {n}" for s, n in r["n_images"].items())
    print(f"{r['model']} (random init) on {r['dataset']} written as JPEGs ({splits}), {r['img_size']} px, "
          f"{device_name}:")
    print(f"  pooled-feature cosine, tensor path vs PIL, over all {len(cos)} images: min {cos.min():.5f}, "
          f"1st percentile {np.percentile(cos, 1):.5f}, median {np.median(cos):.5f}")
    for path, name in (("pil", "--pixels pil"), ("gpu", "--pixels gpu")):
        ci = r[f"ci_{path}"]
        print(f"  logistic probe test top-1, {name:<13s} {ci.estimate:.4f}  95% CI [{ci.low:.4f}, {ci.high:.4f}]")
    d = r["diff"]
    print(f"  paired difference gpu - pil over the same {d.n} test images: {d.estimate:+.4f}  95% CI "
          f"[{d.low:+.4f}, {d.high:+.4f}] ({d.n_boot} resamples)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "shapes"], default="digits",
                        help="built-in dataset whose images are written as JPEGs (its own splits)")
    parser.add_argument("--model", default="test_vit", help="timm model (random init, seeded)")
    parser.add_argument("--img-size", type=int, default=64, help="input size of the backbone (pixels, square)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the val carve and the resampling")
    args = parser.parse_args(argv)
    import torch

    from probe._runtime import resolve_device

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_probes import cpu_model  # noqa: E402  (one implementation)

    dev = resolve_device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({cpu_model()}, {os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.dataset, args.model, img_size=args.img_size, device=args.device, n_boot=args.n_boot,
                    seed=args.seed, tmp=Path(tmp))
    report(r, name)
    print(f"  load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
