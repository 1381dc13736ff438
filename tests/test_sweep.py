"""Sweep protocol (select on val only, refit, one test row), few-shot draws, results schema, sweep_cached and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import probe
from probe import UsageError
from probe.probes import KNNProbe, LogisticProbe, RidgeProbe
from probe.results import RESULT_COLUMNS, load_artifacts, write_results
from probe.splits import carve_val

CONTEXT = dict(backbone="test_vit", family="transformer", weights="random-init:0", dataset="digits", tap="pooled",
               cache_key="abc123")


@pytest.fixture(scope="module")
def data():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    Xtr, Xv, ytr, yv = train_test_split(Xtr, ytr, test_size=0.25, random_state=0, stratify=ytr)
    return (Xtr, ytr), (Xv, yv), (Xte, yte)


def test_rows_protocol_and_refit_on_train_plus_val(data):
    train, val, test = data
    grid = {"alpha": [1e-2, 1.0, 100.0, 1e4]}
    res = probe.sweep("ridge", train, val, test, grid=grid, context=CONTEXT, return_result=True)
    f = res.frame
    assert f.columns == list(RESULT_COLUMNS)
    vals, tests = f.filter(pl.col("split") == "val"), f.filter(pl.col("split") == "test")
    assert vals.height == 4 and not vals["selected"].any()
    assert tests.height == 1 and tests["selected"].all() and f["selected"].sum() == 1
    assert set(vals["n_train"]) == {len(train[1])} and set(vals["n_eval"]) == {len(val[1])}
    assert tests["n_train"][0] == len(train[1]) + len(val[1]) and tests["n_eval"][0] == len(test[1])
    assert set(f["val_fraction"]) == {0.0} and set(f["probe"]) == {"ridge"} and set(f["backbone"]) == {"test_vit"}
    best = vals.filter(pl.col("top1") == vals["top1"].max())["params"].map_elements(
        lambda p: json.loads(p)["alpha"], return_dtype=pl.Float64).max()  # ties: the strongest penalty
    assert json.loads(tests["params"][0]) == res.selected_params == {"alpha": best}
    # The selected estimator was refitted on train+val and its test scores give the test row's metrics.
    est = res.estimator
    ref = RidgeProbe(**res.selected_params).fit(np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    np.testing.assert_allclose(res.test_scores, ref.decision_function(test[0]), atol=1e-4)
    assert tests["top1"][0] == pytest.approx(np.mean(est.predict(test[0]) == test[1]))


def test_selection_never_looks_at_test(data):
    train, val, test = data
    grid = {"alpha": [1e-2, 1e7]}
    # Relabel test with the predictions of the heavily penalised model: on this test set alpha=1e7 scores 100%,
    # while on val (true labels) the light penalty wins. The sweep must still select on val.
    both = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
    fake_test = (test[0], RidgeProbe(alpha=1e7).fit(*both).predict(test[0]))
    f = probe.sweep("ridge", train, val, fake_test, grid=grid)
    vals = f.filter(pl.col("split") == "val").sort("params")
    val_top1 = dict(zip(vals["params"], vals["top1"]))
    assert val_top1['{"alpha": 0.01}'] > val_top1['{"alpha": 10000000.0}']
    sel = f.filter(pl.col("selected"))
    assert json.loads(sel["params"][0]) == {"alpha": 0.01}
    assert sel["top1"][0] < 1.0
    assert probe.sweep("ridge", train, val, fake_test, grid={"alpha": [1e7]}).filter(pl.col("selected"))["top1"][0] == 1.0


def test_ties_go_to_the_strongest_regularisation(data):
    train, val, test = data
    # Two alphas so close that every prediction is identical: the larger (stronger) one must win.
    f = probe.sweep("ridge", train, val, test, grid={"alpha": [1.0, 1.0 + 1e-9]})
    assert json.loads(f.filter(pl.col("selected"))["params"][0]) == {"alpha": 1.0 + 1e-9}
    # k=1: the temperature cannot change the vote; uniform votes (None) count as the stronger smoothing.
    f = probe.sweep("knn", train, val, test, grid={"k": [1], "temperature": [0.07, None]})
    assert json.loads(f.filter(pl.col("selected"))["params"][0]) == {"k": 1, "temperature": None}
    f = probe.sweep(LogisticProbe(max_iter=50), train, val, test, grid={"C": [1e-9, 2e-9]})
    vals = f.filter(pl.col("split") == "val")
    if vals["top1"][0] == vals["top1"][1]:
        assert json.loads(f.filter(pl.col("selected"))["params"][0]) == {"C": 1e-9, "converged": True}


def test_val_is_carved_and_recorded_when_missing(data):
    train, _, test = data
    f = probe.sweep("centroid", train, None, test, val_fraction=0.25, seed=3)
    keep, held = carve_val(train[1], 0.25, 3)
    assert set(f["val_fraction"]) == {0.25} and set(f["seed"]) == {3}
    val_row = f.filter(pl.col("split") == "val")
    assert val_row["n_eval"][0] == len(held) and val_row["n_train"][0] == len(keep)
    assert f.filter(pl.col("selected"))["n_train"][0] == len(train[1])  # refit on train + carved val
    with pytest.raises(UsageError, match="val fraction"):
        probe.sweep("centroid", train, None, test, val_fraction=1.5)


def test_estimator_instance_keeps_its_settings_and_sweeps_logistic(data):
    train, val, test = data
    res = probe.sweep(LogisticProbe(max_iter=300, tol=1e-3), train, val, test, grid={"C": [1e-4, 1e-2]},
                      select_metric="mean_per_class_acc", return_result=True)
    assert res.estimator.max_iter == 300 and res.estimator.C == res.selected_params["C"]
    assert set(res.frame["select_metric"]) == {"mean_per_class_acc"}
    assert res.frame.filter(pl.col("selected"))["top1"][0] > 0.9
    assert res.test_scores.shape == (len(test[1]), 10)


def test_default_grids_are_used(data):
    train, val, test = data
    f = probe.sweep("knn", train, val, test)
    assert f.filter(pl.col("split") == "val").height == len(KNNProbe.default_grid["k"]) * 2
    assert len(LogisticProbe.default_grid["C"]) == 45
    assert LogisticProbe.default_grid["C"][0] == pytest.approx(1e-6)
    assert LogisticProbe.default_grid["C"][-1] == pytest.approx(1e5)
    f = probe.sweep("centroid", train, val, None)  # no test: the val row is the selected one
    assert f.height == 1 and f["selected"][0] and f["split"][0] == "val"


def test_few_shot_draw(data):
    train, val, test = data
    f = probe.sweep("centroid", train, val, test, shots=5, seed=1)
    assert set(f.filter(pl.col("split") == "val")["n_train"]) == {50}
    assert f.filter(pl.col("selected"))["n_train"][0] == 50  # few-shot refit never adds val
    assert set(f["shots"]) == {5}
    a = probe.sweep("centroid", train, val, test, shots=2, seed=1)["top1"].to_list()
    b = probe.sweep("centroid", train, val, test, shots=2, seed=1)["top1"].to_list()
    c = [probe.sweep("centroid", train, val, test, shots=2, seed=s)["top1"].to_list() for s in (2, 3, 4)]
    assert a == b and any(x != a for x in c)
    names = [f"digit-{i}" for i in range(10)]
    y = train[1].copy()
    y[y == 4] = 3
    y[np.flatnonzero(train[1] == 3)[:1]] = 4  # one example of class 4 left
    with pytest.raises(UsageError, match="'digit-4' has 1 training examples, fewer than shots=2"):
        probe.sweep("centroid", (train[0], y), val, test, shots=2, class_names=names)


def test_carve_happens_before_the_few_shot_draw(data):
    train, _, test = data
    f = probe.sweep("centroid", train, None, test, shots=3, seed=0, val_fraction=0.2)
    _, held = carve_val(train[1], 0.2, 0)
    assert f.filter(pl.col("split") == "val")["n_eval"][0] == len(held)  # val carved from the full train
    assert f.filter(pl.col("split") == "val")["n_train"][0] == 30


def test_bad_sweep_input(data):
    train, val, test = data
    with pytest.raises(UsageError, match="unknown probe 'svm'"):
        probe.sweep("svm", train, val, test)
    with pytest.raises(UsageError, match="select_metric"):
        probe.sweep("ridge", train, val, test, select_metric="top3")
    with pytest.raises(UsageError, match=r"grid keys \['C'\].*valid keys: \['alpha', 'fit_intercept'\]"):
        probe.sweep("ridge", train, val, test, grid={"C": [1.0]})
    with pytest.raises(UsageError, match="empty"):
        probe.sweep("ridge", train, val, test, grid={"alpha": []})
    with pytest.raises(UsageError, match="context may not set"):
        probe.sweep("ridge", train, val, test, context={"top1": 1.0})
    with pytest.raises(ValueError, match="val X has 63 features"):
        probe.sweep("ridge", train, (val[0][:, :63], val[1]), test)
    with pytest.raises(ValueError, match="NaN"):
        probe.sweep("ridge", train, val, (np.full_like(test[0], np.nan), test[1]))
    with pytest.raises(ValueError, match="'alpha' parameter of RidgeProbe"):
        probe.sweep("ridge", train, val, test, grid={"alpha": [-1.0]})


def test_results_schema_round_trip(tmp_path, data):
    train, val, test = data
    f = probe.sweep("ridge", train, val, test, grid={"alpha": [1.0, 10.0]}, context=CONTEXT)
    path = write_results(f, tmp_path / "r.parquet")
    back = pl.scan_parquet(path).collect()
    assert back.columns == list(RESULT_COLUMNS)
    for name, dtype in RESULT_COLUMNS.items():
        assert back.schema[name] == getattr(pl, dtype), name
    assert back.equals(f)
    assert back.filter(pl.col("split") == "val")["fit_seconds"].min() >= 0


# ----------------------------------------------------------------------------------- sweep over the cache
GRIDS = {"logistic": {"C": [0.01, 1.0]}, "ridge": {"alpha": [1.0, 100.0]}}
EXTRACT = dict(random_init=True, img_size=32, batch_size=256, workers=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    probe.extract_features("test_resnet", "digits", cache_dir=root, **EXTRACT)
    return root


def test_sweep_cached_writes_skips_and_overwrites(cache_dir, tmp_path):
    results = tmp_path / "results"
    kw = dict(probes=("logistic", "ridge", "centroid"), grids=GRIDS, cache_dir=cache_dir, results_dir=results,
              **EXTRACT)
    paths = probe.sweep_cached("test_resnet", "digits", **kw)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    frame = probe.scan_results(results).collect()
    assert frame.filter(pl.col("selected")).height == 3
    assert frame["weights"].str.starts_with("random-init").all() and set(frame["dataset"]) == {"digits"}
    assert frame["cache_key"].str.len_chars().min() > 12
    art = load_artifacts(paths[0])
    test_rows = frame.filter(pl.col("selected") & (pl.col("probe") == "logistic"))
    assert len(art["ids"]) == test_rows["n_eval"][0] and "weight/coef" in art
    assert np.mean(art["pred"] == art["labels"]) == pytest.approx(test_rows["top1"][0])
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert probe.sweep_cached("test_resnet", "digits", **kw) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # existing jobs skipped
    probe.sweep_cached("test_resnet", "digits", overwrite=True, **{**kw, "probes": ("centroid",)})
    assert paths[2].stat().st_mtime_ns != mtimes[2] and paths[0].stat().st_mtime_ns == mtimes[0]


def test_sweep_cached_few_shot_seeds_parallel(cache_dir, tmp_path):
    kw = dict(probes=("ridge", "knn"), shots=(2, 4), seeds=(0, 1), grids=GRIDS, cache_dir=cache_dir, **EXTRACT)
    serial = probe.sweep_cached("test_resnet", "digits", results_dir=tmp_path / "a", jobs=1, **kw)
    parallel = probe.sweep_cached("test_resnet", "digits", results_dir=tmp_path / "b", jobs=2, **kw)
    assert len(serial) == 8 and {p.name for p in serial} == {p.name for p in parallel}
    cols = ["probe", "shots", "seed", "params", "split", "top1", "n_train"]
    a = probe.scan_results(tmp_path / "a").collect().select(cols).sort(cols)
    b = probe.scan_results(tmp_path / "b").collect().select(cols).sort(cols)
    assert a.equals(b)
    sel = a.filter(pl.col("split") == "test")
    assert sorted(set(zip(sel["shots"], sel["n_train"]))) == [(2, 20), (4, 40)]
    with pytest.raises(UsageError, match="fewer than shots=500"):
        probe.sweep_cached("test_resnet", "digits", results_dir=tmp_path / "c",
                           **{**kw, "shots": (500,), "probes": ("centroid",)})
    with pytest.raises(UsageError, match="unknown probe"):
        probe.sweep_cached("test_resnet", "digits", results_dir=tmp_path / "c", **{**kw, "probes": ("svm",)})


def _cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "probe", "sweep", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def test_cli_sweep_and_bad_input(cache_dir, tmp_path):
    common = ["test_resnet", "digits", "--random-init", "--img-size", 32, "--batch-size", 256, "--workers", 0,
              "--device", "cpu", "--cache-dir", cache_dir, "--results-dir", tmp_path / "res", "--no-progress"]
    proc = _cli(*common, "--probes", "ridge", "centroid", "--shots", 0, 3, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 4
    frame = pl.scan_parquet(str(tmp_path / "res" / "**" / "*.parquet")).collect()
    assert frame.filter(pl.col("selected")).height == 4 and set(frame["probe"]) == {"ridge", "centroid"}
    for bad, needle in [(["--val-fraction", 1.5], "--val-fraction"), (["--shots", 500, "--probes", "centroid"],
                                                                       "fewer than shots=500")]:
        proc = _cli(*common, *bad, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    help_text = _cli("--help", cwd=tmp_path).stdout
    for flag in ["--probes", "--shots", "--seeds", "--results-dir", "--jobs", "--select-metric", "--val-fraction",
                 "--overwrite"]:
        assert flag in help_text


def test_family_override_labels_rows_of_cached_features(cache_dir, tmp_path):
    # the features were cached without an override; the override is a label and must still reach the rows
    probe.sweep_cached("test_resnet", "digits", probes=("centroid",), cache_dir=cache_dir,
                       results_dir=tmp_path / "r", family="hybrid", **EXTRACT)
    assert set(probe.scan_results(tmp_path / "r").collect()["family"]) == {"hybrid"}
