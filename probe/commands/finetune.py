"""Fine-tune a whole timm backbone (or its last blocks) with a new head, on the same splits as the probe sweeps.

The epoch count is chosen on val (the dataset's own, or the same carve of train as the sweeps); by default the
network is then retrained on train+val for that many epochs (--refit, as the probes refit) and scored once on
test. Results go to the same table as the probes (probe = finetune, tap = -), with the test predictions and the
best weights (safetensors, usable as --weights for extract-features) beside them. A checkpoint is written after
every epoch: after an interruption the same command resumes from the last completed epoch. Prints the test
metrics and the paths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (DEFAULT_CACHE_DIR, DEFAULT_RESULTS_DIR, add_backbone_arguments, add_dataset_arguments,
                      dataset_spec)


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
    from probe._finetune import MODES, PRECISIONS, FinetuneConfig
    from probe.vocab import METRICS

    d = FinetuneConfig()
    add_backbone_arguments(parser)
    add_dataset_arguments(parser)
    parser.add_argument("--mode", choices=MODES, default=d.mode,
                        help="full: train everything; partial: only the last --trainable-blocks blocks/stages "
                             "(+ final norm and head); lp-ft: start the head from a logistic probe on the frozen "
                             "features, then fine-tune")
    parser.add_argument("--trainable-blocks", type=int, default=d.trainable_blocks, metavar="N",
                        help="partial (required) and lp-ft: train the last N blocks (ViTs) or stages (ConvNets) "
                             "plus the final norm and head; 0 = head only")
    parser.add_argument("--epochs", type=int, default=d.epochs, metavar="N", help="passes over train")
    parser.add_argument("--lr", type=float, default=d.lr, metavar="X",
                        help="peak AdamW learning rate (after warmup; cosine decay to 0)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N", help="images per optimizer step")
    parser.add_argument("--accum-steps", type=_accum, default="auto", metavar="N|auto",
                        help="micro-batches per step (gradient accumulation); auto doubles them when a step runs "
                             "out of GPU memory")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="X",
                        help="AdamW weight decay (not on biases, norms, tokens, position embeddings)")
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, metavar="X",
                        help="epochs of linear lr warmup (may be fractional)")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="X",
                        help="cross-entropy label smoothing")
    parser.add_argument("--layer-decay", type=float, default=d.layer_decay, metavar="X",
                        help="layer-wise lr decay factor per block, e.g. 0.75 (default: off)")
    parser.add_argument("--clip-grad", type=float, default=d.clip_grad, metavar="X",
                        help="max gradient L2 norm; 0 turns clipping off")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("MIN", "MAX"),
                        help="random resized crop: range of the image area kept")
    parser.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=d.hflip,
                        help="random horizontal flips during training")
    parser.add_argument("--color-jitter", type=float, default=d.color_jitter, metavar="X",
                        help="color jitter strength during training (default: off)")
    parser.add_argument("--lp-c", type=float, default=d.lp_C, metavar="C",
                        help="lp-ft: the logistic probe's C (default: selected on val over the sweeps' grid)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the val carve, the new head, shuffling and augmentation (and of --random-init "
                             "unless --init-seed is given)")
    parser.add_argument("--init-seed", type=int, default=None, metavar="S",
                        help="seed of --random-init (default: --seed): the same weights as features extracted with "
                             "--random-init --seed S")
    parser.add_argument("--refit", action=argparse.BooleanOptionalAction, default=d.refit,
                        help="after choosing the epoch count on val, retrain that many epochs on train+val and score "
                             "that model on test (as the probes refit); --no-refit scores the chosen epoch's weights")
    parser.add_argument("--test-fraction", type=float, default=d.test_fraction, metavar="F",
                        help="for a dataset without a test split: part of each class of train carved off as test "
                             "(the same images as the sweeps' --test-fraction)")
    parser.add_argument("--allow-overlap", action=argparse.BooleanOptionalAction, default=False,
                        help="accept the same image (same path or identical file) in two splits")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="X",
                        help="part of train carved off as val when the dataset has no val split")
    parser.add_argument("--select-metric", choices=METRICS, default=d.select_metric,
                        help="val metric that chooses the epoch")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="autocast: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU")
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=d.skip_bad,
                        help="drop unreadable images instead of stopping with an error")
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
                        help="data loading worker processes (default: CPU cores - 1, at most 8)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="a progress bar per epoch (loss, lr, images/s)")


def run(args: argparse.Namespace) -> int:
    from probe._finetune import finetune

    result = finetune(
        args.backbone, dataset_spec(args), mode=args.mode, trainable_blocks=args.trainable_blocks, epochs=args.epochs,
        lr=args.lr, batch_size=args.batch_size, accum_steps=args.accum_steps, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, layer_decay=args.layer_decay,
        clip_grad=args.clip_grad or None, crop_scale=tuple(args.crop_scale), hflip=args.hflip,
        color_jitter=args.color_jitter, lp_C=args.lp_c, img_size=args.img_size, weights=args.weights,
        random_init=args.random_init, seed=args.seed, family=args.family, val_fraction=args.val_fraction,
        select_metric=args.select_metric, precision=args.precision, skip_bad=args.skip_bad, refit=args.refit,
        test_fraction=args.test_fraction, init_seed=args.init_seed, allow_overlap=args.allow_overlap,
        data_root=args.data_root, cache_dir=Path(args.cache_dir), results_dir=Path(args.results_dir),
        checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep_checkpoints, overwrite=args.overwrite,
        device=args.device, workers=args.workers, progress=args.progress)
    state = "reused" if result.skipped else "written"
    if result.test_metrics is not None:
        m = result.test_metrics
        print(f"test\ttop1 {m['top1']:.4f}\ttop5 {m['top5']:.4f}\tmean_per_class_acc {m['mean_per_class_acc']:.4f}"
              f"\tepoch {result.best_epoch} (chosen on val)")
    else:
        print(f"no test split: epoch {result.best_epoch} chosen on val")
    print(f"results\t{state}\t{result.results_path}")
    if result.artifacts_path is not None:
        print(f"predictions\t{result.artifacts_path}")
    if result.weights_path is not None:
        print(f"weights\t{result.weights_path}")
    return 0
