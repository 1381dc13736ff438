"""The tidy results contract: one parquet file per job, one row per scored setting.

Every producer (probe sweeps, fine-tuning) writes rows through :func:`write_results`, and every consumer
(report, notebooks, console summary) reads them through :func:`scan_results`, so the schema lives here once.
Selection, seed aggregation and comparisons over these rows live in :mod:`probe.analysis`. Selected rows also
save the fitted weights and the test predictions beside the parquet file (:func:`save_artifacts`), so that a
notebook can recompute any metric or bootstrap without refitting.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ._checks import disk_full_guard
from ._errors import UsageError
from ._io import atomic_path, safe_name, save_npz_atomic
from ._version import PROBE_VERSION

#: Column name -> polars dtype name, in file order. Readers outside the package rely on these names.
RESULT_COLUMNS: dict[str, str] = {
    "backbone": "Utf8",  # timm name with tag
    "family": "Utf8",  # convnet | transformer | hybrid | mlp | other | unknown (see probe.family_of)
    "weights": "Utf8",  # hub tag, file sha256 prefix, or random-init:<seed>
    "dataset": "Utf8",  # dataset name (see probe.datasets)
    "tap": "Utf8",  # pooled, cls, mean, block<i>; "-" for fine-tuning
    "probe": "Utf8",  # logistic | ridge | knn | centroid | finetune
    "params": "Utf8",  # JSON of the hyperparameters of this row
    "selected": "Boolean",  # True on the one row per job chosen on val and scored on test
    "split": "Utf8",  # val | test: the split this row's metrics are measured on
    "top1": "Float64",  # fraction in [0, 1]
    "top5": "Float64",  # fraction in [0, 1] (equals 1 when there are at most 5 classes)
    "mean_per_class_acc": "Float64",  # mean over classes of per-class recall, fraction in [0, 1]
    "n_train": "Int64",  # examples the probe was fit on
    "n_eval": "Int64",  # examples scored
    "shots": "Int64",  # examples per class drawn from train; 0 = all
    "seed": "Int64",  # seed of the val carve, the few-shot draw and the probe's own randomness
    "val_fraction": "Float64",  # part of train held out as val; 0 when the dataset has its own val
    "select_metric": "Utf8",  # the metric that chose the selected row
    "cache_key": "Utf8",  # feature cache key (features' provenance); "-" for fine-tuning
    "fit_seconds": "Float64",  # wall time of the fit that produced this row, seconds
    "created": "Utf8",  # ISO 8601 UTC time the row was written
    "probe_version": "Utf8",  # probe package version of the code that wrote the row
    # --- configuration identity: results are grouped, selected and compared only within one configuration
    "task": "Utf8",  # classification | segmentation | depth | identification | verification | regression
    "img_size": "Int64",  # input side length in pixels of the resolved preprocessing
    "precision": "Utf8",  # compute precision of the forward passes: fp32 | bf16
    "backbone_config": "Utf8",  # id of (backbone, weights identity, resolved preprocessing, precision)
    "config_label": "Utf8",  # that configuration for people, e.g. "test_vit · random-init:1 · 160px"
    "protocol": "Utf8",  # id of the protocol settings (task, probe, tap, grid, val/test carve, select metric,
    #                      shots, refit policy, probe version): rows of one protocol are comparable
    "n_val": "Int64",  # labelled val examples that chose the hyperparameters (or the fine-tuning epoch)
    "test_fraction": "Float64",  # part of the data carved off as test; 0 when the dataset has its own test split
    "family_source": "Utf8",  # table | override | unknown: where `family` came from
    # --- metrics of the other tasks (probe.tasks: each task's Metric objects); null on rows of a task they do not belong to
    "miou": "Float64",  # segmentation: IoU averaged over classes predicted or labelled, fraction in [0, 1]
    "pixel_acc": "Float64",  # segmentation: fraction of labelled (non-ignore) pixels right
    "rmse": "Float64",  # depth: metres; regression: the target's unit (years for age)
    "abs_rel": "Float64",  # depth: mean |d - d*| / d* over valid pixels (ratio)
    "log10": "Float64",  # depth: mean |log10 d - log10 d*| over valid pixels
    "delta1": "Float64",  # depth: fraction of valid pixels with max(d/d*, d*/d) < 1.25
    "delta2": "Float64",  # depth: the same below 1.25**2
    "delta3": "Float64",  # depth: the same below 1.25**3
    "rank1": "Float64",  # identification: fraction of queries whose nearest gallery item has their identity
    "rank5": "Float64",  # identification: the same within the 5 nearest
    "map": "Float64",  # identification: mean average precision over queries, fraction in [0, 1]
    "verif_acc": "Float64",  # verification: mean over folds of pair accuracy at the fold's threshold
    "verif_acc_sd": "Float64",  # verification: standard deviation of that accuracy over folds
    "roc_auc": "Float64",  # verification: area under the ROC curve of pair similarities
    "tar_far1e3": "Float64",  # verification: true accept rate at false accept rate 1e-3
    "mae": "Float64",  # regression: mean absolute error in the target's unit (years for age)
    "cs5": "Float64",  # regression: fraction of predictions within 5 units (years) of the target
    "n_skipped": "Int64",  # images of the dataset left out as unreadable (--skip-bad) in the splits this job used
    "fold": "Int64",  # cross-validation fold of this row; null on a whole-split or across-fold summary row
    "evaluation": "Utf8",  # how the row was scored (probe.tasks.evaluation_label): splits | test carve 0.2 | cv5 |
    #                        cv5 by subject | loo | gallery/query | pairs file | pairs drawn 10 folds [whiten 128];
    #                        part of every grouping key, never selected across
    "eval_dataset": "Utf8",  # the dataset the row's metrics were measured on: equals `dataset` on in-distribution
    #                          rows; the shifted set's name (e.g. digits-c-blur-3) on rows of a probe or fine-tune
    #                          selected on `dataset` and scored once on a shifted set (probe._shifted); part of
    #                          every grouping key, never pooled or selected across
    # --- transferability scores (probe.transfer; probe = "transfer"): one row per (configuration, dataset, task,
    #     score); null on other rows
    "score": "Utf8",  # logme | hscore | hscore_shrink | leep | nce | nleep | sfda | transrate | gbc, or a
    #                   baseline computed beside them: params (parameter count) | gflops (one forward, one image)
    "score_value": "Float64",  # the score (higher predicts better transfer), the parameter count, or GFLOPs
}

#: Folders directly under a results directory that hold tables of their own schema, not these rows
#: (``similarity/``: :data:`probe.similarity.SIMILARITY_COLUMNS`); :func:`scan_results` skips them.
OTHER_TABLES = ("similarity",)

#: What a rerun does after a results writer ran out of space.
_RESUME = "jobs whose results exist are skipped, the others run again"


def top_k(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """Column indices of the ``k`` highest scores per row, best first; ties go to the lower column (stable).

    This is the one tie rule of the package: the results' top-1/top-5, the saved ``pred``/``top5`` and any
    recomputation from the saved scores agree even when scores tie (kNN votes tie often).
    """
    scores = np.asarray(scores)
    n, n_cols = scores.shape
    k = min(k, n_cols)
    if k == 0 or n == 0:
        return np.zeros((n, k), dtype=np.intp)
    if 4 * k >= n_cols or scores.dtype.kind != "f" or not np.isfinite(scores).all():
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    # Sorting every row in full is wasted on wide score matrices: the exact top-k selection of the kNN probe (same
    # tie rule) does it with a partial selection.
    import torch

    from .probes._knn import _select_top

    return _select_top(torch.from_numpy(np.ascontiguousarray(scores)), k)[1].numpy()


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray | None = None) -> dict[str, float]:
    """Return top1, top5 and mean per-class accuracy of ``scores`` [N, C] against the class labels ``y_true``.

    Parameters
    ----------
    y_true : array [N]
        Class labels (dataset label space), which may include labels the model has no column for.
    scores : array [N, C]
        One column per class the model knows.
    classes : array [C], optional
        The class label of each score column (a probe's ``classes_``); default ``0..C-1``.

    Ranking uses :func:`top_k` (ties to the lower column). A label without a column is always wrong, and in the
    mean per-class accuracy it is its own class with recall 0. top5 is 1 whenever the model has at most 5 classes
    and knows the true label.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if scores.ndim != 2 or len(scores) != len(y_true):
        raise ValueError(f"scores must be [N, C] with N={len(y_true)}; got shape {scores.shape}")
    classes = np.arange(scores.shape[1]) if classes is None else np.asarray(classes)
    if len(classes) != scores.shape[1]:
        raise ValueError(f"classes has {len(classes)} labels for {scores.shape[1]} score columns")
    if len(y_true) == 0:
        return {m: float("nan") for m in ("top1", "top5", "mean_per_class_acc")}
    rank = _true_rank(y_true, scores, classes)
    if rank is None:  # non-finite scores, repeated classes or non-float scores: the top-k columns themselves
        top = classes[top_k(scores, 5)]
        pred = top[:, 0]
        top1, top5 = pred == y_true, (top == y_true[:, None]).any(axis=1)
    else:
        pred = classes[scores.argmax(axis=1)]  # first of equal maxima: the lower column, as top_k
        top1, top5 = rank == 0, rank < min(5, scores.shape[1])
    return {
        "top1": float(np.mean(top1)),
        "top5": float(np.mean(top5)),
        "mean_per_class_acc": mean_per_class_accuracy(y_true, pred),
    }


def _true_rank(y_true: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    """Position of each row's true class in :func:`top_k`'s order (0 = predicted), or a large number for a label
    without a column; None where the scores are not finite floats or ``classes`` repeats a label.

    Under the stable rule the classes ranked above the true one are those with a higher score and those with an
    equal score in a lower column, so the position is two counts per row: no selection at all, which on a sweep's
    [5,000, 100] val scores is about a fifth of the cost of finding the top five columns.
    """
    n, n_cols = scores.shape
    if scores.dtype.kind != "f" or n_cols == 0 or not np.isfinite(scores).all():
        return None
    order = np.argsort(classes, kind="stable")
    ordered = classes[order]
    if len(ordered) > 1 and bool((ordered[1:] == ordered[:-1]).any()):
        return None
    pos = np.clip(np.searchsorted(ordered, y_true), 0, n_cols - 1)
    known = ordered[pos] == y_true
    col = order[pos]
    rank = np.full(n, n_cols, dtype=np.int64)
    columns = np.arange(n_cols)
    step = max(1, 2**16 // n_cols)  # row blocks whose boolean temporaries stay in cache
    for lo in range(0, n, step):
        part, c = scores[lo:lo + step], col[lo:lo + step]
        own = part[np.arange(len(part)), c][:, None]
        above = np.count_nonzero(part > own, axis=1)
        tied = np.flatnonzero(np.count_nonzero(part >= own, axis=1) > above + 1)  # rows where another class ties
        if len(tied):  # the ties in a lower column rank above (rare for real-valued scores, common for votes)
            above[tied] += np.count_nonzero((part[tied] == own[tied]) & (columns < c[tied, None]), axis=1)
        rank[lo:lo + step] = above
    rank[~known] = n_cols
    return rank


#: Tolerance of the cumulative score ``cs5``: predictions within this many target units (years) count.
CS_TOLERANCE = 5.0


def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Return mae, rmse (in the target's unit) and cs5 (fraction within :data:`CS_TOLERANCE` units) of ``pred``."""
    err = np.abs(np.asarray(pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64))
    if err.size == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "cs5": float("nan")}
    return {"mae": float(err.mean()), "rmse": float(np.sqrt(np.mean(err ** 2))),
            "cs5": float(np.mean(err <= CS_TOLERANCE))}


def mean_per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over the classes present in ``y_true`` of the fraction of that class predicted correctly.

    Both arrays hold class labels; a class the model never predicts (e.g. absent from its training data) counts
    with recall 0, each on its own.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    classes, inverse = np.unique(y_true, return_inverse=True)
    correct = np.bincount(inverse, weights=(y_pred == y_true).astype(float), minlength=len(classes))
    counts = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(correct / counts))


def task_columns() -> dict[str, str]:
    """Results columns that registered tasks declare beyond :data:`RESULT_COLUMNS` (:attr:`probe.tasks.Task.columns`:
    a task's own metric columns), name -> polars dtype name."""
    from . import tasks

    out: dict[str, str] = {}
    for task in tasks.all_tasks():
        for name, dtype in task.columns.items():
            if name not in RESULT_COLUMNS:
                out[name] = dtype
    return out


def make_row(**values: Any) -> dict[str, Any]:
    """Build one results row; ``params`` may be a dict (serialised to sorted JSON). Unknown columns are errors.

    The columns are :data:`RESULT_COLUMNS` plus those a registered task declares for its own metrics
    (:func:`task_columns`); such a column is in the row only when given.
    """
    extra = set(values) - set(RESULT_COLUMNS)
    if extra:
        declared = task_columns()
        unknown = extra - set(declared)
        if unknown:
            raise ValueError(f"unknown result columns {sorted(unknown)}; the schema is probe.results.RESULT_COLUMNS "
                             "(a task declares its own metric columns in Task.columns)")
    row = {name: None for name in RESULT_COLUMNS}
    row.update(values)
    if isinstance(row["params"], Mapping):
        row["params"] = json.dumps(row["params"], sort_keys=True, default=_json_default)
    row.setdefault("created", None)
    if row["created"] is None:
        row["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if row["task"] is None:
        row["task"] = "classification"  # probe.tasks.DEFAULT
    if row["eval_dataset"] is None:
        row["eval_dataset"] = row["dataset"]  # scored on its own dataset unless a shifted set is named
    if row["probe_version"] is None:
        row["probe_version"] = PROBE_VERSION
    return row


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} in result params")


def results_frame(rows: Iterable[Mapping[str, Any]]):
    """Return a polars DataFrame with exactly the contract's columns and dtypes."""
    import polars as pl

    rows = [dict(r) for r in rows]
    schema = {name: getattr(pl, dtype) for name, dtype in RESULT_COLUMNS.items()}
    present = {k for r in rows for k in r}
    schema.update({name: getattr(pl, dtype) for name, dtype in task_columns().items() if name in present})
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def write_results(rows, path: str | os.PathLike) -> Path:
    """Write rows (dicts or a polars DataFrame) to ``path`` as parquet, atomically. Returns the path."""
    import polars as pl

    frame = rows if isinstance(rows, pl.DataFrame) else results_frame(rows)
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"results are missing contract columns {missing}")
    # a row names the dataset it was scored on (rows not built by make_row: their own dataset; never null)
    frame = frame.with_columns(pl.col("eval_dataset").fill_null(pl.col("dataset")))
    path = Path(path)
    with disk_full_guard(path.parent, f"the results file {path.name}", _RESUME):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp)
    return path


