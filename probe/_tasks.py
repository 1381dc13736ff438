"""Sweeps of the face and continuous-target tasks (and cross-validated classification) over the feature cache.

:func:`probe.sweep_cached` hands a job here when ``task`` is ``identification``, ``verification`` or
``regression``, or when ``cv`` is given. Features come from the same cache; rows go to the same results table
(``task`` column and the task's metric columns, :data:`probe.vocab.TASK_METRICS`), one parquet file per job,
with the per-item values beside it (``.npz``: ``ids``, ``labels``, ``item/<metric>`` ...) so that the analysis
layer bootstraps them like classification's per-image hits.

- ``identification``, probe ``cosine``: leave-one-image-out retrieval over the whole dataset, or, when the
  dataset has ``gallery`` and ``query`` splits, each query image against the gallery (:func:`probe._retrieval.retrieve`;
  ``n_train`` = the gallery size, ``n_eval`` = the queries whose identity the gallery holds); nothing is learned, so
  there is no val row and no seed.
  Classification probes (``--probes logistic centroid knn``) are identity classifiers under ``--cv``.
- ``verification``, probe ``cosine``: the pairs of ``--pairs`` (LFW pairs.txt) or pairs drawn from the identities
  (10 person-disjoint folds), threshold chosen on the other nine folds (:func:`probe._verify.verify`); with
  ``whiten`` (``--whiten DIM``) the cosine is taken after a PCA whitening fitted on the other folds' images too
  (a different protocol id: whitened and plain results are never pooled).
- ``regression``, probes ``ridge`` and ``knn``: the dataset's continuous target (``age`` for FG-NET and the
  generated ``faces``, ``target`` for a manifest), selected on val, refitted, scored on test or under ``--cv``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ._errors import UsageError
from ._io import save_npz_atomic
from .vocab import COSINE, DEFAULT_TASK, SPLITS, TASK_DEFAULT_PROBES, TASK_METRICS, TASK_PROBES

#: Tasks this module runs (segmentation and depth are the dense probes').
TASKS_HERE = ("classification", "identification", "verification", "regression")
#: Verification folds drawn from identities when no pairs file is given (as LFW's 10; fewer for fewer than 20
#: people, each fold needing two).
PAIR_FOLDS = 10


def resolve_probes(task: str, probes: Sequence[str] | None) -> list[str]:
    """The probes of a task's job (its defaults when None), or a UsageError naming the ones it accepts."""
    if task not in TASKS_HERE:
        raise UsageError(f"--task {task} is not run by probe sweep's frozen-feature path; use one of "
                         f"{', '.join(TASKS_HERE)}")
    probes = list(TASK_DEFAULT_PROBES[task] if probes is None else probes)
    bad = [p for p in probes if p not in TASK_PROBES[task]]
    if bad:
        raise UsageError(f"--task {task} takes probes {', '.join(TASK_PROBES[task])}; got {bad}")
    return probes


def target_name(source, task: str) -> str:
    """The continuous target a regression job uses: ``age`` when the dataset carries it, else its only target."""
    if "age" in source.targets:
        return "age"
    if len(source.targets) == 1:
        return next(iter(source.targets))
    source.target("age", "train")  # raises the error listing what the dataset has
    raise AssertionError


