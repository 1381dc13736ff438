"""Issue 21, the analysis and report half: each defect on rows that carry ``evaluation`` and per-item ``group``
(people), written through the results contract (tests/_results_fixture.py ``write_item_job``), and a toy task
registered at test time that goes through the report with no change outside the test."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

import probe
from probe import analysis, tasks
from tests._results_fixture import write_item_job

N_BOOT = 2000
BACKBONES = ("test_resnet", "test_convnext", "test_vit", "test_vit2")


def _people(n_people: int = 10, per: int = 8):
    ids = np.array([f"p{p:02d}/img{i}.png" for p in range(n_people) for i in range(per)])
    group = np.array([f"p{p:02d}" for p in range(n_people) for _ in range(per)])
    return ids, group


def _regression_items(err: np.ndarray) -> tuple[dict, dict]:
    items = {"item/mae": err, "item/rmse": err ** 2, "item/cs5": (err <= 5).astype(float)}
    test = {"mae": float(err.mean()), "rmse": float(np.sqrt(np.mean(err ** 2))), "cs5": float(np.mean(err <= 5))}
    return items, test


def _table_rows(section: str) -> list[dict]:
    """The first markdown table of ``section`` as dicts keyed by header."""
    text = section[section.index("\n|") + 1:] if not section.startswith("|") else section
    lines = []
    for ln in text.splitlines():
        if not ln.startswith("|"):
            break
        lines.append(ln)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _block(text: str, heading: str) -> str:
    """Text from ``heading`` to the next heading of any level."""
    start = text.index(heading + "\n") + len(heading) + 1
    stop = re.search(r"^#{1,6} ", text[start:], flags=re.M)
    return text[start:start + stop.start()] if stop else text[start:]


# ----------------------------------------------------------------------------------------- defect 2


def test_best_by_val_never_selects_across_evaluation_schemes(tmp_path):
    ids, group = _people()
    rng = np.random.default_rng(0)
    for backbone in ("test_resnet", "test_vit"):
        honest, leaky = np.abs(rng.normal(6, 2, len(ids))), np.abs(rng.normal(5, 2, len(ids)))
        for name, evaluation, val, err in (("ridge-grouped", "cv5 by subject", 6.0, honest),
                                           ("ridge-plain", "cv5", 3.0, leaky)):  # leaky val: optimistic
            items, test = _regression_items(err)
            write_item_job(tmp_path, name=name, task="regression", backbone=backbone, evaluation=evaluation,
                           val=val, test=test, items=items, ids=ids, group=group)
    best = analysis.best_by_val(analysis.aggregate_seeds(analysis.job_table(tmp_path)))
    assert sorted(best["evaluation"].to_list()) == ["cv5", "cv5", "cv5 by subject", "cv5 by subject"]
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=200).read_text()
    for evaluation in ("cv5 by subject", "cv5"):
        rows = _table_rows(_block(text, f"#### faces · evaluation `{evaluation}`"))
        assert sorted(r["configuration"] for r in rows) == ["`test_resnet · 48px`", "`test_vit · 48px`"]


def test_rows_before_the_evaluation_column_read_as_their_scheme(tmp_path):
    ids, group = _people()
    items, test = _regression_items(np.full(len(ids), 4.0))
    write_item_job(tmp_path, name="a", task="regression", evaluation=None, val=4.0, test=test, items=items, ids=ids,
                   params={"folds": 5, "interval_over": "people"})
    write_item_job(tmp_path, name="b", task="classification", evaluation=None, val=0.5, test={"top1": 0.5},
                   items={"item/top1": np.ones(len(ids))}, ids=ids, probe="logistic")
    jobs = analysis.job_table(tmp_path).sort("task")
    assert jobs["evaluation"].to_list() == ["splits", "cv5 by subject"]


# ----------------------------------------------------------------------------------------- defect 3


def test_whitened_and_plain_verification_are_separate_tables(tmp_path):
    rng = np.random.default_rng(1)
    ids = np.array([f"a{i}|b{i}" for i in range(200)])
    same = (np.arange(200) % 2).astype(np.int64)
    for backbone in BACKBONES:
        for name, evaluation in (("plain", "pairs file"), ("whitened", "pairs file whiten 8")):
            correct = (rng.random(200) < 0.7).astype(float)
            write_item_job(tmp_path, name=f"cosine-{name}", task="verification", probe="cosine", backbone=backbone,
                           evaluation=evaluation, test={"verif_acc": float(correct.mean()), "verif_acc_sd": 0.01},
                           items={"item/verif_acc": correct}, ids=ids, labels=same, params={})
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=200).read_text()
    for evaluation in ("pairs file", "pairs file whiten 8"):
        block = _block(text, f"#### faces · evaluation `{evaluation}`")
        configs = [r["configuration"] for r in _table_rows(block)]
        assert sorted(configs) == sorted(f"`{b} · 48px`" for b in BACKBONES)  # each configuration once
        assert "(2 vs 2 backbones" in block
        assert "reference (best val)" not in block  # no val: nobody is compared with a test-picked "best"


# ----------------------------------------------------------------------------------------- defect 5


def _grouped_jobs(tmp_path, *, finetune: bool = False):
    """Four backbones scored on 10 people x 8 images whose errors are the same within a person."""
    ids, group = _people()
    rng = np.random.default_rng(2)
    person = rng.uniform(2, 12, 10)
    files = {}
    for k, backbone in enumerate(BACKBONES):
        shift = rng.normal(0, 2, 10)
        err = np.repeat(np.abs(person + shift), 8)
        items, test = _regression_items(err)
        files[backbone] = write_item_job(tmp_path, name="ridge", task="regression", backbone=backbone,
                                         evaluation="cv5 by subject", val=5.0 + k, test=test, items=items, ids=ids,
                                         group=group)
        if finetune:
            items, test = _regression_items(np.repeat(np.abs(person + rng.normal(0, 2, 10)), 8))
            write_item_job(tmp_path, name="finetune", task="regression", backbone=backbone, probe="finetune",
                           tap="-", evaluation="cv5 by subject", val=5.0 + k, test=test, items=items, ids=ids,
                           group=group, params={"mode": "full", "tasks": ["regression"], "head": "linear"})
    return files, person


def test_intervals_over_grouped_items_resample_the_people(tmp_path):
    files, person = _grouped_jobs(tmp_path)
    a, b = files["test_resnet"], files["test_vit"]
    one = analysis.job_ci(a, metric="mae", n_boot=N_BOOT)
    err_a = np.load(str(a.with_suffix(".npz")))["item/mae"].reshape(10, 8)[:, 0]
    # equal group sizes: the resampled MAE is the mean of 10 drawn person means (independent reference)
    assert one.over == "people" and one.n_groups == 10 and one.n == 80
    assert one.std_error == pytest.approx(err_a.std() / math.sqrt(10), rel=0.12)
    diff = analysis.compare_jobs(a, b, metric="mae", n_boot=N_BOOT)
    err_b = np.load(str(b.with_suffix(".npz")))["item/mae"].reshape(10, 8)[:, 0]
    assert diff.over == "people" and diff.paired
    assert diff.std_error == pytest.approx((err_a - err_b).std() / math.sqrt(10), rel=0.12)
    # images resampled as if independent would give an interval about sqrt(8) times narrower
    assert analysis.job_ci(a, metric="mae", n_boot=N_BOOT, groups=False).std_error < one.std_error / 2


def test_gains_families_and_report_resample_the_people(tmp_path):
    _grouped_jobs(tmp_path, finetune=True)
    protocols = analysis.aggregate_seeds(analysis.job_table(tmp_path))
    frozen = analysis.best_by_val(protocols.filter(pl.col("probe") != "finetune"))
    tuned = analysis.best_by_val(protocols.filter(pl.col("probe") == "finetune"))
    gains = analysis.finetune_gains(frozen, tuned, n_boot=300)
    assert gains["metric"].to_list() == ["mae"] * 4 and set(gains["gain_over"]) == {"people"}
    (fam,) = analysis.compare_families(frozen, n_boot=300)
    assert fam["comparison"].over == "people" and fam["comparison"].n_groups == 10
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=300).read_text()
    rows = _table_rows(_block(text, "#### faces · evaluation `cv5 by subject`"))
    assert all(r["mae [95% CI]"].endswith("(over people)") for r in rows)
    assert all(r[next(k for k in r if k.startswith("vs best"))].endswith(("(over people)", "(best val)"))
               for r in rows)
    assert "two-level bootstrap over people and backbones" in text


# ----------------------------------------------------------------------------------------- defect 6


def _depth_items(rmse: float, n: int = 30) -> tuple[dict, dict]:
    n_valid = np.full(n, 100.0)
    items = {"stat/n_valid": n_valid, "stat/sq_err": n_valid * rmse ** 2, "stat/abs_rel": n_valid * 0.2,
             "stat/log10": n_valid * 0.1, "stat/delta1": n_valid * 0.6, "stat/delta2": n_valid * 0.8,
             "stat/delta3": n_valid * 0.9}
    test = dict(rmse=rmse, abs_rel=0.2, log10=0.1, delta1=0.6, delta2=0.8, delta3=0.9)
    return items, test


def test_dense_gain_uses_the_single_task_linear_fine_tune(tmp_path):
    ids = np.array([f"img{i}" for i in range(30)])
    for name, probe_name, tap, val, rmse, params in (
            ("linear", "linear", "patch", 1.3, 1.250, {"lr": 0.1}),
            ("ft-single", "finetune", "-", 1.2, 1.011, {"mode": "full", "tasks": ["depth"], "head": "linear"}),
            ("ft-joint", "finetune", "-", 0.9, 1.093, {"mode": "full", "tasks": ["segmentation", "depth"],
                                                       "head": "linear"})):
        items, test = _depth_items(rmse)
        write_item_job(tmp_path, name=name, task="depth", dataset="shapes", backbone="test_vit", probe=probe_name,
                       tap=tap, val=val, test=test, items=items, ids=ids, params=params, protocol=name)
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=200).read_text()
    section = _block(text, "### shapes: depth")
    main = _table_rows(section.split("Other fine-tunes")[0])
    (tuned,) = [r for r in main if r["method (val-selected)"].startswith("finetune")]
    assert tuned["RMSE (m) [95% CI]"].startswith("1.011")  # the single-task run, though the joint one has better val
    other = _table_rows(section.split("Other fine-tunes")[1])
    assert [(r["trained tasks"], r["head"]) for r in other] == [("segmentation+depth", "linear")]
    assert other[0]["RMSE (m) [95% CI]"].startswith("1.093")


# ----------------------------------------------------------------------------------------- defect 7


def test_joint_runs_pair_per_job_row(tmp_path):
    ids = np.array([f"img{i}" for i in range(30)])
    # one protocol id across backbones of two input sizes; the joint run of the 32 px backbone is read last
    for backbone, size, folder_joint in (("test_resnet", 32, "z_last"), ("test_vit", 48, None)):
        for name, tasks_, rmse in (("joint", ["segmentation", "depth"], 1.1), ("single", ["depth"], 1.0)):
            items, test = _depth_items(rmse)
            write_item_job(tmp_path, name=f"ft-{name}", task="depth", dataset="shapes", backbone=backbone,
                           img_size=size, probe="finetune", tap="-", val=1.0, test=test, items=items, ids=ids,
                           params={"mode": "full", "tasks": tasks_, "head": "linear", "img_size": size},
                           protocol=f"ft-{name}", folder=folder_joint if name == "joint" else None)
    # a joint run whose only single-task run used another val carve: no partner
    for name, tasks_, fraction in (("joint", ["segmentation", "depth"], 0.2), ("single", ["depth"], 0.1)):
        items, test = _depth_items(1.2)
        write_item_job(tmp_path, name=f"ft-{name}", task="depth", dataset="shapes", backbone="test_vit2",
                       probe="finetune", tap="-", val=1.0, test=test, items=items, ids=ids, val_fraction=fraction,
                       params={"mode": "full", "tasks": tasks_, "head": "linear", "img_size": 48},
                       protocol=f"ft-{name}")
    gains = analysis.multitask_gains(analysis.job_table(tmp_path), n_boot=200)
    assert sorted(gains["backbone_config"].to_list()) == ["test_resnet-32", "test_vit-48"]
    assert gains["gain"].to_list() == pytest.approx([0.1, 0.1])
    notes: list[str] = []
    analysis.multitask_gains(analysis.job_table(tmp_path), n_boot=200, notes=notes)
    assert len(notes) == 1 and "test_vit2" in notes[0] and "no single-task run" in notes[0]


# ----------------------------------------------------------------------------------------- defect 8


def test_faces_reference_is_chosen_on_val(tmp_path):
    ids, group = _people()
    for backbone, val, level in (("test_resnet", 6.0, 3.0), ("test_vit", 4.0, 5.0)):  # resnet: best test, worse val
        items, test = _regression_items(np.full(len(ids), level) + np.linspace(-1, 1, len(ids)))
        write_item_job(tmp_path, name="ridge", task="regression", backbone=backbone, evaluation="cv5 by subject",
                       val=val, test=test, items=items, ids=ids, group=group)
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=200).read_text()
    rows = {r["configuration"]: r for r in _table_rows(_block(text, "#### faces · evaluation `cv5 by subject`"))}
    key = next(k for k in rows["`test_vit · 48px`"] if k.startswith("vs best"))
    assert "chosen on val" in key
    assert rows["`test_vit · 48px`"][key] == "reference (best val)"
    assert rows["`test_resnet · 48px`"][key].startswith("-2.00")


# ----------------------------------------------------------------------------------------- defect 10


def test_families_count_an_architecture_once_and_say_when_few(tmp_path):
    rng = np.random.default_rng(3)
    ids = np.array([f"img{i}" for i in range(100)])
    labels = np.arange(100) % 4
    hits = {}
    for backbone, size in (("test_resnet", 32), ("test_resnet", 48), ("test_vit", 48), ("test_vit2", 48)):
        h = (rng.random(100) < 0.6).astype(float)
        hits[(backbone, size)] = h
        write_item_job(tmp_path, name=f"logistic-{size}", task="classification", dataset="digits",
                       backbone=backbone, img_size=size, probe="logistic", val=0.5,
                       test={"top1": float(h.mean())}, items={"item/top1": h}, ids=ids, labels=labels)
    best = analysis.best_by_val(analysis.aggregate_seeds(analysis.job_table(tmp_path)))
    (rec,) = analysis.compare_families(best, n_boot=500)
    c = rec["comparison"]
    assert rec["backbones_a"] == ["test_resnet"] and c.backbones_a == ("test_resnet",)
    assert c.backbones_b == ("test_vit", "test_vit2")
    resnet = (hits[("test_resnet", 32)].mean() + hits[("test_resnet", 48)].mean()) / 2
    vits = (hits[("test_vit", 48)].mean() + hits[("test_vit2", 48)].mean()) / 2
    assert c.estimate == pytest.approx(resnet - vits) and rec["mean_a"] == pytest.approx(resnet)
    assert c.notes and "one backbone (test_resnet)" in c.notes[0]
    assert c.few_backbones and "3 distinct means" in c.few_backbones[0]
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=300).read_text()
    row = _table_rows(_block(text, "### ConvNets vs transformers"))[0]
    assert row["ConvNets (top-1 %, mean of n)"].endswith("(1)") and row[
        "transformers (top-1 %, mean of n)"].endswith("(2)")
    assert "transformers have 2 backbones on digits" in text and "barely covers" in text


# ----------------------------------------------------------------------------------------- a task from a test file


class _Parity(tasks.Task):
    """Is the digit even? One accuracy column, learned by a probe (a task no module of probe/ knows)."""

    name = "parity"
    metrics = (tasks.mean_metric("top1", "accuracy"),)
    probes = ("logistic",)
    default_probes = ("logistic",)


@pytest.fixture
def parity():
    task = tasks.register(_Parity())
    yield task
    tasks.unregister("parity")


def test_a_task_registered_at_test_time_gets_its_report_section(tmp_path, parity):
    rng = np.random.default_rng(4)
    ids = np.array([f"img{i}" for i in range(120)])
    for k, backbone in enumerate(BACKBONES):
        h = (rng.random(120) < 0.6 + 0.05 * k).astype(float)
        write_item_job(tmp_path, name="logistic", task="parity", dataset="digits", backbone=backbone,
                       probe="logistic", val=0.6 + 0.05 * k, test={"top1": float(h.mean())},
                       items={"item/top1": h}, ids=ids, labels=np.arange(120) % 2)
    text = probe.write_report(tmp_path, tmp_path / "report", n_boot=200).read_text()
    assert "## Other tasks" in text and "### Parity" in text
    rows = _table_rows(_block(text, "#### digits · evaluation `splits`"))
    assert len(rows) == 4 and sum(r[next(k for k in r if k.startswith("vs best"))] == "reference (best val)"
                                  for r in rows) == 1
    lines = analysis.summary_lines(tmp_path)
    assert lines[0].startswith("parity: test accuracy (%)") and len(lines) == 6


def test_unknown_metrics_are_a_note_not_a_crash(tmp_path):
    # roc_auc has no per-item statistics: no interval, said in words; finetune_gains on rows of several tasks
    ids, group = _people()
    items, test = _regression_items(np.full(len(ids), 4.0))
    write_item_job(tmp_path, name="ridge", task="regression", val=4.0, test=test, items=items, ids=ids)
    r = analysis.resample_interval([tmp_path / "test_resnet" / "faces" / "ridge.parquet"], "roc_auc",
                                   task="verification")
    assert isinstance(r, str)
    best = analysis.best_by_val(analysis.aggregate_seeds(analysis.job_table(tmp_path)))
    gains = analysis.finetune_gains(best, best.head(0), metric="top1")
    assert gains["metric"].to_list() == ["mae"] and gains["gain"].to_list() == [None]
