"""Fine-tune a whole timm backbone (or its last blocks) with a new head, on the same splits as the probe sweeps.

The epoch count is chosen on val (the dataset's own, or the same carve of train as the sweeps); by default the
network is then retrained on train+val for that many epochs (--refit, as the probes refit) and scored once on
test. Results go to the same table as the probes (probe = finetune, tap = -), with the test predictions and the
best weights (safetensors, usable as --weights for extract-features) beside them. A checkpoint is written after
every epoch: after an interruption the same command resumes from the last completed epoch. Prints the test
metrics and the paths.

--task regression trains one linear output on the pooled features with an L1 loss on the dataset's continuous
target (age for fgnet:PATH and faces, the target column of a manifest); the epoch is chosen on val MAE and the
test rows carry mae, rmse (in the target's units, years for age) and cs5. A dataset without a test split (FG-NET,
faces) is cross-validated with --cv K (--cv-group subject keeps each person in one fold): the folds of
probe sweep --task regression --cv K, with the val part carved from each training fold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probe._console import progress_option

from ._common import (DEFAULT_CACHE_DIR, DEFAULT_RESULTS_DIR, add_backbone_arguments,
                      add_dataset_arguments, add_shift_arguments, dataset_spec)


def _accum(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto'; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto'; got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probe._finetune import add_config_arguments

    add_backbone_arguments(parser)
    add_dataset_arguments(parser)
    add_config_arguments(parser)  # one flag per FinetuneConfig field, generated from its declaration
    parser.add_argument("--accum-steps", type=_accum, default="auto", metavar="N|auto",
                        help="micro-batches per step (gradient accumulation); auto doubles them when a step runs "
                             "out of GPU memory")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the val carve, the new head, shuffling and augmentation (and of --random-init "
                             "unless --init-seed is given)")
    parser.add_argument("--init-seed", type=int, default=None, metavar="S",
                        help="seed of --random-init (default: --seed): the same weights as features extracted with "
                             "--random-init --seed S")
    parser.add_argument("--allow-overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="accept the same image (same path or identical file) in two splits")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR",
                        help="feature cache (lp-ft's frozen features)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="where results, predictions and the fine-tuned weights go")
    parser.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                        help="per-epoch checkpoints (default: beside the results, as <results file>.ckpt)")
    parser.add_argument("--keep-checkpoints", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the per-epoch checkpoint folder after success")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="retrain even if the results exist (discards checkpoints of the same settings)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="data loading worker processes (default: usable CPU cores - 1, at most 8; at most 32 "
                             "on a GPU)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar per epoch (loss, lr, images/s) on a terminal; when the output is not a "
                             "terminal (a log file), only the log line per finished epoch (default); --progress: "
                             "bars there too; --no-progress: no bars")
    parser.add_argument("--cv", type=int, default=None, metavar="K",
                        help="--task regression on a dataset without a test split: K-fold cross-validation (the "
                             "same folds as probe sweep --cv K; per-fold rows and a summary row; the epoch is "
                             "chosen on a val part of each training fold)")
    parser.add_argument("--cv-group", default=None, choices=["subject"],
                        help="keep each person's images in one fold (--cv K = number of people: "
                             "leave-one-person-out)")
    parser.add_argument("--sync-batchnorm", action=argparse.BooleanOptionalAction, default=False,
                        help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA) "
                             "instead of each rank's share; models without BatchNorm are unaffected")
    add_shift_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from probe._finetune import config_from_args, finetune

    result = finetune(
        args.backbone, dataset_spec(args), **config_from_args(args), accum_steps=args.accum_steps,
        img_size=args.img_size, weights=args.weights, random_init=args.random_init, seed=args.seed,
        family=args.family, init_seed=args.init_seed, allow_overlap=args.allow_overlap, data_root=args.data_root,
        cache_dir=Path(args.cache_dir), results_dir=Path(args.results_dir), checkpoint_dir=args.checkpoint_dir,
        keep_checkpoints=args.keep_checkpoints, overwrite=args.overwrite, device=args.device, workers=args.workers,
        progress=progress_option(args.progress, lines=False), sync_batchnorm=args.sync_batchnorm, cv=args.cv, cv_group=args.cv_group,
        eval_on=args.eval_on, shared_classes=args.shared_classes)
    from probe import _distributed

    if not _distributed.is_main():  # under torchrun rank 0 speaks for the group
        return 0
    state = "reused" if result.skipped else "written"
    if result.task_metrics:
        for task, m in result.task_metrics.items():
            scores = "\t".join(f"{k} {v:.4f}" for k, v in m.items())
            chosen = (f"mean over {len(result.fold_epochs)} folds, epochs {result.fold_epochs} (chosen on val)"
                      if result.fold_epochs else f"epoch {result.best_epoch} (chosen on val)")
            print(f"test\t{task}\t{scores}\t{chosen}")
    else:
        print(f"no test split: epoch {result.best_epoch} chosen on val")
    for task, path in (result.results_paths or {"-": result.results_path}).items():
        print(f"results\t{state}\t{path}")
    if result.artifacts_path is not None:
        print(f"predictions\t{result.artifacts_path}")
    if result.weights_path is not None:
        print(f"weights\t{result.weights_path}")
    return 0
