"""Dense metrics against hand-computed cases, and the geometry that maps dense targets onto the network input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probe.dense import (IGNORE_INDEX, dense_metrics, depth_stats, segmentation_stats, transform_dense_target)

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
