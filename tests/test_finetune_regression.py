"""Fine-tuning with a regression head (L1 loss, age in years): the head's loss and metrics by hand, a
cross-validated CLI run on the generated faces read back with polars, selection on val only, the report's
frozen vs fine-tuned rows, and bad input.

One CLI run (test_resnet at random init, 32-pixel faces, 2 folds, 2 epochs) serves the read-back, the selection
and the report tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")

from tests._helpers import assert_one_line_error, run_cli, run_main  # noqa: E402

CV_ARGS = ["test_resnet", "faces", "--task", "regression", "--cv", "2", "--random-init", "--img-size", "32",
           "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--warmup-epochs", "0", "--no-progress",
           "--workers", "0", "--device", "cpu"]


def test_regression_head_loss_and_metrics_by_hand():
    from probe._finetune.heads import RegressionTask

    y_train = np.array([10.0, 20.0, 30.0, 60.0])
    task = RegressionTask.from_targets(y_train)
    assert task.mean == pytest.approx(30.0) and task.std == pytest.approx(np.std(y_train))
    out = torch.tensor([[0.5], [-1.0], [0.0], [2.0]])
    y = torch.tensor([40.0, 3.0, 31.0, 64.0], dtype=torch.float64)
    z = (y.numpy() - 30.0) / np.std(y_train)
    assert float(task.loss(out, y)) == pytest.approx(np.mean(np.abs(out.numpy()[:, 0] - z)), rel=1e-6)
    ev = task.evaluator()
    ev.add(out[:2], y[:2], torch.tensor([True, True]))
    ev.add(out[2:], y[2:], torch.tensor([True, False]))  # the last image unreadable: left out
    r = ev.result()
    pred = 30.0 + np.std(y_train) * out.numpy()[:3, 0]  # in years
    err = np.abs(pred - y.numpy()[:3])
    assert np.allclose(r["pred"], pred) and np.allclose(r["labels"], [40.0, 3.0, 31.0])
    assert r["metrics"]["mae"] == pytest.approx(err.mean())
    assert r["metrics"]["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert r["metrics"]["cs5"] == pytest.approx(np.mean(err <= 5.0))
    assert np.allclose(r["items"]["item/mae"], err) and r["keep"].tolist() == [True, True, True, False]
    assert RegressionTask(5.0, 0.0).std == 1.0  # a constant target is not divided by zero


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """The CLI fine-tune (a real subprocess) and, in the same results folder, the frozen ridge probe on the same
    folds (for the report)."""
    from probe._sweep import sweep_cached

    root = tmp_path_factory.mktemp("ftreg")
    # one torch thread: on a busy 2-core machine two threads spin-wait on each other (many times slower)
    proc = run_cli("finetune", *CV_ARGS, "--results-dir", root / "results", cwd=root, timeout=600, check=0,
                   env={"OMP_NUM_THREADS": "1"})
    sweep_cached("test_resnet", "faces", task="regression", probes=["ridge"], cv=2, random_init=True, img_size=32,
                 cache_dir=root / "cache", results_dir=root / "results", progress=False, device="cpu",
                 grids={"ridge": {"alpha": [1.0, 100.0]}})
    (path,) = (root / "results").rglob("finetune-*regression*.parquet")
    return root, proc, path


def test_cli_cross_validated_rows_and_predictions_in_years(cv_run):
    from probe._cv import cv_folds
    from probe._datasets import open_dataset
    from probe.results import load_artifacts

    _, proc, path = cv_run
    assert "test\tregression\tmae" in proc.stdout and "mean over 2 folds" in proc.stdout
    frame = pl.read_parquet(path)
    assert set(frame["task"]) == {"regression"} and set(frame["probe"]) == {"finetune"}
    tests = frame.filter(pl.col("selected") & (pl.col("split") == "test"))
    assert sorted(tests["fold"].to_list(), key=lambda f: -1 if f is None else f) == [None, 0, 1]
    summary = tests.filter(pl.col("fold").is_null()).row(0, named=True)
    per = tests.filter(pl.col("fold").is_not_null())
    assert np.isfinite(summary["mae"]) and summary["mae"] == pytest.approx(per["mae"].mean())
    assert summary["rmse"] >= summary["mae"] and 0 <= summary["cs5"] <= 1 and summary["n_eval"] == 100
    assert summary["top1"] is None and summary["select_metric"] == "mae"
    params = json.loads(summary["params"])
    assert params["folds"] == 2 and params["fold_sd"]["mae"] == pytest.approx(per["mae"].std())
    assert frame.filter(pl.col("split") == "val").height == 2 * 2  # one val row per epoch and fold
    assert set(frame["evaluation"]) == {"cv2"}  # every row names its evaluation, the summary's too
    fold_params = json.loads(per["params"][0])
    assert fold_params["tasks"] == ["regression"] and fold_params["head"] == "linear"

    art = load_artifacts(path)
    source = open_dataset("faces")
    ages = dict(zip(source.ids["train"], source.target("age", "train")))
    assert sorted(art["ids"].tolist()) == sorted(source.ids["train"]) and str(art["target_name"]) == "age"
    assert {"ids", "labels", "item/mae", "item/rmse", "item/cs5", "group"} <= set(art)  # the sweeps' item keys
    assert np.array_equal(art["labels"], [ages[i] for i in art["ids"]])  # true ages, in years
    assert np.allclose(art["item/mae"], np.abs(art["pred"] - art["labels"]))
    assert art["item/mae"].mean() == pytest.approx(sum(r["mae"] * r["n_eval"] for r in per.to_dicts()) / 100)
    assert 0 < art["pred"].min() and art["pred"].max() < 100  # years, not standardised units
    # the held-out folds are the frozen probes' folds (same ids, seed): paired over the same images
    folds = cv_folds(source.ids["train"], k=2, seed=0)
    held = {i: f for f, (_, te) in enumerate(folds) for i in np.asarray(source.ids["train"])[te]}
    assert all(held[i] == f for i, f in zip(art["ids"], art["fold"]))


def test_epoch_is_chosen_on_the_training_folds_val_never_on_test(cv_run):
    from probe._cv import cv_folds
    from probe._datasets import open_dataset
    from probe._finetune.cv import fold_plan as _fold_plan

    _, _, path = cv_run
    frame = pl.read_parquet(path)
    for f in (0, 1):
        vals = frame.filter((pl.col("fold") == f) & (pl.col("split") == "val")).sort("params")
        epochs = [json.loads(p)["epoch"] for p in vals["params"]]
        best = epochs[int(np.argmin(vals["mae"].to_numpy()))]
        test = frame.filter((pl.col("fold") == f) & (pl.col("split") == "test")).row(0, named=True)
        assert json.loads(test["params"])["epoch"] == best == json.loads(test["params"])["chosen_epoch"]
    # the same command again reads the rows back (nothing trained), with each fold's chosen epoch
    import probe

    again = probe.finetune("test_resnet", "faces", tasks="regression", cv=2, random_init=True, img_size=32, epochs=2,
                           batch_size=16, lr=1e-3, warmup_epochs=0, results_dir=path.parents[2], verbose=False)
    assert again.skipped and again.results_path == path
    assert again.fold_epochs == [json.loads(p)["epoch"] for p in frame.filter(
        pl.col("fold").is_not_null() & (pl.col("split") == "test")).sort("fold")["params"]]
    # each fold's val part is carved from its training fold alone, by person when grouped
    source = open_dataset("faces")
    groups = source.labels["train"]
    for tr, te in cv_folds(source.ids["train"], k=4, seed=0, groups=groups):
        plan = _fold_plan(source, tr, te, groups=groups, val_fraction=0.2, seed=0)
        train, val, test = (set(plan[s][1].tolist()) for s in ("train", "val", "test"))
        assert test == set(te.tolist()) and train | val == set(tr.tolist()) and not (train & val)
        people = [set(groups[list(part)].tolist()) for part in (train, val, test)]
        assert not (people[0] & people[1]) and not (people[2] & (people[0] | people[1]))


def test_report_shows_frozen_vs_fine_tuned_age_mae(cv_run, tmp_path):
    from probe import analysis, write_report

    root, _, path = cv_run
    jobs = analysis.job_table(root / "results").filter(pl.col("task") == "regression")
    protocols = analysis.aggregate_seeds(jobs)
    frozen = analysis.best_by_val(protocols.filter(pl.col("probe") != "finetune"))
    tuned = analysis.best_by_val(protocols.filter(pl.col("probe") == "finetune"))
    gains = analysis.finetune_gains(frozen, tuned, metric="mae", extra_metrics=(), n_boot=200)
    g = gains.row(0, named=True)
    assert g["gain_n"] == 100 and g["gain_low"] <= g["gain"] <= g["gain_high"]  # paired on the same 100 images
    assert g["gain"] == pytest.approx(g["finetune"] - g["frozen"])
    text = write_report(root / "results", tmp_path / "report", n_boot=200).read_text()
    section = text[text.index("## Faces and continuous targets"):]
    assert "fine-tuning (best by val)" in section and "Frozen vs fine-tuned (mae" in section
    row = next(line for line in section.splitlines() if line.startswith("| `test_resnet") and "finetune (full)" in
               line and "ridge / pooled" in line)
    assert f"{g['finetune']:.2f}" in row and f"{g['gain']:+.2f}" in row
    assert (tmp_path / "report" / "figures" / "faces-regression-scatter.png").is_file()


@pytest.mark.parametrize("args, needles", [
    (["test_resnet", "digits", "--task", "regression"], ["no continuous target", "faces"]),
    (["test_resnet", "faces", "--task", "regression"], ["no test split", "--cv K"]),
    (["test_resnet", "digits", "--cv", "3"], ["--cv cross-validates --task regression"]),
    (["test_resnet", "faces", "--task", "regression", "--cv-group", "subject"], ["give --cv K"]),
    (["test_resnet", "faces", "--task", "regression", "--cv", "2", "--mode", "lp-ft"], ["lp-ft"]),
])
def test_bad_regression_input_is_one_line(tmp_path, capsys, args, needles):
    proc = run_main(capsys, "finetune", *args, "--random-init", "--results-dir", tmp_path / "r", "--no-progress")
    assert_one_line_error(proc, 2, *needles)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.parquet"))


def test_manifest_with_a_test_split_writes_exact_targets(tmp_path):
    """The split-based path: a csv manifest's ``target`` column, its own test split, one selected test row and the
    per-image predictions beside it (targets exactly as in the manifest, predictions in its units)."""
    from PIL import Image

    import probe
    from probe.results import load_artifacts

    rng = np.random.default_rng(0)
    rows = ["path,target,split"]
    for i in range(40):
        target = 0.1 + 2.5 * (i % 20)
        img = np.clip(np.full((20, 20, 3), 5.0 * target) + rng.normal(0, 5, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{target},{'test' if i % 4 == 0 else 'train'}")
    (tmp_path / "m.csv").write_text("\n".join(rows))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = probe.finetune("test_resnet", f"csv:{tmp_path / 'm.csv'}", tasks="regression", random_init=True,
                                img_size=32, epochs=1, batch_size=8, lr=1e-3, workers=0, progress=False,
                                verbose=False, results_dir=tmp_path / "r", device="cpu")
    finally:
        torch.set_num_threads(threads)
    frame = pl.read_parquet(result.results_path)
    test = frame.filter(pl.col("selected")).row(0, named=True)
    assert (test["split"], test["task"], test["n_eval"], test["fold"]) == ("test", "regression", 10, None)
    art = load_artifacts(result.results_path)
    truth = {f"{i}.png": 0.1 + 2.5 * (i % 20) for i in range(0, 40, 4)}
    assert np.array_equal(art["labels"], [truth[i] for i in art["ids"]]) and str(art["target_name"]) == "target"
    assert test["mae"] == pytest.approx(np.abs(art["pred"] - art["labels"]).mean())
    assert result.weights_path.is_file()  # a split-based run exports its weights as classification does
