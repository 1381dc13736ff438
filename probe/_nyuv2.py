"""NYU Depth V2 (labelled subset) from its official files: ``nyuv2:PATH[?classes=40|13]``.

Files (nothing is downloaded by ``probe``; put them in one folder, or the metadata in ``--data-root``):

- ``PATH`` = ``nyu_depth_v2_labeled.mat`` (2.8 GB), the official labelled set of Silberman et al. (ECCV 2012),
  http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat. MATLAB v7.3, i.e. HDF5: read
  with h5py. MATLAB stores arrays column-major, so h5py sees them transposed: ``images`` (1449, 3, 640, 480)
  uint8, ``depths`` (1449, 640, 480) float32 metres, ``labels`` (1449, 640, 480) uint16 (0 = unlabelled,
  1..894 = the raw classes); each is read back to [480, 640(, 3)].
- ``splits.mat``: the standard 795 train / 654 test split, variables ``trainNdxs`` and ``testNdxs`` (1-based
  image numbers), from http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat.
- The class mapping, variables ``mapClass`` (894 raw classes -> class 1..K) and ``className`` (K names):
  ``classMapping40.mat`` (the common 40 classes of Gupta, Arbelaez and Malik, CVPR 2013,
  http://www.cs.berkeley.edu/~sgupta/cvpr13/, also in github.com/ankurhanda/nyuv2-meta-data) for ``classes=40``
  (the default), or ``classMapping13.mat`` (the 13 classes of Couprie et al. 2013, as made from the 40-class
  file by github.com/howard-mahe/nyudv2_class_mapping) for ``classes=13``.

They are looked for in ``--data-root`` when given, else beside the ``.mat`` file. Label 0 (unlabelled) and raw
classes that the mapping sends to 0 become :data:`probe.dense.IGNORE_INDEX`; segmentation ids are the mapped
classes minus one (0..K-1). Depth is kept in metres; pixels outside the Eigen evaluation crop (rows 45:471,
columns 41:601 of the 480 x 640 frame, scaled for another frame size) are set to 0 (unmeasured), so neither training nor scoring sees the frame's unfilled border.
NYUv2 has no val split: the sweeps and fine-tuning carve one from train (seeded, recorded in every row) **by
scene**: the ``.mat``'s ``scenes`` (one name per image, e.g. ``kitchen_0028``, the video sequence its frame comes
from) group the images, and val takes whole scenes (:func:`probe.splits.source_carve_groups`), as the official
train/test split is scene-disjoint; a per-image carve would put frames of one video in both train and val. There
are no classification labels here (``task`` is ``segmentation`` or ``depth``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._errors import ProbeError, UsageError
from .dense import IGNORE_INDEX

#: The Eigen et al. evaluation crop of the 480 x 640 frame: rows [45, 471), columns [41, 601).
EIGEN_CROP = (45, 471, 41, 601)

#: Class-mapping files by number of classes.
MAPPING_FILES = {40: "classMapping40.mat", 13: "classMapping13.mat"}
SPLITS_FILE = "splits.mat"


def open_nyuv2(arg: str, data_root=None) -> dict:
    """The fields of a :class:`probe.DatasetSource` for ``nyuv2:ARG`` (see the module docstring)."""
    import h5py

    path_text, _, query = arg.partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    unknown = sorted(set(options) - {"classes"})
    if unknown:
        raise UsageError(f"nyuv2: unknown option(s) {unknown}; the only option is classes=40 or classes=13")
    n_classes = options.get("classes", "40")
    if n_classes not in ("40", "13"):
        raise UsageError(f"nyuv2: classes must be 40 or 13; got {n_classes!r} (e.g. nyuv2:PATH?classes=13)")
    n_classes = int(n_classes)
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UsageError(f"nyuv2: {path} does not exist; nyuv2:PATH takes the official nyu_depth_v2_labeled.mat")
    meta = Path(data_root).expanduser() if data_root is not None else path.parent
    splits_path, mapping_path = meta / SPLITS_FILE, meta / MAPPING_FILES[n_classes]
    for need, what in ((splits_path, "the official train/test split"),
                       (mapping_path, f"the {n_classes}-class mapping")):
        if not need.is_file():
            raise UsageError(f"nyuv2: {need} is missing ({what}); put {need.name} there or pass --data-root DIR "
                             f"holding {SPLITS_FILE} and {mapping_path.name} (see 'probe datasets' docs: README)")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "depths", "labels", "scenes") if k not in f]
            if missing:
                raise UsageError(f"nyuv2: {path} has no {missing} arrays; is it nyu_depth_v2_labeled.mat?")
            n = int(f["images"].shape[0])
            if f["depths"].shape[0] != n or f["labels"].shape[0] != n:
                raise ProbeError(f"nyuv2: {path} has {n} images but {f['depths'].shape[0]} depth maps and "
                                 f"{f['labels'].shape[0]} label maps")
            scenes = [_text_of(f, r) for r in f["scenes"][()].ravel()]
            if len(scenes) != n:
                raise ProbeError(f"nyuv2: {path} has {n} images but {len(scenes)} scene names")
    except OSError as exc:
        raise UsageError(f"nyuv2: cannot open {path} as HDF5 (MATLAB v7.3): {exc}") from None
    train, test = _read_splits(splits_path, n)
    mapping, names = _read_mapping(mapping_path)
    splits = {"train": [int(i) for i in train], "test": [int(i) for i in test]}
    files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in (path, splits_path, mapping_path)}
    return dict(spec=f"nyuv2:{arg}", name="nyuv2" if n_classes == 40 else "nyuv2-13", kind="nyuv2",
                classes=["scene"], splits=splits,
                labels={s: np.zeros(len(v), dtype=np.int64) for s, v in splits.items()},
                ids={s: [f"{i + 1:04d}" for i in v] for s, v in splits.items()}, root=str(path),
                options={"dense_tasks": ["segmentation", "depth"], "classification": False,
                         # val is carved by scene (probe.splits.source_carve_groups)
                         "carve_groups": {s: [scenes[i] for i in v] for s, v in splits.items()},
                         "carve_group_noun": "scenes",
                         "segmentation_classes": names, "mapping": mapping.tolist(), "files": files})


def _read_splits(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = _load_mat(path, ("trainNdxs", "testNdxs"))
    train, test = (np.asarray(data[k]).astype(np.int64).ravel() - 1 for k in ("trainNdxs", "testNdxs"))
    for name, idx in (("trainNdxs", train), ("testNdxs", test)):
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise UsageError(f"nyuv2: {path} {name} holds image numbers outside 1..{n}; is it the official "
                             "splits.mat of this .mat file?")
    if np.intersect1d(train, test).size:
        raise UsageError(f"nyuv2: {path} puts {np.intersect1d(train, test).size} images in both train and test")
    return np.sort(train), np.sort(test)


def _read_mapping(path: Path) -> tuple[np.ndarray, list[str]]:
    data = _load_mat(path, ("mapClass", "className"))
    mapping = np.asarray(data["mapClass"]).astype(np.int64).ravel()
    names = [_text(v) for v in np.asarray(data["className"], dtype=object).ravel()]
    if len(mapping) == 0 or mapping.max() > len(names) or mapping.min() < 0:
        raise UsageError(f"nyuv2: {path} maps raw classes to ids outside 1..{len(names)} (its className list)")
    return mapping, names


def _text_of(f, ref) -> str:
    """The string a MATLAB v7.3 cell holds (an HDF5 object reference to a uint16 char array)."""
    return "".join(map(chr, np.asarray(f[ref][()]).ravel()))


def _text(value) -> str:
    while isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.dtype == object or value.dtype.kind == "U" else "".join(
            map(chr, value.ravel()))
    return str(value)


def _load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    """Variables of a MATLAB file: v5 through scipy, v7.3 (HDF5) through h5py."""
    import h5py

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                out = {}
                for k in keys:
                    ds = f[k]
                    if ds.dtype == object:  # a cell array of strings: references to char arrays
                        out[k] = np.array(["".join(map(chr, f[r][()].ravel())) for r in ds[()].ravel()],
                                          dtype=object)
                    else:
                        out[k] = ds[()]
                return out
        from scipy.io import loadmat

        data = loadmat(path)
        missing = [k for k in keys if k not in data]
        if missing:
            raise KeyError(missing[0])
        return {k: data[k] for k in keys}
    except KeyError as exc:
        raise UsageError(f"nyuv2: {path} has no variable {exc}; expected {', '.join(keys)}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"nyuv2: cannot read {path}: {exc}") from None


_FILES: dict = {}


def _file(path: str):
    import h5py

    f = _FILES.get((path, os.getpid()))
    if f is None:  # one handle per process (data-loading workers open their own)
        f = _FILES[(path, os.getpid())] = h5py.File(path, "r")
    return f


def nyuv2_image(source, index: int):
    """RGB image ``index`` (0-based in the .mat) as a PIL image [480, 640]."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(_file(source.root)["images"][index].transpose(2, 1, 0)), mode="RGB")