def sweep_task_cached(backbone: str, dataset: str, *, task: str, probes: Sequence[str] | None, taps, seeds,
                      grids: Mapping | None, select_metric: str | None, val_fraction: float, cv: int | None,
                      cv_group: str | None, pairs: str | os.PathLike | None, cache_dir, results_dir, device: str,
                      overwrite: bool, progress: bool, whiten: int | None = None, jobs: int = 1,
                      family: str | None = None, **extract_kwargs) -> list[Path]:
    """Run the jobs of one (backbone, dataset, task) over cached features; returns every job's parquet path.

    Arguments are those of :func:`probe.sweep_cached` (which calls this), plus ``task``, ``cv`` (folds),
    ``cv_group`` (``"subject"``: keep each person's images in one fold), ``pairs`` (an LFW pairs.txt file for
    verification) and ``whiten`` (verification: PCA whitening to this many components, fitted per fold on the
    other folds' images). ``jobs`` jobs run at once, as classification's (:func:`probe._sweep.run_jobs`). See the
    module docstring for what each task runs.
    """
    from ._cache import load_split
    from ._cv import CV_GROUPS
    from ._datasets import open_dataset
    from ._extract import extract_features
    from ._sweep import run_jobs, skipped_count
    from .results import job_stem

    probes = resolve_probes(task, probes)
    if cv is not None and int(cv) < 2:
        raise UsageError(f"--cv must be at least 2 folds; got {cv}")
    if cv_group is not None and cv_group not in CV_GROUPS:
        raise UsageError(f"--cv-group must be one of {', '.join(CV_GROUPS)}; got {cv_group!r}")
    if cv_group is not None and cv is None:
        raise UsageError("--cv-group groups the folds of --cv; give --cv K too (K = number of people for "
                         "leave-one-person-out)")
    if pairs is not None and task != "verification":
        raise UsageError("--pairs is for --task verification; drop it or add --task verification")
    if whiten is not None and task != "verification":
        raise UsageError("--whiten is for --task verification; drop it or add --task verification")
    if whiten is not None and int(whiten) < 1:
        raise UsageError(f"--whiten must be at least 1 (PCA components); got {whiten}. Use e.g. --whiten 128, or "
                         "drop it to compare the features as they are")
    learned = [p for p in probes if p != COSINE]
    if task == "identification" and learned and cv is None:
        raise UsageError(f"identity classifiers ({', '.join(learned)}) are scored under cross-validation; add --cv K "
                         "(or use --probes cosine for leave-one-image-out retrieval)")
    if task == "identification" and learned and cv_group is not None:
        raise UsageError(f"identity classifiers ({', '.join(learned)}) cannot be scored with --cv-group subject: a "
                         "held-out person is never in the training fold; drop --cv-group (folds stratified by person)")
    # the val metric of the learned probes: the task's own for regression, a classifier's for identities
    own = TASK_METRICS["regression"] if task == "regression" else TASK_METRICS[DEFAULT_TASK]
    if select_metric is None or select_metric not in own:
        select_metric = own[0]
    data_root = extract_kwargs.get("data_root")
    source = open_dataset(dataset, data_root=data_root)
    if cv is not None and "test" in source.splits:
        raise UsageError(f"dataset {source.name!r} has its own test split; cross-validation (--cv) is for datasets "
                         "without one: drop --cv")
    if task == "regression" and cv is None and "test" not in source.splits:
        raise UsageError(f"dataset {source.name!r} has no test split; add --cv K to cross-validate the regression "
                         "(e.g. --cv 5, or --cv-group subject --cv <people> for leave-one-person-out)")
    if pairs is not None:  # a bad pairs file (a missing image) costs no extraction
        from ._faces import read_pairs

        read_pairs(pairs, [i for s in source.split_names for i in source.ids[s]])
    entries = extract_features(backbone, dataset, taps=tuple(taps), cache_dir=cache_dir, device=device,
                               progress=progress, family=family, **extract_kwargs)
    splits = {name: load_split(entry, taps=list(taps)) for name, entry in entries.items()}
    first = splits.get("train") or next(iter(splits.values()))
    feature_tag = str(first.attrs.get("base_key") or first.key)[:8]
    data = _Data(source, splits, task)
    pair_set = pair_tag = None
    if task == "verification":
        pair_set, pair_tag = _pairs(pairs, data, seeds[0])
        if whiten is not None:
            for tap in taps:
                _check_whiten(int(whiten), pair_set, data.features(tap).shape[1], tap)
    n_skipped = skipped_count(splits.values())
    paths, job_list = [], []
    for tap in taps:
        context = dict(_context(first, tap, family, task), n_skipped=n_skipped)
        for name in probes:
            for seed in ([seeds[0]] if name == COSINE else seeds):
                evaluation = _evaluation(task, name, cv, cv_group, pair_tag, whiten, data.gallery)
                grid = (grids or {}).get(name)
                protocol, points = _protocol(task, name, tap, grid, select_metric, val_fraction, evaluation, data)
                stem = job_stem(results_dir, backbone=first.backbone, dataset=first.dataset, probe=name, tap=tap,
                                shots=0, seed=int(seed), tag=f"{feature_tag}-{protocol[:8]}")
                path = Path(str(stem) + ".parquet")
                paths.append(path)
                if path.exists() and not overwrite:
                    continue
                base = dict(context, protocol=protocol)
                job_list.append(dict(tap=tap, probe=name, seed=int(seed), grid=grid, select_metric=select_metric,
                                     dataset_spec=str(first.attrs.get("dataset_spec") or dataset),
                                     val_fraction=val_fraction, cv=cv, cv_group=cv_group, whiten=whiten,
                                     device=device, base=base, stem=stem))

    def run(job):
        rows, items = _run(task, data, job, job["base"], pair_set)
        _write(job["stem"], rows, items)

    run_jobs(run, job_list, jobs=jobs, progress=progress)
    return paths


