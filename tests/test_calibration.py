"""Calibration (probe._calibration): ECE/MCE against torchmetrics and a hand-worked case, NLL and Brier against
scikit-learn, the temperature fit against a brute-force grid (test labels cannot move it), and the columns and
per-item statistics that frozen probes (a real CLI sweep) and fine-tuning write."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.special import log_softmax, softmax

import probe
from probe import _calibration as cal
from probe.results import load_artifacts
from tests._helpers import run_cli


def _probs(n, c, seed, sharp=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * sharp
    y = np.asarray([rng.choice(c, p=p) for p in softmax(z / 2.0, axis=1)])  # overconfident by about 2
    return z, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_mce_equal_torchmetrics(seed):
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    z, y = _probs(400, 7, seed)
    p = softmax(z, axis=1)
    for norm, ours in (("l1", cal.ece), ("max", cal.mce)):
        ref = MulticlassCalibrationError(num_classes=7, n_bins=15, norm=norm)
        ref.update(torch.as_tensor(p), torch.as_tensor(y))
        assert ours(p, y) == pytest.approx(float(ref.compute()), abs=1e-6), norm
    # a perfectly calibrated predictor's ECE is small; the overconfident one's is not
    assert cal.ece(p, y) > 0.1 and cal.ece(softmax(z / 2.0, axis=1), y) < cal.ece(p, y)


def test_hand_worked_case():
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.62, 0.38], [0.38, 0.62]])
    y = np.array([0, 1, 0, 1])
    # bins (right-closed, 15): 0.95 -> (14/15, 1], 0.62 -> (9/15, 10/15]; accuracies 0.5 and 1.0
    assert cal.ece(p, y) == pytest.approx(0.5 * 0.45 + 0.5 * 0.38)
    assert cal.mce(p, y) == pytest.approx(0.45)
    assert cal.nll(p, y) == pytest.approx(-(np.log(0.95) + np.log(0.05) + 2 * np.log(0.62)) / 4)
    assert cal.brier(p, y) == pytest.approx((0.005 + 1.805 + 2 * 0.2888) / 4)
    from sklearn.metrics import brier_score_loss, log_loss

    assert cal.nll(p, y) == pytest.approx(log_loss(y, p))
    assert cal.brier(p, y) == pytest.approx(2 * brier_score_loss(y, p[:, 1]))  # two classes: twice the binary
    # a confidence of exactly 1 is in the last bin; a class without a score column (-1) is never a hit
    assert cal.ece(np.array([[1.0, 0.0]]), np.array([0])) == 0.0
    assert cal.ece(np.array([[0.7, 0.3]]), np.array([-1])) == pytest.approx(0.7)
    assert cal.brier(np.array([[0.7, 0.3]]), np.array([-1])) == pytest.approx(0.49 + 0.09 + 1.0)


def test_temperature_minimises_val_nll_and_never_sees_test():
    from scipy.optimize import minimize_scalar

    z, y = _probs(600, 5, 3)
    t = cal.fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    nll = [-log_softmax(z / g, axis=1)[np.arange(len(y)), y].mean() for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=1e-3)
    ref = minimize_scalar(lambda lt: -log_softmax(z / np.exp(lt), axis=1)[np.arange(len(y)), y].mean(),
                          bounds=(-3, 3), method="bounded", options={"xatol": 1e-10})
    assert t == pytest.approx(float(np.exp(ref.x)), rel=1e-4)
    assert 1.5 < t < 2.7  # the labels were drawn at temperature 2
    # test labels and test scores cannot move it; val labels do
    zt, yt = _probs(300, 5, 4)
    a = cal.calibration_metrics(z, y, zt, yt, from_probabilities=False)
    b = cal.calibration_metrics(z, y, zt * 5.0, np.roll(yt, 1), from_probabilities=False)
    assert a["temperature"] == b["temperature"] == pytest.approx(t)
    assert cal.calibration_metrics(z, np.roll(y, 1), zt, yt, from_probabilities=False)["temperature"] != t
    # scaling at the fitted temperature lowers test NLL and ECE of this overconfident model
    assert a["nll_ts"] < a["nll"] and a["ece_ts"] < a["ece"]
    assert a["ece_ts"] == pytest.approx(cal.ece(softmax(zt / t, axis=1), yt))
    assert a["nll_ts"] == pytest.approx(cal.nll(softmax(zt / t, axis=1), yt))
    assert set(a) == set(cal.COLUMNS) and a["calib_input"] == "scores"


def test_probabilities_and_logits_agree_and_labels_map_through_classes():
    z, y = _probs(300, 4, 5)
    classes = np.array([3, 5, 8, 9])  # score column -> label
    by_logits = cal.calibration_metrics(z[:150], classes[y[:150]], z[150:], classes[y[150:]], classes,
                                        from_probabilities=False)
    by_probs = cal.calibration_metrics(softmax(z[:150], axis=1), classes[y[:150]], softmax(z[150:], axis=1),
                                       classes[y[150:]], classes, from_probabilities=True)
    for k in cal.COLUMNS[:-1]:
        assert by_logits[k] == pytest.approx(by_probs[k], rel=1e-6), k
    assert by_probs["calib_input"] == "probabilities"


def test_task_metrics_resample_the_items_the_columns_come_from():
    task = probe.tasks.get("classification")
    z, y = _probs(200, 6, 6)
    columns, items = cal.calibrate(z[:100], y[:100], z[100:], y[100:], from_probabilities=False)
    for name in ("ece", "ece_ts", "mce", "mce_ts", "nll", "nll_ts", "brier", "brier_ts"):
        assert task.metric(name).value(items) == pytest.approx(columns[name]), name
        assert name not in task.metric_names  # never selected on, not in the generic tables
        assert task.columns[name] == "Float64"
    # a resample drawing every item twice is the same; one drawing half of them is the metric of that half
    counts = np.vstack([np.full(100, 2.0), np.r_[np.ones(50), np.zeros(50)]])
    got = task.metric("ece").resampled(items, counts)
    half = cal.ece(softmax(z[100:150], axis=1), y[100:150])
    assert got == pytest.approx([columns["ece"], half])


@pytest.fixture(scope="module")
def calibrated_results(tmp_path_factory):
    """A real CLI sweep of four probes (test_resnet) and a short fine-tune (test_vit) on digits, one results dir."""
    root = tmp_path_factory.mktemp("calib")
    cache, results = root / "cache", root / "results"
    run_cli("sweep", "test_resnet", "digits", "--random-init", "--img-size", "32", "--cache-dir", cache,
            "--results-dir", results, "--probes", "logistic", "ridge", "knn", "centroid", "--device", "cpu",
            "--no-progress", check=0, timeout=600)
    finetuned = probe.finetune("test_vit", "digits", results_dir=results, cache_dir=cache, random_init=True,
                               img_size=32, epochs=2, lr=2e-3, batch_size=64, warmup_epochs=0.5, hflip=False,
                               seed=0, workers=0, progress=False, verbose=False)
    return root, finetuned


def test_cli_sweep_writes_calibration_of_every_probe(calibrated_results):
    root, _ = calibrated_results
    frame = probe.scan_results(root / "results", include_file_paths="path").collect()
    test = frame.filter(pl.col("selected") & (pl.col("split") == "test") & (pl.col("probe") != "finetune"))
    assert test.height == 4
    assert dict(zip(test["probe"], test["calib_input"])) == {"logistic": "probabilities", "ridge": "scores",
                                                             "knn": "scores", "centroid": "scores"}
    val = frame.filter(pl.col("split") == "val")
    assert val["ece"].null_count() == val.height  # calibration belongs to the selected test row only
    for row in test.iter_rows(named=True):
        art = load_artifacts(row["path"])
        col = np.searchsorted(art["score_classes"], art["labels"])
        z = art["scores"].astype(np.float64)
        if row["calib_input"] == "probabilities":
            z = log_softmax(z, axis=1)
        t = row["temperature"]
        assert t > 0 and math.isfinite(t)
        # the row's numbers are those of its saved test scores at T = 1 and at its temperature
        assert row["ece"] == pytest.approx(cal.ece(softmax(z, axis=1), col), abs=1e-6)
        assert row["ece_ts"] == pytest.approx(cal.ece(softmax(z / t, axis=1), col), abs=1e-6)
        assert row["nll_ts"] == pytest.approx(cal.nll(softmax(z / t, axis=1), col), rel=1e-5)
        assert row["brier"] == pytest.approx(cal.brier(softmax(z, axis=1), col), rel=1e-5)
        assert {"item/conf", "item/conf_ts", "item/nll_ts", "item/brier_ts"} <= set(art)
        # scores-as-logits probes are badly scaled; temperature scaling repairs most of it
        if row["calib_input"] == "scores":
            assert row["nll_ts"] < row["nll"]


def test_fine_tune_row_is_calibrated_on_the_chosen_epochs_val(calibrated_results):
    _, result = calibrated_results
    frame = pl.read_parquet(result.results_path)
    row = frame.filter(pl.col("selected")).row(0, named=True)
    assert row["calib_input"] == "probabilities" and row["temperature"] > 0
    art = load_artifacts(result.results_path)
    z, y, t = art["scores"].astype(np.float64), art["labels"], row["temperature"]
    assert row["ece"] == pytest.approx(cal.ece(softmax(z, axis=1), y), abs=1e-6)
    assert row["ece_ts"] == pytest.approx(cal.ece(softmax(z / t, axis=1), y), abs=1e-6)
    assert row["nll"] == pytest.approx(cal.nll(softmax(z, axis=1), y), rel=1e-5)
    assert probe.tasks.get("classification").metric("brier_ts").value(art) == pytest.approx(row["brier_ts"])


def test_report_calibration_section_and_paired_interval(calibrated_results):
    from probe import analysis

    root, _ = calibrated_results
    proc = run_cli("report", root / "results", "--out", root / "report", "--n-boot", "300", check=0,
                   env={"MPLBACKEND": "Agg"})
    assert "Traceback" not in proc.stderr
    text = (root / "report" / "report.md").read_text()
    section = text.split("## Calibration", 1)[1]
    lines = [ln for ln in section.split("\n\n## ")[0].splitlines() if ln.startswith("| `")]
    assert len(lines) == 2  # the resnet's val-chosen frozen probe; the vit's fine-tune
    assert (root / "report" / "figures" / "digits-splits-reliability.png").is_file()
    assert "calibration-classification-splits" in (root / "report" / "report.html").read_text()
    # the table's interval is the analysis layer's one bootstrap: ECE after minus before, paired on the same images
    jobs = analysis.job_table(root / "results")
    ft = jobs.filter(pl.col("probe") == "finetune")
    table = analysis.calibration_table(analysis.report_groups(jobs, "classification")["tuned"], jobs, n_boot=300)
    r = table.row(0, named=True)
    assert r["ece"] == pytest.approx(ft["ece"][0]) and r["ece_ts"] == pytest.approx(ft["ece_ts"][0])
    paired = analysis.resample_interval([r["files"], r["files"]], ["ece_ts", "ece"], n_boot=300)
    assert (r["change"], r["change_low"], r["change_high"]) == pytest.approx((paired.estimate, paired.low,
                                                                               paired.high))
    assert r["change"] == pytest.approx(r["ece_ts"] - r["ece"])
    assert paired.low <= paired.estimate <= paired.high
    cells = [c.strip() for c in next(ln for ln in lines if "fine-tuning" in ln).strip("|").split("|")]
    assert float(cells[8].split(" [")[0]) == pytest.approx(100 * r["change"], abs=0.051)
    bins = analysis.reliability_bins(r["files"])
    assert bins["count"].sum() == r["n_test"] == bins["count_ts"].sum()


def test_cross_validated_summary_pools_calibration_of_the_folds(tmp_path):
    from tests._helpers import write_image_folder

    data = write_image_folder(tmp_path / "pets", splits=("train",), per_class=12, size=16)
    paths = probe.sweep_cached("test_resnet", f"imagefolder:{data}", probes=("ridge",), cv=2,
                               cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", random_init=True,
                               img_size=32, workers=0, device="cpu", progress=False)
    tests = pl.read_parquet(paths[0]).filter(pl.col("selected") & (pl.col("split") == "test"))
    folds = tests.filter(pl.col("fold").is_not_null())
    summary = tests.filter(pl.col("fold").is_null()).row(0, named=True)
    assert folds.height == 2 and folds["temperature"].is_not_null().all()
    assert summary["temperature"] is None and summary["calib_input"] == "scores"  # one temperature per fold
    # the summary is the pooled held-out images (each scaled by its own fold's temperature), not the first fold's
    art = load_artifacts(paths[0])
    task = probe.tasks.get("classification")
    assert len(art["item/conf_ts"]) == 24
    for name in ("ece", "ece_ts", "nll_ts", "brier"):
        assert summary[name] == pytest.approx(task.metric(name).value(art)), name


def test_temperature_reaches_cosine_scale_scores():
    # centroid-like scores: cosine similarities whose class margins are a few hundredths
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 500)
    s = rng.normal(0.5, 0.01, size=(500, 4))
    s[np.arange(500), y] += 0.02
    t = cal.fit_temperature(s, y)
    grid = np.exp(np.linspace(np.log(1e-4), np.log(1.0), 20001))
    nll = [-log_softmax(s / g, axis=1)[np.arange(500), y].mean() for g in grid]
    assert t < 0.01 and t == pytest.approx(grid[int(np.argmin(nll))], rel=1e-3)
