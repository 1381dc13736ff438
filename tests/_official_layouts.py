"""Miniatures of the seed datasets' official downloads: the same folder and file names and formats (including the
``.mat`` files, written with scipy), a few tiny images per class. Each writer returns what a test needs to check."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def tiny_image(path: Path, value: int, size: int = 8) -> None:
    """Write a small JPEG (or PNG, by suffix) whose colour follows ``value``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    base = np.array([(37 * value) % 256, (91 * value) % 256, (53 * value) % 256], dtype=float)
    img = np.clip(base + rng.normal(0, 10, size=(size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_cub200(parent: Path) -> Path:
    """``parent/CUB_200_2011`` with 4 images per class; 7 train, 5 test (class 1: 3 / 1)."""
    base = parent / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(CUB_CLASSES, 1):
        for i in range(4):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{i:04d}_{image_id}.jpg"
            tiny_image(base / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(i % 2 == 0 or (c == 1 and i == 1))}")  # class 1 has 3 train images
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in enumerate(CUB_CLASSES, 1)))
    return base


def write_flowers102(root: Path) -> dict:
    """``root/{jpg/, imagelabels.mat, setid.mat}``: 12 images of labels 1..3; returns the 1-based id lists."""
    from scipy.io import savemat

    labels = np.array([1, 2, 3] * 4, dtype=np.uint8)  # image i (1-based) has label labels[i-1]
    for i in range(1, len(labels) + 1):
        tiny_image(root / "jpg" / f"image_{i:05d}.jpg", i)
    ids = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9, 10, 11, 12]}
    savemat(root / "imagelabels.mat", {"labels": labels.astype(np.float64)[None, :]})
    savemat(root / "setid.mat", {k: np.asarray(v, dtype=np.uint16)[None, :] for k, v in ids.items()})
    return {"labels": labels, **ids}


INDOOR_CLASSES = ["bar", "kitchen", "waitingroom"]


def write_indoor67(root: Path) -> dict:
    """``root/{Images/<class>/, TrainImages.txt, TestImages.txt}``: per class 3 train, 2 test and 1 unlisted image."""
    lists = {"train": [], "test": []}
    for c, name in enumerate(INDOOR_CLASSES):
        for i in range(6):
            rel = f"{name}/int_{i}.jpg"
            tiny_image(root / "Images" / rel, 10 * c + i)
            if i < 3:
                lists["train"].append(rel)
            elif i < 5:
                lists["test"].append(rel)
    (root / "TrainImages.txt").write_text("\r\n".join(lists["train"]) + "\r\n")  # CRLF line ends are read too
    (root / "TestImages.txt").write_text("\r\n".join(lists["test"]) + "\r\n")
    return lists


CALTECH_COUNTS = {"Faces_easy": 31, "accordion": 33, "yin_yang": 35, "BACKGROUND_Google": 32}


def write_caltech101(parent: Path) -> Path:
    """``parent/101_ObjectCategories/<class>/image_NNNN.jpg`` with :data:`CALTECH_COUNTS` images per class."""
    root = parent / "101_ObjectCategories"
    for c, (name, n) in enumerate(CALTECH_COUNTS.items()):
        for i in range(1, n + 1):
            tiny_image(root / name / f"image_{i:04d}.jpg", 100 * c + i, size=4)
    return root


WIKIART_STYLES = ["Baroque", "Cubism", "Impressionism"]
WIKIART_GENRES = ["landscape", "portrait"]


def write_wikiart(root: Path) -> dict:
    """``root/wikiart/<Style>/*.jpg`` and ``root/wikiart_csv/{style,genre}_{train,val}.csv``, ``*_class.txt``."""
    rows = []
    for s, style in enumerate(WIKIART_STYLES):
        for i in range(4):
            rel = f"{style}/painter-{s}_work-{i}.jpg"
            tiny_image(root / "wikiart" / rel, 7 * s + i)
            rows.append((rel, s, i % 2))
    csvdir = root / "wikiart_csv"
    csvdir.mkdir(parents=True)
    for target, names, col in (("style", WIKIART_STYLES, 1), ("genre", WIKIART_GENRES, 2)):
        (csvdir / f"{target}_class.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
        train = [r for k, r in enumerate(rows) if k % 4 != 3]
        val = [r for k, r in enumerate(rows) if k % 4 == 3]
        for split, part in (("train", train), ("val", val)):
            (csvdir / f"{target}_{split}.csv").write_text("".join(f"{r[0]},{r[col]}\n" for r in part))
    return {"rows": rows}


COVID_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated",
                 "view", "modality", "date", "location", "folder", "filename", "doi", "url", "license",
                 "clinical_notes", "other_notes"]


def write_covid_cxr(root: Path, *, patients: int = 24) -> list[dict]:
    """``root/{metadata.csv, images/}``: ``patients`` patients with 1-3 images each (findings cycle through
    COVID-19 and other findings), plus rows that must be left out: a lateral view, a CT volume and a 'todo'."""
    findings = ["Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial/Streptococcus", "No Finding",
                "Pneumonia/Viral/COVID-19", "Pneumonia/Viral/SARS"]
    views = ["PA", "AP", "AP Supine"]
    rows = []
    for p in range(patients):
        for k in range(1 + p % 3):
            name = f"patient{p}-{k}.jpeg"
            tiny_image(root / "images" / name, 3 * p + k)
            rows.append({"patientid": str(p + 1), "offset": str(k), "sex": "M", "age": "50",
                         "finding": findings[p % len(findings)], "view": views[(p + k) % 3], "modality": "X-ray",
                         "folder": "images", "filename": name, "clinical_notes": "cough, fever"})
    tiny_image(root / "images" / "lateral.jpeg", 999)
    rows.append({"patientid": "1", "finding": findings[0], "view": "L", "modality": "X-ray", "folder": "images",
                 "filename": "lateral.jpeg"})
    rows.append({"patientid": "2", "finding": findings[1], "view": "Axial", "modality": "CT", "folder": "volumes",
                 "filename": "ct.nii.gz"})
    tiny_image(root / "images" / "unlabelled.jpeg", 998)
    rows.append({"patientid": "3", "finding": "todo", "view": "PA", "modality": "X-ray", "folder": "images",
                 "filename": "unlabelled.jpeg"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COVID_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c, "") for c in COVID_COLUMNS})
    return rows
