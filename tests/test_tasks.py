"""Tasks as objects behind one engine: the one selection protocol, a toy task defined only here that runs end to
end, and the defects at the seams (pooled cross-validated summaries, folds that hold out a class, one val carve
for the frozen and the fine-tuned side)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import probe
from probe import ProbeError, tasks
from probe.tasks.classification import Classification
from tests._helpers import assert_one_line_error, run_cli, run_main

EXTRACT = dict(random_init=True, img_size=32, device="cpu", progress=False)


# ------------------------------------------------------------------------------------------------ the protocol


def test_one_tie_rule_direction_ties_and_non_finite_scores():
    from probe._protocol import best_index

    order = [2, 0, 1]  # point 2 is the strongest regularisation, then 0, then 1
    assert best_index([0.5, 0.9, 0.7], order, higher_is_better=True) == 1  # the best wins
    assert best_index([0.9, 0.9, 0.9], order, higher_is_better=True) == 2  # exact ties: the strongest
    assert best_index([0.9, 0.5, 0.9], order, higher_is_better=True) == 2
    assert best_index([3.0, 1.0, 1.0], order, higher_is_better=False) == 2  # lower is better: the lowest
    assert best_index([np.nan, 0.1, np.inf], order, higher_is_better=False) == 1  # non-finite never wins
    assert best_index([np.nan, 0.1, -np.inf], order, higher_is_better=True) == 1
    with pytest.raises(ProbeError, match="non-finite val rmse"):
        best_index([np.nan, np.nan, np.inf], order, higher_is_better=False, metric="rmse")


def test_regression_sweep_ties_go_to_the_strongest_penalty_like_classification():
    """The regression sweep selects through the same rule (once it picked by list order on ties)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = X @ rng.normal(size=5) + rng.normal(0, 0.1, size=60)
    from probe._fit import sweep_regression

    res = sweep_regression("ridge", (X[:40], y[:40]), (X[40:50], y[40:50]), (X[50:], y[50:]),
                           grid={"alpha": [1.0, 1.0 + 1e-12]}, device="cpu")
    vals = [r for r in res.rows if r["split"] == "val"]
    assert vals[0]["mae"] == vals[1]["mae"]  # indistinguishable on val
    assert res.selected_params == {"alpha": 1.0 + 1e-12}  # the stronger penalty


