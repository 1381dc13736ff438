"""Dense metrics against hand-computed cases, and the geometry that maps dense targets onto the network input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests._helpers import assert_one_line_error, run_main

from probe.dense import IGNORE_INDEX, dense_metrics, depth_stats, segmentation_stats, transform_dense_target

SEG_TARGET = np.array([[[0, 0, 1], [1, IGNORE_INDEX, 2]],
                       [[2, 2, 2], [2, 2, 2]]])
SEG_PRED = np.array([[[0, 1, 1], [1, 2, 0]],
                     [[2, 2, 2], [2, 2, 2]]])


def test_segmentation_stats_and_metrics_by_hand():
    stats = segmentation_stats(SEG_PRED, SEG_TARGET, 3)
    # image 0: the ignored pixel (predicted 2) counts nowhere
    assert stats["labelled"].tolist() == [[2, 2, 1], [0, 0, 6]]
    assert stats["intersection"].tolist() == [[1, 2, 0], [0, 0, 6]]
    assert stats["union"].tolist() == [[3, 3, 1], [0, 0, 6]]
    both = dense_metrics("segmentation", stats)
    assert both["miou"] == pytest.approx((1 / 3 + 2 / 3 + 6 / 7) / 3)
    assert both["pixel_acc"] == pytest.approx(9 / 11)
    assert dense_metrics("segmentation", stats, [0]) == pytest.approx({"miou": 1 / 3, "pixel_acc": 3 / 5})
    # classes absent from the ground truth of the resample are not averaged in
    assert dense_metrics("segmentation", stats, [1, 1]) == pytest.approx({"miou": 1.0, "pixel_acc": 1.0})
    # a bootstrap resample counts a repeated image twice
    twice = dense_metrics("segmentation", stats, [0, 0, 1])
    assert twice["pixel_acc"] == pytest.approx(12 / 16)
    with pytest.raises(ValueError, match="outside"):
        segmentation_stats(SEG_PRED, np.full_like(SEG_TARGET, 3), 3)


def _torchmetrics_miou(pred, target, n_classes):
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    jaccard = MulticlassJaccardIndex(num_classes=n_classes, average="macro", ignore_index=IGNORE_INDEX)
    return float(jaccard(torch.as_tensor(pred), torch.as_tensor(target)))


def test_miou_is_torchmetrics_macro_jaccard_also_for_bootstrap_resamples():
    # the 6-class case: a random prediction over 6 classes, class 5 never in the ground truth. mIoU
    # averages over the classes whose union is non-empty (mmsegmentation, torchmetrics), so the class predicted
    # but absent counts with IoU 0 (averaging over the 5 labelled classes only would give 6/5 of it)
    from probe.tasks import get

    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(8, 12, 16))
    target[:, :2] = IGNORE_INDEX
    target[3] = 4  # one image of a single class: a resample without it may lack class 4 (left out there)
    pred = rng.integers(0, 6, size=target.shape)
    pred[3] = 4  # ... predicted right: a resample of it alone has one class, the others neither predicted nor labelled
    stats = segmentation_stats(pred, target, 6)
    expected = _torchmetrics_miou(pred, target, 6)
    got = dense_metrics("segmentation", stats)["miou"]
    assert got == pytest.approx(expected, abs=1e-6)
    labelled_only = (stats["intersection"].sum(0) / stats["union"].sum(0))[:5].mean()
    assert got == pytest.approx(labelled_only * 5 / 6)  # not the mean over the labelled classes
    # the bootstrap path (the task's Metric, as rows, folds and intervals use it): a resample is the images drawn
    metric = get("segmentation").metric("miou")
    items = {f"stat/{k}": v for k, v in stats.items()}
    draws = [rng.integers(0, 8, size=8) for _ in range(4)] + [np.array([3, 3, 0]), np.array([3, 3])]
    counts = np.stack([np.bincount(d, minlength=8) for d in draws])
    values = metric.resampled(items, counts)
    assert values[-1] == 1.0
    for d, v in zip(draws, values):
        assert v == pytest.approx(_torchmetrics_miou(pred[d], target[d], 6), abs=1e-6)


def test_depth_stats_and_metrics_by_hand():
    target = np.array([[[1.0, 2.0], [0.0, np.nan]],  # 0 and NaN: no measurement
                       [[4.0, 4.0], [4.0, 20.0]]])  # 20 m: beyond the 10 m cap
    pred = np.array([[[2.0, 2.0], [5.0, 5.0]],
                     [[5.0, 4.0], [0.0, 4.0]]])  # 0 is clipped to 1 mm
    stats = depth_stats(pred, target)
    assert stats["n_valid"].tolist() == [2, 3]
    assert stats["sq_err"] == pytest.approx([1.0, 1.0 + 3.999 ** 2])
    assert stats["delta1"].tolist() == [1, 1]  # a ratio of exactly 1.25 is not below 1.25
    assert stats["delta2"].tolist() == [1, 2]
    m = dense_metrics("depth", stats)
    rmse = (math.sqrt(1 / 2) + math.sqrt((1 + 3.999 ** 2) / 3)) / 2
    abs_rel = (1 / 2 + (0.25 + 3.999 / 4) / 3) / 2
    log10 = (math.log10(2) / 2 + (math.log10(1.25) + 3 + math.log10(4)) / 3) / 2
    assert m["rmse"] == pytest.approx(rmse) and m["abs_rel"] == pytest.approx(abs_rel)
    assert m["log10"] == pytest.approx(log10)
    assert m["delta1"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["delta2"] == pytest.approx((1 / 2 + 2 / 3) / 2) and m["delta3"] == m["delta2"]
    assert dense_metrics("depth", stats, [0])["rmse"] == pytest.approx(math.sqrt(0.5))
    assert math.isnan(dense_metrics("depth", depth_stats(pred[:1], np.zeros((1, 2, 2))))["rmse"])


def _timm_eval(cfg):
    import timm.data

    return timm.data.create_transform(**{**cfg, "interpolation": "nearest"}, is_training=False)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_dense_targets_land_on_the_image_pixels(crop_mode):
    from PIL import Image

    cfg = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.0] * 3, "std": [1.0] * 3,
           "crop_pct": 0.875, "crop_mode": crop_mode}
    h, w = 30, 50
    ids = np.arange(h * w).reshape(h, w)
    # the image carries each pixel's id in two channels: the eval transform (nearest) shows where each pixel lands
    rgb = np.stack([ids % 256, ids // 256, np.full_like(ids, 255)], axis=-1).astype(np.uint8)
    x = (_timm_eval(cfg)(Image.fromarray(rgb)).numpy() * 255).round().astype(np.int64)
    seg = transform_dense_target(ids, cfg, task="segmentation")
    assert seg.shape == (32, 32) and seg.dtype == np.int64
    real = x[2] == 255  # the border mode pads with the mean colour (blue channel 0 here)
    assert np.array_equal(seg[real], (x[0] + 256 * x[1])[real])
    assert np.all(seg[~real] == IGNORE_INDEX) and (crop_mode == "border") == (not real.all())
    depth = transform_dense_target(ids.astype(np.float32) / 100, cfg, task="depth")
    assert depth.dtype == np.float32 and np.allclose(depth[real] * 100, seg[real])  # metres kept, not blended
    assert np.all(depth[~real] == 0)


# ------------------------------------------------------------------------------------ the frozen dense probe

DENSE_GRID = {"linear": {"lr": [3e-2, 1e-1], "weight_decay": [0.0], "epochs": [4]}}


@pytest.fixture(scope="module")
def dense_sweeps(tmp_path_factory):
    """One extraction of test_vit on shapes (64 px: a 4x4 token grid), then a segmentation and a depth sweep."""
    import probe

    root = tmp_path_factory.mktemp("dense")
    kw = dict(random_init=True, img_size=64, progress=False, grids=DENSE_GRID, cache_dir=root / "cache",
              results_dir=root / "results", device="cpu")
    paths = {task: probe.sweep_cached("test_vit", "shapes", task=task, **kw) for task in ("segmentation", "depth")}
    return root, kw, paths


def _targets(root, split, task):
    import h5py

    (path,) = (root / "cache" / "_targets" / "shapes").glob(f"{split}-{task}-labels-*.h5")  # the scored pixels
    with h5py.File(path, "r") as f:
        return np.stack([v.reshape(shape) for v, shape in zip(f["labels"][()], f["label_shape"][()])])


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dense_sweep_rows_artifacts_and_baselines(dense_sweeps, task):
    import polars as pl

    from probe.results import RESULT_COLUMNS
    from probe import tasks

    TASK_METRICS = {t.name: t.metric_names for t in tasks.all_tasks()}  # the registry's metric columns

    root, _, paths = dense_sweeps
    (path,) = paths[task]
    rows = pl.read_parquet(path)
    assert rows.columns == [*RESULT_COLUMNS, "grid"]  # the dense tasks' own column: the token grid
    assert set(rows["grid"]) == {"4x4"}  # test_vit at 64 px, patch 16
    assert rows["split"].to_list() == ["val", "val", "test"] and rows["selected"].to_list() == [False, False, True]
    assert set(rows["task"]) == {task} and set(rows["probe"]) == {"linear"} and set(rows["tap"]) == {"patch"}
    assert set(rows["select_metric"]) == {TASK_METRICS[task][0]} and rows["protocol"].n_unique() == 1
    test = rows.row(2, named=True)
    assert test["n_train"] == 480 and test["n_eval"] == 240 and test["n_val"] == 120
    for metric in RESULT_COLUMNS:
        if metric in ("top1", "top5", "mean_per_class_acc", *TASK_METRICS["segmentation"], "abs_rel", "delta1"):
            assert (test[metric] is not None) == (metric in TASK_METRICS[task]), metric
    best = rows.filter(pl.col("split") == "val").sort(TASK_METRICS[task][0], descending=task != "depth")
    assert json.loads(test["params"])["lr"] == json.loads(best["params"][0])["lr"]  # selected on val
    art = np.load(str(path).replace(".parquet", ".npz"))
    stats = {k.split("/", 1)[1]: art[k] for k in art.files if k.startswith("stat/")}
    assert len(art["ids"]) == 240 and all(len(v) == 240 for v in stats.values())
    again = dense_metrics(task, stats)  # the per-image statistics give the row's numbers exactly
    assert all(again[m] == pytest.approx(test[m]) for m in TASK_METRICS[task])
    assert art["preview/image"].shape == (4, 64, 64, 3) and art["preview/pred"].shape == (4, 64, 64)
    # the probe beats the trivial predictor made from the training targets by a clear margin
    target = _targets(root, "test", task)
    if task == "segmentation":
        train = _targets(root, "train", task)
        majority = np.bincount(train[train != IGNORE_INDEX].ravel()).argmax()
        base = dense_metrics(task, segmentation_stats(np.full_like(target, majority), target, 7))
        assert test["miou"] > base["miou"] + 0.05 and test["miou"] > 1.5 * base["miou"]
    else:
        mean = float(_targets(root, "train", task).mean())
        base = dense_metrics(task, depth_stats(np.full_like(target, mean), target))
        assert test["rmse"] < 0.9 * base["rmse"] and test["abs_rel"] < base["abs_rel"]


def test_dense_sweep_reuses_and_refuses(dense_sweeps):
    import os

    import probe
    from probe import UsageError

    root, kw, paths = dense_sweeps
    before = os.stat(paths["depth"][0]).st_mtime_ns
    assert probe.sweep_cached("test_vit", "shapes", task="depth", **kw) == paths["depth"]
    assert os.stat(paths["depth"][0]).st_mtime_ns == before  # the job's parquet exists: nothing recomputed
    with pytest.raises(UsageError, match="has no segmentation targets"):
        probe.sweep_cached("test_vit", "digits", task="segmentation", **kw)
    with pytest.raises(UsageError, match="dense probes are linear"):
        probe.sweep_cached("test_vit", "shapes", task="depth", probes=["knn"], **kw)
    with pytest.raises(UsageError, match="select metric for depth"):
        probe.sweep_cached("test_vit", "shapes", task="depth", select_metric="top1", **kw)


def test_report_dense_section(dense_sweeps, tmp_path):
    import probe
    from probe.analysis import compare_jobs, job_ci

    root, _, paths = dense_sweeps
    text = probe.write_report(root / "results", tmp_path / "report", n_boot=200).read_text()
    assert "## Dense transfer: segmentation and depth" in text
    assert "### shapes: segmentation" in text and "### shapes: depth" in text
    assert "| mIoU (%) [95% CI] |" in text and "| RMSE (m) [95% CI] |" in text
    table = [line for line in text.splitlines() if line.startswith("| `test_vit") and "linear / patch" in line]
    assert len(table) == 2 and all(line.split(" | ")[1] == "4x4" for line in table)  # each dense row's grid
    assert (tmp_path / "report" / "figures" / "shapes-segmentation-examples.png").stat().st_size > 1000
    assert (tmp_path / "report" / "figures" / "shapes-depth-examples.png").stat().st_size > 1000
    seg = job_ci(paths["segmentation"][0], metric="miou", n_boot=300)
    assert seg.low < seg.estimate < seg.high and seg.n == 240
    depth = job_ci(paths["depth"][0], metric="rmse", n_boot=200)  # as the report: same resamples, same seed
    assert f"{depth.estimate:.3f} [{depth.low:.3f}, {depth.high:.3f}]" in text  # the report shows this interval
    same = compare_jobs(paths["depth"][0], paths["depth"][0], metric="abs_rel", n_boot=50)
    assert same.paired and same.estimate == 0 and same.low == same.high == 0  # paired: identical images, no spread


def test_sweep_cli_task(capsys):
    proc = run_main(capsys, "sweep", "test_vit", "digits", "--random-init", "--task", "depth", "--no-progress")
    assert_one_line_error(proc, 2, "has no depth targets", "classification")
    proc = run_main(capsys, "sweep", "test_vit", "shapes", "--random-init", "--task", "segmentation", "--probes",
                    "knn", "--no-progress")
    assert_one_line_error(proc, 2, "dense probes are linear")
