"""Dense datasets: NYU Depth V2's official files (a small file in the same format, written here with h5py and
scipy) and dense csv/parquet manifests, with their bad inputs as one-line errors naming the file."""

from __future__ import annotations

import json
import numpy as np
import pytest

import probe
from probe import ProbeError, UsageError
from probe.dense import IGNORE_INDEX
from tests._helpers import assert_one_line_error, run_main

H, W, N = 12, 16, 6  # the official frame is 480 x 640 x 1449 images
#: the scene (video sequence) of each image: train images 1, 3 and 4, 6 share two scenes; test 2, 5 a third
SCENES = ["kitchen_0001", "office_0003", "kitchen_0001", "bedroom_0002", "office_0003", "bedroom_0002"]


def write_nyuv2(folder, *, classes=40):
    """A NYUv2-format labelled .mat (HDF5, MATLAB's transposed layout), splits.mat and a class mapping."""
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, H, W, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, size=(N, H, W)).astype(np.float32)
    labels = rng.integers(0, 6, size=(N, H, W)).astype(np.uint16)  # raw classes 1..5, 0 = unlabelled
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "nyu_depth_v2_labeled.mat", "w") as f:  # MATLAB v7.3 writes column-major arrays
        f["images"] = images.transpose(0, 3, 2, 1)
        f["depths"] = depths.transpose(0, 2, 1)
        f["labels"] = labels.transpose(0, 2, 1)
        # a cell array of strings: references to uint16 char arrays under #refs#, as MATLAB writes them
        scenes = f.create_dataset("scenes", (1, N), dtype=h5py.ref_dtype)
        for i, name in enumerate(SCENES):
            scenes[0, i] = f.create_dataset(f"#refs#/scene{i}", data=np.array([[ord(c)] for c in name],
                                                                               dtype=np.uint16)).ref
    savemat(folder / "splits.mat", {"trainNdxs": np.array([[1], [3], [4], [6]]), "testNdxs": np.array([[2], [5]])})
    savemat(folder / f"classMapping{classes}.mat", {"mapClass": np.array([[2, 1, 3, 0, 2]]),  # raw 4 -> none
                                                   "className": np.array(["wall", "floor", "bed"], dtype=object)})
    return folder / "nyu_depth_v2_labeled.mat", images, depths, labels


def test_nyuv2_reader_layout_split_mapping_and_ignore(tmp_path):
    mat, images, depths, labels = write_nyuv2(tmp_path / "nyu")
    d = probe.open_dataset(f"nyuv2:{mat}")
    assert d.split_names == ["train", "test"] and d.ids["train"] == ["0001", "0003", "0004", "0006"]
    assert d.ids["test"] == ["0002", "0005"] and d.tasks == ("segmentation", "depth")
    assert d.segmentation_classes == ["wall", "floor", "bed"]
    assert np.array_equal(np.asarray(d.load("test", 1)), images[4])  # test image 2 of 2 is image number 5
    dense = d.dense_targets("test", 1)
    seg, depth = dense["segmentation"], dense["depth"]
    want = np.array([IGNORE_INDEX, 1, 0, 2, IGNORE_INDEX, 1])[labels[4]]  # 0 and raw 4 (mapped to 0) ignored
    assert seg.shape == (H, W) and np.array_equal(seg, want)
    inside = np.zeros((H, W), dtype=bool)
    inside[1:12, 1:15] = True  # the Eigen crop (rows 45:471, columns 41:601 of 480 x 640) scaled to 12 x 16
    assert np.array_equal(depth[inside], depths[4][inside]) and np.all(depth[~inside] == 0)
    with pytest.raises(UsageError, match="classMapping13.mat is missing"):
        probe.open_dataset(f"nyuv2:{mat}?classes=13")
    meta = tmp_path / "meta"
    write_nyuv2(meta, classes=13)
    assert probe.open_dataset(f"nyuv2:{mat}?classes=13", data_root=meta).name == "nyuv2-13"
    (tmp_path / "nyu" / "splits.mat").unlink()
    with pytest.raises(UsageError, match="splits.mat is missing"):
        probe.open_dataset(f"nyuv2:{mat}")


def test_nyuv2_val_is_carved_by_scene_in_sweeps_and_fine_tuning(tmp_path):
    """NYUv2's official split is scene-disjoint; the val carve takes whole scenes (frames of one video never in
    both train and val), the same for the frozen dense sweep and fine-tuning."""
    import polars as pl

    from probe._finetune.data import plan_splits
    from probe._sweep import sweep_cached
    from probe.results import load_artifacts
    from probe.splits import source_carve_groups

    mat, *_ = write_nyuv2(tmp_path / "nyu")
    d = probe.open_dataset(f"nyuv2:{mat}")
    scenes = source_carve_groups(d, "train", d.ids["train"])
    assert scenes.tolist() == ["kitchen_0001", "kitchen_0001", "bedroom_0002", "bedroom_0002"]
    for seed in range(6):
        plan = plan_splits(d, val_fraction=0.2, test_fraction=0.0, seed=seed, stratify=True)
        val = set(scenes[plan["val"][1]])
        assert len(plan["val"][1]) == 2 and not val & set(scenes[plan["train"][1]])  # one whole scene
    # the frozen dense probe carves the same scene: 2 val images (a per-image carve of 20% would take 1)
    paths = sweep_cached("test_vit", f"nyuv2:{mat}", task="segmentation", random_init=True, img_size=32,
                         cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", progress=False,
                         device="cpu", grids={"linear": {"lr": [0.01], "weight_decay": [0.0], "epochs": [1]}})
    rows = pl.read_parquet(paths[0])
    assert set(rows["n_val"]) == {2} and set(rows["val_fraction"]) == {0.2}
    # the test frames save their scene, which intervals resample
    art = load_artifacts(paths[0])
    assert [SCENES[int(i) - 1] for i in art["ids"]] == art["group"].tolist() == ["office_0003", "office_0003"]


