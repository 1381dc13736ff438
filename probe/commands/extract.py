"""Run a frozen timm backbone once over a dataset and cache its features in HDF5.

The cache is content-addressed (backbone, weights, preprocessing, dataset contents, split, taps, dtype): the same
request reuses the entry without computing anything, any change makes a new entry beside the old one. An
interrupted run resumes where it stopped. With --task segmentation or depth, the patch tap is stored (by default)
and the dataset's dense targets are mapped onto the network input and written beside the cache. Under torchrun
(torchrun --nproc-per-node N -m probe extract-features ...) the ranks share each entry's batches and write the same
entry as one process. Prints one line per split: split, rows, taps, reused or written, path (and the targets file).
"""

from __future__ import annotations

import argparse

from ._common import (add_backbone_arguments, add_dataset_arguments, add_extraction_arguments, add_task_argument,
                      dataset_spec, extraction_kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    add_dataset_arguments(parser)
    parser.add_argument("--splits", nargs="+", default=None, metavar="SPLIT",
                        help="splits to extract (train, val, test, gallery, query); default: every split the dataset has")
    add_task_argument(parser)
    add_extraction_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe import _distributed
    from probe._extract import extract_features

    kwargs = extraction_kwargs(args)
    targets = {}
    if args.task != "classification":  # dense targets, mapped onto the network input, beside the cache
        from probe._dense_sweep import extract_dense_targets

        entries, targets = extract_dense_targets(args.backbone, dataset_spec(args), task=args.task,
                                                 splits=args.splits, **kwargs)
    else:
        entries = extract_features(args.backbone, dataset_spec(args), splits=args.splits, **kwargs)
    if not _distributed.is_main():  # under torchrun rank 0 speaks for the group
        return 0
    for split, entry in entries.items():
        state = "reused" if entry.reused else "written"
        extra = f"\t{args.task} targets {targets[split]}" if split in targets else ""
        print(f"{split}\t{entry.rows} rows\t{','.join(entry.taps)}\t{state}\t{entry.path}{extra}")
    return 0