def scan_results(results_dir: str | os.PathLike, *, include_file_paths: str | None = None):
    """Lazily read every results file under ``results_dir`` (recursively) as one polars LazyFrame.

    ``include_file_paths`` names an extra column holding each row's parquet path (to find its ``.npz``).
    """
    import polars as pl

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UsageError(f"results directory {results_dir} does not exist; run 'probe sweep' or 'probe run' first")
    files = sorted(str(p) for p in results_dir.rglob("*.parquet")
                   if p.relative_to(results_dir).parts[0] not in OTHER_TABLES)
    if not files:
        raise UsageError(f"no results (*.parquet) under {results_dir}; run 'probe sweep' or 'probe run' first")
    # files written before a column existed read it as null; registered tasks' own columns are read too
    columns = {**RESULT_COLUMNS, **task_columns()}
    return pl.scan_parquet(files, include_file_paths=include_file_paths, missing_columns="insert",
                           schema={name: getattr(pl, dtype) for name, dtype in columns.items()})


def job_stem(results_dir: str | os.PathLike, *, backbone: str, dataset: str, probe: str, tap: str = "-",
             shots: int = 0, seed: int = 0, tag: str | None = None) -> Path:
    """Return the path stem (no suffix) of one job's results: ``<dir>/<backbone>/<dataset>/<probe>-<tap>-...``.

    The parquet file is ``stem + '.parquet'``; artifacts of the selected row are ``stem + '.npz'``.
    ``tag`` distinguishes jobs that differ in settings outside the name (e.g. a hash of a fine-tune config).
    """
    parts = [probe, tap if tap != "-" else "net", f"shots{shots}", f"seed{seed}"]
    if tag:
        parts.append(tag)
    return Path(results_dir) / safe_name(backbone) / safe_name(dataset) / "-".join(safe_name(p) for p in parts)


