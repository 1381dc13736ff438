"""Dataset specs -> a uniform, picklable view: class names, splits, per-sample ids, labels and images.

Specs (``DatasetSource.spec``):

- ``digits``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes), split once into a
  fixed, stratified train (75%) and test (25%).
- ``shapes``: synthetic and deterministic coloured shapes (6 classes) with a per-pixel segmentation map and a
  depth map kept beside each image for the dense probes; splits train/val/test.
- ``digits-c?corruption=NAME&severity=1..5``: digits' test split corrupted in the manner of ImageNet-C
  (``gaussian_noise``, ``blur``, ``contrast``, ``rotation``, ``invert``, ``jpeg``; severity default 3),
  deterministic (seeded by image id); ``shapes-texture``: shapes' test images with textures instead of flat
  colours. Both have a test split only, with the clean set's ids and class names: shifted sets for ``eval_on``.
- ``imagefolder:PATH``: ``PATH/<split>/<class>/...`` when PATH's sub-folders are split names, else
  ``PATH/<class>/...`` (a single ``train`` split).
- ``csv:PATH`` or a ``.parquet`` manifest: columns ``path,label[,split]``, paths relative to the manifest. A dense
  manifest has ``mask`` and/or ``depth`` columns (``label`` optional): masks are PNG class ids (255 = ignore) into
  the class names of ``classes.txt`` beside the manifest (one per line, line i = id i; without it, the ids 0 to the
  largest id of the train masks, as names, with a note); depth maps are ``.npy``
  float metres or 16-bit PNG in millimetres (``csv:PATH?depth_scale=1000``: value / scale = metres; 0 = none).
- ``nyuv2:PATH[?classes=40|13]``: NYU Depth V2's labelled ``.mat`` with its official split and class mapping
  (segmentation and depth); see ``probe/_nyuv2.py`` for the files it needs.
- ``torchvision:NAME``: a ``torchvision.datasets`` class, read from ``--data-root`` (downloaded by the user).
- ``hf:REPO``: a parquet-backed Hugging Face dataset: ``<data_root>/<REPO>/**/<split>-*.parquet`` with an image
  column (``{bytes, path}``) and a ``label`` column; fetched with huggingface_hub when not on disk.
- ``cub200:PATH``, ``flowers102:PATH``, ``indoor67:PATH``, ``caltech101:PATH``, ``wikiart:PATH``,
  ``covid-cxr:PATH``: the seed study's datasets read from their official downloads with the official split, options
  after ``?`` (``wikiart:PATH?target=genre``); see ``probe/_official.py``.

Split names are ``train``, ``val`` and ``test`` (with the spellings of ``_SPLIT_ALIASES``), and ``gallery`` with
``query`` for identification's gallery/probe protocol (each query image ranks the gallery; one without the other is
an error); any other split folder or manifest value is an error naming them.

Every source gives class names (index = label; sorted unless the dataset defines its own order), samples in a fixed
dataset order, string ids (path relative to the dataset root, or the sample index as text) and a fingerprint that
changes whenever the data does.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._errors import ProbeError, UsageError
from ._faces import BUILTIN_KINDS as FACE_BUILTINS
from ._faces import FILE_KINDS as FACE_FILE_KINDS
from ._builtin_data import (DIGITS_C_VERSION, DIGITS_CLASSES, DIGITS_CORRUPTIONS, DIGITS_VERSION,  # noqa: F401
                            SHAPES_CLASSES, SHAPES_SIZE, SHAPES_TEXTURE_VERSION, SHAPES_VERSION, digit_image,
                            digits_c_splits, digits_splits, shape_sample, shapes_splits, shapes_texture_splits)
from ._hub_data import (hf_class_names, hf_download, hf_image_bytes, init_params, torchvision_object,
                        torchvision_targets)
from ._images import images_under as _images_under
from ._images import load_image
from ._images import visible_dirs as _visible_dirs
from ._official import KINDS as OFFICIAL_KINDS
from ._official import read_official
from .vocab import SPLITS

#: Canonical split names (probe.vocab.SPLITS), and the folder / column spellings accepted for them.
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "dev": "val", "test": "test", "testing": "test", "gallery": "gallery", "query": "query"}
#: How the accepted split names are spelled in errors.
_SPLIT_HINT = "use train, val, test, or gallery and query (identification's gallery/probe splits)"

#: Where torchvision:/hf: datasets are looked for when no data root is given.
DEFAULT_DATA_ROOT = "data"

#: Kinds whose sample references are image files relative to ``root`` (read and fingerprinted as files).
FILE_KINDS_ON_DISK = ("imagefolder", "manifest", *OFFICIAL_KINDS, *FACE_FILE_KINDS)


@dataclass
class DatasetSource:
    """A dataset resolved from its spec: what is in each split and how to read one sample.

    Attributes
    ----------
    spec : str
        The spec as given (``digits``, ``imagefolder:/data/pets``...).
    name : str
        Short readable name used in cache paths and results (``digits``, ``pets``...).
    classes : list of str
        Class names; the index is the label.
    splits : dict
        Split name -> list of sample references (kind-specific), in dataset order.
    labels : dict
        Split name -> int64 array of labels, aligned with ``splits``.
    ids : dict
        Split name -> list of string ids, aligned with ``splits``.
    targets : dict
        Other targets the dataset carries besides its class labels: name (``age``, ``target``) -> split name ->
        float64 array aligned with ``splits`` (``--task`` picks which one a job uses; see :meth:`target`).
    """

    spec: str
    name: str
    kind: str
    classes: list[str]
    splits: dict[str, list]
    labels: dict[str, np.ndarray]
    ids: dict[str, list[str]]
    root: str | None = None
    version: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self):
        pair = {"gallery", "query"} & set(self.splits)
        if len(pair) == 1:
            (have,), (lack,) = pair, {"gallery", "query"} - pair
            raise UsageError(f"dataset {self.spec} has a {have} split but no {lack} split; gallery/probe "
                             f"identification needs both (split values gallery and query), or rename the {have} "
                             "images' split (train, val, test)")

    @property
    def split_names(self) -> list[str]:
        """The splits this dataset has, in train/val/test/gallery/query order."""
        return [s for s in SPLITS if s in self.splits]

    def __len__(self) -> int:
        return sum(len(v) for v in self.splits.values())

    def check_split(self, split: str) -> str:
        """Return the canonical split name, or raise a UsageError listing the splits the dataset has."""
        canonical = _SPLIT_ALIASES.get(split, split)
        if canonical not in self.splits:
            raise UsageError(f"dataset {self.name!r} has no split {split!r}; it has {self.split_names}")
        return canonical

    def target(self, name: str, split: str) -> np.ndarray:
        """The continuous target ``name`` of ``split`` (float64, aligned with ``ids``), or a UsageError naming
        the targets the dataset has."""
        if name not in self.targets:
            have = ", ".join(sorted(self.targets)) or "none (only class labels)"
            raise UsageError(f"dataset {self.name!r} has no target {name!r}; its continuous targets: {have} (a "
                             "csv/parquet manifest gives one with a 'target' column)")
        return self.targets[name][split]

    def load(self, split: str, index: int):
        """Return sample ``index`` of ``split`` as an 8-bit RGB PIL image (ProbeError naming it if unreadable)."""
        ref = self.splits[split][index]
        if self.kind in FILE_KINDS_ON_DISK:
            return load_image(os.path.join(self.root, ref), name=os.path.join(self.root, ref))
        if self.kind == "digits":
            return digit_image(ref)
        if self.kind == "shapes":
            return shape_sample(ref, self.options["size"], texture=bool(self.options.get("texture")))[0]
        if self.kind == "nyuv2":
            from ._nyuv2 import nyuv2_image

            return nyuv2_image(self, ref)
        if self.kind == "faces":
            from ._faces import face_image

            return face_image(ref, self.options["size"])
        if self.kind == "torchvision":
            return load_image(self._torchvision(split)[ref][0], name=f"{self.spec}[{split}][{ref}]")
        if self.kind == "hf":
            path, row = ref
            return load_image(hf_image_bytes(path, row, self.options["image_column"]),
                              name=f"{path} row {row}")
        raise AssertionError(self.kind)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks whose targets this dataset carries: ``classification`` and its dense tasks, if any."""
        dense = tuple(self.options.get("dense_tasks", ()))
        # identities (a person per class: identification, verification) and continuous targets (regression)
        faces = tuple(self.options.get("identity_tasks", ())) + (("regression",) if self.targets else ())
        return (("classification",) if self.options.get("classification", True) else ()) + dense + faces

    @property
    def segmentation_classes(self) -> list[str]:
        """Class names of the segmentation maps (index = class id; 255 is the ignore label), or []."""
        return list(self.options.get("segmentation_classes", []))

    def dense_targets(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Dense targets of sample ``index`` of ``split``, at the image's own resolution.

        Returns
        -------
        dict
            The dense tasks the dataset carries (:attr:`tasks`): ``segmentation`` int64 [H, W] class ids into
            :attr:`segmentation_classes` (255 = ignore), ``depth`` float32 [H, W] in metres (0 = no measurement).
            Map them onto the network input with :func:`probe.dense.transform_dense_target`.
        """
        if not self.options.get("dense_tasks"):
            raise UsageError(f"dataset {self.name!r} has no dense labels; use the built-in 'shapes', nyuv2:PATH or "
                             "a dense manifest (csv:PATH with mask/depth columns)")
        if self.kind == "shapes":
            _, seg, depth = shape_sample(self.splits[split][index], self.options["size"])
            return {"segmentation": seg, "depth": depth}
        if self.kind == "nyuv2":
            from ._nyuv2 import nyuv2_dense

            return nyuv2_dense(self, self.splits[split][index])
        if self.kind == "manifest":
            return _manifest_dense(self, split, index)
        raise AssertionError(self.kind)

    def fingerprint(self) -> str:
        """Hash of everything that determines the data: file list with sizes and mtimes, or the built-in version."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps({"kind": self.kind, "version": self.version, "classes": self.classes,
                                 "options": self.options}, sort_keys=True, default=str).encode())
            for split in self.split_names:
                h.update(f"\n[{split}]".encode())
                if self.kind in FILE_KINDS_ON_DISK:
                    dense = self.options.get("dense_files", {}).get(split) or [()] * len(self.splits[split])
                    for ref, label, extra in zip(self.splits[split], self.labels[split], dense):
                        for r in (ref, *(e for e in extra if e)):  # a dense manifest's masks and depth maps too
                            st = os.stat(os.path.join(self.root, r))
                            h.update(f"{r}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                elif self.kind == "hf":
                    for path in sorted({p for p, _ in self.splits[split]}):
                        st = os.stat(path)
                        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                else:
                    h.update(np.ascontiguousarray(self.labels[split]).tobytes())
                    h.update("\0".join(self.ids[split]).encode())
                for name in sorted(self.targets):  # continuous targets (a manifest's column) are data too
                    h.update(f"\0{name}\0".encode() + np.ascontiguousarray(self.targets[name][split]).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def _torchvision(self, split: str):
        cache = self.options.setdefault("_objects", {})
        if split not in cache:
            cache[split] = torchvision_object(self.options["name"], self.root, self.options["split_args"][split])
        return cache[split]

    def __getstate__(self):  # torchvision objects are rebuilt in each worker, not pickled
        state = dict(self.__dict__)
        state["options"] = {k: v for k, v in self.options.items() if k != "_objects"}
        return state


def open_dataset(spec: str, *, data_root: str | os.PathLike | None = None) -> DatasetSource:
    """Resolve a dataset spec (see the module docstring) into a :class:`DatasetSource`.

    Raises
    ------
    UsageError
        For an unknown spec kind, a missing path, an empty dataset or a malformed manifest.
    """
    if not isinstance(spec, str) or not spec:
        raise UsageError("dataset spec is empty; use e.g. digits, shapes, imagefolder:PATH or csv:PATH")
    kind, _, arg = spec.partition(":")
    builtin, _, query = spec.partition("?")
    if builtin in SHIFTED_BUILTINS and ":" not in spec:
        source = _open_shifted(builtin, query, spec)
    elif kind == "digits" and not arg:
        source = _open_digits()
    elif kind == "shapes" and not arg:
        source = _open_shapes()
    elif kind == "imagefolder" and arg:
        source = _open_imagefolder(arg)
    elif kind in ("csv", "parquet") and arg:
        source = _open_manifest(arg)
    elif kind == "torchvision" and arg:
        source = _open_torchvision(arg, data_root)
    elif kind == "hf" and arg:
        source = _open_hf(arg, data_root)
    elif kind == "nyuv2" and arg:
        from ._nyuv2 import open_nyuv2

        source = DatasetSource(**open_nyuv2(arg, data_root))
    elif (kind in FACE_FILE_KINDS and arg) or (kind in FACE_BUILTINS and not arg):
        from ._faces import open_face_dataset

        source = DatasetSource(kind=kind, **open_face_dataset(kind, arg))
    elif kind in OFFICIAL_KINDS and arg:
        source = DatasetSource(kind=kind, **read_official(kind, arg))
        spec = source.spec  # canonical, every option spelled out: the cache records e.g. the seed of a drawn split
    else:
        raise UsageError(f"unknown dataset spec {spec!r}; use digits, shapes, digits-c?corruption=NAME&severity=N, "
                         f"shapes-texture, faces, imagefolder:PATH, csv:PATH "
                         f"(or a .parquet manifest), torchvision:NAME, hf:REPO, nyuv2:PATH, fgnet:PATH or an official "
                         f"download: "
                         f"{', '.join(k + ':PATH' for k in OFFICIAL_KINDS)}")
    source.spec = spec
    if len(source) == 0:
        raise UsageError(f"dataset {spec!r} has no images; check the path and that it holds image files")
    return source


# ---------------------------------------------------------------------------------------------------- built-ins

#: Built-in datasets' versions: part of their fingerprint, bumped whenever their content changes.
def _open_digits() -> DatasetSource:
    splits, labels, ids = digits_splits()
    return DatasetSource(spec="digits", name="digits", kind="digits", classes=list(DIGITS_CLASSES), splits=splits,
                         labels=labels, ids=ids, version=DIGITS_VERSION)


def _open_shapes() -> DatasetSource:
    splits, labels, ids = shapes_splits()
    return DatasetSource(spec="shapes", name="shapes", kind="shapes", classes=list(SHAPES_CLASSES), splits=splits,
                         labels=labels, ids=ids, version=SHAPES_VERSION,
                         options={"size": SHAPES_SIZE, "dense_tasks": ["segmentation", "depth"],
                                  "segmentation_classes": ["background", *SHAPES_CLASSES]})


#: The built-in shifted sets (spec before ``?``) and the options each accepts.
SHIFTED_BUILTINS = {"digits-c": ("corruption", "severity"), "shapes-texture": ()}


def _open_shifted(builtin: str, query: str, spec: str) -> DatasetSource:
    """``digits-c?corruption=NAME&severity=N`` or ``shapes-texture``: a test split only (see the module docstring)."""
    from urllib.parse import parse_qsl

    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    unknown = sorted(set(options) - set(SHIFTED_BUILTINS[builtin]))
    if unknown:
        takes = ", ".join(SHIFTED_BUILTINS[builtin]) or "no options"
        raise UsageError(f"dataset {spec!r}: unknown option(s) {unknown}; {builtin} takes {takes}")
    if builtin == "shapes-texture":
        splits, labels, ids = shapes_texture_splits()
        return DatasetSource(spec=spec, name="shapes-texture", kind="shapes", classes=list(SHAPES_CLASSES),
                             splits=splits, labels=labels, ids=ids, version=SHAPES_TEXTURE_VERSION,
                             options={"size": SHAPES_SIZE, "texture": True})
    corruption = options.get("corruption")
    if corruption not in DIGITS_CORRUPTIONS:
        raise UsageError(f"dataset {spec!r}: corruption must be one of {', '.join(DIGITS_CORRUPTIONS)}; got "
                         f"{corruption!r}. Use e.g. digits-c?corruption=blur&severity=3")
    severity = options.get("severity", "3")
    if severity not in {"1", "2", "3", "4", "5"}:
        raise UsageError(f"dataset {spec!r}: severity must be 1, 2, 3, 4 or 5; got {severity!r}")
    splits, labels, ids = digits_c_splits(corruption, int(severity))
    return DatasetSource(spec=spec, name=f"digits-c-{corruption}-{severity}", kind="digits",
                         classes=list(DIGITS_CLASSES), splits=splits, labels=labels, ids=ids,
                         version=DIGITS_C_VERSION, options={"corruption": corruption, "severity": int(severity)})


# ---------------------------------------------------------------------------------------------------- files


def _existing_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} {path} does not exist; check the path")
    if not p.is_dir():
        raise UsageError(f"{what} {path} is not a directory; imagefolder: takes a folder of class folders")
    return p


def _open_imagefolder(arg: str) -> DatasetSource:
    root = _existing_dir(arg, "image folder")
    subdirs = _visible_dirs(root)
    split_dirs = {_SPLIT_ALIASES[d.name.lower()]: d for d in subdirs if d.name.lower() in _SPLIT_ALIASES}
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [d.name for d in subdirs if d.name.lower() not in _SPLIT_ALIASES]
        raise UsageError(f"image folder {root} mixes split folders ({sorted(split_dirs)}) with other folders "
                         f"{others}; use PATH/<split>/<class>/ or PATH/<class>/, not both")
    if not split_dirs:
        split_dirs = {"train": root}
    class_dirs = {split: _visible_dirs(d) for split, d in split_dirs.items()}
    classes = sorted({d.name for dirs in class_dirs.values() for d in dirs})
    if not classes:
        raise UsageError(f"image folder {root} has no class folders; expected PATH/<class>/<image> "
                         f"or PATH/<split>/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    splits, labels, ids = {}, {}, {}
    for split, dirs in class_dirs.items():
        refs, lab = [], []
        for d in dirs:
            for f in _images_under(d):
                refs.append(f.relative_to(root).as_posix())
                lab.append(index[d.name])
        splits[split], labels[split], ids[split] = refs, np.asarray(lab, dtype=np.int64), list(refs)
    return DatasetSource(spec=f"imagefolder:{arg}", name=_name_of(root), kind="imagefolder", classes=classes,
                         splits=splits, labels=labels, ids=ids, root=str(root))


def _name_of(path: Path) -> str:
    path = path.resolve()
    name = path.stem if path.is_file() else path.name
    return name or "dataset"


def _open_manifest(arg: str) -> DatasetSource:
    import polars as pl

    spec_arg = arg
    arg, depth_scale = _manifest_options(arg)
    path = Path(arg).expanduser()
    if not path.is_file():
        raise UsageError(f"manifest {arg} does not exist; csv:PATH takes a .csv or .parquet file with columns "
                         f"path,label[,split]")
    try:
        frame = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(
            path, infer_schema_length=0)  # every column as text: labels like "007" keep their spelling
    except Exception as exc:
        raise UsageError(f"cannot read manifest {arg}: {exc}") from None
    dense = [c for c in ("mask", "depth") if c in frame.columns]
    # dense targets or a continuous target (``target`` column, for --task regression) may stand in for the label
    missing = [c for c in ("path", "label") if c not in frame.columns
               and (c == "path" or not (dense or "target" in frame.columns))]
    if missing:
        raise UsageError(f"manifest {arg} lacks column(s) {missing}; it has {frame.columns}, needs path,label[,split] "
                         "(or path,target[,split] for a continuous target, path,mask,depth[,split] for dense targets)")
    root = path.resolve().parent
    rel_paths = [str(p) for p in frame["path"].to_list()]
    raw_labels = frame["label"].to_list() if "label" in frame.columns else ["image" if dense else "-"] * len(rel_paths)
    raw_targets = _manifest_targets(frame, arg) if "target" in frame.columns else None
    if any(v is None for v in raw_labels) or any(p in ("", "None") for p in rel_paths):
        raise UsageError(f"manifest {arg} has empty path or label cells; fill or remove those rows")
    classes = _sorted_class_names(raw_labels)
    index = {c: i for i, c in enumerate(classes)}
    if "split" in frame.columns:
        raw_splits = [str(s).lower() for s in frame["split"].to_list()]
        bad = sorted({s for s in raw_splits if s not in _SPLIT_ALIASES})
        if bad:
            raise UsageError(f"manifest {arg} has unknown split values {bad}; {_SPLIT_HINT}")
        split_of = [_SPLIT_ALIASES[s] for s in raw_splits]
    else:
        split_of = ["train"] * len(rel_paths)
    dense_refs = list(zip(*(frame[c].to_list() for c in dense))) if dense else [()] * len(rel_paths)
    splits: dict[str, list] = {}
    labels: dict[str, list] = {}
    dense_files: dict[str, list] = {}
    targets: dict[str, list] = {}
    for row, (p, lab, s, refs) in enumerate(zip(rel_paths, raw_labels, split_of, dense_refs)):
        p = Path(p).as_posix()
        for ref in (p, *(r for r in refs if r)):
            if not (root / ref).is_file():
                raise UsageError(f"manifest {arg} names {ref}, which does not exist under {root}; paths are "
                                 f"relative to the manifest's folder")
        splits.setdefault(s, []).append(p)
        labels.setdefault(s, []).append(index[_label_text(lab)])
        dense_files.setdefault(s, []).append([Path(r).as_posix() if r else None for r in refs])
        if raw_targets is not None:
            targets.setdefault(s, []).append(raw_targets[row])
    options: dict[str, Any] = {}
    if dense:
        options = {"dense_tasks": ["segmentation" if c == "mask" else "depth" for c in dense],
                   "classification": "label" in frame.columns, "depth_scale": depth_scale,
                   "dense_columns": dense, "dense_files": dense_files}
        if "mask" in dense:
            options["segmentation_classes"] = _manifest_classes(root, arg, dense_files, dense.index("mask"))
    return DatasetSource(spec=f"csv:{spec_arg}", name=_name_of(path), kind="manifest", classes=classes,
                         splits=splits, labels={s: np.asarray(v, dtype=np.int64) for s, v in labels.items()},
                         ids={s: list(v) for s, v in splits.items()}, root=str(root), options=options,
                         targets={} if raw_targets is None else
                         {"target": {s: np.asarray(v, dtype=np.float64) for s, v in targets.items()}})


def _manifest_targets(frame, arg: str) -> list[float]:
    """The ``target`` column as floats, or a UsageError naming the first cell that is not a finite number."""
    out = []
    for row, value in enumerate(frame["target"].to_list()):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if not np.isfinite(number):
            raise UsageError(f"manifest {arg} row {row + 1} has target {value!r}, not a finite number; the target "
                             "column holds the continuous value to regress (e.g. an age in years)")
        out.append(number)
    return out


#: 16-bit depth PNGs of a dense manifest: value / DEPTH_PNG_SCALE = metres (millimetres, as Kinect tools write).
DEPTH_PNG_SCALE = 1000.0


def _manifest_options(arg: str) -> tuple[str, float]:
    """``PATH[?depth_scale=S]`` -> (PATH, S)."""
    if "?" not in arg or Path(arg).expanduser().is_file():
        return arg, DEPTH_PNG_SCALE
    path, _, query = arg.rpartition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    unknown = sorted(set(options) - {"depth_scale"})
    if unknown or "depth_scale" not in options:
        raise UsageError(f"manifest {arg}: unknown option(s) {unknown or [query]}; the only option is "
                         "depth_scale=S (16-bit depth PNG value / S = metres)")
    try:
        scale = float(options["depth_scale"])
        if not scale > 0:
            raise ValueError
    except ValueError:
        raise UsageError(f"manifest {arg}: depth_scale must be a positive number; got "
                         f"{options['depth_scale']!r}") from None
    return path, scale


def _manifest_classes(root: Path, arg: str, dense_files: dict[str, list], column: int) -> list[str]:
    """Segmentation class names (index = id): the lines of ``classes.txt`` beside the manifest, or, without that
    file, the ids themselves (``"0"``, ``"1"``, ...) up to the largest id of the train masks, with a note."""
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not names or len(names) > 255:
            raise UsageError(f"{names_file} must list 1 to 255 class names (255 is the ignore id); it has "
                             f"{len(names)}")
        return names
    found = {split: _mask_ids(root, tuple(refs[column] for refs in rows if refs[column]))
             for split, rows in dense_files.items()}
    if not found.get("train"):
        raise UsageError(f"manifest {arg} has a mask column but no {names_file}, and no train mask holds a class "
                         "id to name the classes by; write the class names there, one per line (line i = id i)")
    n = max(found["train"]) + 1
    for split, ids in found.items():
        extra = sorted(i for i in ids if i >= n)
        if extra:
            raise UsageError(f"manifest {arg}: the {split} masks hold class id{'s' if len(extra) > 1 else ''} "
                             f"{', '.join(map(str, extra[:5]))}, beyond the largest id of the train masks ({n - 1}); "
                             f"without {names_file} the classes are the train masks' ids: write the class names "
                             "there, one per line (line i = id i), or fix the masks")
    absent = sorted(set(range(n)) - found["train"])
    from ._console import note

    note(f"manifest {arg} has no classes.txt: its {n} segmentation classes are named by their ids 0-{n - 1} (from "
         + (f"the train masks; {'ids' if len(absent) > 1 else 'id'} {', '.join(map(str, absent[:5]))}"
            f"{', ...' if len(absent) > 5 else ''} {'occur' if len(absent) > 1 else 'occurs'} in none of them" if absent
            else "the train masks") + f"); write {names_file}, one name per line (line i = id i), to name them")
    return [str(i) for i in range(n)]


def _mask_ids(root: Path, refs: tuple[str, ...]) -> set[int]:
    """The class ids (255 = ignore left out) that occur in the mask files ``refs`` under ``root``; a file that is
    not a single-channel integer PNG is left to :func:`_manifest_dense`, which names it when it is read."""
    from PIL import Image

    from .dense import IGNORE_INDEX

    found: set[int] = set()
    for ref in refs:
        key = os.path.join(root, ref)
        stat = os.stat(key)
        ids = _MASK_IDS.get((key, stat.st_size, stat.st_mtime_ns))
        if ids is None:
            try:
                with Image.open(key) as m:
                    array = np.asarray(m)
            except Exception:
                continue
            ids = (frozenset(int(v) for v in np.unique(array) if v != IGNORE_INDEX)
                   if array.ndim == 2 and array.dtype.kind in "iu" else frozenset())
            _MASK_IDS[(key, stat.st_size, stat.st_mtime_ns)] = ids
        found |= ids
    return found


#: (mask file, size, mtime) -> the class ids in it: a dataset opened again in one process reads its masks once.
_MASK_IDS: dict[tuple, frozenset] = {}


def _manifest_dense(source: DatasetSource, split: str, index: int) -> dict[str, np.ndarray]:
    """Dense targets of one row of a dense manifest, checked against its image (errors name the file)."""
    from PIL import Image

    from .dense import check_dense_target

    refs = source.options["dense_files"][split][index]
    with Image.open(os.path.join(source.root, source.splits[split][index])) as img:  # header only
        size = (img.height, img.width)
    out = {}
    for column, ref in zip(source.options["dense_columns"], refs):
        task = "segmentation" if column == "mask" else "depth"
        if ref is None:
            raise ProbeError(f"manifest row {source.splits[split][index]} has no {column} file; every row needs one "
                             f"for --task {task}")
        full = os.path.join(source.root, ref)
        try:
            if full.lower().endswith(".npy"):
                array = np.load(full, allow_pickle=False)
            else:
                with Image.open(full) as m:
                    array = np.asarray(m)
        except Exception as exc:
            raise ProbeError(f"cannot read {column} file {full}: {exc.__class__.__name__}: {exc}") from None
        if task == "segmentation":
            if array.dtype.kind == "f" or array.ndim != 2:
                raise ProbeError(f"segmentation mask {full} must be a single-channel integer PNG of class ids; "
                                 f"got {array.dtype} {array.shape}")
            array = array.astype(np.int64)
        elif array.dtype.kind in "iu":
            array = array.astype(np.float32) / np.float32(source.options["depth_scale"])
        else:
            array = array.astype(np.float32)
        out[task] = check_dense_target(task, array, name=full, image_size=size,
                                       n_classes=len(source.segmentation_classes) or None)
    return out


def _label_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _sorted_class_names(values: Sequence) -> list[str]:
    names = sorted({_label_text(v) for v in values})
    if all(n.lstrip("-").isdigit() for n in names):  # integer labels sort numerically
        names.sort(key=int)
    return names


# ---------------------------------------------------------------------------------------------------- torchvision


def _data_root(data_root) -> Path:
    return Path(data_root if data_root is not None else DEFAULT_DATA_ROOT).expanduser()


def _open_torchvision(name: str, data_root) -> DatasetSource:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None or not isinstance(cls, type):
        import difflib

        close = difflib.get_close_matches(name, [n for n in dir(tvd) if n[:1].isupper()], n=3)
        raise UsageError(f"torchvision has no dataset {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    params = init_params(cls)
    root = str(_data_root(data_root))
    if "split" in params:
        split_args = {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}
    elif "train" in params:
        split_args = {"train": {"train": True}, "test": {"train": False}}
    else:
        split_args = {"train": {}}
    splits, labels, ids, classes = {}, {}, {}, None
    objects = {}
    for split, kwargs in list(split_args.items()):
        try:
            obj = torchvision_object(name, root, kwargs)
        except UsageError:
            if split == "train":
                raise
            del split_args[split]  # e.g. a dataset with train/test but no val
            continue
        except ValueError:  # split value not accepted by this dataset
            del split_args[split]
            continue
        objects[split] = obj
        lab = torchvision_targets(obj)
        splits[split] = list(range(len(lab)))
        labels[split] = lab
        ids[split] = [str(i) for i in range(len(lab))]
        classes = classes or list(getattr(obj, "classes", []) or [])
    n_classes = int(max(int(v.max()) for v in labels.values() if len(v)) + 1) if labels else 0
    if not classes or len(classes) < n_classes:
        classes = [str(i) for i in range(n_classes)]
    source = DatasetSource(spec=f"torchvision:{name}", name=name.lower(), kind="torchvision", classes=classes,
                           splits=splits, labels=labels, ids=ids, root=root,
                           options={"name": name, "split_args": split_args})
    source.options["_objects"] = objects
    return source


# ---------------------------------------------------------------------------------------------------- huggingface


def _open_hf(repo: str, data_root) -> DatasetSource:
    import pyarrow.parquet as pq

    local = _data_root(data_root) / repo
    if not local.is_dir():
        local = hf_download(repo, local)
    files = sorted(p for p in local.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))
    if not files:
        raise UsageError(f"no parquet files under {local}; hf:REPO needs a parquet-backed dataset")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        split = _hf_split_of(f)
        if split is not None:
            by_split.setdefault(split, []).append(f)
    if not by_split:
        raise UsageError(f"cannot tell the split of the parquet files under {local}; name them "
                         f"<split>-*.parquet or put them in <split>/ folders")
    schema = pq.read_schema(files[0])
    image_column = next((c for c in ("image", "img", "jpg", "png") if c in schema.names), None)
    label_column = next((c for c in ("label", "labels", "fine_label", "class") if c in schema.names), None)
    if image_column is None or label_column is None:
        raise UsageError(f"parquet files of hf:{repo} need an image column and a label column; found {schema.names}")
    class_names = hf_class_names(schema, label_column)
    splits, labels, ids = {}, {}, {}
    raw_all = {}
    for split, paths in by_split.items():
        refs, raw = [], []
        for path in paths:
            column = pq.read_table(path, columns=[label_column]).column(0).to_pylist()
            refs.extend((str(path), row) for row in range(len(column)))
            raw.extend(column)
        splits[split], raw_all[split] = refs, raw
        ids[split] = [f"{Path(p).relative_to(local).as_posix()}:{row}" for p, row in refs]
    if class_names is None:
        class_names = _sorted_class_names([v for raw in raw_all.values() for v in raw])
        index = {c: i for i, c in enumerate(class_names)}
        labels = {s: np.asarray([index[_label_text(v)] for v in raw], dtype=np.int64) for s, raw in raw_all.items()}
    else:
        labels = {s: np.asarray(raw, dtype=np.int64) for s, raw in raw_all.items()}
    return DatasetSource(spec=f"hf:{repo}", name=repo.split("/")[-1].lower(), kind="hf", classes=class_names,
                         splits=splits, labels=labels, ids=ids, root=str(local),
                         options={"image_column": image_column})


def _hf_split_of(path: Path) -> str | None:
    for token in [path.stem.split("-")[0].lower(), *(p.lower() for p in reversed(path.parent.parts))]:
        if token in _SPLIT_ALIASES:
            return _SPLIT_ALIASES[token]
    return None

