"""Dataset specs: built-ins, image folders, csv/parquet manifests, torchvision and parquet-backed hub datasets."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest

import probe
from probe import UsageError
from tests._helpers import write_image_folder


def test_digits_is_real_fixed_and_stratified():
    d = probe.open_dataset("digits")
    assert d.split_names == ["train", "test"] and d.classes == [str(i) for i in range(10)]
    assert len(d.splits["train"]) + len(d.splits["test"]) == 1797
    counts = np.bincount(d.labels["test"], minlength=10)
    per_class = np.bincount(np.concatenate([d.labels["train"], d.labels["test"]]), minlength=10)
    assert np.all(np.abs(counts - 0.25 * per_class) <= 1)  # 25% of each class
    again = probe.open_dataset("digits")
    assert again.ids == d.ids and again.fingerprint() == d.fingerprint()
    img = d.load("test", 0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_shapes_is_deterministic_with_dense_labels():
    a, b = probe.open_dataset("shapes"), probe.open_dataset("shapes")
    assert a.split_names == ["train", "val", "test"] and len(a.classes) == 6
    assert np.array_equal(np.asarray(a.load("val", 5)), np.asarray(b.load("val", 5)))
    dense = a.dense_targets("val", 5)
    seg, depth = dense["segmentation"], dense["depth"]
    assert seg.shape == depth.shape == (48, 48) and set(np.unique(seg)) == {0, a.labels["val"][5] + 1}
    assert depth[seg > 0].max() < depth[seg == 0].min()  # the shape stands in front of the background
    assert a.tasks == ("classification", "segmentation", "depth") and a.segmentation_classes[0] == "background"
    with pytest.raises(UsageError, match="no dense labels"):
        probe.open_dataset("digits").dense_targets("train", 0)


def test_imagefolder_with_and_without_splits(tmp_path):
    with_splits = probe.open_dataset(f"imagefolder:{write_image_folder(tmp_path / 'a', classes=('b', 'a'))}")
    assert with_splits.split_names == ["train", "test"] and with_splits.classes == ["a", "b"]
    flat = probe.open_dataset(f"imagefolder:{write_image_folder(tmp_path / 'flat', splits=(None,))}")
    assert flat.split_names == ["train"] and flat.ids["train"][0] == "cat/img_0.png"
    (tmp_path / "mixed" / "train" / "x").mkdir(parents=True)
    (tmp_path / "mixed" / "dogs").mkdir()
    with pytest.raises(UsageError, match="mixes split folders"):
        probe.open_dataset(f"imagefolder:{tmp_path / 'mixed'}")


def test_fingerprint_follows_the_files(tmp_path):
    root = write_image_folder(tmp_path / "d")
    before = probe.open_dataset(f"imagefolder:{root}").fingerprint()
    (root / "train" / "cat" / "img_0.png").write_bytes((root / "train" / "dog" / "img_0.png").read_bytes())
    assert probe.open_dataset(f"imagefolder:{root}").fingerprint() != before


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifests(tmp_path, suffix):
    root = write_image_folder(tmp_path / "imgs", splits=(None,))
    rows = {"path": [], "label": [], "split": []}
    for i, p in enumerate(sorted((root).rglob("*.png"))):
        rows["path"].append(str(p.relative_to(tmp_path)))
        rows["label"].append(p.parent.name)
        rows["split"].append("test" if i % 3 == 0 else "train")
    manifest = tmp_path / f"list{suffix}"
    frame = pl.DataFrame(rows)
    frame.write_csv(manifest) if suffix == ".csv" else frame.write_parquet(manifest)
    d = probe.open_dataset(f"csv:{manifest}")
    assert d.name == "list" and d.classes == ["cat", "dog"] and d.split_names == ["train", "test"]
    assert len(d.splits["test"]) == 4 and d.load("test", 0).size == (20, 20)
    assert d.ids["train"][0] == rows["path"][1]
    frame.drop("label").write_csv(tmp_path / "bad.csv")
    with pytest.raises(UsageError, match="lacks column"):
        probe.open_dataset(f"csv:{tmp_path / 'bad.csv'}")
    frame.with_columns(pl.lit("holdout").alias("split")).write_csv(tmp_path / "badsplit.csv")
    with pytest.raises(UsageError, match="unknown split values"):
        probe.open_dataset(f"csv:{tmp_path / 'badsplit.csv'}")


def test_torchvision_dataset_offline(tmp_path):
    d = probe.open_dataset("torchvision:FakeData", data_root=tmp_path)
    assert d.split_names == ["train"] and len(d.splits["train"]) == 1000
    assert d.load("train", 3).mode == "RGB"
    with pytest.raises(UsageError, match="did you mean"):
        probe.open_dataset("torchvision:Flowers10")
    with pytest.raises(UsageError, match="download"):
        probe.open_dataset("torchvision:MNIST", data_root=tmp_path)


def test_hf_parquet_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    repo = tmp_path / "hub" / "someone" / "tiny-pets"
    (repo / "data").mkdir(parents=True)
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"_type": "ClassLabel", "names": ["zebra", "aardvark"]}}}}
    for split, n in (("train", 6), ("test", 4)):
        images, labels = [], []
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.full((10, 10, 3), 40 * i, dtype=np.uint8)).save(buf, format="PNG")
            images.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
            labels.append(i % 2)
        table = pa.table({"image": images, "label": labels})
        table = table.replace_schema_metadata({b"huggingface": json.dumps(meta).encode()})
        pq.write_table(table, repo / "data" / f"{split}-00000-of-00001.parquet")
    d = probe.open_dataset("hf:someone/tiny-pets", data_root=tmp_path / "hub")
    assert d.split_names == ["train", "test"] and d.classes == ["zebra", "aardvark"]  # ClassLabel order kept
    assert list(d.labels["test"]) == [0, 1, 0, 1] and d.ids["test"][1] == "data/test-00000-of-00001.parquet:1"
    assert np.asarray(d.load("test", 2))[0, 0, 0] == 80
    entries = probe.extract_features("test_resnet", "hf:someone/tiny-pets", data_root=tmp_path / "hub",
                                     random_init=True, img_size=32, cache_dir=tmp_path / "c", workers=0,
                                     progress=False)
    assert entries["train"].rows == 6


def test_hf_dataset_not_on_disk_says_where(tmp_path):
    with pytest.raises(UsageError, match="could not be downloaded"):
        probe.open_dataset("hf:nobody/nothing", data_root=tmp_path)