def save_artifacts(stem: str | os.PathLike, *, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                   weights: Mapping[str, np.ndarray] | None = None, classes: list[str] | None = None,
                   score_classes: np.ndarray | None = None, max_score_cells: int = 20_000_000) -> Path:
    """Save the selected row's test predictions (and probe weights) to ``stem + '.npz'``, atomically.

    Stored arrays: ``ids``, ``labels``, ``pred`` (top-1 class label), ``top5`` [N, min(5, C)] (class labels, best
    first), ``score_classes`` (the class label of each score column), ``scores`` as float32 [N, C] when
    N*C <= ``max_score_cells`` (so :func:`classification_metrics` on them gives the results' numbers exactly),
    ``classes`` (the dataset's class names, index = label) and every weight array as ``weight/<name>``.
    Predictions are always labels, never column indices: a model whose training data lacked a class still
    scores correctly. Ranking ties go to the lower column (:func:`top_k`).
    """
    arrays = prediction_arrays(ids=ids, labels=labels, scores=scores, weights=weights, classes=classes,
                               score_classes=score_classes, max_score_cells=max_score_cells)
    path = Path(str(stem) + ".npz")
    with disk_full_guard(path.parent, f"the predictions {path.name}", _RESUME):
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_npz_atomic(path, **arrays)


