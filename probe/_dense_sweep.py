"""Frozen dense probes over the feature cache: the jobs of the per-pixel tasks (:mod:`probe.tasks.segmentation`,
:mod:`probe.tasks.depth`), which :func:`probe.sweep_cached` plans and runs through their engine hooks.

1. Features: the ``patch`` tap (or ``patch16``, a ConvNet's stride-16 stage) from the cache, extracted from
   the whole frame resized to the backbone's input size, never centre-cropped
   (:func:`probe.extract_features` with ``full_frame=True``, :func:`probe.dense.full_frame_config`).
2. Targets: the dataset's dense targets (:meth:`probe.DatasetSource.dense_targets`), written once beside the
   cache: a targets file ``<cache_dir>/_targets/<dataset>/<split>-<task>-<key[:12]>.h5`` (the key hashes the
   dataset's fingerprint, the task and the geometry; shared by every backbone with that geometry) holds
   ``targets`` [N, h, w] mapped onto the network input (:func:`probe.dense.transform_dense_target`; what the
   probe trains on) and ``ids`` [N]; a labels file ``<split>-<task>-labels-<key[:12]>.h5`` (one per dataset,
   split and task, whatever the geometry) holds them at the label resolution, the image's own (``labels`` [N]
   variable-length and flattened, ``label_shape`` [N, 2], ``ids`` [N]): what every val and test metric is
   computed on, the predictions upsampled to it (:func:`labels_file`).
3. The one protocol (:func:`probe._protocol.select_refit_test`): val is the dataset's own or a seeded carve of
   train (recorded in ``val_fraction``); every grid point (``lr``, ``weight_decay``) trains on train and is scored
   on val (``split="val"``); the best on val by ``select_metric`` (``miou`` / ``rmse``, lower is better for the
   depth errors; ties to the strongest weight decay; non-finite scores never chosen) is refitted on train+val and
   scored once on test (``selected=True``).
4. Mini-batches are streamed from the two HDF5 files (:class:`DenseBatches`), so memory does not grow with the
   dataset.

Each job writes one parquet file (rows in :data:`probe.results.RESULT_COLUMNS`, ``task`` and the task's metric
columns set) and, beside it, ``.npz`` artifacts: the probe's weights, the per-image statistics of the test images
(``stat/<name>``, see :data:`probe.dense.STAT_NAMES`: the paired bootstrap resamples these) with their ``ids``,
and a few test images with their targets and predictions (``preview/*``) for the report's figure.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._errors import ProbeError, UsageError
from .dense import IGNORE_INDEX, check_dense_target, network_view, transform_dense_target
from .vocab import DENSE_GRID_KEYS

#: Version of the targets files' layout (part of their key).
TARGETS_FORMAT = 2

#: Test images whose predictions are saved for the report's figure.
PREVIEW_IMAGES = 4


def check_task(task: str, source=None) -> str:
    """Return ``task`` if it is a registered task with per-pixel targets that the dataset carries (UsageError
    naming the tasks it has otherwise)."""
    from . import tasks

    t = tasks.get(task)
    if source is not None and t.name not in source.tasks:
        raise UsageError(f"dataset {source.name!r} has no {t.name} targets; it has {', '.join(source.tasks)}")
    if not t.dense:
        dense = [x.name for x in tasks.all_tasks() if x.dense]
        raise UsageError(f"{t.name} has no dense targets; dense tasks are {', '.join(dense)}")
    return t.name


# ---------------------------------------------------------------------------------------------------- targets


def _target_store(source, split: str, task: str, cache_dir, what: dict, stem: str):
    """Key, path, class names and storage dtype of one split's targets file (``what``: what else the key covers;
    ``stem``: the file name's middle part)."""
    from . import tasks
    from ._cache import cache_key
    from ._io import safe_name

    key = cache_key({"targets_format": TARGETS_FORMAT, "dataset": source.name, "kind": source.kind,
                     "fingerprint": source.fingerprint(), "split": split, "task": task, **what})
    path = Path(cache_dir) / "_targets" / safe_name(source.name) / f"{split}-{task}{stem}-{key[:12]}.h5"
    classes = tasks.get(task).classes(source)  # per-pixel class ids, or none for a continuous target (metres)
    dtype = (np.uint8 if len(classes) <= IGNORE_INDEX else np.int32) if classes else np.float32
    return key, path, classes, dtype


