"""Compare backbones' representations of the same images from the feature cache: linear CKA (biased and debiased,
with a jackknife interval over groups of images) and mutual k-nearest-neighbour alignment (with a bootstrap
interval over images).

BACKBONE... are timm names, whose features of DATASET's --split are extracted first when the cache lacks them
(through the same code as 'probe extract-features'), or cache files (.h5) of that dataset split. Jobs, each
written as one parquet file under <results-dir>/similarity/<dataset>/ and skipped when it exists (unless
--overwrite): configuration x configuration at each --taps tap (two or more BACKBONEs); block x block of every
pair of BACKBONEs over every block<i> tap (--blocks); frozen block i vs fine-tuned block i of a backbone
(--finetuned BACKBONE=WEIGHTS, the fine-tuned export extracted through the cache like any --weights PATH).
Rows are joined by image id: entries of different datasets or splits, a tap an entry lacks, ids that differ
(unless --join common) or fewer than 4 common images are errors before any comparison. Prints one line per
compared pair (kind, both sides, each measure with its interval), then one line per job with its file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.vocab import FAMILIES

from ._common import DEFAULT_CACHE_DIR, DEFAULT_RESULTS_DIR

MEASURE_NAMES = ("cka", "cka_debiased", "mutual_knn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backbones", nargs="+", metavar="BACKBONE",
                        help="timm names (or cache files, .h5) to compare")
    parser.add_argument("dataset", metavar="DATASET",
                        help="dataset spec: digits, imagefolder:PATH, ... as in 'probe extract-features'")
    parser.add_argument("--split", default="test", help="the split whose images are compared")
    parser.add_argument("--taps", nargs="+", default=["pooled"], metavar="TAP",
                        help="taps of the configuration x configuration matrices (one job per tap): pooled, cls, "
                             "mean, block<i>")
    parser.add_argument("--blocks", action=argparse.BooleanOptionalAction, default=False,
                        help="also compare every block<i> tap of each pair of BACKBONEs (block x block matrices); "
                             "the block taps of named backbones are extracted")
    parser.add_argument("--finetuned", nargs="+", default=None, metavar="[BACKBONE=]WEIGHTS",
                        help="a fine-tuned export (.safetensors, as 'probe finetune' writes) of a BACKBONE: its "
                             "block taps are extracted with these weights and compared block by block with the "
                             "frozen backbone's; BACKBONE= may be left out when one backbone is named")
    parser.add_argument("--measures", nargs="+", choices=MEASURE_NAMES, default=list(MEASURE_NAMES),
                        help="cka (linear CKA, biased HSIC), cka_debiased (unbiased HSIC, Song et al. 2007), "
                             "mutual_knn (mutual k-nearest-neighbour alignment, Huh et al. 2024)")
    parser.add_argument("--k", type=int, default=10, metavar="K", help="neighbours per image of mutual_knn")
    parser.add_argument("--n-boot", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of images of the mutual_knn interval")
    parser.add_argument("--ci", type=float, default=0.95, metavar="F", help="coverage of every interval")
    parser.add_argument("--groups", type=int, default=32, metavar="G",
                        help="random groups of images the CKA jackknife leaves out one at a time (CKA holds G "
                             "products of each pair of taps while it accumulates)")
    parser.add_argument("--join", choices=["exact", "common"], default="exact",
                        help="exact: the entries must hold the same image ids (else an error naming how many "
                             "differ); common: compare the images they share")
    parser.add_argument("--product-dtype", choices=["float64", "float32"], default="float64",
                        help="dtype of the block products of CKA (sums are float64 either way); float32 is faster "
                             "and loses about 1e-6")
    parser.add_argument("--block-rows", type=int, default=4096, metavar="N", help="rows read from each file at a time")
    parser.add_argument("--memory-mb", type=int, default=1024, metavar="MB",
                        help="budget of the CKA accumulators of one pass over the files; more pairs take more passes")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="results directory; the rows go under DIR/similarity/")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="recompute jobs whose results exist")
    # how missing features are extracted (as in probe extract-features)
    parser.add_argument("--random-init", action="store_true",
                        help="named backbones use randomly initialised weights (seeded by --seed)")
    parser.add_argument("--img-size", type=int, default=None, metavar="N",
                        help="input size of named backbones (pixels, square); default: the checkpoint's own")
    parser.add_argument("--family", choices=FAMILIES, default=None, help="override the family of named backbones")
    parser.add_argument("--data-root", metavar="DIR", default=None, help="where torchvision:/hf: datasets live")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of --random-init and of the bootstrap's groups and resamples")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR", help="feature cache directory")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward pass")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="data loading worker processes")
    parser.add_argument("--device", default="auto",
                        help="torch device of extraction and comparison: auto (cuda if present, else cpu), cpu, cuda")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                        help="storage dtype of features extracted here")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="compute precision of the forward passes of features extracted here")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")


def run(args: argparse.Namespace) -> int:
    from probe._errors import UsageError
    from probe.similarity import _Entry, run_job

    names, dataset = list(args.backbones), args.dataset
    for flag, value, lo in (("--k", args.k, 1), ("--n-boot", args.n_boot, 1), ("--groups", args.groups, 2),
                            ("--block-rows", args.block_rows, 1), ("--memory-mb", args.memory_mb, 1)):
        if value < lo:
            raise UsageError(f"{flag} must be at least {lo}; got {value}")
    if not 0 < args.ci < 1:
        raise UsageError(f"--ci must be in (0, 1); got {args.ci}")
    files = [n for n in names if n.endswith(".h5")]
    backbones = [n for n in names if not n.endswith(".h5")]
    finetuned = _finetuned_pairs(args.finetuned or [], backbones)
    if len(names) < 2 and not finetuned:
        raise UsageError("compare two or more BACKBONEs (or cache files), or one with --finetuned BACKBONE=WEIGHTS")
    from probe._taps import parse_taps

    taps = list(parse_taps(args.taps))
    # cache files given directly are checked first: before anything is extracted
    for f in files:
        e = _Entry(f)
        try:
            split = e.attrs.get("split")
            if split != args.split:
                raise UsageError(f"cache file {f} holds split {split!r}, not --split {args.split}; pass "
                                 f"--split {split} or a file of split {args.split}")
            for tap in taps:
                e.check_tap(tap)
        finally:
            e.close()
    entries = {}
    needs_blocks = args.blocks or bool(finetuned)
    for name in names:
        entries[name] = name if name.endswith(".h5") else _extract(args, name, dataset, taps, needs_blocks)
    options = dict(measures=args.measures, k=args.k, n_boot=args.n_boot, ci=args.ci, seed=args.seed,
                   groups=args.groups, join=args.join, device=args.device, product_dtype=args.product_dtype,
                   block_rows=args.block_rows, memory_bytes=args.memory_mb << 20)
    jobs = []
    if len(names) >= 2:
        jobs += [("configs", [entries[n] for n in names], {"tap": t}) for t in taps]
    if args.blocks:
        jobs += [("blocks", [entries[a], entries[b]], {}) for i, a in enumerate(names) for b in names[i + 1:]]
    for name, weights in finetuned:
        tuned = _extract(args, name, dataset, taps, True, weights=weights)
        jobs.append(("finetune", [entries[name], tuned], {}))
    import polars as pl

    for kind, job_entries, extra in jobs:
        path = run_job(kind, job_entries, results_dir=args.results_dir, overwrite=args.overwrite, **extra,
                       **options)
        frame = pl.read_parquet(path)
        for (a, ta, b, tb), part in frame.group_by(["config_label_a", "tap_a", "config_label_b", "tap_b"],
                                                   maintain_order=True):
            values = "  ".join(f"{r['measure']}={r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"
                               for r in part.iter_rows(named=True))
            print(f"{kind}\t{a}:{ta}\t{b}:{tb}\t{values}")
        print(f"{kind}\t{frame['n_images'][0]} images\t{path}")
    return 0


def _finetuned_pairs(items: list[str], backbones: list[str]) -> list[tuple[str, str]]:
    from probe._errors import UsageError

    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            if len(backbones) != 1:
                raise UsageError(f"--finetuned {item}: say which backbone it fine-tunes, as BACKBONE=WEIGHTS")
            name, path = backbones[0], item
        if name not in backbones:
            raise UsageError(f"--finetuned {item}: {name!r} is not one of the BACKBONEs ({', '.join(backbones)})")
        if not Path(path).is_file():
            raise UsageError(f"--finetuned {item}: weights file {path} does not exist; pass the .safetensors "
                             "that 'probe finetune' exported")
        out.append((name, path))
    return out


def _extract(args, backbone: str, dataset: str, taps: list[str], blocks: bool, weights: str | None = None):
    """The cache entry of ``backbone`` on ``--split`` with ``taps`` (and every block tap), extracted if missing."""
    from probe._extract import extract_features

    wanted = list(taps)
    if blocks:
        from probe.study import expand_taps

        wanted += [t for t in expand_taps(["block*"], backbone, args.img_size) if t not in wanted]
    entries = extract_features(backbone, dataset, splits=[args.split], taps=wanted, weights=weights,
                               random_init=args.random_init and weights is None, seed=args.seed,
                               img_size=args.img_size, family=args.family, data_root=args.data_root,
                               cache_dir=Path(args.cache_dir), batch_size=args.batch_size, workers=args.workers,
                               device=args.device, dtype=args.dtype, precision=args.precision,
                               progress=args.progress)
    return entries[args.split]
