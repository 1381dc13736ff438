"""The study runner end to end on a tiny study (with a rerun that skips everything), planning the seed study
without downloads, study-file errors, and every notebook run headless on the tiny study's results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import probe
from probe.study import expand_taps, load_study, plan_study
from tests._helpers import assert_one_line_error, run_cli, run_main

ROOT = Path(__file__).resolve().parents[1]

TINY_STUDY = """
[study]
name = "tiny"
seeds = [0]

[[backbones]]
name = "test_resnet"
random_init = true
img_size = 32

[[backbones]]
name = "test_vit"
random_init = true
img_size = 32

[[datasets]]
spec = "digits"

[extract]
batch_size = 128
workers = 0

[pretrain]
dataset = "shapes"
epochs = 1
batch_size = 32
lr = 2e-3

[[sweeps]]
probes = ["logistic", "knn", "centroid"]
taps = ["pooled"]
grids = { logistic = { C = [0.1, 1.0, 10.0] }, knn = { k = [5, 20] } }

[[sweeps]]
probes = ["centroid"]
taps = ["block*"]

[[sweeps]]
probes = ["centroid"]
taps = ["pooled"]
shots = [1, 5]
seeds = [0, 1]

[finetune]
modes = ["full"]
epochs = 1
batch_size = 64
lr = 1e-3
"""


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Run the tiny study once through the CLI (a real subprocess), then a second time."""
    work = tmp_path_factory.mktemp("study")
    (work / "tiny.toml").write_text(TINY_STUDY)
    first = run_cli("run", "tiny.toml", "--no-progress", "--workers", "0", cwd=work, timeout=600, check=0)
    second = run_cli("run", "tiny.toml", "--no-progress", "--workers", "0", cwd=work, timeout=600, check=0)
    return work, first, second


def test_tiny_study_runs_every_protocol(tiny_study):
    work, first, _ = tiny_study
    rows = probe.scan_results(work / "results").collect()
    assert set(rows["backbone"]) == {"test_resnet", "test_vit"}
    assert set(rows["family"]) == {"convnet", "transformer"}
    assert set(rows["probe"]) == {"logistic", "knn", "centroid", "finetune"}
    assert {"pooled", "-"} <= set(rows["tap"]) and any(t.startswith("block") for t in rows["tap"])
    assert set(rows.filter(pl.col("probe") == "centroid")["shots"]) == {0, 1, 5}
    # weights of the transfer jobs are the pretrain step's export, not random init
    assert all(w.startswith("file:") for w in rows["weights"])
    selected = rows.filter(pl.col("selected"))
    assert set(selected["split"]) == {"test"}
    assert (work / "report" / "report.md").is_file()
    assert "tiny.toml" in (work / "report" / "report.html").read_text()  # the explorer, with its study file
    assert "[1/" in first.stdout and "test top-1 (%)" in first.stdout and "report:" in first.stdout
    # one results file per job; every selected row has its predictions beside it
    for path in (work / "results").rglob("*.parquet"):
        assert path.with_suffix(".npz").is_file(), path