def prediction_arrays(*, ids: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                      weights: Mapping[str, np.ndarray] | None = None, classes: list[str] | None = None,
                      score_classes: np.ndarray | None = None, max_score_cells: int = 20_000_000
                      ) -> dict[str, np.ndarray]:
    """The arrays :func:`save_artifacts` writes, plus the per-item statistics ``item/top1`` and ``item/top5``
    (hits of the top-1 and top-5 labels) that the classification metrics are pooled and bootstrapped from."""
    scores = np.asarray(scores, dtype=np.float32)
    score_classes = np.arange(scores.shape[1]) if score_classes is None else np.asarray(score_classes)
    if len(score_classes) != scores.shape[1]:
        raise ValueError(f"score_classes has {len(score_classes)} labels for {scores.shape[1]} score columns")
    top = score_classes[top_k(scores, 5)].astype(np.int64)
    arrays: dict[str, np.ndarray] = {
        "ids": np.asarray(ids, dtype=str),
        "labels": np.asarray(labels, dtype=np.int64),
        "pred": top[:, 0],
        "top5": top,
        "score_classes": score_classes.astype(np.int64),
    }
    if scores.size <= max_score_cells:
        arrays["scores"] = scores
    if classes is not None:
        arrays["classes"] = np.asarray(classes, dtype=str)
    for name, value in (weights or {}).items():
        arrays[f"weight/{name}"] = np.asarray(value)
    truth = arrays["labels"]
    arrays["item/top1"] = (top[:, 0] == truth).astype(np.float64)
    arrays["item/top5"] = (top == truth[:, None]).any(axis=1).astype(np.float64)
    return arrays


def write_job(stem: str | os.PathLike, rows, items: Mapping[str, Any] | None = None) -> Path:
    """Write one job: its per-item arrays (``stem + '.npz'``, when any), then its rows (``stem + '.parquet'``)
    last, so that the parquet file's existence marks the job complete. Ids and groups are stored as text."""
    from .tasks import GROUP_KEY

    stem = Path(stem)
    if items:
        arrays = {k: np.asarray(v) for k, v in items.items()}
        for key in ("ids", GROUP_KEY):
            if key in arrays:
                arrays[key] = arrays[key].astype(str)
        path = Path(str(stem) + ".npz")
        with disk_full_guard(path.parent, f"the predictions {path.name}", _RESUME):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_npz_atomic(path, **arrays)
    return write_results(rows, Path(str(stem) + ".parquet"))


def load_artifacts(stem_or_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load what :func:`save_artifacts` wrote (accepts the stem, the .parquet or the .npz path)."""
    p = Path(stem_or_path)
    if p.suffix in (".parquet", ".npz"):
        p = p.with_suffix("")
    with np.load(str(p) + ".npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
