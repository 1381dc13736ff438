"""Fine-tuning: learns on CPU, resumes exactly after kill -9, freezes what it says, lp-ft, results, bad input.

Tiny timm models (test_vit, test_resnet) at random init and 32-pixel inputs on the built-in datasets, so the
whole file runs on a 2-core CPU in about a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")

import probe  # noqa: E402
from probe._finetune import block_groups, freeze_for_partial, probe_head  # noqa: E402
from probe.results import RESULT_COLUMNS, load_artifacts  # noqa: E402

# One setting reused by the learning, results, export and resume tests (the resume test reruns it by CLI).
DIGITS_RUN = dict(random_init=True, img_size=32, epochs=3, lr=2e-3, batch_size=32, warmup_epochs=0.5,
                  crop_scale=(0.6, 1.0), hflip=False, seed=0, workers=1)
DIGITS_CLI = ["test_vit", "digits", "--random-init", "--img-size", "32", "--epochs", "3", "--lr", "2e-3",
              "--batch-size", "32", "--warmup-epochs", "0.5", "--crop-scale", "0.6", "1.0", "--no-hflip",
              "--seed", "0", "--workers", "1", "--no-progress"]


def _cli(args, cwd, timeout=120, **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "probe", "finetune", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    result = probe.finetune("test_vit", "digits", results_dir=root / "results", cache_dir=root / "cache",
                            progress=False, verbose=False, **DIGITS_RUN)
    return root, result


def test_tiny_model_learns_digits_on_cpu(digits_run):
    _, result = digits_run
    assert result.test_metrics["top1"] > 0.5  # chance is 0.1
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1 for r in result.history)


def test_results_schema_and_epoch_chosen_on_val(digits_run):
    root, result = digits_run
    frame = pl.scan_parquet(str(result.results_path)).collect()
    # the contract's columns, then those the task declares (classification: calibration, probe._calibration)
    assert frame.columns == list(RESULT_COLUMNS) + list(probe.tasks.get("classification").columns)
    assert frame["probe"].unique().to_list() == ["finetune"]
    assert frame["tap"].unique().to_list() == ["-"] and frame["cache_key"].unique().to_list() == ["-"]
    val = frame.filter(pl.col("split") == "val")
    test = frame.filter(pl.col("selected"))
    assert len(val) == 3 and not val["selected"].any()
    assert len(test) == 1 and test["split"][0] == "test"
    epochs = [json.loads(p)["epoch"] for p in val["params"]]
    assert epochs == [1, 2, 3]
    chosen = epochs[int(np.argmax(val["top1"].to_numpy()))]  # first best: ties go to the earliest epoch
    params = json.loads(test["params"][0])
    assert params["epoch"] == params["chosen_epoch"] == chosen == result.best_epoch
    assert params["mode"] == "full" and params["lr"] == 2e-3 and params["batch_size"] == 32
    assert params["img_size"] == 32 and params["label_smoothing"] == 0.1 and params["layer_decay"] is None
    assert val["val_fraction"][0] == pytest.approx(0.2)  # digits has no val: carved as the sweeps do
    # refit (default): the chosen epoch count retrained on train+val, so test's n_train is the whole train split
    assert test["n_eval"][0] == 450 and test["n_train"][0] == 1347 and params["refit"] is True
    assert set(val["n_train"]) == {1347 - val["n_eval"][0]} and set(frame["n_val"]) == {val["n_eval"][0]}
    assert test["top1"][0] == pytest.approx(result.test_metrics["top1"])
    art = load_artifacts(result.results_path)
    assert art["scores"].shape == (450, 10) and list(art["classes"]) == [str(i) for i in range(10)]
    assert np.mean(art["pred"] == art["labels"]) == pytest.approx(test["top1"][0])
    from safetensors import safe_open

    with safe_open(str(result.weights_path), "pt") as f:
        meta = f.metadata()
    assert int(meta["epoch"]) == chosen and json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert meta["backbone"] == "test_vit" and meta["dataset"] == "digits"
    # the same call again reads the results back and trains nothing
    again = probe.finetune("test_vit", "digits", results_dir=root / "results", cache_dir=root / "cache",
                           progress=False, verbose=False, **DIGITS_RUN)
    assert again.skipped and again.best_epoch == result.best_epoch
    assert again.test_metrics == pytest.approx(result.test_metrics)
    assert not result.checkpoint_dir.exists()  # removed after success by default


def test_rows_name_their_evaluation_head_and_tasks_and_save_the_sweeps_item_keys(digits_run):
    _, result = digits_run
    frame = pl.read_parquet(result.results_path)
    assert set(frame["evaluation"]) == {"splits"}  # digits has its own test split
    test = frame.filter(pl.col("selected")).row(0, named=True)
    params = json.loads(test["params"])
    # a single-task run with the linear head: the frozen linear probe's counterpart
    assert params["tasks"] == ["classification"] and params["head"] == "linear"
    assert params["select_rule"] == "val top1"
    art = load_artifacts(result.results_path)
    assert {"ids", "labels", "item/top1", "item/top5"} <= set(art)
    assert len(art["item/top1"]) == len(art["ids"]) == test["n_eval"]
    # the per-item statistics give the row's numbers through the task's own metrics (probe.tasks)
    task = probe.tasks.get("classification")
    stats = {k: art[k] for k in ("labels", "item/top1", "item/top5")}
    for metric in ("top1", "top5", "mean_per_class_acc"):
        assert task.metric(metric).value(stats) == pytest.approx(test[metric], abs=1e-9)
    # and from the saved scores, independently (scikit-learn)
    from sklearn.metrics import accuracy_score, top_k_accuracy_score

    assert art["item/top1"].mean() == pytest.approx(accuracy_score(art["labels"], art["scores"].argmax(1)))
    assert art["item/top5"].mean() == pytest.approx(top_k_accuracy_score(art["labels"], art["scores"], k=5,
                                                                         labels=np.arange(10)))


def test_a_carved_test_split_is_named_in_every_row(tmp_path):
    from tests._helpers import write_image_folder

    data = write_image_folder(tmp_path / "pets", per_class=20, splits=("",))  # one folder per class, no splits
    result = probe.finetune("test_resnet", f"imagefolder:{data}", results_dir=tmp_path / "r",
                            cache_dir=tmp_path / "c", progress=False, verbose=False, random_init=True, img_size=32,
                            epochs=1, lr=1e-3, batch_size=8, warmup_epochs=0.0, seed=0, workers=0,
                            test_fraction=0.2)
    frame = pl.read_parquet(result.results_path)
    assert set(frame["evaluation"]) == {"test carve 0.2"}
    assert frame.filter(pl.col("selected"))["split"].to_list() == ["test"]


def test_exported_weights_work_for_extraction(digits_run):
    root, result = digits_run
    entries = probe.extract_features("test_vit", "digits", splits=["test"], weights=result.weights_path,
                                     img_size=32, cache_dir=root / "cache", dtype="float32", batch_size=128,
                                     workers=0, progress=False)
    cached = probe.load_split(entries["test"])
    bb = probe.create_backbone("test_vit", img_size=32, num_classes=10, random_init=True)
    from safetensors.torch import load_file

    bb.model.load_state_dict(load_file(str(result.weights_path)))
    source = probe.open_dataset("digits")
    tf = bb.eval_transform()
    x = torch.stack([tf(source.load("test", i)) for i in range(20)])
    with torch.inference_mode():
        ours = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True).numpy()
        logits = bb.model(x).numpy()
    np.testing.assert_allclose(cached.features["pooled"][:20], ours, rtol=1e-4, atol=1e-5)
    art = load_artifacts(result.results_path)  # and the head in the file is the one that scored test
    np.testing.assert_allclose(art["scores"][:20].astype(np.float32), logits, rtol=1e-2, atol=1e-2)


def test_resume_after_kill_equals_uninterrupted(digits_run, tmp_path):
    _, reference = digits_run
    proc = _cli(DIGITS_CLI + ["--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache"],
                tmp_path, popen=True)
    deadline = time.time() + 120
    checkpoint = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "results").rglob("last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None, proc.communicate()[1]
    os.kill(proc.pid, signal.SIGKILL)  # mid-training: epoch 1 is on disk, epoch 2 is running
    proc.wait()
    assert not list((tmp_path / "results").rglob("*.parquet"))
    done = _cli(DIGITS_CLI + ["--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache"], tmp_path,
                timeout=250)  # the rest of the selection, then the refit on train+val
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    resumed = pl.read_parquet(next((tmp_path / "results").rglob("*.parquet")))
    ref = pl.read_parquet(reference.results_path)
    assert resumed.filter(pl.col("selected"))["top1"][0] == ref.filter(pl.col("selected"))["top1"][0]
    assert resumed["top1"].to_list() == ref["top1"].to_list()  # every epoch's val score too
    a, b = load_artifacts(next((tmp_path / "results").rglob("*.npz"))), load_artifacts(reference.results_path)
    np.testing.assert_array_equal(a["scores"], b["scores"])


@pytest.mark.timeout(600)  # two CLI runs of selection + refit on a shared CPU
def test_kill_during_the_refit_resumes_to_the_same_result(digits_run, tmp_path):
    """kill -9 once the refit on train+val has written its first checkpoint; the rerun finishes the refit from
    there and ends with the uninterrupted run's rows and test scores."""
    _, reference = digits_run
    args = DIGITS_CLI + ["--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache"]
    proc = _cli(args, tmp_path, popen=True)
    seen = []
    for line in proc.stderr:  # verbose log lines, unbuffered
        seen.append(line)
        if line.startswith("probe: refit epoch 1/"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert any(s.startswith("probe: refit epoch 1/") for s in seen), "".join(seen)
    assert not list((tmp_path / "results").rglob("*.parquet"))
    done = _cli(args, tmp_path, timeout=250)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "refit on train+val" in done.stderr
    resumed = pl.read_parquet(next((tmp_path / "results").rglob("*.parquet")))
    ref = pl.read_parquet(reference.results_path)
    assert resumed["top1"].to_list() == ref["top1"].to_list()
    a, b = load_artifacts(next((tmp_path / "results").rglob("*.npz"))), load_artifacts(reference.results_path)
    np.testing.assert_array_equal(a["scores"], b["scores"])


def _expected_trainable(names, prefixes):
    return {n for n in names if any(n.startswith(p) for p in prefixes)}


@pytest.mark.parametrize("name, n, prefixes", [
    ("test_resnet", 1, ["layer4.", "fc."]),
    ("test_resnet", 0, ["fc."]),
    ("test_vit", 2, ["blocks.4.", "blocks.5.", "norm.", "head."]),
])
def test_partial_marks_exactly_the_last_blocks_trainable(name, n, prefixes):
    bb = probe.create_backbone(name, random_init=True, img_size=32)
    bb.model.reset_classifier(10)
    freeze_for_partial(bb.model, n, name)
    names = [k for k, _ in bb.model.named_parameters()]
    trainable = {k for k, p in bb.model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(names, prefixes)
    _, depth = block_groups(bb.model)
    with pytest.raises(probe.UsageError, match=f"has {depth} blocks"):
        freeze_for_partial(bb.model, depth + 1, name)


def test_partial_training_leaves_frozen_weights_and_statistics_unchanged(tmp_path):
    result = probe.finetune("test_resnet", "shapes", mode="partial", trainable_blocks=1, random_init=True,
                            img_size=32, epochs=1, lr=1e-3, batch_size=32, workers=1, results_dir=tmp_path,
                            cache_dir=tmp_path / "cache", progress=False, verbose=False)
    from safetensors.torch import load_file

    trained = load_file(str(result.weights_path))
    start = probe.create_backbone("test_resnet", random_init=True, img_size=32).model.state_dict()
    for key, before in start.items():
        if key.startswith("layer4."):
            continue
        assert torch.equal(trained[key], before), key  # params and BatchNorm statistics of frozen stages
    changed = [k for k in trained if k.startswith("layer4.") and k.endswith("weight")
               and not torch.equal(trained[k], start[k])]
    assert changed  # the trainable stage did move
    with pytest.raises(probe.UsageError, match="beyond the depth"):
        probe.finetune("test_resnet", "shapes", mode="partial", trainable_blocks=5, random_init=True, img_size=32,
                       epochs=1, results_dir=tmp_path, progress=False, verbose=False)


def test_lp_ft_head_starts_from_the_logistic_probe(tmp_path):
    result = probe.finetune("test_vit", "shapes", mode="lp-ft", random_init=True, img_size=32, epochs=1,
                            lr=1e-4, batch_size=32, workers=1, results_dir=tmp_path / "results",
                            cache_dir=tmp_path / "cache", progress=False, verbose=False)
    assert result.lp["selected"] and result.lp["C"] > 0
    entries = probe.extract_features("test_vit", "shapes", splits=["train"], random_init=True, img_size=32,
                                     cache_dir=tmp_path / "cache", progress=False)
    assert entries["train"].reused  # lp-ft's features are the sweeps' cache entry
    train = probe.load_split(entries["train"])
    est = probe.LogisticProbe(C=result.lp["C"], device="cpu").fit(train.features["pooled"].astype(np.float32),
                                                                   train.labels)
    W, b = probe_head(est, 6)
    np.testing.assert_allclose(result.initial_head["weight"], W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.initial_head["bias"], b, rtol=1e-5, atol=1e-6)
    assert json.loads(result.frame.filter(pl.col("selected"))["params"][0])["lp_C"] == result.lp["C"]


def test_probe_head_for_two_classes_gives_the_probe_scores():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)).astype(np.float32), np.repeat([0, 2], 30)
    est = probe.LogisticProbe(C=1.0, device="cpu").fit(X, y)
    W, b = probe_head(est, 3)
    logits = X @ W.T + b
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0], est.decision_function(X), rtol=1e-5, atol=1e-5)
    assert (logits[:, 1] <= logits.max(axis=1)).all()