def write_dense_manifest(root, *, mask_size=(10, 12), mask_value=1, depth=None):
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = ["path,mask,depth,split"]
    for i, split in enumerate(["train", "train", "test"]):
        Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)).save(root / f"img{i}.png")
        mask = np.full(mask_size if i == 2 else (10, 12), mask_value if i == 2 else 1, dtype=np.uint8)
        mask[0, 0] = IGNORE_INDEX
        Image.fromarray(mask).save(root / f"mask{i}.png")
        if i == 1:  # a 16-bit PNG in millimetres
            Image.fromarray(np.full((10, 12), 2500, dtype=np.uint16)).save(root / f"depth{i}.png")
            name = f"depth{i}.png"
        else:
            np.save(root / f"depth{i}.npy", np.full((10, 12), 1.5, dtype=np.float32) if depth is None or i != 2
                    else depth)
            name = f"depth{i}.npy"
        rows.append(f"img{i}.png,mask{i}.png,{name},{split}")
    (root / "dense.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("background\nthing\n")
    return root / "dense.csv"


def test_dense_manifest_targets(tmp_path):
    d = probe.open_dataset(f"csv:{write_dense_manifest(tmp_path / 'ok')}")
    assert d.tasks == ("segmentation", "depth") and d.segmentation_classes == ["background", "thing"]
    t = d.dense_targets("train", 1)
    assert t["segmentation"][0, 0] == IGNORE_INDEX and t["segmentation"][5, 5] == 1
    assert np.allclose(t["depth"], 2.5)  # 2500 / depth_scale 1000
    scaled = probe.open_dataset(f"csv:{tmp_path / 'ok' / 'dense.csv'}?depth_scale=5000")
    assert np.allclose(scaled.dense_targets("train", 1)["depth"], 0.5)
    assert np.allclose(d.dense_targets("test", 0)["depth"], 1.5)


@pytest.mark.parametrize("bad, message", [
    (dict(mask_size=(8, 12)), "is 12x8 pixels but its image is 12x10"),
    (dict(mask_value=7), "class ids [7] outside the 2 classes"),
    (dict(depth=np.full((10, 12), np.nan, dtype=np.float32)), "has NaN values"),
    (dict(depth=np.full((10, 12), -1.0, dtype=np.float32)), "has negative depths"),
])
def test_bad_dense_inputs_name_the_file(tmp_path, bad, message):
    d = probe.open_dataset(f"csv:{write_dense_manifest(tmp_path / 'bad', **bad)}")
    with pytest.raises(ProbeError, match="(mask|depth)2") as err:
        d.dense_targets("test", 0)
    assert message in str(err.value) and str(tmp_path / "bad") in str(err.value)


def test_bad_dense_input_is_one_cli_line(tmp_path, capsys):
    manifest = write_dense_manifest(tmp_path / "bad", depth=np.full((10, 12), np.nan, dtype=np.float32))
    proc = run_main(capsys, "extract-features", "test_resnet", f"csv:{manifest}", "--random-init", "--img-size",
                    "32", "--task", "depth", "--cache-dir", tmp_path / "cache", "--no-progress")
    assert_one_line_error(proc, 1, "has NaN values", str(tmp_path / "bad" / "depth2.npy"))


def test_nyuv2_every_backbone_is_scored_on_the_eigen_crop_at_label_resolution(tmp_path):
    """Dense tasks feed the whole frame (no centre crop) and score the predictions upsampled to the label
    resolution: two backbones of different input size, crop_pct and output stride score the same pixels per test
    image, those of the Eigen crop (rows 45:471, columns 41:601 of 480 x 640, scaled to the 12 x 16 frame)."""
    import h5py
    import polars as pl

    from probe._nyuv2 import EIGEN_CROP
    from probe.results import load_artifacts

    mat, *_ = write_nyuv2(tmp_path / "nyu")
    r0, r1, c0, c1 = EIGEN_CROP
    eigen = (round(r1 * H / 480) - round(r0 * H / 480)) * (round(c1 * W / 640) - round(c0 * W / 640))
    assert eigen == 11 * 14
    grid = {"linear": {"lr": [0.01], "weight_decay": [0.0], "epochs": [1]}}
    configs = {}
    for backbone, img_size, crop_pct, want_grid in (("test_vit", 48, 0.95, "3x3"),
                                                    ("convnext_atto.d2_in1k", 64, 0.875, "2x2")):
        paths = probe.sweep_cached(backbone, f"nyuv2:{mat}", task="depth", random_init=True, img_size=img_size,
                                   cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", progress=False,
                                   device="cpu", grids=grid)
        rows = pl.read_parquet(paths[0])
        assert set(rows["img_size"]) == {img_size} and set(rows["grid"]) == {want_grid}
        art = load_artifacts(paths[0])
        assert art["stat/n_valid"].tolist() == [eigen, eigen]  # both test images, every crop pixel
        assert art["ids"].tolist() == ["0002", "0005"]
        views = []
        for path in (tmp_path / "cache").rglob("*.h5"):
            with h5py.File(path, "r") as f:
                if f.attrs.get("backbone") == backbone:  # a feature file (not a targets file) of this backbone
                    config = json.loads(f.attrs["data_config"])
                    views.append((config["crop_pct"], config["crop_mode"]))
        assert views == [(1.0, "squash")] * 2  # train and test: the whole frame, no centre crop
        assert describe_crop(backbone, img_size) == crop_pct  # the checkpoints' own centre crops differ
        configs[backbone] = rows["backbone_config"][0]
    # one labels file per split scores both (their network-input targets differ: one file per geometry)
    names = [p.name for p in (tmp_path / "cache" / "_targets").rglob("*.h5")]
    assert sorted(n.rsplit("-", 1)[0] for n in names if "-labels-" in n) == ["test-depth-labels", "train-depth-labels"]
    assert len(names) == 2 + 2 * 2
    # fine-tuning feeds the same whole frame and scores the same pixels
    run = probe.finetune("test_vit", f"nyuv2:{mat}", tasks=["depth"], random_init=True, img_size=48, epochs=1,
                         batch_size=2, warmup_epochs=0.0, workers=0, results_dir=tmp_path / "ft",
                         cache_dir=tmp_path / "cache", progress=False, verbose=False)
    art = np.load(str(run.results_path).replace(".parquet", ".npz"))
    assert art["stat/n_valid"].tolist() == [eigen, eigen]
    assert art["preview/image"].shape[1:] == art["preview/pred"].shape[1:] + (3,) == (H, W, 3)
    test_row = run.frame.filter(pl.col("selected"))
    assert test_row["backbone_config"][0] == configs["test_vit"]  # the frozen probe's configuration: they pair up
    params = json.loads(test_row["params"][0])
    assert (params["frame"], params["scored"], params["depth_zoom"]) == ("full-frame-squash", "label resolution",
                                                                         "divide")


def describe_crop(backbone: str, img_size: int) -> float:
    from probe._backbones import describe_backbone

    return describe_backbone(backbone, random_init=True, img_size=img_size)["data_config"]["crop_pct"]


def test_patch16_is_a_convnets_stride16_stage_and_a_dense_tap(tmp_path):
    """``patch16`` is the stage before the last of a ConvNet (stride 16; its final map is stride 32), checked
    against a forward hook on that stage; for a ViT/16 it is the final grid; a dense sweep on it records its grid,
    so a matched-stride comparison (ConvNet patch16 vs ViT patch) can be run."""
    import polars as pl
    import torch

    from probe._backbones import create_backbone
    from probe._taps import forward_taps

    bb = create_backbone("test_resnet", random_init=True, img_size=64)
    seen = {}
    bb.model.layer3.register_forward_hook(lambda m, i, out: seen.setdefault("layer3", out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = forward_taps(bb.model, x, ("patch", "patch16"))
    want = seen["layer3"].flatten(2).transpose(1, 2)  # [B, 4 * 4, C] at stride 16
    assert out["patch"].shape[1] == 2 * 2 and out["patch16"].shape == want.shape == (2, 16, want.shape[2])
    assert torch.allclose(out["patch16"], want)
    vit = create_backbone("test_vit", random_init=True, img_size=64)
    with torch.no_grad():
        both = forward_taps(vit.model, x, ("patch", "patch16"))
    assert torch.equal(both["patch"], both["patch16"])
    mat, *_ = write_nyuv2(tmp_path / "nyu")
    paths = probe.sweep_cached("test_resnet", f"nyuv2:{mat}", task="segmentation", taps=["patch", "patch16"],
                               random_init=True, img_size=64, cache_dir=tmp_path / "cache", progress=False,
                               results_dir=tmp_path / "results", device="cpu",
                               grids={"linear": {"lr": [0.01], "weight_decay": [0.0], "epochs": [1]}})
    rows = pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
    assert dict(rows.select("tap", "grid").unique().iter_rows()) == {"patch": "2x2", "patch16": "4x4"}
    with pytest.raises(UsageError, match="no stage at output stride 16"):
        probe.extract_features("vit_small_patch14_dinov2", "digits", taps=["patch16"], random_init=True,
                               img_size=28, cache_dir=tmp_path / "c2", progress=False)
