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
               shots: int = 0, seed: int = 0, reverse_ids: bool = False, with_artifacts: bool = True,
               identity: dict | None = None) -> dict:
    spec = DATASETS[dataset]
    n, n_classes = spec["n_test"], spec["n_classes"]
    labels = _labels(dataset)
    ids = np.array([f"{dataset}/img{i:04d}.png" for i in range(n)])
    identity = dict(identity or {})
    pred = _predictions(labels, n_classes, test, (dataset, backbone, probe, tap, shots, seed,
                                                  identity.get("backbone_config")))
    common = dict(backbone=backbone, family=BACKBONES.get(backbone), weights="hub", dataset=dataset, tap=tap,
                  probe=probe, shots=shots, seed=seed, val_fraction=0.2, select_metric="top1",
                  cache_key="-" if probe == "finetune" else f"key-{backbone}-{dataset}", fit_seconds=0.1,
                  n_train=40 if shots == 0 else shots * n_classes)
    common.update(identity)
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
                    tag="-".join(t for t in ("full" if probe == "finetune" else "", identity.get("backbone_config", ""),
                                             identity.get("select_metric", "")) if t) or None)
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


# --- the README scenario of issue 8: one backbone name under several configurations -----------------------------

#: backbone_config -> identity columns. test_vit with pretrained-like weights (a file), and random-init test_vit at
#: two input sizes; test_resnet (pretrained-like) so that there are two families.
CONFIGS = {
    "aaaaaaaaaaaa": dict(backbone="test_vit", weights="file:0123456789abcdef", img_size=224, family="transformer",
                         config_label="test_vit · file:0123456789abcdef · 224px"),
    "bbbbbbbbbbbb": dict(backbone="test_vit", weights="random-init:seed0", img_size=160, family="transformer",
                         config_label="test_vit · random-init:seed0 · 160px"),
    "cccccccccccc": dict(backbone="test_vit", weights="random-init:seed0", img_size=224, family="transformer",
                         config_label="test_vit · random-init:seed0 · 224px"),
    "dddddddddddd": dict(backbone="test_resnet", weights="file:fedcba9876543210", img_size=224, family="convnet",
                         config_label="test_resnet · file:fedcba9876543210 · 224px"),
}
#: backbone_config -> {(probe, tap): ([val per seed 0, 1, 2], [test per seed])}, on dataset alpha (200 test
#: images). The random-init configurations have the better *val* scores, so a report that pooled configurations
#: would make them "best frozen" for test_vit. For bbbbbbbbbbbb, logistic has the luckiest carve (seed 0 val 0.95)
#: but the lower val mean (0.683 < knn's 0.70): "best by val" must pick knn.
MIXED = {
    "aaaaaaaaaaaa": {("logistic", "pooled"): ([0.60, 0.62, 0.64], [0.70, 0.72, 0.74]),
                     ("knn", "pooled"): ([0.50, 0.52, 0.54], [0.60, 0.62, 0.64]),
                     ("finetune", "-"): ([0.80, 0.80, 0.80], [0.90, 0.91, 0.92])},
    "bbbbbbbbbbbb": {("logistic", "pooled"): ([0.95, 0.55, 0.55], [0.30, 0.40, 0.50]),
                     ("knn", "pooled"): ([0.70, 0.70, 0.70], [0.20, 0.22, 0.24])},
    "cccccccccccc": {("logistic", "pooled"): ([0.90, 0.90, 0.90], [0.25, 0.25, 0.25]),
                     ("knn", "pooled"): ([0.80, 0.80, 0.80], [0.15, 0.15, 0.15])},
    "dddddddddddd": {("logistic", "pooled"): ([0.65, 0.65, 0.65], [0.66, 0.68, 0.70]),
                     ("finetune", "-"): ([0.85, 0.85, 0.85], [0.80, 0.80, 0.80])},
}
#: Few-shot logistic (pooled), test top1 per seed, the same for every configuration plus an offset.
MIXED_FEW_SHOT = {1: [0.30, 0.35, 0.40], 5: [0.50, 0.55, 0.60]}
MIXED_OFFSET = {"aaaaaaaaaaaa": 0.10, "bbbbbbbbbbbb": 0.0, "cccccccccccc": 0.05, "dddddddddddd": 0.15}


