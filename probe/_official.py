"""Dataset specs that read the seed study's datasets as their official downloads unpack, with the official split.

``probe.open_dataset`` sends ``KIND:PATH[?key=value&key=value]`` here for these kinds:

- ``cub200:PATH``: CUB-200-2011 (``CUB_200_2011/`` of ``CUB_200_2011.tgz``, or its parent): ``images/``,
  ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``, ``classes.txt``. Official train/test
  (5,994 / 5,794); class names as in ``classes.txt`` (``001.Black_footed_Albatross``...).
- ``flowers102:PATH``: Oxford Flowers-102 (``jpg/`` of ``102flowers.tgz``, ``imagelabels.mat``, ``setid.mat``;
  PATH or ``PATH/flowers-102``, torchvision's layout). Official train/val/test (1,020 / 1,020 / 6,149); class
  names from ``torchvision.datasets.Flowers102``, so ``torchvision:Flowers102`` gives the same classes and split.
- ``indoor67:PATH``: MIT Indoor-67 (``Images/<class>/...`` of ``indoorCVPR_09.tar``, with ``TrainImages.txt`` and
  ``TestImages.txt``). Official train/test (5,360 / 1,340); classes are the folder names. The few unreadable
  files of the archive stop extraction with a line naming the file, or are skipped and recorded with
  ``--skip-bad``.
- ``caltech101:PATH``: Caltech-101 (``101_ObjectCategories/<class>/...``; PATH may be that folder, its parent or
  torchvision's ``caltech101/`` root). No official split: the standard protocol draws ``train_per_class`` (30)
  training images per class, the rest is test. Options ``seed`` (0), ``train_per_class`` (30) and
  ``keep_background`` (0: the ``BACKGROUND_Google`` clutter class is left out). Each class's draw depends only
  on the seed and the class name, so keeping the background class does not change the other classes' draws.
- ``wikiart:PATH``: WikiArt with the ArtGAN split files (``{target}_train.csv``, ``{target}_val.csv``,
  ``{target}_class.txt`` from ``wikiart_csv.zip``, in PATH or ``PATH/wikiart_csv``; images under
  ``PATH/wikiart/`` or PATH). Option ``target``: ``style`` (27 classes, default), ``genre`` (10) or ``artist``
  (23). The val file is the test split (it is the only held-out set the paper defines).
- ``covid-cxr:PATH``: the COVID-19 image data collection (a clone of ieee8023/covid-chestxray-dataset:
  ``metadata.csv`` and ``images/``). X-rays of the ``view`` option's view types (``PA,AP`` by default; a view is
  matched on its first word, so ``AP Supine`` counts as AP); rows without a finding (empty or ``todo``) are
  left out. Option ``label``: ``binary`` (default: ``COVID-19`` when any part of ``finding`` is COVID-19, else
  ``other``) or ``finding`` (every distinct ``finding`` value a class). Split train/val/test (about 60/20/20)
  **grouped by patient** (no patient in two splits) and stratified by label, drawn with option ``seed`` (0).

The source's spec is canonical (every option spelled out, defaults included), so the cache file's
``dataset_spec`` attribute records the seed of a drawn split; options are part of the fingerprint, with the
SHA-256 of every index file and the image list (sizes and mtimes). Errors name the missing file and where it
should be.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UsageError
from ._io import file_sha256

#: Options each kind accepts, with their defaults (the type of the default is the option's type).
OPTIONS: dict[str, dict[str, Any]] = {
    "cub200": {},
    "flowers102": {},
    "indoor67": {},
    "caltech101": {"keep_background": False, "seed": 0, "train_per_class": 30},
    "wikiart": {"target": "style"},
    "covid-cxr": {"label": "binary", "seed": 0, "view": "PA,AP"},
}
#: Spec kinds read here.
KINDS = tuple(OPTIONS)

#: What PATH must hold for each kind (named by the errors about a missing folder or file).
LAYOUTS = {
    "cub200": "the CUB_200_2011/ folder of CUB_200_2011.tgz (images/, images.txt, image_class_labels.txt, "
              "train_test_split.txt, classes.txt)",
    "flowers102": "jpg/ (from 102flowers.tgz), imagelabels.mat and setid.mat side by side",
    "indoor67": "Images/ (from indoorCVPR_09.tar) beside TrainImages.txt and TestImages.txt",
    "caltech101": "101_ObjectCategories/ (from 101_ObjectCategories.tar.gz: one folder per class)",
    "wikiart": "the ArtGAN split files of wikiart_csv.zip (<target>_train.csv, <target>_val.csv, "
               "<target>_class.txt) in PATH or PATH/wikiart_csv, and the images of wikiart.zip in PATH/wikiart",
    "covid-cxr": "metadata.csv and images/ of the covid-chestxray-dataset repository (github.com/ieee8023)",
}

_CHOICES = {("wikiart", "target"): ("style", "genre", "artist"), ("covid-cxr", "label"): ("binary", "finding")}
_CALTECH_BACKGROUND = "BACKGROUND_Google"
_COVID_POSITIVE = "COVID-19"
_COVID_OTHER = "other"
_COVID_FOLDS = 5  # one fold of patients is test, one fold of the rest is val: about 60/20/20
_READER_VERSION = "official-v1"  # part of the fingerprint: bump when a reader's output changes


def read_official(kind: str, arg: str) -> dict[str, Any]:
    """Read the official layout of ``kind`` at ``arg`` (``PATH[?key=value&...]``).

    Returns
    -------
    dict
        Keyword arguments of :class:`probe.DatasetSource` other than ``kind``: canonical ``spec``, ``name``,
        ``classes``, ``splits`` (image paths relative to ``root``), ``labels``, ``ids``, ``root``, ``version`` and
        ``options`` (the options with the index files' SHA-256).

    Raises
    ------
    UsageError
        For an unknown option, a missing folder, index file or listed image, or a malformed index file.
    """
    path_text, options = _parse_options(kind, arg)
    path = Path(path_text).expanduser()
    if not path.exists():
        raise UsageError(f"{kind}: {path_text} does not exist; it should hold {LAYOUTS[kind]}")
    reader = {"cub200": _cub200, "flowers102": _flowers102, "indoor67": _indoor67, "caltech101": _caltech101,
              "wikiart": _wikiart, "covid-cxr": _covid_cxr}[kind]
    root, classes, split_refs, split_labels, index_files = reader(path, options)
    _check_listed_images(kind, root, split_refs)
    canonical = f"{kind}:{path_text}" + ("?" + "&".join(f"{k}={_option_text(v)}" for k, v in sorted(options.items()))
                                         if options else "")
    return dict(spec=canonical, name=_name(kind, options), classes=list(classes),
                splits={s: list(r) for s, r in split_refs.items()},
                labels={s: np.asarray(v, dtype=np.int64) for s, v in split_labels.items()},
                ids={s: list(r) for s, r in split_refs.items()}, root=str(root), version=_READER_VERSION,
                options={**options, "index_sha256": {name: file_sha256(p) for name, p in sorted(index_files.items())}})


# ---------------------------------------------------------------------------------------------------- options


def _parse_options(kind: str, arg: str) -> tuple[str, dict[str, Any]]:
    path_text, sep, query = arg.partition("?")
    allowed = OPTIONS[kind]
    options = dict(allowed)
    if not sep:
        return path_text, options
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if key not in allowed:
            hint = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes no options"
            raise UsageError(f"unknown option {key!r} in {kind}:{arg}; {hint}")
        if not eq:
            raise UsageError(f"option {key!r} in {kind}:{arg} has no value; write {key}=VALUE")
        options[key] = _option_value(kind, key, value, allowed[key])
    return path_text, options


def _option_value(kind: str, key: str, value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise UsageError(f"option {key} of {kind}: must be 1 or 0; got {value!r}")
    if isinstance(default, int):
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < 0 or (key == "train_per_class" and number < 1):
            raise UsageError(f"option {key} of {kind}: must be a whole number (at least 1 for train_per_class); "
                             f"got {value!r}")
        return number
    if not value.strip(" ,"):
        raise UsageError(f"option {key} of {kind}: is empty; e.g. {key}={default}")
    choices = _CHOICES.get((kind, key))
    if choices is not None and value not in choices:
        raise UsageError(f"option {key} of {kind}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def _option_text(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


def _name(kind: str, options: dict[str, Any]) -> str:
    """Readable dataset name for cache paths and results: the kind, plus options that change its images or classes."""
    if kind == "wikiart":
        return f"wikiart-{options['target']}"
    if kind == "caltech101" and options["keep_background"]:
        return "caltech101-bg"
    if kind == "covid-cxr":
        name = "covid-cxr" if options["label"] == "binary" else "covid-cxr-finding"
        views = sorted({v.strip().lower() for v in options["view"].split(",") if v.strip()})
        return name if views == ["ap", "pa"] else f"{name}-{'+'.join(views)}"
    return kind


# ---------------------------------------------------------------------------------------------------- files


def _base(path: Path, marker: str, folders: tuple[str, ...]) -> Path:
    """The folder holding ``marker``: ``path`` itself or one of the archive's own folders below it."""
    for candidate in (path, *(path / f for f in folders)):
        if (candidate / marker).exists():
            return candidate
    return path


def _need(kind: str, folder: Path, name: str) -> Path:
    p = folder / name
    if not p.exists():
        raise UsageError(f"{kind}: {name} is missing from {folder}; expected {LAYOUTS[kind]}")
    return p


def _lines(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _id_table(kind: str, path: Path) -> dict[int, str]:
    """``<integer id> <value>`` lines (CUB's index files) as a dict."""
    table = {}
    for number, line in _lines(path):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value.strip():
            raise UsageError(f"{kind}: line {number} of {path} is not '<id> <value>': {line[:60]!r}; "
                             f"the file may be damaged, unpack it again")
        table[int(key)] = value.strip()
    return table



def _check_listed_images(kind: str, root: Path, split_refs: dict[str, list[str]]) -> None:
    missing = [ref for refs in split_refs.values() for ref in refs if not (root / ref).is_file()]
    if missing:
        raise UsageError(f"{kind}: {len(missing)} image(s) listed in the index files are missing under {root} "
                         f"(first: {missing[0]}); the download may be incomplete, unpack it again")


# ---------------------------------------------------------------------------------------------------- readers
# Each returns (image root, class names, split -> image paths relative to the root, split -> labels,
# index file name -> path).


def _cub200(path: Path, options: dict):
    base = _base(path, "images.txt", ("CUB_200_2011",))
    names = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
    files = {n: _need("cub200", base, n) for n in names}
    root = _need("cub200", base, "images")
    images, labels, is_train, class_table = (_id_table("cub200", files[n]) for n in names)
    class_ids = sorted(class_table)
    position = {cid: i for i, cid in enumerate(class_ids)}
    refs: dict[str, list[str]] = {"train": [], "test": []}
    labs: dict[str, list[int]] = {"train": [], "test": []}
    for image_id in sorted(images):
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise UsageError(f"cub200: image id {image_id} of images.txt is not in {name} ({files[name]}); "
                                 f"the index files do not match, unpack the archive again")
        label = int(labels[image_id])
        if label not in position:
            raise UsageError(f"cub200: class id {label} of image {image_id} is not in classes.txt "
                             f"({files['classes.txt']})")
        split = "train" if is_train[image_id] == "1" else "test"
        refs[split].append(images[image_id])
        labs[split].append(position[label])
    return root, [class_table[c] for c in class_ids], refs, labs, files


def _flowers102(path: Path, options: dict):
    from scipy.io import loadmat

    base = _base(path, "setid.mat", ("flowers-102",))
    label_file = _need("flowers102", base, "imagelabels.mat")
    setid_file = _need("flowers102", base, "setid.mat")
    root = _need("flowers102", base, "jpg")
    try:
        image_labels = np.asarray(loadmat(label_file, squeeze_me=True)["labels"]).reshape(-1).astype(np.int64)
        setid = loadmat(setid_file, squeeze_me=True)
        parts = {split: np.asarray(setid[key]).reshape(-1).astype(np.int64)
                 for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    except (KeyError, ValueError, OSError) as exc:
        raise UsageError(f"flowers102: cannot read {label_file.name} / {setid_file.name} in {base} "
                         f"({exc.__class__.__name__}: {exc}); expected the official .mat files") from None
    classes = _flowers_class_names()
    if image_labels.min(initial=1) < 1 or image_labels.max(initial=1) > len(classes):
        raise UsageError(f"flowers102: labels in {label_file} must be 1..{len(classes)}")
    refs, labs = {}, {}
    for split, ids in parts.items():
        if ids.min(initial=1) < 1 or ids.max(initial=1) > len(image_labels):
            raise UsageError(f"flowers102: image ids in {setid_file} must be 1..{len(image_labels)} "
                             f"(the images of {label_file.name})")
        refs[split] = [f"image_{i:05d}.jpg" for i in ids]
        labs[split] = (image_labels[ids - 1] - 1).tolist()
    return root, classes, refs, labs, {"imagelabels.mat": label_file, "setid.mat": setid_file}


def _flowers_class_names() -> list[str]:
    from torchvision.datasets import Flowers102

    return list(Flowers102.classes)


def _indoor67(path: Path, options: dict):
    files = {n: _need("indoor67", path, n) for n in ("TrainImages.txt", "TestImages.txt")}
    root = _base(path, "Images", ("indoorCVPR_09",)) / "Images"
    if not root.is_dir():
        raise UsageError(f"indoor67: Images is missing from {path}; expected {LAYOUTS['indoor67']}")
    listed = {split: [line.replace("\\", "/") for _, line in _lines(files[name])]
              for split, name in (("train", "TrainImages.txt"), ("test", "TestImages.txt"))}
    for split, refs in listed.items():
        bad = [r for r in refs if "/" not in r]
        if bad:
            raise UsageError(f"indoor67: {bad[0]!r} in {split} list is not '<class>/<file>'; check the index file")
    classes = sorted({r.split("/")[0] for refs in listed.values() for r in refs})
    position = {c: i for i, c in enumerate(classes)}
    labs = {split: [position[r.split("/")[0]] for r in refs] for split, refs in listed.items()}
    return root, classes, listed, labs, files


def _caltech101(path: Path, options: dict):
    from ._images import images_under as _images_under
    from ._images import visible_dirs as _visible_dirs

    folder = "101_ObjectCategories"
    root = path if path.name == folder else _base(path, folder, ("caltech101",)) / folder
    if not root.is_dir():
        raise UsageError(f"caltech101: {folder} is missing from {path}; expected {LAYOUTS['caltech101']}")
    dirs = [d for d in _visible_dirs(root) if options["keep_background"] or d.name != _CALTECH_BACKGROUND]
    if not dirs:
        raise UsageError(f"caltech101: {root} has no class folders")
    n_train = options["train_per_class"]
    refs: dict[str, list[str]] = {"train": [], "test": []}
    labs: dict[str, list[int]] = {"train": [], "test": []}
    for label, d in enumerate(dirs):
        images = [p.relative_to(root).as_posix() for p in _images_under(d)]
        if len(images) <= n_train:
            raise UsageError(f"caltech101: class {d.name} has {len(images)} images, not more than "
                             f"train_per_class={n_train}; use caltech101:PATH?train_per_class=N with a smaller N")
        # a class's draw depends only on the seed and its name: adding or removing a class changes no other draw
        rng = np.random.default_rng([options["seed"], zlib.crc32(d.name.encode())])
        is_train = np.zeros(len(images), dtype=bool)
        is_train[rng.permutation(len(images))[:n_train]] = True
        for ref, train in zip(images, is_train):
            split = "train" if train else "test"
            refs[split].append(ref)
            labs[split].append(label)
    return root, [d.name for d in dirs], refs, labs, {}


def _wikiart(path: Path, options: dict):
    target = options["target"]
    folders = [path, path / "wikiart_csv"]

    def find(stem: str, suffix: str) -> Path:
        for folder in folders:
            for name in (stem + suffix, stem):  # the ArtGAN repository also has them without the extension
                if (folder / name).is_file():
                    return folder / name
        raise UsageError(f"wikiart: {stem}{suffix} is missing from {path} and {path / 'wikiart_csv'}; expected "
                         f"{LAYOUTS['wikiart']}")

    files = {"train": find(f"{target}_train", ".csv"), "test": find(f"{target}_val", ".csv"),
             "classes": find(f"{target}_class", ".txt")}
    root = path / "wikiart" if (path / "wikiart").is_dir() else path
    class_table = _id_table("wikiart", files["classes"])
    if not class_table:
        raise UsageError(f"wikiart: {files['classes']} has no '<index> <class>' lines")
    indices = sorted(class_table)
    if indices != list(range(len(indices))):
        raise UsageError(f"wikiart: class indices in {files['classes']} must be 0..{len(indices) - 1}")
    refs, labs = {}, {}
    for split in ("train", "test"):
        refs[split], labs[split] = [], []
        for number, line in _lines(files[split]):
            ref, _, label = line.rpartition(",")
            if not ref or not label.strip().isdigit() or int(label) not in class_table:
                raise UsageError(f"wikiart: line {number} of {files[split]} is not 'path,class_index' with an index "
                                 f"of {files['classes'].name}: {line[:60]!r}")
            refs[split].append(ref.strip())
            labs[split].append(int(label))
    index_files = {p.name: p for p in files.values()}
    return root, [class_table[i] for i in indices], refs, labs, index_files


def _covid_cxr(path: Path, options: dict):
    import csv

    base = _base(path, "metadata.csv", ("covid-chestxray-dataset",))
    meta_file = _need("covid-cxr", base, "metadata.csv")
    _need("covid-cxr", base, "images")
    with open(meta_file, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0]) if rows else set()
    lacking = sorted({"patientid", "finding", "view", "filename"} - columns)
    if lacking:
        raise UsageError(f"covid-cxr: {meta_file} lacks column(s) {lacking}; expected the collection's metadata.csv")
    views = {v.strip().upper() for v in options["view"].split(",") if v.strip()}
    refs, findings, patients = [], [], []
    for row in rows:
        finding = (row.get("finding") or "").strip()
        view = (row.get("view") or "").strip().split()
        if (row.get("modality") or "X-ray").strip().lower() != "x-ray" or (row.get("folder") or "images") != "images":
            continue  # CT volumes and anything outside images/
        if not view or view[0].upper() not in views or finding.lower() in ("", "todo"):
            continue
        refs.append(f"images/{row['filename'].strip()}")
        findings.append(finding)
        patients.append(row["patientid"].strip())
    if not refs:
        raise UsageError(f"covid-cxr: no X-ray of view {options['view']} with a finding in {meta_file}; check "
                         f"the view option (e.g. view=PA,AP)")
    if options["label"] == "binary":
        classes = [_COVID_POSITIVE, _COVID_OTHER]
        raw = [_COVID_POSITIVE if _COVID_POSITIVE in {p.strip() for p in f.replace(",", "/").split("/")}
               else _COVID_OTHER for f in findings]
    else:
        classes = sorted(set(findings))
        raw = findings
    labels = np.asarray([classes.index(r) for r in raw], dtype=np.int64)
    split_of = _split_by_patient(labels, np.asarray(patients), options["seed"], meta_file)
    out_refs = {s: [r for r, t in zip(refs, split_of) if t == s] for s in ("train", "val", "test")}
    out_labs = {s: labels[split_of == s].tolist() for s in ("train", "val", "test")}
    return base, classes, out_refs, out_labs, {"metadata.csv": meta_file}


def _split_by_patient(labels: np.ndarray, patients: np.ndarray, seed: int, source: Path) -> np.ndarray:
    """Split name per image: whole patients go to train, val or test (about 60/20/20), stratified by label."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    if len(np.unique(patients)) < 2 * _COVID_FOLDS:
        raise UsageError(f"covid-cxr: {source} selects images of {len(np.unique(patients))} patients; a split by "
                         f"patient needs at least {2 * _COVID_FOLDS}")
    split_of = np.full(len(labels), "train", dtype=object)
    with warnings.catch_warnings():  # rare classes cannot be in every fold; the grouping is what must hold
        warnings.simplefilter("ignore", UserWarning)
        folds = StratifiedGroupKFold(n_splits=_COVID_FOLDS, shuffle=True, random_state=seed)
        _, test = next(folds.split(np.zeros(len(labels)), labels, patients))
        split_of[test] = "test"
        rest = np.flatnonzero(split_of == "train")
        folds = StratifiedGroupKFold(n_splits=_COVID_FOLDS - 1, shuffle=True, random_state=seed)
        _, val = next(folds.split(np.zeros(len(rest)), labels[rest], patients[rest]))
        split_of[rest[val]] = "val"
    return split_of