def _checked_targets(source, split: str, task: str, classes):
    """Each image's raw ``task`` target of one split, checked (:func:`check_dense_target`)."""
    for i, image_id in enumerate(source.ids[split]):
        name = f"{source.name}/{split}/{image_id}"
        yield i, check_dense_target(task, source.dense_targets(split, i)[task], name=name,
                                    n_classes=len(classes) or None)


def targets_file(source, split: str, task: str, data_config: Mapping[str, Any],
                 cache_dir: str | os.PathLike) -> Path:
    """The targets file of one split (written when missing; see the module docstring)."""
    import h5py

    from ._io import atomic_path

    geometry = {k: data_config.get(k) for k in ("input_size", "crop_pct", "crop_mode")}
    key, path, classes, dtype = _target_store(source, split, task, cache_dir, {"geometry": geometry}, "")
    if path.is_file():
        return path
    n = len(source.splits[split])
    size = (int(data_config["input_size"][1]), int(data_config["input_size"][2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset("targets", shape=(n, *size), dtype=dtype, chunks=(1, *size))
        f.create_dataset("ids", data=np.array(source.ids[split], dtype=object), dtype=h5py.string_dtype("utf-8"))
        for i, raw in _checked_targets(source, split, task, classes):
            ds[i] = transform_dense_target(raw, data_config, task=task).astype(dtype)
        f.attrs.update({"task": task, "key": key, "dataset": source.name, "split": split,
                        "classes": json.dumps(classes), "geometry": json.dumps(geometry), "complete": True})
    return path


def labels_file(source, split: str, task: str, cache_dir: str | os.PathLike) -> Path:
    """The labels file of one split: its ``task`` targets at the label resolution (written when missing; see the
    module docstring). One per dataset, split and task: the same pixels score every configuration."""
    import h5py

    from ._io import atomic_path

    key, path, classes, dtype = _target_store(source, split, task, cache_dir, {"labels": True}, "-labels")
    if path.is_file():
        return path
    n = len(source.splits[split])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        labels = f.create_dataset("labels", shape=(n,), dtype=h5py.vlen_dtype(np.dtype(dtype)))
        shapes = f.create_dataset("label_shape", shape=(n, 2), dtype=np.int64)
        f.create_dataset("ids", data=np.array(source.ids[split], dtype=object), dtype=h5py.string_dtype("utf-8"))
        for i, raw in _checked_targets(source, split, task, classes):
            labels[i], shapes[i] = np.asarray(raw).astype(dtype).ravel(), raw.shape
        f.attrs.update({"task": task, "key": key, "dataset": source.name, "split": split,
                        "classes": json.dumps(classes), "complete": True})
    return path


class DenseBatches:
    """Mini-batches of cached patch features and their dense targets, streamed from the HDF5 files.

    Parameters
    ----------
    parts : list of (features path, targets path, rows or None)
        Cache entries with a ``patch`` tap, their targets files (labels files with ``labels``), and the feature
        rows to use (sorted; None = all). Several parts make one dataset (train+val for the refit).
    block : int
        Batches read together and shuffled among each other (``shuffle=True``): the shuffle window.
    labels : bool
        Yield the targets at the label resolution (a list of [H_i, W_i] maps, one per image: what val and test
        are scored on) instead of the network-input targets [B, h, w] (what the probe trains on).
    """

    def __init__(self, parts: Sequence[tuple], *, tap: str = "patch", block: int = 4, labels: bool = False):
        import h5py

        self.tap, self.block, self.labels = tap, int(block), bool(labels)
        self.parts = []
        for features, targets, rows in parts:
            with h5py.File(features, "r") as f, h5py.File(targets, "r") as t:
                ds = f["features"][tap]
                if ds.ndim != 3:
                    raise UsageError(f"tap {tap} of {features} is not a token grid [N, T, D]; dense probes need "
                                     "the patch tap")
                ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
                where = {s.decode() if isinstance(s, bytes) else str(s): i for i, s in enumerate(t["ids"][()])}
                tokens, dim = int(ds.shape[1]), int(ds.shape[2])
                size = (tuple(int(v) for v in json.loads(f.attrs["data_config"])["input_size"][1:]) if self.labels
                        else tuple(int(v) for v in t["targets"].shape[1:]))  # the network input's
            rows = np.arange(len(ids)) if rows is None else np.asarray(sorted(rows), dtype=np.int64)
            missing = [ids[r] for r in rows if ids[r] not in where]
            if missing:
                raise ProbeError(f"targets file {targets} lacks sample {missing[0]} of {features}; remove it to "
                                 "have it rewritten")
            self.parts.append((Path(features), Path(targets), rows, np.asarray([where[ids[r]] for r in rows])))
            self.dim, self.size = dim, size
        self.grid = token_grid(tokens, self.size)
        self.ids = [i for f, _, rows, _ in self.parts for i in _ids_of(f, rows)]

    def __len__(self) -> int:
        return sum(len(p[2]) for p in self.parts)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        """Yield ``(features float32 [B, T, D], targets, positions [B])``; positions index ``ids``; targets are
        [B, h, w] at the network input, or with ``labels`` a list of B maps at the label resolution."""
        import h5py

        chunks, offset = [], 0
        for p, (_, _, rows, _) in enumerate(self.parts):
            chunks += [(p, np.arange(s, min(s + batch_size, len(rows))), offset) for s in range(0, len(rows),
                                                                                                 batch_size)]
            offset += len(rows)
        rng = np.random.default_rng(seed)
        if shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        files = [(h5py.File(f, "r"), h5py.File(t, "r")) for f, t, _, _ in self.parts]
        try:
            window = self.block if shuffle else 1
            for start in range(0, len(chunks), window):
                feats, targets, positions = [], [], []
                for p, idx, off in chunks[start:start + window]:
                    _, _, rows, target_rows = self.parts[p]
                    f, t = files[p]
                    feats.append(_read(f["features"][self.tap], rows[idx]))
                    if self.labels:
                        flat, shape = _read(t["labels"], target_rows[idx]), _read(t["label_shape"], target_rows[idx])
                        maps = np.empty(len(idx), dtype=object)
                        maps[:] = [np.asarray(v).reshape(tuple(sh)) for v, sh in zip(flat, shape)]
                        targets.append(maps)
                    else:
                        targets.append(_read(t["targets"], target_rows[idx]))
                    positions.append(idx + off)
                feats, targets, positions = map(np.concatenate, (feats, targets, positions))
                order = rng.permutation(len(positions)) if shuffle else np.arange(len(positions))
                for s in range(0, len(order), batch_size):
                    pick = order[s:s + batch_size]
                    yield (feats[pick].astype(np.float32), list(targets[pick]) if self.labels else targets[pick],
                           positions[pick])
        finally:
            for f, t in files:
                f.close()
                t.close()


def _ids_of(features: Path, rows: np.ndarray) -> list[str]:
    import h5py

    with h5py.File(features, "r") as f:
        ids = f["ids"][()]
    return [ids[r].decode() if isinstance(ids[r], bytes) else str(ids[r]) for r in rows]


def _read(ds, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` (distinct) of an HDF5 dataset: one slice when contiguous, else one sorted selection."""
    if len(index) and index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1):
        return ds[int(index[0]):int(index[-1]) + 1]
    order = np.argsort(index, kind="stable")
    out = np.empty((len(index), *ds.shape[1:]), dtype=ds.dtype)
    out[order] = ds[index[order]]
    return out


def grid_label(grid: tuple[int, int]) -> str:
    """The results' ``grid`` column: a token grid (rows, columns) as ``"14x14"``."""
    return f"{int(grid[0])}x{int(grid[1])}"


def token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of a grid of ``tokens`` patch tokens over an input of ``size`` (its aspect ratio)."""
    h = max(1, int(round(math.sqrt(tokens * size[0] / size[1]))))
    if tokens % h:
        raise UsageError(f"cannot lay {tokens} patch tokens out as a grid over a {size[0]}x{size[1]} input; "
                         "the patch tap must hold the token grid only (no prefix tokens)")
    return h, tokens // h


def extract_dense_targets(backbone: str, dataset, *, task: str, taps: Sequence[str] = ("patch",),
                          cache_dir: str | os.PathLike = "cache", **extract_kwargs) -> tuple[dict, dict]:
    """Extract (or reuse) the features of ``backbone`` on ``dataset`` (:func:`probe.extract_features`) and write
    (or reuse) the ``task`` targets file of every extracted split.

    Returns
    -------
    (dict, dict)
        Split -> :class:`probe.CacheEntry`, and split -> targets file path.
    """
    from ._cache import read_attrs
    from ._extract import extract_features
    from ._features import opened

    source = opened(dataset, extract_kwargs.get("data_root"))
    check_task(task, source)
    entries = extract_features(backbone, source, taps=tuple(taps), cache_dir=cache_dir, full_frame=True,
                               **extract_kwargs)
    import h5py

    targets = {}
    for split, entry in entries.items():
        with h5py.File(entry.path, "r") as f:
            data_config = read_attrs(f)["data_config"]
        targets[split] = targets_file(source, split, task, data_config, cache_dir)
    return entries, targets


# ---------------------------------------------------------------------------------------------------- jobs


class DenseData:
    """What every dense job of a sweep reads: the cache entries with the patch tap, their attributes (labels,
    ids) and the targets file of every split, with the opened dataset."""

    def __init__(self, source, entries: dict, targets: dict, labels: dict):
        from ._cache import load_split

        self.source, self.entries, self.targets, self.labels = source, entries, targets, labels
        self.meta = {split: load_split(entry, taps=[]) for split, entry in entries.items()}
        self.splits = self.meta
        first = self.meta.get("train") or next(iter(self.meta.values()))
        self.first = first
        self.feature_tag = str(first.attrs.get("base_key") or first.key)[:8]

    def context(self, tap: str, family: str | None = None) -> dict:
        from ._features import backbone_context, skipped_count
        from ._families import resolve_family

        train = self.first
        fam, fam_source = resolve_family(train.backbone, family)
        return dict(backbone=train.backbone, family=fam, family_source=fam_source, weights=train.weights,
                    dataset=train.dataset, tap=tap, cache_key=train.key, n_skipped=skipped_count(self.meta.values()),
                    **backbone_context(train))


def load_dense(backbone: str, source, *, task: str, taps=("patch",), cache_dir="cache", **extract_kwargs) -> DenseData:
    """Extract (or reuse) the patch features of every split of the opened ``source`` and write (or reuse) its
    ``task`` targets files (:func:`extract_dense_targets`)."""
    entries, targets = extract_dense_targets(backbone, source, task=task, taps=taps, cache_dir=cache_dir,
                                             **extract_kwargs)
    if "train" not in entries:
        raise UsageError(f"dataset {source.spec!r} has no train split (found {sorted(entries)}); probes need one")
    labels = {split: labels_file(source, split, task, cache_dir) for split in entries}
    return DenseData(source, entries, targets, labels)


def dense_estimator(task: str, n_classes: int, grid, *, seed: int, device: str, name: str = "linear"):
    """The dense linear probe of ``task`` and its expanded grid: ``grid`` adds to the probe's default grid, and
    settings given as one-value lists (``epochs``, ``batch_size``) become the estimator's own."""
    from ._protocol import check_grid
    from .probes.dense_linear import DenseLinearProbe

    est = DenseLinearProbe(task=task, n_classes=max(n_classes, 1), seed=seed, device=device)
    unknown = sorted(set(grid or {}) - set(DENSE_GRID_KEYS))
    if unknown:
        raise UsageError(f"grid keys {unknown} are not settings of the {name} dense probe; valid keys: "
                         f"{list(DENSE_GRID_KEYS)}")
    points = check_grid(est, {**DenseLinearProbe.default_grid, **(grid or {})})  # a grid adds to the default
    fixed = {k for k in points[0] if k not in ("lr", "weight_decay") and len({repr(p[k]) for p in points}) == 1}
    if fixed:
        est.set_params(**{k: points[0][k] for k in fixed})
        points = [{k: v for k, v in p.items() if k not in fixed} for p in points]
    for p in points:
        p.setdefault("lr", est.lr)
        p.setdefault("weight_decay", est.weight_decay)
    return est, points


def run_dense_job(task, data: DenseData, job) -> tuple[list[dict], dict]:
    """One dense job (``task`` a :class:`probe.tasks.Task` with per-pixel targets): every grid point trains on
    train and is scored on val, then :func:`probe._protocol.select_refit_test` picks one (non-finite val scores
    never win; ties to the strongest weight decay), refits it on train+val and scores test once. Returns the rows
    and the per-image arrays (``stat/<k>``, weights, a preview of a few test images)."""
    from ._protocol import plain, select_refit_test
    from .dense import dense_metrics
    from .results import make_row
    from .splits import carve_splits, source_carve_groups

    est, points = job.extra["estimator"], job.extra["points"]
    train = data.meta["train"]
    if "val" in data.entries:
        fit_parts = [(data.entries["train"].path, data.targets["train"], None)]
        val_parts = [(data.entries["val"].path, data.targets["val"], None)]
        val_labels = [(data.entries["val"].path, data.labels["val"], None)]
        recorded = 0.0
    else:  # a seeded carve of train (the classification sweeps' carve, over the cached labels and ids)
        groups = source_carve_groups(data.source, "train", train.ids)  # NYUv2: whole scenes
        parts = carve_splits(train.labels, ids=train.ids, val_fraction=job.val_fraction, seed=job.seed,
                             **({} if groups is None else {"stratify": False, "groups": groups}))
        fit_parts = [(data.entries["train"].path, data.targets["train"], parts["train"])]
        val_parts = [(data.entries["train"].path, data.targets["train"], parts["val"])]
        val_labels = [(data.entries["train"].path, data.labels["train"], parts["val"])]
        recorded = float(job.val_fraction)
    tap = job.tap
    fit_data, val_data = DenseBatches(fit_parts, tap=tap), DenseBatches(val_labels, tap=tap, labels=True)
    base = dict(job.context, task=task.name, evaluation=job.evaluation, probe=est.name, shots=0, seed=job.seed,
                val_fraction=recorded, test_fraction=0.0, select_metric=job.select_metric, protocol=job.protocol,
                n_val=len(val_data), grid=grid_label(fit_data.grid))
    fixed = {k: plain(v) for k, v in est.get_params().items() if k in ("epochs", "batch_size")}
    rows: list[dict] = []

    def on_val(i, stats, seconds):
        metrics = dense_metrics(task.name, stats)
        rows.append(make_row(**base, params={**{k: plain(v) for k, v in points[i].items()}, **fixed},
                             selected=False, split="val", n_train=len(fit_data), n_eval=len(val_data),
                             fit_seconds=seconds, **metrics))
        return metrics[job.select_metric]

    has_test = "test" in data.entries
    refit_data = DenseBatches(fit_parts + val_parts, tap=tap) if has_test else None
    test_labels = [(data.entries["test"].path, data.labels["test"], None)] if has_test else []
    test_data = DenseBatches(test_labels, tap=tap, labels=True) if has_test else None

    def score(fitted, seconds):
        stats = fitted.score_stats(test_data)
        row = make_row(**base, params={"lr": plain(fitted.lr), "weight_decay": plain(fitted.weight_decay), **fixed},
                       selected=True, split="test", n_train=len(refit_data), n_eval=len(test_data),
                       fit_seconds=seconds, **dense_metrics(task.name, stats))
        return row, stats

    outcome = select_refit_test(est, points, est._sweep_path(fit_data, val_data, points), val_score=on_val,
                                higher_is_better=task.metric(job.select_metric).higher_is_better,
                                metric=f"{task.name} {job.select_metric}",
                                fit=(lambda f: f.fit(refit_data)) if has_test else None,
                                score=score if has_test else None)
    if not has_test:
        rows[outcome.best] = dict(rows[outcome.best], selected=True)
        return rows, {}
    row, stats = outcome.test
    fitted = outcome.estimator
    # the preview shows the network's view (its input-size targets): the figure's panels share one size
    test_part = [(data.entries["test"].path, data.targets["test"], None)]
    preview = _preview(fitted, DenseBatches(test_part, tap=tap), data.source, data.meta["test"].attrs["data_config"])
    items = {"task": np.asarray(task.name), "ids": np.asarray(test_data.ids, dtype=str),
             "classes": np.asarray(job.extra.get("classes", []), dtype=str),
             **{f"stat/{k}": v for k, v in stats.items()},
             **{f"weight/{k}": v for k, v in fitted._artifact_weights().items()},
             **{f"preview/{k}": v for k, v in preview.items()}}
    scenes = source_carve_groups(data.source, "test", test_data.ids)
    if scenes is not None:  # NYUv2: the test frames cluster in scenes, which the bootstrap intervals resample
        from .tasks import GROUP_KEY

        items[GROUP_KEY] = scenes
    return rows + [row], items


def _preview(est, data: DenseBatches, source, data_config) -> dict[str, np.ndarray]:
    """The first few test images as the network sees them, their targets and the probe's predictions."""
    for pred, target, positions in est.predict_batches(data):
        k = min(PREVIEW_IMAGES, len(positions))
        ids = [data.ids[p] for p in positions[:k]]
        where = {s: i for i, s in enumerate(source.ids["test"])}
        images = np.stack([network_view(source.load("test", where[s]), data_config) for s in ids])
        return {"ids": np.asarray(ids, dtype=str), "image": images, "target": target[:k], "pred": pred[:k]}
    return {}
