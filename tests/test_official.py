"""Dataset specs read from the official downloads (probe/_official.py), on miniatures of each official layout."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import probe
from probe import UsageError
from tests._helpers import assert_one_line_error, run_cli, run_main
from tests._official_layouts import (CALTECH_COUNTS, CUB_CLASSES, INDOOR_CLASSES, WIKIART_GENRES, WIKIART_STYLES,
                                     write_caltech101, write_covid_cxr, write_cub200, write_flowers102, write_indoor67,
                                     write_wikiart)


def test_cub200_official_split_labels_and_class_names(tmp_path):
    base = write_cub200(tmp_path)
    d = probe.open_dataset(f"cub200:{base}")
    assert d.name == "cub200" and d.classes == CUB_CLASSES and d.split_names == ["train", "test"]
    assert {s: len(v) for s, v in d.splits.items()} == {"train": 7, "test": 5}
    # image 2 (class 1, second image) is train, image 6 (class 2, second image) is test
    listed = dict(line.split(" ", 1) for line in (base / "images.txt").read_text().splitlines())
    assert d.ids["train"][1] == listed["2"] and d.labels["train"][1] == 0
    assert listed["6"] in d.ids["test"] and d.labels["test"][d.ids["test"].index(listed["6"])] == 1
    assert np.bincount(d.labels["train"]).tolist() == [3, 2, 2]
    assert d.load("test", 0).mode == "RGB"
    # the parent of CUB_200_2011/ works too, and gives the same data
    assert probe.open_dataset(f"cub200:{tmp_path}").fingerprint() == d.fingerprint()


def test_cub200_fingerprint_follows_the_index_files_and_the_images(tmp_path):
    base = write_cub200(tmp_path)
    before = probe.open_dataset(f"cub200:{base}").fingerprint()
    split = base / "train_test_split.txt"
    split.write_text(split.read_text().replace("12 0", "12 1"))  # one image moves from test to train
    moved = probe.open_dataset(f"cub200:{base}")
    assert moved.fingerprint() != before and len(moved.splits["train"]) == 8
    image = base / "images" / moved.ids["train"][0]
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert probe.open_dataset(f"cub200:{base}").fingerprint() != moved.fingerprint()


def test_flowers102_reads_the_official_mat_files(tmp_path):
    ids = write_flowers102(tmp_path / "flowers-102")
    d = probe.open_dataset(f"flowers102:{tmp_path}")  # torchvision's root/flowers-102/ layout
    assert d.split_names == ["train", "val", "test"]
    assert {s: len(v) for s, v in d.splits.items()} == {"train": 3, "val": 3, "test": 6}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        assert d.ids[split] == [f"image_{i:05d}.jpg" for i in ids[key]]
        assert d.labels[split].tolist() == [int(ids["labels"][i - 1]) - 1 for i in ids[key]]
    # the 102 official class names, index = label (the same list torchvision:Flowers102 gives)
    from torchvision.datasets import Flowers102

    assert len(d.classes) == 102 and d.classes == list(Flowers102.classes) and d.classes[0] == "pink primrose"
    assert probe.open_dataset(f"flowers102:{tmp_path / 'flowers-102'}").ids == d.ids


def test_indoor67_lists_define_the_split_and_unlisted_images_are_ignored(tmp_path):
    lists = write_indoor67(tmp_path)
    d = probe.open_dataset(f"indoor67:{tmp_path}")
    assert d.classes == INDOOR_CLASSES and d.ids["train"] == lists["train"] and d.ids["test"] == lists["test"]
    assert d.labels["test"].tolist() == [INDOOR_CLASSES.index(r.split("/")[0]) for r in lists["test"]]
    assert not any("int_5" in r for refs in d.ids.values() for r in refs)  # in Images/, in neither list


def test_caltech101_draws_30_per_class_seeded_and_recorded(tmp_path):
    root = write_caltech101(tmp_path)
    d = probe.open_dataset(f"caltech101:{tmp_path}")
    assert d.classes == ["Faces_easy", "accordion", "yin_yang"]  # BACKGROUND_Google left out by default
    assert np.bincount(d.labels["train"]).tolist() == [30, 30, 30]
    assert np.bincount(d.labels["test"]).tolist() == [1, 3, 5]  # the rest of each class
    assert set(d.ids["train"]).isdisjoint(d.ids["test"])
    # the seed is written into the spec (the cache's dataset_spec attribute), and the spec reproduces the draw
    assert d.spec == f"caltech101:{tmp_path}?keep_background=0&seed=0&train_per_class=30"
    again = probe.open_dataset(d.spec)
    assert again.ids == d.ids and again.fingerprint() == d.fingerprint()
    assert probe.open_dataset(f"caltech101:{root}").ids == d.ids  # the class-folder parent itself works too
    other = probe.open_dataset(f"caltech101:{tmp_path}?seed=1")
    assert other.ids["train"] != d.ids["train"] and other.fingerprint() != d.fingerprint()
    assert np.bincount(other.labels["train"]).tolist() == [30, 30, 30]
    # keeping the background class adds it and leaves every other class's draw as it was
    bg = probe.open_dataset(f"caltech101:{tmp_path}?keep_background=1")
    assert bg.name == "caltech101-bg" and bg.classes[0] == "BACKGROUND_Google" and len(bg.classes) == 4
    assert [r for r in bg.ids["train"] if not r.startswith("BACKGROUND")] == d.ids["train"]
    few = probe.open_dataset(f"caltech101:{tmp_path}?train_per_class=5")
    assert np.bincount(few.labels["train"]).tolist() == [5, 5, 5]
    with pytest.raises(UsageError, match="class Faces_easy has 31 images"):
        probe.open_dataset(f"caltech101:{tmp_path}?train_per_class=31")


def test_wikiart_targets_and_the_val_file_as_test(tmp_path):
    rows = write_wikiart(tmp_path)["rows"]
    style = probe.open_dataset(f"wikiart:{tmp_path}")
    assert style.name == "wikiart-style" and style.classes == WIKIART_STYLES and style.split_names == ["train", "test"]
    assert style.ids["test"] == [r[0] for k, r in enumerate(rows) if k % 4 == 3]
    assert style.labels["test"].tolist() == [r[1] for k, r in enumerate(rows) if k % 4 == 3]
    genre = probe.open_dataset(f"wikiart:{tmp_path}?target=genre")
    assert genre.name == "wikiart-genre" and genre.classes == WIKIART_GENRES
    assert genre.labels["train"].tolist() == [r[2] for k, r in enumerate(rows) if k % 4 != 3]
    assert genre.fingerprint() != style.fingerprint()
    with pytest.raises(UsageError, match="target of wikiart: must be one of style, genre, artist"):
        probe.open_dataset(f"wikiart:{tmp_path}?target=colour")
    with pytest.raises(UsageError, match="artist_train.csv is missing"):
        probe.open_dataset(f"wikiart:{tmp_path}?target=artist")


def test_covid_cxr_split_groups_patients_and_is_seeded(tmp_path):
    rows = write_covid_cxr(tmp_path)
    d = probe.open_dataset(f"covid-cxr:{tmp_path}")
    assert d.name == "covid-cxr" and d.classes == ["COVID-19", "other"] and d.split_names == ["train", "val", "test"]
    by_file = {f"images/{r['filename']}": r for r in rows}
    patients = {s: {by_file[i]["patientid"] for i in d.ids[s]} for s in d.split_names}
    assert patients["train"].isdisjoint(patients["val"]) and patients["train"].isdisjoint(patients["test"])
    assert patients["val"].isdisjoint(patients["test"]) and all(patients.values())
    everything = [i for s in d.split_names for i in d.ids[s]]
    kept = [f"images/{r['filename']}" for r in rows if r["view"] in ("PA", "AP", "AP Supine")
            and r["finding"] != "todo" and r["modality"] == "X-ray"]
    assert sorted(everything) == sorted(kept)  # lateral views, CT and unlabelled rows left out
    for s in d.split_names:
        expected = [0 if "COVID-19" in by_file[i]["finding"] else 1 for i in d.ids[s]]
        assert d.labels[s].tolist() == expected
    assert "seed=0" in d.spec and probe.open_dataset(d.spec).ids == d.ids
    other = probe.open_dataset(f"covid-cxr:{tmp_path}?seed=3")
    assert other.ids != d.ids and other.fingerprint() != d.fingerprint()
    full = probe.open_dataset(f"covid-cxr:{tmp_path}?label=finding&view=PA")
    assert full.name == "covid-cxr-finding-pa" and "Pneumonia/Viral/SARS" in full.classes
    assert {by_file[i]["view"] for s in full.split_names for i in full.ids[s]} == {"PA"}


@pytest.mark.parametrize("kind,make,remove", [
    ("cub200", lambda p: write_cub200(p), "CUB_200_2011/train_test_split.txt"),
    ("cub200", lambda p: write_cub200(p), "CUB_200_2011/classes.txt"),
    ("flowers102", write_flowers102, "setid.mat"),
    ("flowers102", write_flowers102, "imagelabels.mat"),
    ("indoor67", write_indoor67, "TestImages.txt"),
    ("caltech101", lambda p: write_caltech101(p), "101_ObjectCategories"),
    ("wikiart", write_wikiart, "wikiart_csv/style_val.csv"),
    ("covid-cxr", write_covid_cxr, "metadata.csv"),
])
def test_a_missing_index_file_is_named_with_its_place(tmp_path, kind, make, remove):
    import shutil

    make(tmp_path)
    target = tmp_path / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UsageError) as info:
        probe.open_dataset(f"{kind}:{tmp_path}")
    message = str(info.value)
    assert "\n" not in message and target.name in message and str(tmp_path) in message


def test_missing_listed_image_and_bad_options_are_usage_errors(tmp_path):
    base = write_cub200(tmp_path)
    victim = next((base / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(UsageError, match=f"1 image.*missing.*first: .*{victim.name}"):
        probe.open_dataset(f"cub200:{base}")
    with pytest.raises(UsageError, match="unknown option 'seed' in cub200.*takes no options"):
        probe.open_dataset(f"cub200:{base}?seed=1")
    with pytest.raises(UsageError, match="does not exist"):
        probe.open_dataset(f"indoor67:{tmp_path / 'nowhere'}")


def test_cli_missing_index_file_is_one_line(tmp_path):
    base = write_cub200(tmp_path / "data")
    (base / "image_class_labels.txt").unlink()
    study = tmp_path / "study.toml"
    study.write_text('[[backbones]]\nname = "test_resnet"\nrandom_init = true\n'
                     '[[datasets]]\nspec = "cub200:data/CUB_200_2011"\n[[sweeps]]\nprobes = ["knn"]\n')
    proc = run_cli("run", study, "--plan", cwd=tmp_path)
    assert "CANNOT BE READ" in proc.stdout and "[1/2] extract" in proc.stdout
    assert_one_line_error(proc, 2, "image_class_labels.txt is missing from", str(base))


def test_indoor67_unreadable_file_extraction_end_to_end(tmp_path):
    """A corrupt file of the archive stops extraction with one line naming it; --skip-bad skips, says so and records
    it; the features of the rest are written with the official labels, ids and class names."""
    lists = write_indoor67(tmp_path / "indoor")
    bad = tmp_path / "indoor" / "Images" / lists["test"][1]
    bad.write_bytes(b"GIF89a this is not a whole image")
    cache = tmp_path / "cache"
    args = ["extract-features", "test_resnet", f"indoor67:{tmp_path / 'indoor'}", "--random-init", "--img-size", "32",
            "--cache-dir", cache, "--workers", "0", "--no-progress"]
    proc = run_cli(*args)
    assert_one_line_error(proc, 1, lists["test"][1], "--skip-bad")
    proc = run_cli(*args, "--skip-bad", check=0)
    assert "left out 1 unreadable image of indoor67/test" in proc.stderr and lists["test"][1] in proc.stderr
    with h5py.File(next(cache.rglob("test-*.h5"))) as f:
        assert json.loads(f.attrs["skipped"]) == [lists["test"][1]]
        assert json.loads(f.attrs["classes"]) == INDOOR_CLASSES and f.attrs["dataset"] == "indoor67"
        ids = [s.decode() for s in f["ids"][()]]
        assert ids == [r for r in lists["test"] if r != lists["test"][1]]
        assert f["labels"][()].tolist() == [INDOOR_CLASSES.index(r.split("/")[0]) for r in ids]
        assert f["features/pooled"].shape[0] == len(ids) and np.isfinite(f["features/pooled"][()]).all()
    with h5py.File(next(cache.rglob("train-*.h5"))) as f:
        assert [s.decode() for s in f["ids"][()]] == lists["train"] and json.loads(f.attrs["skipped"]) == []


def test_keep_background_flag_and_the_recorded_draw(tmp_path, capsys):
    write_caltech101(tmp_path / "caltech")
    cache = tmp_path / "cache"
    proc = run_main(capsys, "extract-features", "test_resnet", f"caltech101:{tmp_path / 'caltech'}",
                    "--keep-background", "--random-init", "--img-size", "32", "--cache-dir", cache, "--workers", "0", "--no-progress",
                    "--splits", "train")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(next(cache.rglob("train-*.h5"))) as f:
        assert json.loads(f.attrs["classes"])[0] == "BACKGROUND_Google" and f.attrs["dataset"] == "caltech101-bg"
        assert f.attrs["dataset_spec"].endswith("?keep_background=1&seed=0&train_per_class=30")
        assert np.bincount(f["labels"][()]).tolist() == [30] * len(CALTECH_COUNTS)
    proc = run_main(capsys, "extract-features", "test_resnet", "digits", "--keep-background", "--random-init")
    assert_one_line_error(proc, 2, "--keep-background", "caltech101")
