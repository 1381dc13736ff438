"""Fit probes on a backbone's cached features of a dataset, select on val, score test once, write results.

Features come from the cache (whatever is missing is extracted first, through the same code as
'probe extract-features'). One job per (tap, probe, shots, seed) writes one parquet file under the results
directory, plus the selected probe's weights and test predictions beside it; jobs whose parquet exists are
skipped unless --overwrite. When the dataset has no val split, a stratified part of train is held out as val
(--val-fraction, seeded by each --seeds value); few-shot draws happen after that carve, from the rest of train.
A dataset without a test split gets no test rows unless --test-fraction carves one (said at sweep time).
With --task segmentation or depth (a dataset with dense targets: shapes, nyuv2:PATH, a dense manifest), the
linear dense probe runs on the patch tap under the same protocol.
Prints one line per job: probe, tap, shots, seed, the selected setting and its test score on the selection
metric, and the file.
"""

from __future__ import annotations

import argparse

from probe.vocab import DENSE_PROBES, DEFAULT_VAL_FRACTION, PROBES, TASK_METRICS

from ._common import (DEFAULT_RESULTS_DIR, add_backbone_arguments, add_dataset_arguments, add_extraction_arguments,
                      add_task_argument, dataset_spec, extraction_kwargs)

DENSE_PROBE_NAMES = list(DENSE_PROBES)
PROBE_NAMES = list(PROBES)
METRIC_NAMES = list(dict.fromkeys(m for task in ("classification", "segmentation", "depth")
                                  for m in TASK_METRICS[task]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    add_dataset_arguments(parser)
    add_task_argument(parser)
    parser.add_argument("--probes", nargs="+", choices=PROBE_NAMES + DENSE_PROBE_NAMES, default=None,
                        metavar="PROBE", help=f"probes to sweep: {', '.join(PROBE_NAMES)} (default: all) for "
                                              "classification; linear (the default) for segmentation and depth")
    parser.add_argument("--shots", nargs="+", type=int, default=[0], metavar="K",
                        help="examples per class drawn from train (after the val carve); 0 = all of train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S",
                        help="seeds of the val carve and the few-shot draw; one job per seed "
                             "(--seed seeds the backbone's --random-init)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="where the parquet results and the selected probes' artifacts go")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="sweep jobs run in parallel (joblib threads)")
    parser.add_argument("--select-metric", choices=METRIC_NAMES, default=None,
                        help="val metric that selects each probe's hyperparameters; default the task's first: top1, "
                             "miou (segmentation), rmse (depth, lower is better). mean_per_class_acc is usual for "
                             "Flowers-102, Caltech-101, Aircraft and Pets")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                        help="part of each class of train held out as val when the dataset has no val split")
    parser.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                        help="for a dataset without a test split (e.g. a flat imagefolder): part of each class of "
                             "train carved off as test (seeded, the same for every job); default 0 = no test rows")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="re-run jobs whose results already exist")
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe._errors import UsageError

    # Checked before anything is extracted, so a typo costs nothing.
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in (0, 1); got {args.val_fraction}. Use e.g. --val-fraction 0.2")
    if not 0.0 <= args.test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in [0, 1); got {args.test_fraction}. Use e.g. --test-fraction 0.2")
    if any(k < 0 for k in args.shots):
        raise UsageError(f"--shots must be 0 (all) or positive; got {args.shots}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1; got {args.jobs}")

    import polars as pl

    from probe import _distributed
    from probe._sweep import sweep_cached

    kwargs = extraction_kwargs(args)
    # under torchrun the ranks share the extraction (classification taps); rank 0 then sweeps
    if _distributed.init(args.device) and args.task == "classification":
        from probe._extract import extract_features

        extract_features(args.backbone, dataset_spec(args), **kwargs)
    taps = kwargs.pop("taps")
    paths = _distributed.on_main(lambda: sweep_cached(
        args.backbone, dataset_spec(args), probes=args.probes, taps=taps if args.taps is not None else None,
        shots=args.shots, seeds=args.seeds, select_metric=args.select_metric, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, results_dir=args.results_dir, jobs=args.jobs, overwrite=args.overwrite,
        task=args.task, **kwargs))
    if not _distributed.is_main():
        return 0
    for path in paths:
        row = pl.read_parquet(path).filter(pl.col("selected")).row(0, named=True)
        metric = row["select_metric"]
        print(f"{row['probe']}\t{row['tap']}\tshots={row['shots']}\tseed={row['seed']}\t{row['params']}\t"
              f"{row['split']} {metric}={row[metric]:.4f}\t{path}")
    return 0
