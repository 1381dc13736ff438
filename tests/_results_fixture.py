"""A small synthetic results directory with known numbers, for the report, bootstrap and notebook tests.

Two datasets x three backbones (two transformers, one ConvNet), written through the real results contract
(:func:`probe.results.make_row`, :func:`~probe.results.write_results`, :func:`~probe.results.save_artifacts`):
frozen probes (logistic and kNN on ``pooled``, logistic on ``block0..block3`` for the layer-wise curves on
``alpha``), few-shot logistic probes (1 and 5 shots per class, three seeds) and full fine-tuning.

Every accuracy is a whole number of test images, so the report's numbers can be checked by hand. The numbers
are in ``PLAN`` below; :func:`write_fixture` returns a dict of the expected answers.

One trap is built in: on ``alpha``, ``vit_a``'s logistic probe has the best *val* score (0.90) but kNN has the
best *test* score (0.85 > 0.70), so a report that picked "best frozen" on test would show 85.0 instead of 70.0.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from probe.results import job_stem, make_row, mean_per_class_accuracy, save_artifacts, write_results

DATASETS = {"alpha": dict(n_test=200, n_classes=4), "beta": dict(n_test=100, n_classes=5)}
BACKBONES = {"vit_a": "transformer", "vit_b": "transformer", "cnn_c": "convnet"}

# (dataset, backbone) -> {(probe, tap): (val top1 of the selected setting, test top1)}
PLAN = {
    ("alpha", "vit_a"): {("logistic", "pooled"): (0.90, 0.70), ("knn", "pooled"): (0.80, 0.85),
                         ("finetune", "-"): (0.95, 0.90)},
    ("alpha", "vit_b"): {("logistic", "pooled"): (0.85, 0.80), ("knn", "pooled"): (0.70, 0.75),
                         ("finetune", "-"): (0.92, 0.88)},
    ("alpha", "cnn_c"): {("logistic", "pooled"): (0.88, 0.75), ("knn", "pooled"): (0.60, 0.60),
                         ("finetune", "-"): (0.90, 0.93)},
    ("beta", "vit_a"): {("logistic", "pooled"): (0.60, 0.55), ("knn", "pooled"): (0.50, 0.52),
                        ("finetune", "-"): (0.70, 0.66)},
    ("beta", "vit_b"): {("logistic", "pooled"): (0.62, 0.61), ("knn", "pooled"): (0.66, 0.64),
                        ("finetune", "-"): (0.64, 0.60)},
    ("beta", "cnn_c"): {("logistic", "pooled"): (0.58, 0.50), ("knn", "pooled"): (0.40, 0.41),
                        ("finetune", "-"): (0.75, 0.71)},
}
# Layer-wise: logistic on block taps, alpha only, test top1 per block index; val kept below pooled's so that
# the block taps never become "best frozen".
BLOCKS = {"vit_a": [0.30, 0.45, 0.60, 0.68], "vit_b": [0.35, 0.50, 0.65, 0.78], "cnn_c": [0.40, 0.55, 0.65, 0.72]}
# Few-shot: logistic on pooled, test top1 for seeds 0, 1, 2 (plus a per-backbone offset, FEW_SHOT_OFFSET).
FEW_SHOT = {1: [0.30, 0.35, 0.40], 5: [0.50, 0.55, 0.60]}
FEW_SHOT_OFFSET = {"vit_a": 0.0, "vit_b": 0.10, "cnn_c": 0.05}


def _labels(dataset: str) -> np.ndarray:
    """Test labels; the last class has twice the images of the others, so mean per-class accuracy != top-1."""
    n, c = DATASETS[dataset]["n_test"], DATASETS[dataset]["n_classes"]
    return np.minimum(np.arange(n) % (c + 1), c - 1)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _predictions(labels: np.ndarray, n_classes: int, accuracy: float, key) -> np.ndarray:
    """Predictions with exactly ``round(accuracy * n)`` correct images, chosen at random (seeded by ``key``)."""
    n = len(labels)
    k = int(round(accuracy * n))
    assert abs(k - accuracy * n) < 1e-9, f"accuracy {accuracy} is not a whole number of {n} images"
    correct = np.zeros(n, dtype=bool)
    correct[_rng(*key).permutation(n)[:k]] = True
    return np.where(correct, labels, (labels + 1) % n_classes)


def _write_job(results_dir: Path, *, dataset: str, backbone: str, probe: str, tap: str, val: float, test: float,
               shots: int = 0, seed: int = 0, reverse_ids: bool = False, with_artifacts: bool = True) -> dict:
    spec = DATASETS[dataset]
    n, n_classes = spec["n_test"], spec["n_classes"]
    labels = _labels(dataset)
    ids = np.array([f"{dataset}/img{i:04d}.png" for i in range(n)])
    pred = _predictions(labels, n_classes, test, (dataset, backbone, probe, tap, shots, seed))
    common = dict(backbone=backbone, family=BACKBONES[backbone], weights="hub", dataset=dataset, tap=tap,
                  probe=probe, shots=shots, seed=seed, val_fraction=0.2, select_metric="top1",
                  cache_key="-" if probe == "finetune" else f"key-{backbone}-{dataset}", fit_seconds=0.1,
                  n_train=40 if shots == 0 else shots * n_classes)
    if probe == "finetune":
        grid = [{"mode": "full", "epoch": 1}, {"mode": "full", "epoch": 2}]
    else:
        grid = [{"C": 0.1}, {"C": 1.0}] if probe == "logistic" else [{"k": 1}, {"k": 10}]
    chosen = grid[1]
    rows = [make_row(**common, params=grid[0], selected=False, split="val", top1=val - 0.1, top5=1.0,
                     mean_per_class_acc=val - 0.1, n_eval=20),
            make_row(**common, params=chosen, selected=False, split="val", top1=val, top5=1.0,
                     mean_per_class_acc=val, n_eval=20),
            make_row(**common, params=chosen, selected=True, split="test", top1=float(np.mean(pred == labels)),
                     top5=1.0, mean_per_class_acc=mean_per_class_accuracy(labels, pred), n_eval=n)]
    stem = job_stem(results_dir, backbone=backbone, dataset=dataset, probe=probe, tap=tap, shots=shots, seed=seed,
                    tag="full" if probe == "finetune" else None)
    write_results(rows, str(stem) + ".parquet")
    if with_artifacts:
        order = np.arange(n)[::-1] if reverse_ids else np.arange(n)  # the report must pair images by id
        scores = np.full((n, n_classes), 0.1, dtype=np.float32)
        scores[np.arange(n), pred] = 0.9
        save_artifacts(stem, ids=ids[order], labels=labels[order], scores=scores[order],
                       classes=[f"class{c}" for c in range(n_classes)], weights={"coef": np.zeros((2, 2))})
    return {"stem": stem, "labels": labels, "pred": pred, "correct": pred == labels}


def write_fixture(results_dir, *, frozen: bool = True, finetune: bool = True, backbones=None,
                  layerwise: bool = True, few_shot: bool = True) -> dict:
    """Write the synthetic study under ``results_dir``; return the expected answers.

    Returns
    -------
    dict
        ``best_frozen[(dataset, backbone)] = (probe, tap, test_top1)`` (chosen on val),
        ``finetune[(dataset, backbone)] = test_top1``, ``gain[(dataset, backbone)] = finetune - best frozen``,
        ``correct[(dataset, backbone, probe, tap)]`` = per-image correctness in id order, ``labels[dataset]``.
    """
    results_dir = Path(results_dir)
    backbones = list(BACKBONES) if backbones is None else list(backbones)
    truth = {"best_frozen": {}, "finetune": {}, "gain": {}, "correct": {}, "labels": {}}
    for (dataset, backbone), jobs in PLAN.items():
        if backbone not in backbones:
            continue
        truth["labels"][dataset] = _labels(dataset)
        for (probe, tap), (val, test) in jobs.items():
            is_ft = probe == "finetune"
            if (is_ft and not finetune) or (not is_ft and not frozen):
                continue
            job = _write_job(results_dir, dataset=dataset, backbone=backbone, probe=probe, tap=tap, val=val,
                             test=test, reverse_ids=is_ft)
            truth["correct"][(dataset, backbone, probe, tap)] = job["correct"]
        frozen_jobs = {k: v for k, v in jobs.items() if k[0] != "finetune"}
        (probe, tap), (_, test) = max(frozen_jobs.items(), key=lambda item: item[1][0])
        if frozen:
            truth["best_frozen"][(dataset, backbone)] = (probe, tap, test)
        if finetune:
            truth["finetune"][(dataset, backbone)] = jobs[("finetune", "-")][1]
        if frozen and finetune:
            truth["gain"][(dataset, backbone)] = jobs[("finetune", "-")][1] - test
        if frozen and layerwise and dataset == "alpha":
            for block, test_b in enumerate(BLOCKS[backbone]):
                _write_job(results_dir, dataset=dataset, backbone=backbone, probe="logistic", tap=f"block{block}",
                           val=0.5, test=test_b)
        if frozen and few_shot:
            for shots, per_seed in FEW_SHOT.items():
                for seed, test_s in enumerate(per_seed):
                    test_s = round(test_s + FEW_SHOT_OFFSET[backbone], 2)
                    _write_job(results_dir, dataset=dataset, backbone=backbone, probe="logistic", tap="pooled",
                               val=test_s, test=test_s, shots=shots, seed=seed)
    return truth