class _Data:
    """The rows a task job sees: every split's features concatenated (:data:`probe.vocab.SPLITS` order), with ids,
    class labels (identities), the continuous target when the task needs it, and where each split's rows are
    (``parts``; ``gallery`` is true when the dataset has identification's gallery and query splits)."""

    def __init__(self, source, splits: dict, task: str):
        self.splits = splits
        order = [s for s in SPLITS if s in splits]
        self.parts = {}
        offset = 0
        for s in order:
            self.parts[s] = np.arange(offset, offset + len(splits[s].ids))
            offset += len(splits[s].ids)
        self.ids = np.asarray([i for s in order for i in splits[s].ids])
        self.labels = np.concatenate([splits[s].labels for s in order])
        self.classes = list(splits[order[0]].classes)
        self.target = None
        if task == "regression":
            name = target_name(source, task)
            self.target_name = name
            values = []
            for s in order:
                where = {str(i): k for k, i in enumerate(source.ids[s])}
                full = source.target(name, s)
                values.append(np.asarray([full[where[str(i)]] for i in splits[s].ids], dtype=np.float64))
            self.target = np.concatenate(values)
        self.gallery = "gallery" in self.parts and "query" in self.parts

    def features(self, tap: str) -> np.ndarray:
        order = [s for s in SPLITS if s in self.splits]
        return np.concatenate([self.splits[s].features[tap] for s in order])


def _context(first, tap: str, family: str | None, task: str) -> dict:
    from ._families import resolve_family
    from ._sweep import backbone_context

    fam, fam_source = resolve_family(first.backbone, family)
    return dict(backbone=first.backbone, family=fam, family_source=fam_source, weights=first.weights,
                dataset=first.dataset, tap=tap, cache_key=first.key, task=task, **backbone_context(first))


def _evaluation(task: str, probe: str, cv, cv_group, pair_tag, whiten=None, gallery: bool = False) -> dict:
    if task == "verification":  # whitened and plain comparisons are different protocols, never pooled
        return {"pairs": pair_tag, "folds": "pairs", **({"whiten": int(whiten)} if whiten is not None else {})}
    if task == "identification" and probe == COSINE:
        return {"retrieval": "gallery-query" if gallery else "leave-one-image-out"}
    return {"cv": int(cv), "cv_group": cv_group} if cv is not None else {}


def _protocol(task, name, tap, grid, select_metric, val_fraction, evaluation, data) -> tuple[str, list]:
    from ._identity import protocol_id
    from ._sweep import _check_grid, make_probe, protocol_of
    from ._version import PROBE_VERSION

    if name == COSINE:
        return protocol_id(task=task, probe=name, tap=tap, grid={}, val_fraction=0.0, test_fraction=0.0,
                           select_metric=TASK_METRICS[task][0], shots=0, refit=False, probe_version=PROBE_VERSION,
                           evaluation=evaluation), []
    est = _regressor(name) if task == "regression" else make_probe(name)
    points = _check_grid(est, grid)
    has_val = "val" in data.splits
    return protocol_of(est, points, tap=tap, task=task, val_fraction=0.0 if has_val and not evaluation else
                       val_fraction, test_fraction=0.0, select_metric=select_metric, shots=0, refit=True,
                       evaluation=evaluation), points


def _regressor(name: str):
    from .probes import REGRESSORS

    return REGRESSORS[name]()