def test_unstratified_carves_keep_groups_whole_and_match_carve_groups():
    from probe.splits import carve_groups, carve_splits

    ids = [f"p{i // 4}/{i}" for i in range(40)]
    people = np.asarray([i // 4 for i in range(40)])
    parts = carve_splits(None, ids=ids, val_fraction=0.2, test_fraction=0.2, seed=1, stratify=False, groups=people)
    sets = [set(people[parts[k]]) for k in ("train", "val", "test")]
    assert sorted(len(s) for s in sets) == [2, 2, 6] and not (sets[0] & sets[1] or sets[0] & sets[2] or
                                                             sets[1] & sets[2])
    assert sorted(np.concatenate([parts[k] for k in parts]).tolist()) == list(range(40))
    tr, va = carve_groups(ids, fraction=0.25, seed=2, groups=people)
    both = carve_splits(None, ids=ids, val_fraction=0.25, seed=2, stratify=False, groups=people)
    assert (both["train"] == tr).all() and (both["val"] == va).all()


# ------------------------------------------------------------------------------------------------ a toy task


class Even(Classification):
    """Is this digit even? A binary target read from the dataset's labels, scored by its own metric; everything
    else (probes learning classes, splits, cross-validation, rows, per-item arrays) is classification's."""

    name = "even"
    metrics = (tasks.mean_metric("even_acc", "even acc", stat="item/top1"),)
    select_metrics = ("top1",)  # the classification sweep's val metric selects
    columns = {"even_acc": "Float64"}  # its own results column (probe.tasks.Task.columns)
    probes = ("centroid", "ridge")
    default_probes = ("centroid",)
    options = frozenset({"cv"})

    def target(self, source, split):
        return (np.asarray(source.labels[split]) % 2 == 0).astype(np.int64)


@pytest.fixture
def even():
    task = tasks.register(Even())
    yield task
    tasks.unregister("even")
    assert "even" not in tasks.names()


def test_a_task_defined_in_a_test_runs_through_the_engine_and_the_cli(even, tmp_path, capsys):
    from probe.results import load_artifacts

    kw = dict(cache_dir=tmp_path / "c", **EXTRACT)
    (path,) = probe.sweep_cached("test_resnet", "digits", task="even", results_dir=tmp_path / "r", **kw)
    frame = pl.read_parquet(path)
    assert set(frame["task"]) == {"even"} and set(frame["evaluation"]) == {"splits"}
    test = frame.filter(pl.col("split") == "test").row(0, named=True)
    art = load_artifacts(path)
    assert set(np.unique(art["labels"])) == {0, 1}  # the task's own target, not the ten digits
    assert test["even_acc"] == pytest.approx(art["item/top1"].mean()) == pytest.approx(test["top1"])
    assert test["n_eval"] == len(art["ids"])
    # the CLI accepts the task registered at run time, runs it, and prints its headline metric
    proc = run_main(capsys, "sweep", "test_resnet", "digits", "--random-init", "--img-size", "32", "--task", "even",
                    "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "cli", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"even_acc={test['even_acc']:.4f}" in proc.stdout and "\tsplits\t" in proc.stdout
    # its options and probes are its own: one line each
    proc = run_main(capsys, "sweep", "test_resnet", "digits", "--random-init", "--task", "even", "--probes", "knn",
                    "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "cli", "--no-progress")
    assert_one_line_error(proc, 2, "--task even", "centroid, ridge")
    proc = run_main(capsys, "sweep", "test_resnet", "digits", "--random-init", "--task", "even",
                    "--test-fraction", "0.2", "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "cli")
    assert_one_line_error(proc, 2, "--test-fraction")
    # scan_results reads its column beside the contract's
    scanned = probe.scan_results(tmp_path / "r").collect()
    assert "even_acc" in scanned.columns and "evaluation" in scanned.columns


def test_a_task_defined_in_a_test_runs_through_a_study_file_and_the_report(even, tmp_path):
    """The same toy task, with no change outside this file: a study file names it, the study runs its sweep, and
    the report and the console summary give it its own section and table."""
    import io

    study = tmp_path / "even.toml"
    study.write_text("[study]\nname = 'even'\n[[backbones]]\nname = 'test_resnet'\nrandom_init = true\n"
                     "img_size = 32\n[[datasets]]\nspec = 'digits'\ntasks = ['classification', 'even']\n"
                     "[[sweeps]]\ntask = 'even'\nprobes = ['centroid', 'ridge']\n")
    out = io.StringIO()
    outcome = probe.run_study(study, cache_dir=tmp_path / "c", results_dir=tmp_path / "r",
                              report_dir=tmp_path / "report", pretrain_dir=tmp_path / "p", device="cpu",
                              progress=False, out=out)
    frame = probe.scan_results(tmp_path / "r").collect()
    assert set(frame["task"]) == {"even"} and set(frame["probe"]) == {"centroid", "ridge"}
    test = frame.filter(pl.col("selected") & (pl.col("split") == "test"))
    assert test.height == 2 and test["even_acc"].is_not_null().all()
    text = outcome.report_path.read_text()
    # a Classification subclass: classification's section, in its own metric, the best probe chosen on val
    assert "frozen even acc (%)" in text and "Evaluation: `splits`." in text
    vals = frame.filter(pl.col("split") == "val").group_by("probe").agg(pl.col("top1").max())
    best = vals.sort(["top1", "probe"], descending=[True, False])["probe"][0]
    row = test.filter(pl.col("probe") == best).row(0, named=True)
    assert f"| {best} / pooled | {100 * row['even_acc']:.1f} |" in text
    assert any(line.startswith("even: test even acc (%)") for line in out.getvalue().splitlines())


# ------------------------------------------------------------------------------------------------ defect 1


def test_cross_validated_summary_is_computed_from_the_pooled_held_out_items(tmp_path, capsys):
    """Person-grouped 3-fold CV of 20 people (7, 7 and 6 per fold): the summary's RMSE and MAE are those of all
    held-out images at once, recomputed here from the saved per-item arrays; the per-fold mean (what the summary
    printed before) differs on these uneven folds and stays in params as fold_mean."""
    from probe.results import load_artifacts

    proc = run_main(capsys, "sweep", "test_vit", "faces", "--random-init", "--img-size", "32", "--task",
                    "regression", "--probes", "ridge", "--cv", "3", "--cv-group", "subject", "--cache-dir",
                    tmp_path / "c", "--results-dir", tmp_path / "r", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (path,) = sorted((tmp_path / "r").rglob("*.parquet"))
    frame = pl.read_parquet(path)
    summary = frame.filter(pl.col("fold").is_null()).row(0, named=True)
    art = load_artifacts(path)
    assert len(art["ids"]) == 100 and sorted(np.bincount(art["fold"])) == [30, 35, 35]
    pooled_rmse = float(np.sqrt(np.mean((art["pred"] - art["labels"]) ** 2)))
    pooled_mae = float(np.mean(np.abs(art["pred"] - art["labels"])))
    assert summary["rmse"] == pytest.approx(pooled_rmse, rel=1e-9)
    assert summary["mae"] == pytest.approx(pooled_mae, rel=1e-9)
    params = json.loads(summary["params"])
    folds = frame.filter(pl.col("fold").is_not_null() & (pl.col("split") == "test"))
    assert params["fold_mean"]["rmse"] == pytest.approx(folds["rmse"].mean())
    assert params["fold_sd"]["rmse"] == pytest.approx(folds["rmse"].std())
    assert abs(params["fold_mean"]["rmse"] - pooled_rmse) > 1e-6  # uneven folds: the two differ
    assert params["interval_over"] == "people" and summary["evaluation"] == "cv3 by subject"
    low, high = params["interval"]["rmse"]
    assert low < pooled_rmse < high
    assert set(art["group"]) == {str(p) for p in range(20)} or len(set(art["group"])) == 20  # people resampled
    assert f"mae={pooled_mae:.4f} pooled over 3 folds" in proc.stdout


# ------------------------------------------------------------------------------------------------ defect 4


def test_folds_that_hold_out_a_class_are_a_usage_error(tmp_path):
    """--cv-group subject on a classification of people groups by the label: every test fold's classes are absent
    from its training fold, which used to be written as 0% accuracy with an interval."""
    proc = run_cli("sweep", "test_vit", "faces", "--random-init", "--img-size", "32", "--task", "classification",
                   "--probes", "centroid", "--cv", "5", "--cv-group", "subject", "--cache-dir", tmp_path / "c",
                   "--results-dir", tmp_path / "r", "--no-progress")
    assert_one_line_error(proc, 2, "no training example", "--cv-group")
    assert not list((tmp_path / "r").rglob("*.parquet")) if (tmp_path / "r").exists() else True


# ------------------------------------------------------------------------------------------------ defect 9


def test_frozen_and_finetuned_regression_carve_the_same_val_images(tmp_path):
    """A regression manifest with train and test splits and no val: the frozen job's val part and fine-tuning's
    are one carve (probe.splits.carve_splits, unstratified), so both sides select on the same images."""
    from PIL import Image

    from probe._datasets import open_dataset
    from probe._finetune import plan_splits
    from probe.results import load_artifacts

    rng = np.random.default_rng(0)
    lines = ["path,label,split,target"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,c{i % 3},{'test' if i % 5 == 0 else 'train'},{float(i % 7)}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    spec = f"csv:{tmp_path / 'm.csv'}"
    (path,) = probe.sweep_cached("test_resnet", spec, task="regression", probes=("ridge",), seeds=(3,),
                                 cache_dir=tmp_path / "c", results_dir=tmp_path / "r", **EXTRACT)
    frozen = set(load_artifacts(path)["val_ids"].tolist())
    source = open_dataset(spec)
    # fine-tuning's call (probe._finetune.run): stratified as the task says
    plan = plan_splits(source, val_fraction=0.2, test_fraction=0.0, seed=3, stratify=tasks.get("regression").stratified)
    split, rows = plan["val"]
    tuned = {str(source.ids[split][i]) for i in rows}
    assert len(frozen) == 6 and frozen == tuned
    assert pl.read_parquet(path).filter(pl.col("split") == "val")["n_val"][0] == 6