def write_mixed_fixture(results_dir) -> None:
    """Write the README scenario: results of test_vit under three configurations (and test_resnet), 3 seeds each.

    Rows carry distinct ``backbone_config``/``config_label``/``protocol`` the way the producers fill them.
    """
    results_dir = Path(results_dir)
    for config, jobs in MIXED.items():
        ident = dict(CONFIGS[config], backbone_config=config, precision="fp32", family_source="table")
        backbone = ident.pop("backbone")
        for (probe, tap), (vals, tests) in jobs.items():
            for seed, (val, test) in enumerate(zip(vals, tests)):
                _write_job(results_dir, dataset="alpha", backbone=backbone, probe=probe, tap=tap, val=val,
                           test=test, seed=seed, identity=dict(ident, protocol=f"proto-{probe}-{tap}-0"))
        for shots, per_seed in MIXED_FEW_SHOT.items():
            for seed, test in enumerate(per_seed):
                test = round(test + MIXED_OFFSET[config], 2)
                _write_job(results_dir, dataset="alpha", backbone=backbone, probe="logistic", tap="pooled",
                           val=test, test=test, shots=shots, seed=seed,
                           identity=dict(ident, protocol=f"proto-logistic-pooled-{shots}"))


# --- jobs of any task with per-item statistics, an evaluation scheme and item groups (issue 21) ------------------


def write_item_job(results_dir, *, name: str, task: str, dataset: str = "faces", backbone: str = "test_resnet",
                   family: str | None = None, probe: str = "ridge", tap: str = "pooled",
                   evaluation: str | None = "splits", val: float | None = None, test: dict | None = None,
                   items: dict | None = None, ids=None, labels=None, group=None, params: dict | None = None,
                   seed: int = 0, val_fraction: float = 0.2, img_size: int = 48, select_metric: str | None = None,
                   backbone_config: str | None = None, protocol: str | None = None,
                   folder: str | None = None) -> Path:
    """Write one job of ``task`` through the results contract: a val row (the selected setting's val score, when
    ``val`` is given) and the selected test row (``test``: metric -> value), then the ``.npz`` beside it with
    ``ids``, ``labels``, the per-item statistics ``items`` (``item/<m>``, ``stat/<k>``; ``task`` for dense jobs)
    and, when given, ``group`` (the person or scene of each item). ``folder`` (default: the backbone) is the
    folder under ``results_dir``: it sets the order in which the jobs are read. Returns the parquet path."""
    from probe import tasks
    from probe._io import save_npz_atomic

    results_dir = Path(results_dir)
    t = tasks.get(task)
    select_metric = select_metric or t.headline
    config = backbone_config or f"{backbone}-{img_size}"
    common = dict(backbone=backbone, family=family or ("convnet" if "resnet" in backbone or "convnext" in backbone
                                                        else "transformer"),
                  weights="random-init:seed0", dataset=dataset, tap=tap, probe=probe, shots=0, seed=seed,
                  val_fraction=val_fraction, select_metric=select_metric, task=task, img_size=img_size,
                  precision="fp32", backbone_config=config, config_label=f"{backbone} · {img_size}px",
                  protocol=protocol or f"{probe}-{tap}-{evaluation}", evaluation=evaluation, family_source="table",
                  cache_key="k", fit_seconds=0.1, n_train=40)
    params = dict(params or {"alpha": 1.0})
    rows = []
    if val is not None:
        rows.append(make_row(**common, params=params, selected=False, split="val", n_eval=20,
                             **{select_metric: val}))
    n = len(ids)
    rows.append(make_row(**common, params=params, selected=True, split="test", n_eval=n, **(test or {})))
    stem = results_dir / (folder or backbone) / dataset / name
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_results(rows, str(stem) + ".parquet")
    arrays = {"ids": np.asarray(ids).astype(str), "labels": np.asarray(labels if labels is not None
                                                                       else np.zeros(n, dtype=np.int64))}
    arrays.update({k: np.asarray(v) for k, v in (items or {}).items()})
    if t.dense:
        arrays["task"] = np.asarray(task)
    if group is not None:
        arrays[tasks.GROUP_KEY] = np.asarray(group).astype(str)
    save_npz_atomic(Path(str(stem) + ".npz"), **arrays)
    return Path(str(stem) + ".parquet")