def _pairs(pairs, data: _Data, seed: int):
    """The verification pairs (from the file, or drawn from identities) and a tag of them for the protocol id."""
    from ._faces import draw_pairs, read_pairs

    if pairs is not None:
        p = Path(pairs).expanduser()
        pair_set = read_pairs(p, data.ids)
        return pair_set, "file:" + hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    folds = max(2, min(PAIR_FOLDS, len(np.unique(data.labels)) // 2))  # a fold needs two people
    return draw_pairs(data.labels, folds=folds, seed=int(seed)), f"drawn:{folds}folds:seed{int(seed)}"


def _check_whiten(dim: int, pair_set, n_features: int, tap: str) -> None:
    """``--whiten DIM`` fits at most as many components as the features have dimensions and as the smallest
    fitting set (the images of the other folds' pairs) has images, less one (the centring)."""
    fit = min(len(np.unique(np.concatenate([pair_set.a[pair_set.fold != f], pair_set.b[pair_set.fold != f]])))
              for f in range(pair_set.n_folds))
    most = min(n_features, fit - 1)
    if dim > most:
        raise UsageError(f"--whiten {dim} asks for more PCA components than the {tap} features allow ({n_features} "
                         f"dimensions; {fit} images fit the smallest fold's whitening); use --whiten {most} or fewer")


def _run(task: str, data: _Data, job: dict, base: dict, pair_set) -> tuple[list[dict], dict]:
    from .results import make_row

    X = data.features(job["tap"])
    probe, seed = job["probe"], job["seed"]
    common = dict(base, probe=probe, shots=0, seed=seed, val_fraction=0.0, test_fraction=0.0, selected=True,
                  split="test", params={})
    if task == "identification" and probe == COSINE:
        import time

        from ._retrieval import retrieve

        # queries vs the gallery split when the dataset has them, else every image against all the others
        q, g = (data.parts["query"], data.parts["gallery"]) if data.gallery else (np.arange(len(X)), None)
        start = time.perf_counter()
        r = retrieve(X[q], data.labels[q], None if g is None else X[g], None if g is None else data.labels[g],
                     device=job["device"])
        seconds = time.perf_counter() - start
        g = np.arange(len(X)) if g is None else g
        row = make_row(**common, select_metric="rank1", n_train=len(g) - (0 if data.gallery else 1),
                       n_eval=int(r.valid.sum()), n_val=0, fit_seconds=seconds, **r.metrics())
        v = r.valid
        items = {"ids": data.ids[q][v], "labels": data.labels[q][v], "item/rank1": r.rank1[v],
                 "item/rank5": r.rank5[v], "item/map": r.ap[v], "neighbours": r.neighbours[v],
                 "gallery_ids": data.ids[g], "gallery_labels": data.labels[g],
                 "classes": np.asarray(data.classes, dtype=str), "dataset_spec": np.asarray(job["dataset_spec"])}
        return [row], items
    if task == "verification":
        import time

        from ._verify import verify

        start = time.perf_counter()
        v = verify(X, pair_set, pca_dim=job["whiten"])
        seconds = time.perf_counter() - start
        row = make_row(**common, select_metric="verif_acc", n_train=int(len(pair_set.a) * (1 - 1 / pair_set.n_folds)),
                       n_eval=len(pair_set.a), n_val=0, fit_seconds=seconds, **v.metrics(pair_set.same))
        ids = np.asarray([f"{data.ids[a]}|{data.ids[b]}" for a, b in zip(pair_set.a, pair_set.b)])
        items = {"ids": ids, "labels": pair_set.same.astype(np.int64), "item/verif_acc": v.correct.astype(float),
                 "similarity": v.similarity, "fold": pair_set.fold, "thresholds": v.thresholds}
        return [row], items
    return _run_learned(task, data, X, job, base)


def _run_learned(task: str, data: _Data, X: np.ndarray, job: dict, base: dict) -> tuple[list[dict], dict]:
    """Regression probes, or classification probes (identity classifiers), on splits or under nested CV."""
    from ._cv import cross_validate, cv_folds, sweep_regression

    regression = task == "regression"
    y = data.target if regression else data.labels
    groups = data.labels if job["cv_group"] == "subject" else None
    metrics = list(TASK_METRICS[task]) + ([] if regression else list(TASK_METRICS[DEFAULT_TASK]))

    def run_fold(i, tr, te):
        if regression:
            return sweep_regression(job["probe"], (X[tr], y[tr]), None, (X[te], y[te]), grid=job["grid"],
                                    select_metric=job["select_metric"], val_fraction=job["val_fraction"],
                                    seed=job["seed"], train_ids=data.ids[tr], test_ids=data.ids[te],
                                    groups=None if groups is None else groups[tr], device=job["device"],
                                    base=base)
        return _classify(task, data, X, tr, te, job, base)

    if job["cv"] is not None:
        folds = cv_folds(data.ids, k=job["cv"], seed=job["seed"], labels=None if regression else y, groups=groups)
        rows, items = cross_validate(run_fold, folds, metrics=metrics, groups=groups, ids=data.ids,
                                     seed=job["seed"])
        return rows, dict(items, **_target_name(data))
    # split-based (a dataset with its own test split): train (+ its own val) -> test
    parts = data.parts
    tr, te = parts["train"], parts["test"]
    if regression:
        val = (X[parts["val"]], y[parts["val"]]) if "val" in parts else None
        result = sweep_regression(job["probe"], (X[tr], y[tr]), val, (X[te], y[te]), grid=job["grid"],
                                  select_metric=job["select_metric"], val_fraction=job["val_fraction"],
                                  seed=job["seed"], train_ids=data.ids[tr], test_ids=data.ids[te],
                                  device=job["device"], base=base)
        return result.rows, dict(result.test, group=data.labels[te], **_target_name(data))
    raise UsageError("identity classifiers need --cv K (a face dataset has no test split of its own)")


def _target_name(data: _Data) -> dict:
    """The regressed target's name for the figures' units (``age`` is in years)."""
    name = getattr(data, "target_name", None)
    return {"target_name": np.asarray(name)} if name else {}


def _classify(task: str, data: _Data, X, tr, te, job: dict, base: dict):
    """One fold of a classification probe (identity classifier) through :func:`probe.sweep`."""
    from ._cv import TaskSweep
    from ._sweep import sweep as _sweep_fold
    from .results import top_k

    import warnings

    context = {k: v for k, v in base.items() if k != "protocol"}
    with warnings.catch_warnings():  # a few images per person is what identity classification is, not a mistake
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        result = _sweep_fold(job["probe"], (X[tr], data.labels[tr]), None, (X[te], data.labels[te]), grid=job["grid"],
                             select_metric=job["select_metric"], val_fraction=job["val_fraction"], seed=job["seed"],
                             class_names=data.classes, device=job["device"], train_ids=data.ids[tr], context=context,
                             return_result=True)
    rows = []
    for r in result.frame.to_dicts():
        r["protocol"] = base["protocol"]
        if task == "identification":  # an identity classifier's rank-k is its top-k over the identities
            r["rank1"], r["rank5"] = r["top1"], r["top5"]
        rows.append(r)
    classes = np.asarray(result.estimator.classes_)
    top = classes[top_k(result.test_scores, 5)]
    labels = data.labels[te]
    hits1 = (top[:, 0] == labels).astype(float)
    hits5 = (top == labels[:, None]).any(axis=1).astype(float)
    if top.shape[1] < 5:
        top = np.pad(top, ((0, 0), (0, 5 - top.shape[1])), constant_values=-1)
    items = {"ids": data.ids[te], "labels": labels, "pred": top[:, 0], "top5": top, "item/top1": hits1,
             "item/top5": hits5}
    if task == "identification":
        items.update({"item/rank1": hits1, "item/rank5": hits5})
    return TaskSweep(rows=rows, selected_params=result.selected_params, estimator=result.estimator, test=items)


def _write(stem, rows: list[dict], items: dict) -> Path:
    """Per-item arrays (``.npz``), then the parquet file last: its existence marks the job complete."""
    from .results import results_frame, write_results

    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in items.items()}
    if "ids" in arrays:
        arrays["ids"] = arrays["ids"].astype(str)
    if "group" in arrays:
        arrays["group"] = arrays["group"].astype(str)
    save_npz_atomic(Path(str(stem) + ".npz"), **arrays)
    return write_results(results_frame(rows), Path(str(stem) + ".parquet"))