def test_second_run_skips_everything(tiny_study):
    _, first, second = tiny_study
    job_lines = [ln for ln in second.stdout.splitlines() if ln.startswith("[")]
    assert job_lines and all(("skipped" in ln) or ("cached" in ln) for ln in job_lines), second.stdout
    assert "extracted" not in second.stdout and "written" not in second.stdout


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.py")))
def test_notebooks_run_headless_on_the_tiny_study(tiny_study, notebook, tmp_path):
    work, _, _ = tiny_study
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(ROOT / "notebooks" / notebook), "--results", str(work / "results"),
                           "--out", str(out), "--n-boot", "200"], capture_output=True, text=True, timeout=300,
                          env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin",  # this checkout's probe, if put first
                               **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})
    assert proc.returncode == 0, proc.stderr
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_seed_study_plans_without_downloading(capsys):
    study = load_study(ROOT / "studies" / "convnets-vs-transformers.toml")
    assert [b.name for b in study.backbones] == [
        "resnetv2_101x3_bit.goog_in21k", "resnetv2_152x4_bit.goog_in21k", "vit_base_patch16_224.augreg_in21k",
        "vit_large_patch16_224.augreg_in21k", "swin_base_patch4_window7_224.ms_in22k"]
    assert {b.family for b in study.backbones} == {"convnet", "transformer"}
    assert [d.spec.split(":")[0] for d in study.datasets] == ["flowers102", "caltech101", "cub200", "indoor67",
                                                               "wikiart", "covid-cxr", "nyuv2", "fgnet", "fgnet"]
    assert [(d.tasks, d.cv, d.cv_group) for d in study.datasets[7:]] == [
        (["identification", "regression"], 82, "subject"), (["identification"], 5, None)]
    assert study.datasets[0].spec == f"flowers102:{ROOT / 'studies' / '..' / 'data' / 'flowers-102'}"
    jobs = plan_study(study)
    kinds = [j.kind for j in jobs]
    # the FG-NET task datasets: one extraction each and one sweep per task; the age task is also fine-tuned
    # ([finetune]: a regression head under its leave-one-person-out folds)
    assert kinds.count("finetune") == 5 * 6 + 5 and kinds.count("extract") == 5 * 9
    assert {(j.settings["tasks"][0], j.settings["cv"], j.settings["cv_group"]) for j in jobs
            if j.kind == "finetune" and "cv" in j.settings} == {("regression", 82, "subject")}
    # NYUv2: a segmentation and a depth sweep per backbone; FG-NET: identification + regression, identification
    assert kinds.count("sweep") == 5 * 6 * 3 + 5 * 2 + 5 * 3
    fgnet = [j.settings for j in jobs if j.kind == "sweep" and j.backbone is study.backbones[0]
             and j.dataset.spec.startswith("fgnet:")]
    assert [(s["task"], s["probes"]) for s in fgnet] == [("identification", ["cosine"]), ("regression", ["ridge", "knn"]),
                                                          ("identification", ["logistic", "centroid", "knn"])]
    if (ROOT / "data").exists():
        pytest.skip("a data/ folder exists beside the study: the missing-data half of this test does not apply")
    # without the downloads, --plan still lists the jobs, then fails with one line naming the first missing file
    proc = run_main(capsys, "run", ROOT / "studies" / "convnets-vs-transformers.toml", "--plan")
    assert f"{len(jobs)} jobs" in proc.stdout and proc.stdout.count("CANNOT BE READ") == 9
    assert_one_line_error(proc, 2, "9 dataset(s)", "flowers102", "data/flowers-102 does not exist", "setid.mat")


def test_seed_study_plan_checks_each_official_download(tmp_path, capsys):
    """The seed study file itself, beside miniatures of the six official downloads: --plan prints every dataset's
    classes and split sizes and exits 0; a removed index file makes it exit 2 naming that file."""
    from tests._official_layouts import (write_caltech101, write_covid_cxr, write_cub200, write_flowers102,
                                         write_indoor67, write_wikiart)

    (tmp_path / "studies").mkdir()
    study_file = tmp_path / "studies" / "seed.toml"
    study_file.write_text((ROOT / "studies" / "convnets-vs-transformers.toml").read_text())
    data = tmp_path / "data"
    write_flowers102(data / "flowers-102")
    write_caltech101(data / "caltech101")
    write_cub200(data)
    write_indoor67(data / "indoor67")
    write_wikiart(data / "wikiart")
    write_covid_cxr(data / "covid-chestxray-dataset")
    from tests.test_dense_data import write_nyuv2

    write_nyuv2(data / "nyuv2")
    from tests.test_faces import _fgnet_folder

    # FG-NET: 2 people x 3 ages (the age entry's cv = 82 folds is checked against people only at run time)
    _fgnet_folder(data / "FGNET", [f"{p:03d}A{a:02d}.JPG" for p in (1, 2) for a in (3, 10, 20)])
    proc = run_main(capsys, "run", study_file, "--plan")
    assert proc.returncode == 0, proc.stderr
    for line in ("dataset flowers102 (", "102 classes; train 3, val 3, test 6",
                 "dataset caltech101 (", "3 classes; train 90, test 9",
                 "dataset cub200 (", "3 classes; train 7, test 5",
                 "dataset indoor67 (", "3 classes; train 9, test 6",
                 "dataset wikiart-style (", "3 classes; train 9, test 3",
                 "dataset covid-cxr (", "2 classes; train ",
                 "dataset nyuv2 (", "train 4, test 2"):
        assert line in proc.stdout, (line, proc.stdout)
    (data / "CUB_200_2011" / "train_test_split.txt").unlink()
    proc = run_main(capsys, "run", study_file, "--plan")
    assert_one_line_error(proc, 2, "1 dataset(s)", "train_test_split.txt is missing from", "data/CUB_200_2011")