def nyuv2_dense(source, index: int) -> dict[str, np.ndarray]:
    """Segmentation (mapped, 0-based, 255 = ignore) and depth (metres, 0 outside the Eigen crop) of one image."""
    f = _file(source.root)
    raw = f["labels"][index].T.astype(np.int64)
    mapping = np.asarray(source.options["mapping"], dtype=np.int64)
    if raw.max() > len(mapping):
        raise ProbeError(f"nyuv2: image {index + 1} of {source.root} has raw class {int(raw.max())}, beyond the "
                         f"{len(mapping)} classes of the mapping; is the mapping file the right one?")
    lookup = np.concatenate([[0], mapping])  # raw 0 = unlabelled -> 0
    seg = lookup[raw] - 1
    seg[seg < 0] = IGNORE_INDEX
    depth = np.array(f["depths"][index].T, dtype=np.float32)
    h, w = depth.shape  # 480 x 640 in the official file; the crop scales with the frame
    r0, r1, c0, c1 = EIGEN_CROP
    keep = np.zeros(depth.shape, dtype=bool)
    keep[round(r0 * h / 480):round(r1 * h / 480), round(c0 * w / 640):round(c1 * w / 640)] = True
    depth[~keep] = 0.0
    return {"segmentation": seg, "depth": depth}