def _bad_imagefolder(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (16, 16), (40 * i, 100 if c == "a" else 200, 0)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("args, code, words", [
    (["test_resnet", "digits", "--random-init", "--mode", "partial", "--trainable-blocks", "7"], 2,
     "beyond the depth"),
    (["test_vit", "digits", "--random-init", "--batch-size", "4096"], 2, "--batch-size"),
    (["test_vit", "digits", "--random-init", "--img-size", "32", "--lr", "1e30", "--batch-size", "64"], 1,
     "lower --lr"),
    (["test_vit", "imagefolder:IMAGES", "--random-init", "--img-size", "32", "--batch-size", "4"], 1,
     "broken.png"),
    (["not_a_model", "digits", "--random-init"], 2, "unknown backbone"),
])
def test_bad_input_is_one_line_and_an_exit_code(tmp_path, args, code, words):
    if "imagefolder:IMAGES" in args:
        images = _bad_imagefolder(tmp_path / "images")
        args = [a.replace("IMAGES", str(images)) for a in args]
    done = _cli([*args, "--results-dir", tmp_path / "r", "--no-progress", "--workers", "1"], tmp_path)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("probe: error")]
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def _plain_types(obj) -> set:
    """Every type inside nested dicts/lists/tuples (OrderedDict counts as dict)."""
    if isinstance(obj, dict):
        return {dict}.union(*(_plain_types(k) | _plain_types(v) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return {type(obj)}.union(*map(_plain_types, obj))
    return {torch.Tensor if isinstance(obj, torch.Tensor) else type(obj)}


def test_divergence_after_an_epoch_keeps_its_checkpoint_and_resumes(tmp_path, monkeypatch):
    import torch

    from probe._finetune import Trainer

    real_step = Trainer.step
    epochs_started = []
    real_epoch = Trainer.train_epoch

    def epoch(self, n):
        epochs_started.append(n)
        return real_epoch(self, n)

    def step_that_diverges_in_epoch_2(self, x, targets):
        loss = real_step(self, x, targets)
        return float("nan") if epochs_started[-1] == 2 else loss

    run = dict(DIGITS_RUN, epochs=2, workers=0, results_dir=tmp_path / "r", progress=False, verbose=True)
    monkeypatch.setattr(Trainer, "train_epoch", epoch)
    monkeypatch.setattr(Trainer, "step", step_that_diverges_in_epoch_2)
    with pytest.raises(probe.ProbeError, match="diverged.*epoch 2.*checkpoints up to epoch 1 are kept"):
        probe.finetune("test_vit", "digits", **run)
    ckpt = next((tmp_path / "r").rglob("last.pt"))
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1
    # Resume reads it with weights_only=True: it holds only tensors and plain types, which the weights-only
    # unpickler of every declared torch accepts (no numpy arrays or scalars, no objects).
    assert _plain_types(state) <= {dict, list, tuple, str, int, float, bool, type(None), torch.Tensor}
    assert not list((tmp_path / "r").rglob("*.parquet"))  # no results from a diverged run
    monkeypatch.setattr(Trainer, "step", real_step)
    result = probe.finetune("test_vit", "digits", **run)  # the same command continues from epoch 1
    assert result.resumed_from == 1 and [h["epoch"] for h in result.history] == [1, 2]


def test_epoch_rule_names_its_monitor_and_direction_and_scores_joint_runs():
    from probe._finetune import EpochRule
    from probe.tasks import Task, mean_metric

    rule = EpochRule.for_tasks(("classification",), "mean_per_class_acc")
    assert rule.monitor == {"classification": "mean_per_class_acc"} and not rule.joint
    assert (rule.name, rule.mode) == ("val mean_per_class_acc", "max")
    depth = EpochRule.for_tasks(("depth",), "top1")  # a task that cannot select on top1 monitors its headline
    assert depth.monitor == {"depth": "rmse"} and depth.mode == "min"
    assert depth.score({"depth": {"rmse": 2.0}}) > depth.score({"depth": {"rmse": 3.0}})
    joint = EpochRule.for_tasks(("segmentation", "depth"), "top1")
    assert joint.joint and joint.mode == "max"
    assert joint.name == "mean over tasks of the share of val miou, rmse gap to perfect closed since epoch 1"
    first = {"segmentation": {"miou": 0.2}, "depth": {"rmse": 2.0}}
    now = {"segmentation": {"miou": 0.3}, "depth": {"rmse": 1.6}}
    # by hand: mIoU closed 0.1 of its 0.8 gap to 1, RMSE 0.4 of its 2.0 gap to 0
    assert joint.score(now, first) == pytest.approx((0.1 / 0.8 + 0.4 / 2.0) / 2)
    assert joint.score(first, first) == 0.0 and joint.score(first) == 0.0
    # balanced (issue 22): a from-scratch run with epoch-1 mIoU 0.005. Epoch A multiplies mIoU by 10 and barely
    # moves depth; epoch B is better at both in absolute terms but mIoU only x6 while RMSE falls from 2.0 to 0.8.
    # The ratio to epoch 1 (the old rule: (10 + 1.05) / 2 vs (6 + 2.5) / 2) picked A, mIoU alone; B is chosen now
    start = {"segmentation": {"miou": 0.005}, "depth": {"rmse": 2.0}}
    a = {"segmentation": {"miou": 0.05}, "depth": {"rmse": 1.9}}
    b = {"segmentation": {"miou": 0.03}, "depth": {"rmse": 0.8}}
    assert joint.score(a, start) == pytest.approx((0.045 / 0.995 + 0.1 / 2.0) / 2)
    assert joint.score(b, start) == pytest.approx((0.025 / 0.995 + 1.2 / 2.0) / 2)
    assert joint.score(b, start) > joint.score(a, start)
    perfect = {"segmentation": {"miou": 1.0}, "depth": {"rmse": 0.0}}
    assert joint.score(perfect, start) == pytest.approx(1.0)  # each task's term is at most 1

    class Error(Task):  # a toy task registered at test time: the rule asks the registry for its direction
        name = "toy_error"
        metrics = (mean_metric("err", "error", higher_is_better=False, unit="target"),)
        probes = default_probes = ("ridge",)

    probe.tasks.register(Error())
    try:
        toy = EpochRule.for_tasks(("toy_error",), "top1")
        assert toy.monitor == {"toy_error": "err"} and toy.mode == "min" and toy.name == "val err"
        assert toy.score({"toy_error": {"err": 1.0}}) == -1.0
    finally:
        probe.tasks.unregister("toy_error")


def test_every_fine_tunable_task_has_a_head_and_is_a_registered_task():
    from probe._finetune.config import CV_TASKS, FINETUNE_TASKS, POOLED_TASKS
    from probe._finetune.heads import HEADS

    assert set(HEADS) == set(FINETUNE_TASKS) and set(POOLED_TASKS) | set(CV_TASKS) <= set(FINETUNE_TASKS)
    assert set(FINETUNE_TASKS) <= set(probe.tasks.names())
    assert {t for t in FINETUNE_TASKS if probe.tasks.get(t).dense} == set(FINETUNE_TASKS) - set(POOLED_TASKS)
