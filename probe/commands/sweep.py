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

from probe import tasks
from probe.vocab import DEFAULT_VAL_FRACTION

from ._common import (DEFAULT_RESULTS_DIR, add_backbone_arguments, add_dataset_arguments, add_extraction_arguments,
                      add_shift_arguments, dataset_spec, extraction_kwargs)


def _probe_names() -> list[str]:
    """Every registered task's probes, in registry order (each task checks its own: ``Task.check_request``)."""
    return list(dict.fromkeys(p for t in tasks.all_tasks() for p in t.probes))


def _metric_names() -> list[str]:
    """Every registered task's selectable metrics, in registry order."""
    return list(dict.fromkeys(m for t in tasks.all_tasks() for m in t.selectable()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    add_dataset_arguments(parser)
    parser.add_argument("--task", choices=list(tasks.names()), default=tasks.DEFAULT,
                        help="what the target asks (a registered task): classification (class labels); "
                             "segmentation / depth (dense targets of shapes, nyuv2:PATH or a dense manifest: the "
                             "linear probe on patch tokens); identification (who is this: leave-one-image-out "
                             "retrieval, rank-1/rank-5/mAP), verification (same person? pairs, threshold chosen on the "
                             "other folds), regression (a continuous target: FG-NET's age, or a manifest's 'target' "
                             "column; MAE, RMSE, CS(5))")
    parser.add_argument("--probes", nargs="+", choices=_probe_names(), default=None, metavar="PROBE",
                        help="probes to sweep (default: the task's): logistic, ridge, knn, centroid (all by default) "
                             "for classification; linear for segmentation and depth; cosine (retrieval on the "
                             "features as they are, the default) and the classifiers (identity classifiers, under "
                             "--cv) for identification; cosine for verification; ridge and knn (regressors) for "
                             "regression")
    parser.add_argument("--cv", type=int, default=None, metavar="K",
                        help="cross-validate with K folds (stratified, seeded by --seeds) for a dataset without a "
                             "test split; hyperparameters are selected on a val carve inside each training fold. "
                             "Writes one row per fold and a summary row (fold empty) whose metrics are computed from "
                             "the pooled held-out items, with the per-fold mean and sd and a CI in its params")
    parser.add_argument("--cv-group", choices=["subject"], default=None,
                        help="keep each person's images in one fold (subject = the dataset's identity label); with "
                             "--cv equal to the number of people this is leave-one-person-out (FG-NET's age protocol)")
    parser.add_argument("--pairs", default=None, metavar="FILE",
                        help="verification pairs in the LFW pairs.txt format (10 folds of matched 'name n1 n2' and "
                             "mismatched 'name1 n1 name2 n2' lines), resolved in an LFW-layout dataset "
                             "(imagefolder:lfw with <Name>/<Name>_0001.jpg); default: pairs drawn from the identities")
    parser.add_argument("--whiten", type=int, default=None, metavar="DIM",
                        help="verification: compare the features after a PCA whitening to DIM components, fitted "
                             "for each fold of the pairs on the other folds' images only (a protocol of its own); "
                             "DIM at most the feature dimension and the fitting images less one")
    parser.add_argument("--shots", nargs="+", type=int, default=[0], metavar="K",
                        help="examples per class drawn from train (after the val carve); 0 = all of train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S",
                        help="seeds of the val carve and the few-shot draw; one job per seed "
                             "(--seed seeds the backbone's --random-init)")
    parser.add_argument("--results-dir", default=DEFAULT_RESULTS_DIR, metavar="DIR",
                        help="where the parquet results and the selected probes' artifacts go")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="sweep jobs run in parallel (joblib threads)")
    parser.add_argument("--select-metric", choices=_metric_names(), default=None,
                        help="val metric that selects each probe's hyperparameters; default the task's first: top1, "
                             "miou (segmentation), rmse (depth, lower is better), mae (regression). "
                             "mean_per_class_acc is usual for Flowers-102, Caltech-101, Aircraft and Pets")
    parser.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION, metavar="F",
                        help="part of each class of train held out as val when the dataset has no val split")
    parser.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                        help="for a dataset without a test split (e.g. a flat imagefolder): part of each class of "
                             "train carved off as test (seeded, the same for every job); default 0 = no test rows")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                        help="re-run jobs whose results already exist")
    add_shift_arguments(parser)
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

    import json

    import polars as pl

    from probe import _distributed
    from probe._sweep import sweep_cached

    task = tasks.get(args.task)
    kwargs = extraction_kwargs(args)
    # under torchrun the ranks share the extraction (pooled taps); rank 0 then sweeps
    if _distributed.init(args.device) and not task.dense:
        from probe._extract import extract_features

        extract_features(args.backbone, dataset_spec(args), **kwargs)
    taps = kwargs.pop("taps")
    paths = _distributed.on_main(lambda: sweep_cached(
        args.backbone, dataset_spec(args), probes=args.probes, taps=taps if args.taps is not None else None,
        shots=args.shots, seeds=args.seeds, select_metric=args.select_metric, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, results_dir=args.results_dir, jobs=args.jobs, overwrite=args.overwrite,
        task=task.name, cv=args.cv, cv_group=args.cv_group, pairs=args.pairs, whiten=args.whiten,
        eval_on=args.eval_on, shared_classes=args.shared_classes, **kwargs))
    if not _distributed.is_main():
        return 0
    for path in paths:
        # the selected test row (a cross-validated job's summary row: fold empty)
        frame = pl.read_parquet(path).filter(pl.col("selected"))
        row = frame.sort(pl.col("fold").is_not_null()).row(0, named=True)
        metric = task.headline if row.get(task.headline) is not None else (row["select_metric"] or task.headline)
        params = json.loads(row["params"] or "{}")
        if "folds" in params:  # the summary of a cross-validation: pooled over the held-out items of every fold
            mean, sd = params.get("fold_mean", {}).get(metric), params.get("fold_sd", {}).get(metric, 0.0)
            text = f"{metric}={row[metric]:.4f} pooled over {params['folds']} folds"
            if mean is not None:
                text += f" (fold mean {mean:.4f} ± {sd:.4f})"
            params = "cv"
        else:
            text = f"{metric}={row[metric]:.4f}"
        print(f"{row['probe']}\t{row['tap']}\tshots={row['shots']}\tseed={row['seed']}\t{params}\t"
              f"{row['split']} {text}\t{row['evaluation']}\t{path}")
        for shifted in sorted(path.parent.glob(path.stem + ".on-*.parquet")):  # the same probe on shifted sets
            r = pl.read_parquet(shifted).row(0, named=True)
            print(f"{row['probe']}\t{row['tap']}\tshots={row['shots']}\tseed={row['seed']}\ton {r['eval_dataset']}\t"
                  f"test {metric}={r[metric]:.4f}\t{r['evaluation']}\t{shifted}")
    return 0
