"""Predict fine-tuning from frozen features: transferability scores of each backbone on a dataset's train split.

For every BACKBONE (one configuration each) and every --taps value, the scores (LogME, H-score and its shrinkage
form, LEEP, NCE, NLEEP, SFDA, TransRate, GBC; see the README) are computed on the cached train features, whatever
is missing being extracted first, and written as one parquet file: one row per score (probe 'transfer', column
'score' and 'score_value'), plus the parameter count and forward GFLOPs of the backbone beside them. LEEP and NCE
need the backbone's own classifier head (the 'logits' tap); a checkpoint without one is refused before any work.
'probe report' judges the scores against the fine-tuned and frozen-probe test metrics of the same configurations.
Prints one line per score: backbone, tap, score, value, file.
"""

from __future__ import annotations

import argparse

from ._common import (DEFAULT_RESULTS_DIR, add_dataset_arguments, add_extraction_arguments, add_weights_arguments,
                      dataset_spec, extraction_kwargs)

#: Score names (probe.transfer.SCORES), listed here so that --help needs no torch.
SCORE_NAMES = ["logme", "hscore", "hscore_shrink", "leep", "nce", "nleep", "sfda", "transrate", "gbc"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backbones", nargs="+", metavar="BACKBONE",
                        help="one or more timm model names with their tags (e.g. resnet50.a1_in1k "
                             "vit_base_patch16_224.augreg_in21k), followed by the DATASET")
    add_dataset_arguments(parser)
    add_weights_arguments(parser)
    parser.add_argument("--scores", nargs="+", choices=SCORE_NAMES, default=None, metavar="SCORE",
                        help=f"scores to compute: {', '.join(SCORE_NAMES)} (default all of the task's; leep and nce "
                             "need a checkpoint with a classifier head)")
    parser.add_argument("--task", choices=["classification", "regression"], default="classification",
                        help="classification (class labels; every score) or regression (a continuous target such "
                             "as age: LogME's regression form only)")
    parser.add_argument("--target", default=None, metavar="NAME",
                        help="regression: the dataset's continuous target (default age when present, else target)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="where the parquet results go (one file per backbone, dataset, task and tap)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="recompute jobs whose results already exist")
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe._errors import UsageError

    if args.weights is not None and len(args.backbones) > 1:
        raise UsageError(f"--weights names one checkpoint but {len(args.backbones)} backbones were given; score "
                         "them one at a time")
    if args.task == "regression" and args.scores and set(args.scores) - {"logme"}:
        raise UsageError(f"--task regression has LogME only; drop {sorted(set(args.scores) - {'logme'})}")
    if args.target is not None and args.task != "regression":
        raise UsageError("--target is for --task regression; drop it or add --task regression")

    import polars as pl

    from probe.transfer import check_scores, score_backbone

    names = check_scores(args.scores, task=args.task)
    kwargs = extraction_kwargs(args)
    taps = kwargs.pop("taps")
    for backbone in args.backbones:
        for tap in taps:
            path = score_backbone(backbone, dataset_spec(args), scores=names, tap=tap, task=args.task,
                                  target=args.target, results_dir=args.results_dir, overwrite=args.overwrite,
                                  **kwargs)
            for row in pl.read_parquet(path).iter_rows(named=True):
                print(f"{backbone}\t{tap}\t{row['score']}\t{row['score_value']:.6g}\t{path}")
    return 0