def test_block_star_expands_per_architecture():
    assert expand_taps(["pooled", "block*"], "test_resnet") == ["pooled", "block0", "block1", "block2", "block3",
                                                                 "block4"]
    assert expand_taps(["block*"], "vit_large_patch16_224") == [f"block{i}" for i in range(24)]


def test_default_study_loads_and_plans():
    study = load_study(None)
    assert {b.name for b in study.backbones} == {"test_resnet", "test_convnext", "test_vit", "test_vit2"}
    assert study.pretrain["dataset"] == "shapes" and [d.spec for d in study.datasets] == ["digits", "faces", "shapes"]
    assert [d.tasks for d in study.datasets] == [["classification"], ["identification", "verification", "regression"],
                                                 ["segmentation", "depth"]]
    jobs = plan_study(study)
    assert jobs[0].kind == "pretrain"
    on_shapes = [j for j in jobs if j.dataset is not None and j.dataset.spec == "shapes" and "tasks" not in j.settings]
    # shapes gets only its dense sweeps (and their patch extraction), digits only the classification ones
    assert sorted({(j.kind, j.settings.get("task", "-")) for j in on_shapes}) == [
        ("extract", "-"), ("sweep", "depth"), ("sweep", "segmentation")]
    assert all(j.settings["taps"] == ["patch"] for j in on_shapes)
    # the dense sweeps' features are the whole frame's (issue 22), extracted once in the extract stage
    assert [j.settings.get("full_frame") for j in on_shapes if j.kind == "extract"] == [True] * 4  # per backbone
    assert not any(j.settings.get("task", "classification") != "classification" for j in jobs
                   if j.dataset is not None and j.dataset.spec == "digits")
    # one face dataset entry runs each of its tasks (its own probes, pooled features); only its regression task
    # is also fine-tuned, with a regression head under the dataset's grouped folds
    faces = [j for j in jobs if j.dataset is not None and j.dataset.spec == "faces"]
    assert {j.kind for j in faces} == {"extract", "sweep", "finetune", "transfer"}
    tuned = [j for j in faces if j.kind == "finetune"]
    assert [j.backbone.name for j in tuned] == ["test_resnet", "test_convnext", "test_vit", "test_vit2"]
    assert all(j.settings["tasks"] == ["regression"] and j.settings["cv"] == 5 and j.settings["cv_group"] ==
               "subject" and j.settings["mode"] == "full" for j in tuned)
    assert [(j.settings["task"], j.settings["probes"]) for j in faces if j.kind == "sweep"][:3] == [
        ("identification", ["cosine"]), ("verification", ["cosine"]), ("regression", ["ridge", "knn"])]
    # the multi-task miniature: per chosen backbone, the joint run and each task alone
    dense = [(j.backbone.name, tuple(j.settings["tasks"])) for j in jobs if "tasks" in j.settings
             and j.settings["tasks"] != ["regression"]]
    assert dense == [(b, t) for b in ("test_resnet", "test_vit")
                     for t in (("segmentation", "depth"), ("segmentation",), ("depth",))]
    assert {j.dataset.spec for j in jobs if "tasks" in j.settings and j.settings["tasks"] != ["regression"]} == {
        "shapes"}
    # transferability scores on digits (classification) and faces (regression); similarity on digits alone
    assert sorted({(j.dataset.spec, j.settings["task"]) for j in jobs if j.kind == "transfer"}) == [
        ("digits", "classification"), ("faces", "regression")]
    sims = [j for j in jobs if j.kind == "similarity"]
    assert {j.dataset.spec for j in sims} == {"digits"}
    assert [j.settings["kind"] for j in sims].count("blocks") == 6  # every pair of the four backbones
    assert [j.settings["kind"] for j in sims].count("finetune") == 4


