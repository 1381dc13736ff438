"""Issue 8, producer side: every row knows its configuration, fine-tuning gets the probes' data, metrics are
right when train lacks a class, carves survive --skip-bad, overlaps are caught, precision and hub checkpoints
are part of the cache key, and a dataset without a test split says so or gets one carved.

Tiny data made in the test (3 classes x 10 images of 16 px) and tiny timm models at random init, 32 px.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

import probe
from probe import UsageError
from probe.results import classification_metrics, load_artifacts, save_artifacts
from probe.splits import carve_splits, carve_val
from tests._helpers import assert_one_line_error, run_cli, run_main, write_image_folder

SMALL = dict(random_init=True, img_size=32, batch_size=16, workers=0, progress=False, device="cpu")
IDENTITY = ["img_size", "precision", "backbone_config", "config_label", "protocol", "n_val", "test_fraction"]


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """A flat image folder (PATH/<class>/...): 3 classes x 10 images, no val, no test split."""
    return write_image_folder(tmp_path_factory.mktemp("flat") / "flowers", classes=("a", "b", "c"), per_class=10,
                              splits=("",), size=16)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """PATH/train|test/<class>/...: 3 classes, 8 train and 4 test images each."""
    root = tmp_path_factory.mktemp("split") / "pets"
    write_image_folder(root, classes=("a", "b", "c"), per_class=8, splits=("train",), size=16, seed=1)
    write_image_folder(root, classes=("a", "b", "c"), per_class=4, splits=("test",), size=16, seed=2)
    return root


# ---------------------------------------------------------------------------------------------- 1. identity


def test_identity_functions_tell_configurations_apart():
    from probe._identity import backbone_config_id, config_label, protocol_id

    dc = {"input_size": [3, 160, 160], "mean": [0.5] * 3}
    a = backbone_config_id("test_vit", "random-init:seed1", dc, "fp32")
    assert len(a) == 12 and a == backbone_config_id("test_vit", "random-init:seed1", dict(dc), "fp32")
    others = {backbone_config_id("test_vit", "random-init:seed0", dc, "fp32"),
              backbone_config_id("test_vit", "random-init:seed1", {**dc, "input_size": [3, 96, 96]}, "fp32"),
              backbone_config_id("test_vit", "random-init:seed1", dc, "bf16"),
              backbone_config_id("test_vit", "hub:r160_in1k@0123456789abcdef", dc, "fp32")}
    assert a not in others and len(others) == 4
    assert config_label("test_vit", "random-init:seed1", 160, "fp32") == "test_vit · random-init:1 · 160px"
    assert config_label("test_vit", "hub:r160_in1k@0123", 224, "bf16") == "test_vit · hub:r160_in1k · 224px · bf16"
    base = dict(task="classification", probe="logistic", tap="pooled", grid={"C": [1]}, val_fraction=0.2,
                test_fraction=0.0, select_metric="top1", shots=0, refit=True, probe_version="1")
    p = protocol_id(**base)
    for change in [dict(val_fraction=0.3), dict(test_fraction=0.2), dict(select_metric="top5"), dict(grid={"C": [2]}),
                   dict(refit=False), dict(probe_version="2"), dict(shots=5), dict(tap="cls")]:
        assert protocol_id(**{**base, **change}) != p, change


def test_sweep_rows_name_their_configuration_and_files_cover_the_protocol(folder, tmp_path):
    """The README's scenario at the producer level: two input sizes and two random-init seeds of one backbone
    are four configurations with four labels and separate files; a changed --val-fraction is a new job."""
    spec = f"imagefolder:{folder}"
    kw = dict(probes=("centroid", "logistic"), grids={"logistic": {"C": [0.1, 1.0]}}, shots=(0, 2),
              cache_dir=tmp_path / "c", results_dir=tmp_path / "r", **SMALL)
    runs = [dict(), dict(img_size=48), dict(seed=1)]
    files = [probe.sweep_cached("test_resnet", spec, **{**kw, **r}) for r in runs]
    assert len({p for fs in files for p in fs}) == 3 * 4  # no run reused another's results
    rows = probe.scan_results(tmp_path / "r").collect()
    assert rows.select(IDENTITY).null_count().sum_horizontal()[0] == 0
    configs = rows.group_by("backbone_config").agg(pl.col("config_label").unique(), pl.col("img_size").unique())
    assert configs.height == 3 and all(len(v) == 1 for v in configs["config_label"])
    assert set(rows["config_label"]) == {"test_resnet · random-init:0 · 32px", "test_resnet · random-init:0 · 48px",
                                         "test_resnet · random-init:1 · 32px"}
    assert set(rows["precision"]) == {"fp32"} and set(rows["test_fraction"]) == {0.0}
    # n_val: the carved val of 3 x 8 train images at 20% (2 per class), in few-shot rows too
    assert set(rows["n_val"]) == {6} and set(rows.filter(pl.col("shots") == 2)["n_val"]) == {6}
    # one protocol per (probe, shots), shared by the three configurations; the seed is not part of it
    assert rows.group_by("probe", "shots").agg(pl.col("protocol").n_unique())["protocol"].to_list() == [1] * 4
    # --val-fraction, --select-metric and the grid are part of the job's file identity: never silently reused
    first = files[0]
    for change in [dict(val_fraction=0.34), dict(select_metric="top5"), dict(grids={"logistic": {"C": [0.5]}})]:
        again = probe.sweep_cached("test_resnet", spec, **{**kw, **change})
        changed = [a for a, b in zip(again, first) if a != b]
        # a grid change of one probe leaves the other probe's jobs as they were
        assert len(changed) == (2 if "grids" in change else 4), change
        assert all(p.exists() for p in again)
    fractions = probe.scan_results(tmp_path / "r").collect().filter(pl.col("val_fraction") == 0.34)
    assert fractions.height > 0 and set(fractions["n_val"]) == {9}  # round(0.34 * 8) = 3 per class


# ---------------------------------------------------------------------------------------------- 2. fine-tuning


def test_finetune_refits_on_train_plus_val_like_the_probes(folder, tmp_path):
    spec = f"imagefolder:{folder}"
    probe.sweep_cached("test_resnet", spec, probes=("centroid",), cache_dir=tmp_path / "c",
                       results_dir=tmp_path / "r", **SMALL)
    ft = probe.finetune("test_resnet", spec, epochs=2, lr=1e-3, batch_size=6, warmup_epochs=0, seed=0,
                        random_init=True, img_size=32, workers=0, progress=False, verbose=False,
                        cache_dir=tmp_path / "c", results_dir=tmp_path / "r", device="cpu")
    rows = probe.scan_results(tmp_path / "r").collect()
    sel = rows.filter(pl.col("selected") & (pl.col("split") == "test"))
    assert sorted(sel["probe"]) == ["centroid", "finetune"]
    assert sel["n_train"].n_unique() == 1 and sel["n_train"][0] == 24  # train+val on both sides
    assert sel["backbone_config"].n_unique() == 1  # the same configuration: comparable
    assert sel.select(IDENTITY).null_count().sum_horizontal()[0] == 0
    params = json.loads(sel.filter(pl.col("probe") == "finetune")["params"][0])
    assert params["refit"] is True and params["epoch"] == ft.best_epoch
    no_refit = probe.finetune("test_resnet", spec, epochs=2, lr=1e-3, batch_size=6, warmup_epochs=0, seed=0,
                              random_init=True, img_size=32, workers=0, progress=False, verbose=False,
                              cache_dir=tmp_path / "c", results_dir=tmp_path / "r", device="cpu", refit=False)
    assert no_refit.results_path != ft.results_path  # the refit policy is part of the job's identity
    test = no_refit.frame.filter(pl.col("selected"))
    assert test["n_train"][0] == 18 and json.loads(test["params"][0])["refit"] is False
    assert test["protocol"][0] != ft.frame["protocol"][0]


def test_random_init_finetune_starts_from_the_extracted_weights(folder, tmp_path):
    """Fine-tuning with seed s (head only, so the trunk stays as it started) has the trunk of
    create_backbone(random_init=True, seed=s); init_seed separates the init from the carve seed."""
    from safetensors.torch import load_file

    spec = f"imagefolder:{folder}"
    common = dict(mode="partial", trainable_blocks=0, epochs=1, batch_size=6, random_init=True, img_size=32,
                  workers=0, progress=False, verbose=False, cache_dir=tmp_path / "c", results_dir=tmp_path / "r",
                  device="cpu")
    for seed, init_seed in [(3, None), (5, 2)]:
        res = probe.finetune("test_resnet", spec, seed=seed, init_seed=init_seed, **common)
        expected = probe.create_backbone("test_resnet", random_init=True, seed=init_seed if init_seed is not None
                                         else seed, img_size=32).model.state_dict()
        trained = load_file(str(res.weights_path))
        trunk = [k for k in expected if not k.startswith("fc.")]
        assert trunk and all(np.array_equal(trained[k].numpy(), expected[k].numpy()) for k in trunk)
        wanted = f"random-init:seed{seed if init_seed is None else init_seed}"
        assert set(res.frame["weights"]) == {wanted}


def test_study_finetune_uses_the_backbone_seed_for_its_initialisation(monkeypatch, tmp_path):
    from probe import _finetune, study as _study
    from probe.study.jobs import run_job

    seen = {}

    class Done:
        skipped = True

    @functools.wraps(_finetune.finetune)  # the study checks settings against the real signature
    def fake(backbone, dataset, **kwargs):
        seen.update(kwargs)
        return Done()

    monkeypatch.setattr(_finetune, "finetune", fake)
    bb = _study.BackboneSpec(name="test_resnet", random_init=True, seed=7)
    ds = _study.DatasetSpec(spec="digits")
    study = _study.Study(name="s", backbones=[bb], datasets=[ds], finetune={"epochs": 1}, seeds=[2])
    job = _study.Job("finetune", bb, ds, {"epochs": 1, "mode": "full", "seed": 2})
    run_job(job, study, {}, cache_dir=tmp_path, results_dir=tmp_path, pretrain_dir=tmp_path,
            device="cpu", jobs=1, workers=0, progress=False)
    assert seen["init_seed"] == 7 and seen["seed"] == 2 and seen["random_init"] is True


# ---------------------------------------------------------------------------------------------- 3. metrics


def _blobs(labels, d=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[: max(labels) + 1] * 10 if max(labels) < d else rng.normal(0, 10, (max(labels) + 1, d))
    return (centres[labels] + rng.normal(0, 0.1, (len(labels), d))).astype(np.float32), np.asarray(labels)


def test_predictions_are_labels_when_train_lacks_a_class(tmp_path):
    # train has classes 1, 2, 3 only; test holds the same three, perfectly separable: a perfect score
    train = _blobs([1, 2, 3] * 10)
    test = _blobs([1, 2, 3] * 4, seed=1)
    res = probe.sweep("centroid", train, None, test, return_result=True)
    row = res.frame.filter(pl.col("selected")).row(0, named=True)
    assert row["top1"] == 1.0 and row["mean_per_class_acc"] == 1.0
    save_artifacts(tmp_path / "a", ids=np.arange(12).astype(str), labels=test[1], scores=res.test_scores,
                   score_classes=res.estimator.classes_)
    art = load_artifacts(tmp_path / "a")
    np.testing.assert_array_equal(art["pred"], test[1])  # labels, not columns of classes_ = [1, 2, 3]
    assert np.mean(art["pred"] == art["labels"]) == 1.0 and set(art["top5"].ravel()) == {1, 2, 3}
    # classes 0 and 4 never seen in train: each is its own class with recall 0 (not merged into one)
    scores = np.eye(3)[[0, 1, 2, 0, 1]]
    m = classification_metrics(np.array([1, 2, 3, 0, 4]), scores, classes=np.array([1, 2, 3]))
    assert m["top1"] == pytest.approx(0.6) and m["mean_per_class_acc"] == pytest.approx(3 / 5)


def test_top5_with_knn_vote_ties_matches_the_saved_scores(tmp_path):
    labels = np.repeat(np.arange(8), 6)
    X, y = _blobs(list(labels), d=8)
    X = X + np.random.default_rng(3).normal(0, 8, X.shape).astype(np.float32)  # overlapping classes: many ties
    test = (X[::2], y[::2])
    res = probe.sweep("knn", (X[1::2], y[1::2]), None, test, grid={"k": [3], "temperature": [None]},
                      return_result=True)
    scores = res.test_scores
    assert any(len(set(r)) < len(r) for r in np.round(scores, 6))  # there are ties to break
    row = res.frame.filter(pl.col("selected")).row(0, named=True)
    save_artifacts(tmp_path / "k", ids=np.arange(len(y[::2])).astype(str), labels=test[1], scores=scores,
                   score_classes=res.estimator.classes_)
    art = load_artifacts(tmp_path / "k")
    again = classification_metrics(art["labels"], art["scores"], art["score_classes"])
    for m in ("top1", "top5", "mean_per_class_acc"):
        assert again[m] == row[m], m
    assert np.mean((art["top5"] == art["labels"][:, None]).any(axis=1)) == row["top5"]
    # the tie rule: equal scores rank the lower class first
    tied = classification_metrics(np.array([1, 0]), np.zeros((2, 7)))
    assert tied["top1"] == 0.5 and tied["top5"] == 1.0


def test_metrics_from_the_true_class_rank_equal_the_top_k_columns():
    """classification_metrics counts ranks instead of selecting columns; it must agree with top_k's columns on
    heavy ties, unsorted classes, labels without a column, -0.0 beside 0.0, and fall back on non-finite scores."""
    from probe.results import mean_per_class_accuracy, top_k

    rng = np.random.default_rng(5)
    for trial in range(40):
        n, n_cols = int(rng.integers(1, 60)), int(rng.integers(1, 12))
        scores = rng.integers(-2, 3, size=(n, n_cols)).astype(np.float32)  # few values: ties everywhere
        scores[scores == 0] *= rng.choice([-1.0, 1.0], size=int((scores == 0).sum()))
        classes = rng.permutation(n_cols + 3)[:n_cols] * 10  # unsorted; some labels below have no column
        y = rng.choice(np.concatenate([classes, [-10, 999]]), size=n)
        if trial % 10 == 9:
            scores[0, 0] = np.nan
        top = classes[top_k(scores, 5)]
        got = classification_metrics(y, scores, classes)
        assert got["top1"] == np.mean(top[:, 0] == y)
        assert got["top5"] == np.mean((top == y[:, None]).any(axis=1))
        assert got["mean_per_class_acc"] == mean_per_class_accuracy(y, top[:, 0])


def test_logistic_that_stops_at_max_iter_says_so():
    from sklearn.exceptions import ConvergenceWarning

    from probe.probes import LogisticProbe

    X, y = _blobs([0, 1, 2] * 20, d=6)
    X = X + np.random.default_rng(0).normal(0, 5, X.shape).astype(np.float32)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        f = probe.sweep(LogisticProbe(max_iter=2), (X, y), None, (X[:9], y[:9]), grid={"C": [1e3]})
    assert [json.loads(p)["converged"] for p in f["params"]] == [False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        f = probe.sweep(LogisticProbe(), (X, y), None, (X[:9], y[:9]), grid={"C": [1e-2]})
    assert all(json.loads(p)["converged"] for p in f["params"])


# ---------------------------------------------------------------------------------------------- 6. splits


def test_carve_is_a_function_of_the_full_id_list():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [13, 7, 11])
    ids = [f"img{i:03d}.png" for i in range(len(labels))]
    train, val = carve_val(labels, 0.2, seed=4, ids=ids)
    full_val = {ids[i] for i in val}
    perm = rng.permutation(len(ids))  # order does not matter
    _, val2 = carve_val(labels[perm], 0.2, seed=4, ids=[ids[i] for i in perm])
    assert {ids[perm[i]] for i in val2} == full_val
    for drop in [int(val[0]), int(train[0])]:  # an image dropped from val, or from train
        keep = [i for i in range(len(ids)) if i != drop]
        t, v = carve_val(labels[keep], 0.2, seed=4, ids=[ids[i] for i in keep],
                         absent={ids[drop]: int(labels[drop])})
        assert {ids[keep[i]] for i in v} == full_val - {ids[drop]}
        assert {ids[keep[i]] for i in t} == {ids[i] for i in train} - {ids[drop]}
    assert {ids[i] for i in carve_val(labels, 0.2, seed=5, ids=ids)[1]} != full_val  # the seed matters
    parts = carve_splits(labels, ids=ids, val_fraction=0.2, test_fraction=0.3, seed=4)
    assert sorted(np.concatenate(list(parts.values()))) == list(range(len(ids)))
    assert [int(np.sum(labels[parts["test"]] == c)) for c in range(3)] == [4, 2, 3]  # stratified


def test_skip_bad_moves_no_other_image_between_train_and_val(tmp_path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b", "c"), per_class=9, splits=("train", "test"),
                              size=16)
    spec = f"imagefolder:{root}"
    source = probe.open_dataset(spec)
    from probe._finetune import FinetuneConfig, plan_splits

    c = FinetuneConfig()
    plan = plan_splits(source, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=0)
    ids = np.asarray(source.ids["train"])
    val_ids = set(ids[plan["val"][1]])
    bad = sorted(val_ids)[0]
    (root / bad).write_bytes(b"not an image")  # corrupt one val image
    probe.sweep_cached("test_resnet", spec, probes=("centroid",), cache_dir=tmp_path / "c",
                       results_dir=tmp_path / "r", skip_bad=True, **SMALL)
    rows = probe.scan_results(tmp_path / "r").collect()
    assert set(rows["n_val"]) == {len(val_ids) - 1}  # only the bad image left val
    after = plan_splits(probe.open_dataset(spec), val_fraction=c.val_fraction, test_fraction=c.test_fraction,
                        seed=0)  # fine-tuning's carve: unchanged
    assert set(ids[after["val"][1]]) == val_ids
    from probe._cache import load_split
    from probe._sweep import _skipped_labels

    cached = load_split(next((tmp_path / "c").rglob("train-*.h5")))
    absent = _skipped_labels(cached, spec, None)
    assert absent == {bad: int(source.labels["train"][list(ids).index(bad)])}
    _, v = carve_val(cached.labels, 0.2, seed=0, ids=cached.ids, absent=absent)
    assert {cached.ids[i] for i in v} == val_ids - {bad}


def test_the_same_image_in_two_splits_is_an_error(tmp_path, capsys):
    root = write_image_folder(tmp_path / "dup", classes=("a", "b"), per_class=3, size=16)
    copy = root / "test" / "b" / "copy_of_train.png"
    copy.write_bytes((root / "train" / "a" / "img_1.png").read_bytes())
    proc = run_main(capsys, "extract-features", "test_resnet", f"imagefolder:{root}", "--random-init",
                    "--img-size", "32", "--cache-dir", tmp_path / "c", "--workers", "0", "--no-progress")
    assert_one_line_error(proc, 2, "train/a/img_1.png (train)", "test/b/copy_of_train.png (test)", "--allow-overlap")
    assert not list((tmp_path / "c").rglob("*.h5"))
    proc = run_main(capsys, "extract-features", "test_resnet", f"imagefolder:{root}", "--random-init",
                    "--img-size", "32", "--cache-dir", tmp_path / "c", "--workers", "0", "--no-progress",
                    "--allow-overlap")
    assert proc.returncode == 0, proc.stderr
    # a manifest listing one file in two splits names both entries too
    (tmp_path / "m.csv").write_text("path,label,split\ndup/train/a/img_0.png,a,train\n"
                                    "dup/train/b/img_0.png,b,train\ndup/train/a/img_0.png,a,test\n")
    with pytest.raises(UsageError, match=r"dup/train/a/img_0.png \(train\) and dup/train/a/img_0.png \(test\)"):
        probe.finetune("test_resnet", f"csv:{tmp_path / 'm.csv'}", random_init=True, batch_size=1, epochs=1,
                       cache_dir=tmp_path / "c", results_dir=tmp_path / "r", progress=False, verbose=False)


def test_precision_is_part_of_the_cache_key(folder, tmp_path):
    spec = f"imagefolder:{folder}"
    kw = dict(splits=["test"], cache_dir=tmp_path / "c", dtype="float32", **SMALL)
    fp32 = probe.extract_features("test_resnet", spec, precision="fp32", **kw)["test"]
    bf16 = probe.extract_features("test_resnet", spec, precision="bf16", **kw)["test"]
    assert fp32.path != bf16.path and not bf16.reused
    assert probe.extract_features("test_resnet", spec, **kw)["test"].path == fp32.path  # auto on CPU is fp32
    with h5py.File(fp32.path) as a, h5py.File(bf16.path) as b:
        assert a.attrs["precision"] == "fp32" and b.attrs["precision"] == "bf16"
        assert not np.array_equal(a["features/pooled"][()], b["features/pooled"][()])


def _fake_hub_cache(hub: Path, state: dict, commit: str) -> str:
    """Write ``state`` as timm/test_resnet.r160_in1k in a Hugging Face cache layout (blob named by its sha256)."""
    from safetensors.torch import save_file

    repo = hub / "models--timm--test_resnet.r160_in1k"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    tmp = repo / "blobs" / "incoming"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(repo / "blobs" / sha)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (snap / "model.safetensors").unlink(missing_ok=True)
    (snap / "model.safetensors").symlink_to(Path("..") / ".." / "blobs" / sha)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return sha


def test_hub_weights_are_identified_by_the_local_checkpoint_hash(folder, tmp_path):
    hub = tmp_path / "hub"
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    args = ["extract-features", "test_resnet.r160_in1k", f"imagefolder:{folder}", "--splits", "test",
            "--img-size", "32", "--cache-dir", tmp_path / "c", "--workers", "0", "--no-progress", "--device", "cpu"]
    weights = []
    for seed, commit in [(0, "a" * 40), (1, "b" * 40)]:  # the same tag, re-uploaded with other weights
        state = probe.create_backbone("test_resnet", random_init=True, seed=seed, num_classes=1000).model.state_dict()
        sha = _fake_hub_cache(hub, state, commit)
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        path = Path(proc.stdout.split("\t")[-1].strip())
        with h5py.File(path) as f:
            weights.append(f.attrs["weights"])
        assert weights[-1] == f"hub:r160_in1k@{sha[:16]}"
    assert weights[0] != weights[1] and len(list((tmp_path / "c").rglob("test-*.h5"))) == 2


# ---------------------------------------------------------------------------------------------- 5. no test split


def test_flat_folder_says_it_has_no_test_split_and_test_fraction_carves_one(flat, tmp_path):
    common = ["sweep", "test_resnet", f"imagefolder:{flat}", "--random-init", "--img-size", 32, "--workers", 0,
              "--device", "cpu", "--probes", "centroid", "--cache-dir", tmp_path / "c", "--no-progress"]
    proc = run_cli(*common, "--results-dir", tmp_path / "a", check=0)
    assert "no test split" in proc.stderr and "--test-fraction" in proc.stderr
    assert "\tval top1=" in proc.stdout
    proc = run_cli(*common, "--results-dir", tmp_path / "b", "--test-fraction", 0.3, check=0)
    assert "no test split" not in proc.stderr
    rows = probe.scan_results(tmp_path / "b").collect()
    test = rows.filter(pl.col("selected"))
    assert test["split"].to_list() == ["test"] and set(rows["test_fraction"]) == {0.3}
    assert test["n_eval"][0] == 9 and test["n_train"][0] == 21  # 3 of 10 per class carved off as test
    # fine-tuning carves the same test images
    ft = probe.finetune("test_resnet", f"imagefolder:{flat}", test_fraction=0.3, random_init=True, img_size=32,
                        epochs=1, batch_size=7, workers=0, progress=False, verbose=False, device="cpu",
                        cache_dir=tmp_path / "c", results_dir=tmp_path / "b")
    sweep_ids = load_artifacts(next((tmp_path / "b").rglob("centroid-*.npz")))["ids"]
    assert sorted(load_artifacts(ft.artifacts_path)["ids"]) == sorted(sweep_ids)
    assert set(ft.frame["test_fraction"]) == {0.3}
    bad = run_cli("sweep", "test_resnet", "digits", "--random-init", "--test-fraction", 0.2, "--img-size", 32,
                  "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "x", "--workers", 0, "--no-progress",
                  "--probes", "centroid")
    assert_one_line_error(bad, 2, "own test split", "--test-fraction")
