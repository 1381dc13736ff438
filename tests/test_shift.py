"""Distribution shift (issue 26): the built-in shifted sets, scoring the selected models once on them (frozen probes
and fine-tuning, on the same shifted images), the eval_dataset column, and effective robustness in the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

import probe
from probe import analysis
from tests._helpers import assert_one_line_error, run_cli, run_main, write_image_folder

EXTRACT = dict(random_init=True, img_size=32, batch_size=256, workers=0, device="cpu", progress=False)
BLUR = "digits-c?corruption=blur&severity=3"
GRIDS = {"logistic": {"C": [0.01, 1.0]}, "ridge": {"alpha": [1.0, 100.0]}}


# ---------------------------------------------------------------------------------------------- shifted sets

def test_digits_c_is_the_test_split_corrupted_deterministically():
    clean = probe.open_dataset("digits")
    a, b = probe.open_dataset(BLUR), probe.open_dataset(BLUR)
    assert a.name == "digits-c-blur-3" and a.split_names == ["test"] and a.classes == clean.classes
    assert a.ids["test"] == clean.ids["test"] and np.array_equal(a.labels["test"], clean.labels["test"])
    assert all(np.array_equal(x, y) for x, y in zip(a.splits["test"], b.splits["test"]))  # seeded by image id
    assert a.fingerprint() != probe.open_dataset("digits-c?corruption=blur&severity=4").fingerprint()
    for name in ("gaussian_noise", "blur", "contrast", "rotation", "invert", "jpeg"):
        shifted = probe.open_dataset(f"digits-c?corruption={name}&severity=5")
        changed = np.mean([not np.array_equal(x, y) for x, y in zip(shifted.splits["test"], clean.splits["test"])])
        assert changed > 0.9, name
    # stronger noise moves the pixels further from the clean image
    dist = [np.mean([np.abs(x.astype(float) - y).mean() for x, y in zip(
        probe.open_dataset(f"digits-c?corruption=gaussian_noise&severity={s}").splits["test"],
        clean.splits["test"])]) for s in (1, 3, 5)]
    assert dist[0] < dist[1] < dist[2]
    # inversion at severity 5 is the photographic negative
    inv = probe.open_dataset("digits-c?corruption=invert&severity=5")
    assert np.array_equal(inv.splits["test"][0], 255 - clean.splits["test"][0])
    assert np.asarray(inv.load("test", 0)).shape == (8, 8, 3)


def test_shapes_texture_keeps_the_shapes_and_changes_their_texture():
    shapes, texture = probe.open_dataset("shapes"), probe.open_dataset("shapes-texture")
    assert texture.split_names == ["test"] and texture.classes == shapes.classes
    assert texture.ids["test"] == shapes.ids["test"]
    a, b = np.asarray(shapes.load("test", 3), dtype=float), np.asarray(texture.load("test", 3), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 10


@pytest.mark.parametrize("spec, needle", [
    ("digits-c?corruption=fog", "corruption must be one of gaussian_noise"),
    ("digits-c?corruption=blur&severity=9", "severity must be 1, 2, 3, 4 or 5"),
    ("digits-c?corruption=blur&level=2", "unknown option(s) ['level']"),
])
def test_bad_shifted_specs_are_one_line_errors(capsys, spec, needle):
    assert_one_line_error(run_main(capsys, "sweep", "test_resnet", "digits", "--eval-on", spec), 2, needle)


# ---------------------------------------------------------------------------------------------- frozen probes

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    paths = probe.sweep_cached("test_resnet", "digits", probes=("logistic", "ridge", "knn", "centroid"),
                               grids=GRIDS, cache_dir=root / "cache", results_dir=root / "results", eval_on=[BLUR],
                               **EXTRACT)
    return root, paths


def _shifted_file(path: Path, name: str = "digits-c-blur-3") -> Path:
    return path.with_name(path.stem + f".on-{name}.parquet")


def test_a_shifted_row_is_the_selected_probe_scored_once_on_the_shifted_features(swept):
    root, paths = swept
    centroid = next(p for p in paths if p.name.startswith("centroid"))
    own, shifted = pl.read_parquet(centroid), pl.read_parquet(_shifted_file(centroid))
    assert set(own["eval_dataset"]) == {"digits"}  # in-distribution rows name their own dataset
    assert shifted.height == 1
    row = shifted.row(0, named=True)
    chosen = own.filter(pl.col("selected")).row(0, named=True)
    assert row["eval_dataset"] == "digits-c-blur-3" and row["dataset"] == "digits" and row["split"] == "test"
    assert row["selected"] and row["protocol"] == chosen["protocol"] and row["n_train"] == chosen["n_train"]
    assert json.loads(row["params"])["eval_spec"] == BLUR and row["n_eval"] == 450
    # independent reference: the refitted centroids (saved with the in-distribution row) applied by hand to the
    # shifted set's cached features, read back with h5py
    weights = np.load(centroid.with_suffix(".npz"))
    (cache_file,) = (root / "cache" / "test_resnet" / "digits-c-blur-3").glob("test-*.h5")
    with h5py.File(cache_file) as f:
        X = f["features/pooled"][:].astype(np.float32)
        labels = f["labels"][:]
        ids = f["ids"].asstr()[:]
        assert f.attrs["cache_key" if "cache_key" in f.attrs else "key"] == row["cache_key"]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    pred = weights["score_classes"][np.argmax(X @ weights["weight/centroids"].T, axis=1)]
    items = np.load(str(_shifted_file(centroid)).replace(".parquet", ".npz"))
    assert np.array_equal(items["ids"], ids) and np.array_equal(items["labels"], labels)
    assert np.mean(pred != items["pred"]) <= 1 / len(pred)  # float16 features: at most a tie broken otherwise
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    assert row["top1"] == pytest.approx(accuracy_score(labels, items["pred"]))
    assert row["mean_per_class_acc"] == pytest.approx(balanced_accuracy_score(labels, items["pred"]))
    assert abs(row["top1"] - accuracy_score(labels, pred)) <= 1 / len(pred)


def test_a_shifted_row_is_calibrated_with_the_source_vals_temperature(swept):
    """The shifted row's calibration is its own (recomputed here from its saved scores) with the temperature fitted
    on the source's val; it is never the in-distribution row's values copied."""
    from scipy.special import softmax

    from probe import _calibration

    _, paths = swept
    for name in ("centroid", "logistic"):
        path = next(p for p in paths if p.name.startswith(name))
        chosen = pl.read_parquet(path).filter(pl.col("selected")).row(0, named=True)
        row = pl.read_parquet(_shifted_file(path)).row(0, named=True)
        assert row["temperature"] == chosen["temperature"] and row["calib_input"] == chosen["calib_input"]
        items = np.load(str(_shifted_file(path)).replace(".parquet", ".npz"))
        col = np.searchsorted(items["score_classes"], items["labels"])
        scores = items["scores"].astype(np.float64)
        z = scores if name == "centroid" else np.log(softmax(scores, axis=1))  # logistic: its softmax's logits
        before, after = softmax(z, axis=1), softmax(z / row["temperature"], axis=1)
        assert row["ece"] == pytest.approx(_calibration.ece(before, col), abs=1e-9)
        assert row["ece_ts"] == pytest.approx(_calibration.ece(after, col), abs=1e-9)
        assert row["nll_ts"] == pytest.approx(_calibration.nll(after, col), rel=1e-9)
        assert row["ece"] != chosen["ece"]


def test_in_distribution_tables_do_not_change_and_selection_stays_on_the_source_val(swept, tmp_path):
    root, paths = swept
    results = root / "results"
    plain = tmp_path / "plain"
    shutil.copytree(results, plain)
    for f in plain.rglob("*.on-*"):
        f.unlink()
    jobs = analysis.job_table(results)
    assert jobs.height == len(paths) and (jobs["eval_dataset"] == jobs["dataset"]).all()
    assert analysis.job_table(plain).drop("file").equals(jobs.drop("file"))
    assert analysis.summary_lines(results) == analysis.summary_lines(plain)
    every = analysis.job_table(results, shifted=True)
    assert every.height == 2 * len(paths)
    # a shifted row's val score is its job's: the same protocol is chosen on both sides, on the source's val
    protocols = analysis.aggregate_seeds(every)
    best = analysis.best_by_val(protocols)
    assert set(best["eval_dataset"]) == {"digits", "digits-c-blur-3"}
    assert best.filter(pl.col("eval_dataset") == "digits")["protocol"].to_list() == \
        best.filter(pl.col("eval_dataset") != "digits")["protocol"].to_list()
    # the job is complete only with its shifted file: a missing one reruns the job, an existing one is skipped
    target = _shifted_file(paths[0])
    target.unlink()
    again = probe.sweep_cached("test_resnet", "digits", probes=("logistic", "ridge", "knn", "centroid"), grids=GRIDS,
                               cache_dir=root / "cache", results_dir=results, eval_on=[BLUR], **EXTRACT)
    assert again == paths and target.is_file()


def test_effective_robustness_against_an_independent_fit(swept):
    from scipy.special import expit, logit

    root, _ = swept
    points = analysis.shift_points(analysis.job_table(root / "results", shifted=True))
    assert points.height == 4 and set(points["chosen"]) == {"frozen", ""}
    (group,) = analysis.effective_robustness(points, n_boot=300, seed=0)
    pts = group["points"]
    x, y = pts["acc_id"].to_numpy(), pts["acc_shift"].to_numpy()
    slope, intercept = np.polyfit(logit(x), logit(y), 1)  # both within (0, 1): the clip does not act
    assert group["slope"] == pytest.approx(slope) and group["intercept"] == pytest.approx(intercept)
    assert pts["er"].to_numpy() == pytest.approx(y - expit(slope * logit(x) + intercept))
    assert (pts["er_low"] <= pts["er"]).all() and (pts["er"] <= pts["er_high"]).all()
    assert group["over"] == "images"


def test_fit_line_by_hand():
    # three points exactly on logit(y) = 0.5 logit(x) - 1: slope, intercept and zero distance to the line
    from probe.analysis._shift import _robustness

    lx = np.array([-1.0, 0.0, 2.0])
    x, y = 1 / (1 + np.exp(-lx)), 1 / (1 + np.exp(-(0.5 * lx - 1.0)))
    slope, intercept = analysis.fit_line(x, y, n_x=10**6, n_y=10**6)
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(-1.0)
    assert _robustness(x, y, n_x=10**6, n_y=10**6) == pytest.approx(np.zeros(3), abs=1e-12)
    # a point raised above the line by 0.1 in accuracy: its own residual is shared with the fit (least squares)
    y2 = y.copy()
    y2[1] += 0.1
    er = _robustness(x, y2, n_x=10**6, n_y=10**6)
    assert er[1] > 0 and er[0] < 0 and er[2] < 0


# ---------------------------------------------------------------------------------------------- fine-tuning

def test_a_finetune_and_a_frozen_probe_are_scored_on_the_same_shifted_images(swept):
    root, paths = swept
    result = probe.finetune("test_resnet", "digits", epochs=1, batch_size=64, lr=1e-3, random_init=True,
                            img_size=32, workers=0, device="cpu", progress=False, verbose=False,
                            results_dir=root / "results", cache_dir=root / "cache", eval_on=[BLUR])
    tuned = _shifted_file(result.results_path)
    row = pl.read_parquet(tuned).row(0, named=True)
    assert row["probe"] == "finetune" and row["eval_dataset"] == "digits-c-blur-3" and row["selected"]
    assert json.loads(row["params"])["chosen_epoch"] == result.best_epoch
    frozen = np.load(str(_shifted_file(paths[0])).replace(".parquet", ".npz"))
    ft = np.load(str(tuned).replace(".parquet", ".npz"))
    assert np.array_equal(frozen["ids"], ft["ids"]) and np.array_equal(frozen["labels"], ft["labels"])
    assert row["top1"] == pytest.approx(float(np.mean(ft["pred"] == ft["labels"])))
    # the fine-tune is a point of the same configuration, and the report section shows both
    points = analysis.shift_points(analysis.job_table(root / "results", shifted=True))
    assert set(points["chosen"]) == {"frozen", "fine-tuned", ""}
    assert points["backbone_config"].n_unique() == 1


# ---------------------------------------------------------------------------------------------- CLI and study

def test_cli_eval_on_classes_by_name(tmp_path):
    src = write_image_folder(tmp_path / "src", classes=("cat", "dog"), splits=("train", "test"), per_class=6)
    extra = write_image_folder(tmp_path / "extra", classes=("cat", "dog", "fox"), splits=("test",), per_class=4)
    common = ["sweep", "test_resnet", f"imagefolder:{src}", "--random-init", "--img-size", "32", "--probes",
              "centroid", "--cache-dir", tmp_path / "cache", "--results-dir", tmp_path / "results", "--no-progress",
              "--eval-on", f"imagefolder:{extra}"]
    assert_one_line_error(run_cli(*common), 2, "class(es) that 'src' lacks: 'fox'", "--shared-classes")
    proc = run_cli(*common, "--shared-classes", check=0)
    assert "on extra\ttest top1=" in proc.stdout
    (shifted,) = (tmp_path / "results").rglob("*.on-extra.parquet")
    row = pl.read_parquet(shifted).row(0, named=True)
    params = json.loads(row["params"])
    assert params["eval_classes"] == "shared" and params["eval_dropped"] == ["fox"] and row["n_eval"] == 8
    assert row["eval_dataset"] == "extra"
    items = np.load(shifted.with_suffix(".npz"))
    assert set(items["labels"]) == {0, 1}  # the source's labels of cat and dog


def test_cli_eval_on_refusals(capsys):
    assert_one_line_error(run_main(capsys, "sweep", "test_resnet", "digits", "--eval-on", "shapes"), 2,
                          "'digits' lacks", "--shared-classes")
    assert_one_line_error(run_main(capsys, "sweep", "test_resnet", "faces", "--task", "regression", "--cv", "2",
                                   "--eval-on", BLUR), 2, "--eval-on")
    proc = run_main(capsys, "sweep", "--help")
    assert "--eval-on SPEC" in proc.stdout and "--shared-classes" in proc.stdout
    assert "--eval-on SPEC" in run_main(capsys, "finetune", "--help").stdout


def test_study_eval_on(tmp_path):
    from probe.study.file import load_study
    from probe.study.jobs import _evaluation_args
    from probe.study.plan import plan_study

    (tmp_path / "s.toml").write_text(
        '[[backbones]]\nname = "test_resnet"\nrandom_init = true\n\n[[datasets]]\nspec = "digits"\n'
        f'eval_on = ["{BLUR}", "digits-c?corruption=invert&severity=2"]\n\n[[sweeps]]\nprobes = ["centroid"]\n')
    study = load_study(tmp_path / "s.toml")
    assert study.datasets[0].eval_on == [BLUR, "digits-c?corruption=invert&severity=2"]
    sweep = next(j for j in plan_study(study) if j.kind == "sweep")
    assert _evaluation_args(sweep)["eval_on"] == study.datasets[0].eval_on
    (tmp_path / "bad.toml").write_text(
        '[[backbones]]\nname = "test_resnet"\n\n[[datasets]]\nspec = "faces"\ntasks = ["regression"]\ncv = 2\n'
        f'eval_on = ["{BLUR}"]\n')
    with pytest.raises(probe.UsageError, match="drop cv or eval_on"):
        load_study(tmp_path / "bad.toml")