@pytest.mark.parametrize("text,needles", [
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\n[[sweeps]]\nprobes=['knn']\ntapz=['pooled']\n",
     ["tapz", "allowed"]),
    ("[[datasets]]\nspec='digits'\n[[sweeps]]\nprobes=['knn']\n", ["no backbones"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\n[[sweeps]]\nprobes=['svm']\n", ["svm"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\n", ["nothing to run"]),
    ("[[backbones]\nname=", ["not valid TOML"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='shapes'\n[[sweeps]]\nprobes=['linear']\n",
     ["'linear' is the dense probe", "task"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='shapes'\n[[sweeps]]\ntask='depth'\nprobes=['linear']\n"
     "taps=['patch']\ngrids={linear={C=[1]}}\n", ["grids.linear", "['C']", "lr, weight_decay"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='shapes'\n[[sweeps]]\ntask='depht'\nprobes=['linear']\n",
     ["task", "did you mean 'depth'"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['age']\n", ["tasks", "regression", "age"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntask='regression'\n",
     ["[[datasets]] #1", "task = \"regression\" is no longer", "use tasks = [\"regression\"]"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['regression']\ncv_group='subject'\n",
     ["cv_group", "add cv = K"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['regression']\nprobes=['cosine']\ncv=5\n",
     ["[[datasets]] #1", "ridge, knn"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['identification', 'regression']\n"
     "probes=['logistic']\ncv=5\n", ["none of ['logistic'] is a probe of regression"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['identification', 'regression']\n"
     "probes=['knn']\ncv=5\ncv_group='subject'\n", ["identity classifiers (knn)", "cv_group"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\npairs='p.txt'\n", ["pairs", "verification"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['identification']\nwhiten=8\n",
     ["whiten is for verification"]),
    ("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='faces'\ntasks=['verification']\nwhiten=0\n",
     ["whiten", "integer >= 1"]),
])
def test_bad_study_files_are_one_clear_line(tmp_path, capsys, text, needles):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_one_line_error(run_main(capsys, "run", path), 2, *needles)


def test_missing_study_file(capsys):
    assert_one_line_error(run_main(capsys, "run", "/no/such/study.toml"), 2, "does not exist")


def test_a_prerequisite_is_decided_once_from_what_each_job_needs():
    from probe.study import blocked_by

    jobs = plan_study(load_study(None))
    by_key = {j.key: j for j in jobs}
    assert len(by_key) == len(jobs)  # every job has its own key
    first = [j for j in jobs if "test_resnet" in {b.name for b in j.backbones}]
    pretrain, extract = first[0], next(j for j in first if j.kind == "extract" and j.dataset.spec == "digits")
    assert pretrain.kind == "pretrain" and pretrain.needs == ()
    for job in first[1:]:  # every job of the backbone needs its pretraining; a sweep also its extraction
        assert pretrain.key in job.needs
        # a similarity job also needs the fine-tune whose export it compares
        assert all(by_key[k].kind in ("pretrain", "extract", "finetune") for k in job.needs)
        assert job.kind == "similarity" or by_key[job.needs[-1]].kind != "finetune"
        if job.kind in ("sweep", "transfer"):
            assert [by_key[k].kind for k in job.needs] == ["pretrain", "extract"]
            assert by_key[job.needs[1]].dataset == job.dataset
    digits = [j for j in first if j.dataset is not None and j.dataset.spec == "digits"]
    # a failed extraction blocks the sweeps, scores and comparisons on its features, not the fine-tune
    failed = {extract.key}
    blocked = {j.kind: blocked_by(j, jobs, lambda o: o.key not in failed) for j in digits if j is not extract}
    assert blocked == {"sweep": "extract", "finetune": "", "transfer": "extract", "similarity": "extract"}
    # a failed pretraining blocks every job of its backbone and none of another's
    failed = {pretrain.key}
    assert all(blocked_by(j, jobs, lambda o: o.key not in failed) == "pretrain" for j in first[1:])
    assert not any(blocked_by(j, jobs, lambda o: o.key not in failed) for j in jobs if j not in first)


def test_study_keys_that_name_tasks_and_probes_ask_the_registry(tmp_path, capsys):
    from probe.tasks import Task, mean_metric

    class Even(Task):  # a toy task registered at test time: is this digit even?
        name = "even"
        metrics = (mean_metric("top1", "top-1"),)
        probes = default_probes = ("logistic", "centroid")
        options = frozenset({"test_fraction"})
        learns_classes = True

    head = "[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\ntasks=['classification', 'even']\n"
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(head + "[[sweeps]]\ntask='even'\nprobes=['centroid']\n")
    bad.write_text(head + "[[sweeps]]\ntask='even'\nprobes=['knn']\n")
    probe.tasks.register(Even())
    try:
        jobs = plan_study(load_study(good))
        assert [(j.kind, j.task) for j in jobs] == [("extract", "classification"), ("sweep", "even")]
        assert "task=even" in jobs[1].describe()
        assert_one_line_error(run_main(capsys, "run", bad, "--plan"), 2, "'knn'", "logistic, centroid",
                              "(the probes of even)")
    finally:
        probe.tasks.unregister("even")
    assert_one_line_error(run_main(capsys, "run", good, "--plan"), 2, "tasks", "even")  # unknown once removed


@pytest.mark.parametrize("extra,needles", [
    # the group is the label: every held-out class would be missing from its training fold
    ("tasks=['classification']\ncv=5\ncv_group='subject'\n", ["classification", "cv_group", "held-out class"]),
    ("select_metric='miou'\n", ["select_metric", "not a metric of classification", "top1"]),
    ("cv=3\ntasks=['verification']\n", ["cv is for", "classification", "add"]),
])
def test_dataset_keys_against_its_tasks(tmp_path, capsys, extra, needles):
    path = tmp_path / "s.toml"
    path.write_text("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\n" + extra
                    + "[[sweeps]]\nprobes=['knn']\n")
    assert_one_line_error(run_main(capsys, "run", path, "--plan"), 2, *needles)


TWO_BACKBONES = """
[[backbones]]
name = "test_resnet"
random_init = true
img_size = 32

[[backbones]]
name = "test_vit"
random_init = true
img_size = 32

[[datasets]]
spec = "digits"

[[datasets]]
spec = "faces"
tasks = ["identification", "regression"]
cv = 5

[[sweeps]]
probes = ["knn"]
taps = ["pooled"]
"""


def test_transfer_and_similarity_tables_plan_their_jobs(tmp_path):
    from probe.study import blocked_by

    path = tmp_path / "s.toml"
    path.write_text(TWO_BACKBONES + "[finetune]\nepochs = 1\n[transfer]\nscores = ['logme', 'sfda']\n"
                    "taps = ['pooled', 'block-1']\n[similarity]\ntaps = ['pooled', 'block-1']\nblocks = true\n"
                    "finetuned = true\nk = 5\nsplit = 'test'\n")
    study = load_study(path)
    jobs = plan_study(study)
    by_key = {j.key: j for j in jobs}
    assert len(by_key) == len(jobs)
    extract = {(j.backbone.name, j.dataset.spec): j for j in jobs if j.kind == "extract"}
    tuned = {(j.backbone.name, j.dataset.spec): j for j in jobs if j.kind == "finetune" and "tasks" not in j.settings}
    # the extraction holds every tap the scores and the comparisons read (block* for blocks and finetuned)
    assert extract["test_vit", "digits"].settings["taps"] == ["pooled", "block-1", "block*"]
    assert extract["test_vit", "faces"].settings["taps"] == ["pooled", "block-1"]  # no classification: no similarity
    # one transfer job per (configuration, dataset, task the scores read, tap), after that extraction
    transfer = [j for j in jobs if j.kind == "transfer"]
    assert sorted((j.backbone.name, j.dataset.spec, j.settings["task"], j.settings["tap"]) for j in transfer) == sorted(
        (b, d, t, tap) for b in ("test_resnet", "test_vit") for d, t in (("digits", "classification"),
                                                                          ("faces", "regression"))
        for tap in ("pooled", "block-1"))
    for j in transfer:
        assert j.needs == (extract[j.backbone.name, j.dataset.spec].key,)
        # the regression form has LogME alone among the listed scores
        assert j.settings["scores"] == (["logme", "sfda"] if j.settings["task"] == "classification" else ["logme"])
    # similarity on digits: configurations per tap, the pair's blocks, each backbone against its own fine-tune
    sims = [j for j in jobs if j.kind == "similarity"]
    assert all(j.dataset.spec == "digits" and j.settings["k"] == 5 for j in sims)
    both = (extract["test_resnet", "digits"].key, extract["test_vit", "digits"].key)
    assert [(j.settings["kind"], j.settings.get("tap"), [b.name for b in j.backbones], j.needs) for j in sims[:3]] == [
        ("configs", "pooled", ["test_resnet", "test_vit"], both),
        ("configs", "block-1", ["test_resnet", "test_vit"], both),
        ("blocks", None, ["test_resnet", "test_vit"], both)]
    for j, name in zip(sims[3:], ("test_resnet", "test_vit")):
        assert j.settings["kind"] == "finetune" and [b.name for b in j.backbones] == [name]
        assert j.needs == (extract[name, "digits"].key, tuned[name, "digits"].key)
        assert j.settings["finetune"] == tuned[name, "digits"].settings  # its weights: that fine-tune's export
    assert len(sims) == 5
    # a failed fine-tune blocks the comparison with its export, and nothing else of the similarity table
    failed = {tuned["test_vit", "digits"].key}
    assert [blocked_by(j, jobs, lambda o: o.key not in failed) for j in sims] == ["", "", "", "", "finetune"]
    assert "similarity test_resnet,test_vit on digits configs tap=pooled split=test" in " ".join(sims[0].describe().split())


@pytest.mark.parametrize("extra,needles", [
    ("[transfer]\nscores = ['logmee']\n", ["[transfer] scores", "'logmee'", "logme"]),
    ("[transfer]\nscores = ['default', 'sfda']\n", ["[transfer]", "\"default\" is every score", "sfda"]),
    ("[transfer]\ntaps = ['patch']\n", ["[transfer]", "['patch']", "pooled, cls, mean or block<i>"]),
    ("[transfer]\ntaps = ['block*']\n", ["[transfer]", "name the taps"]),
    ("[transfer]\ntap = ['pooled']\n", ["unknown key 'tap'", "[transfer]", "did you mean taps"]),
    ("[similarity]\nk = 0\n", ["[similarity] k", "k = 10"]),
    ("[similarity]\nblocks = 'yes'\n", ["[similarity] blocks", "blocks = true"]),
    ("[similarity]\nmeasures = ['cca']\n", ["[similarity] measures", "'cca'", "mutual_knn"]),
    ("[similarity]\ngroups = 1\n", ["[similarity] groups", "groups = 32"]),
    ("[similarity]\ntaps = ['block*']\n", ["[similarity]", "blocks = true compares every block"]),
    ("[similarity]\nfinetuned = true\n", ["[similarity]", "finetuned = true", "add a [finetune] table"]),
])
def test_transfer_and_similarity_keys_are_checked_at_load(tmp_path, capsys, extra, needles):
    path = tmp_path / "s.toml"
    path.write_text(TWO_BACKBONES + extra)
    assert_one_line_error(run_main(capsys, "run", path, "--plan"), 2, *needles)


ONE_BACKBONE = "[[backbones]]\nname = 'test_vit'\n"
DIGITS_KNN = "[[datasets]]\nspec = 'digits'\n[[sweeps]]\nprobes = ['knn']\n"
SHAPES_DEPTH = ("[[datasets]]\nspec = 'shapes'\ntasks = ['depth']\n[[sweeps]]\ntask = 'depth'\nprobes = ['linear']\n"
                "taps = ['patch']\n")


@pytest.mark.parametrize("text,needles", [
    # one backbone and no fine-tune: nothing to compare
    (ONE_BACKBONE + DIGITS_KNN + "[similarity]\n", ["[similarity]", "two or more [[backbones]]",
                                                     "finetuned = true"]),
    (ONE_BACKBONE + "[[backbones]]\nname = 'test_resnet'\n" + SHAPES_DEPTH + "[similarity]\n",
     ["[similarity]", "classification task"]),
    (ONE_BACKBONE + SHAPES_DEPTH + "[transfer]\n", ["[transfer]", "classification or regression"]),
])
def test_transfer_and_similarity_need_something_to_compare(tmp_path, capsys, text, needles):
    path = tmp_path / "s.toml"
    path.write_text(text)
    assert_one_line_error(run_main(capsys, "run", path, "--plan"), 2, *needles)


def test_similarity_split_is_checked_before_the_first_job(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(TWO_BACKBONES + "[similarity]\nsplit = 'val'\n")
    assert_one_line_error(run_main(capsys, "run", path), 2, "[similarity] split", "(digits) has no 'val' split",
                          "train, test", 'split = "test"')
