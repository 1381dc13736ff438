"""Dense and multi-task fine-tuning: heads, joint transforms, per-task rows of a joint run beside the single-task
runs of the same settings, the declared selection rule, uncertainty weighting, resume after kill -9, bad input.

One epoch of test_vit at 32 px on the built-in ``shapes`` (segmentation + depth), shared by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")

import probe  # noqa: E402
from probe.dense import STAT_NAMES, dense_metrics  # noqa: E402
from probe.results import RESULT_COLUMNS  # noqa: E402

RUN = dict(random_init=True, img_size=32, epochs=1, lr=2e-3, batch_size=64, warmup_epochs=0.0, seed=0, workers=0)
CLI = ["test_vit", "shapes", "--tasks", "segmentation", "depth", "--random-init", "--img-size", "32", "--epochs", "1",
       "--lr", "2e-3", "--batch-size", "64", "--warmup-epochs", "0", "--seed", "0", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The joint run and the two single-task runs of the same settings."""
    root = tmp_path_factory.mktemp("dense")
    out = {}
    for key, tasks in (("multi", ["segmentation", "depth"]), ("segmentation", ["segmentation"])):
        out[key] = probe.finetune("test_vit", "shapes", tasks=tasks, results_dir=root / "results",
                                  cache_dir=root / "cache", progress=False, verbose=False, **RUN)
    return root, out


def test_each_task_writes_its_own_rows_naming_the_co_trained_tasks(runs):
    _, out = runs
    multi = out["multi"]
    assert set(multi.results_paths) == {"segmentation", "depth"}
    for task, path in multi.results_paths.items():
        frame = pl.scan_parquet(str(path)).collect()
        assert frame.columns == [*RESULT_COLUMNS, "grid"] and set(frame["grid"]) == {"2x2"}  # 32 px, patch 16
        assert set(frame["task"]) == {task} and set(frame["probe"]) == {"finetune"}
        test = frame.filter(pl.col("selected"))
        assert len(test) == 1 and test["split"][0] == "test" and test["n_eval"][0] == 240
        assert test["n_train"][0] == 480  # refit on train+val, as the classification path
        params = json.loads(test["params"][0])
        assert params["tasks"] == ["segmentation", "depth"] and params["task_weighting"] == "equal"
        assert "gap to perfect closed since epoch 1" in params["select_rule"] and params["head"] == "linear"
        # the saved per-image statistics give the row's metrics (the bootstrap resamples them)
        art = np.load(str(path).replace(".parquet", ".npz"))
        assert str(art["task"]) == task and len(art["ids"]) == 240
        stats = {k: art[f"stat/{k}"] for k in STAT_NAMES[task]}
        for metric, value in dense_metrics(task, stats).items():
            assert test[metric][0] == pytest.approx(value)
            assert np.isfinite(value)
        other = [c for c in ("top1", "miou", "rmse") if c not in probe.tasks.get(task).metric_names]
        assert test.select(other).null_count().row(0) == (1,) * len(other)  # the other tasks' columns are null
    # the single-task run of the same settings: the comparison (one is enough to show the pairing)
    single = pl.read_parquet(out["segmentation"].results_path).filter(pl.col("selected"))
    joint = pl.read_parquet(multi.results_paths["segmentation"]).filter(pl.col("selected"))
    assert json.loads(single["params"][0])["tasks"] == ["segmentation"]
    assert "task_weighting" not in json.loads(single["params"][0]) or \
        json.loads(single["params"][0])["task_weighting"] is None
    assert single["protocol"][0] != joint["protocol"][0]  # joint and single are different protocols
    assert single["backbone_config"][0] == joint["backbone_config"][0]  # of the same backbone configuration
    assert single["select_metric"][0] == joint["select_metric"][0] == "miou"
    seg = pl.read_parquet(multi.results_paths["segmentation"]).filter(pl.col("selected"))
    assert 0 <= seg["miou"][0] <= 1 and 0 <= seg["pixel_acc"][0] <= 1
    assert multi.task_metrics["depth"]["rmse"] > 0


def test_combined_score_is_the_mean_share_of_the_gap_closed_since_epoch_one():
    from probe._finetune.selection import EpochRule

    def record(miou, rmse):
        return {"val": {"segmentation": {"miou": miou}, "depth": {"rmse": rmse}}}

    joint = EpochRule({"segmentation": "miou", "depth": "rmse"})
    first = record(0.2, 2.0)["val"]
    assert joint.score(record(0.3, 1.0)["val"], first) == pytest.approx((0.1 / 0.8 + 1.0 / 2.0) / 2)
    assert joint.score(record(0.2, 2.0)["val"], first) == 0.0
    one = EpochRule({"depth": "rmse"})
    assert one.score(record(0.2, 1.5)["val"]) == -1.5  # lower is better: negated, so higher always wins


def test_uncertainty_weighting_is_learned_log_variances():
    from probe._finetune.heads import DepthTask, SegmentationTask
    from probe._finetune.trainer import Objective

    tasks = {"segmentation": SegmentationTask(3), "depth": DepthTask()}
    log_vars = torch.nn.ParameterDict({"segmentation": torch.nn.Parameter(torch.tensor(0.5)),
                                       "depth": torch.nn.Parameter(torch.tensor(-1.0))})
    out = {"segmentation": torch.randn(2, 3, 4, 4), "depth": torch.randn(2, 1, 4, 4)}
    target = {"segmentation": torch.randint(0, 3, (2, 4, 4)), "depth": torch.rand(2, 4, 4) + 1}
    total, losses = Objective(tasks, log_vars=log_vars)(out, target)
    expected = sum(torch.exp(-log_vars[t]) * losses[t] + log_vars[t] for t in tasks)
    assert float(total.detach()) == pytest.approx(float(expected.detach()))
    total.backward()
    assert all(p.grad is not None for p in log_vars.values())
    equal, _ = Objective(tasks)(out, target)
    assert float(equal.detach()) == pytest.approx(float(sum(losses.values()).detach()))


@pytest.mark.parametrize("head", ["linear", "multiscale"])
@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_dense_heads_give_maps_at_the_input_size(name, head):
    from probe._finetune.decoders import DenseModel, feature_levels

    bb = probe.create_backbone(name, random_init=True, img_size=32, num_classes=0)
    model = DenseModel(bb.model, {"segmentation": 7, "depth": 1}, head=head, input_size=(3, 32, 32))
    out = model(torch.randn(2, 3, 32, 32))
    assert out["segmentation"].shape == (2, 7, 32, 32) and out["depth"].shape == (2, 1, 32, 32)
    assert model.indices == feature_levels(head, len(bb.model.feature_info))
    assert len(model.indices) == (1 if head == "linear" else 4)
    assert feature_levels("multiscale", 12) == [2, 5, 8, 11]


def test_training_transform_moves_targets_with_the_image():
    """Random crops and flips: each output pixel's class is the one its colour was painted with; the depth of a
    zooming crop is divided by its zoom, measured here from a ruler painted into the image (issue 22)."""
    from PIL import Image

    from probe._finetune import make_config
    from probe._finetune.data import DenseTrainTransform, seed_everything

    rng = np.random.default_rng(0)
    seg = rng.integers(0, 5, size=(8, 8)).repeat(6, 0).repeat(6, 1)  # 48 x 48 blocks of class ids
    depth = (seg.astype(np.float32) + 1.0) * 0.5
    rows, cols = np.mgrid[0:48, 0:48]
    image = Image.fromarray(np.stack([seg * 50, rows * 5, cols * 5], axis=-1).astype(np.uint8))  # class, ruler
    config = make_config(tasks=["segmentation", "depth"], crop_scale=(0.3, 1.0), hflip=False)
    assert config.depth_zoom == "divide"
    tf = DenseTrainTransform({"input_size": (3, 32, 32), "interpolation": "nearest", "mean": (0, 0, 0),
                              "std": (1, 1, 1)}, config)
    zooms = []
    for s in range(6):
        seed_everything(s)
        x, t = tf(image, {"segmentation": seg, "depth": depth})
        assert t["segmentation"].shape == (32, 32) and t["segmentation"].dtype == torch.int64
        painted = torch.round(x[0] * 255 / 50).long()
        assert torch.equal(painted, t["segmentation"])
        ruler = torch.round(x[1:] * 255 / 5)  # the source row and column of each output pixel
        h = float(ruler[0].max() - ruler[0].min()) + 1  # rows of the frame the crop spans (to a pixel)
        w = float(ruler[1].max() - ruler[1].min()) + 1
        zoom = np.sqrt((48 / h) * (48 / w))  # magnification relative to the whole-frame view
        ratio = (t["segmentation"].float() + 1) * 0.5 / t["depth"]
        assert torch.allclose(ratio, ratio.flatten()[0])  # one factor per crop
        assert float(ratio.flatten()[0]) == pytest.approx(zoom, rel=0.08)
        zooms.append(zoom)
    assert max(zooms) > 1.2  # the crops did zoom


def test_no_zoom_crops_keep_the_evaluation_scale_and_depth():
    """``depth_zoom = no-zoom``: a window of the whole-frame view at its own scale; depth unchanged inside it, the
    rest ignored (segmentation 255, depth 0) and at the mean colour."""
    from PIL import Image

    from probe._finetune import make_config
    from probe._finetune.data import DenseTrainTransform, seed_everything
    from probe.dense import IGNORE_INDEX

    rng = np.random.default_rng(1)
    seg = rng.integers(0, 5, size=(8, 8)).repeat(4, 0).repeat(4, 1)  # 32 x 32: the evaluation view's size
    depth = (seg.astype(np.float32) + 1.0) * 0.5
    image = Image.fromarray(np.stack([seg * 50] * 3, axis=-1).astype(np.uint8))
    config = make_config(tasks=["segmentation", "depth"], crop_scale=(0.2, 0.5), hflip=False, depth_zoom="no-zoom")
    tf = DenseTrainTransform({"input_size": (3, 32, 32), "interpolation": "nearest", "mean": (0, 0, 0),
                              "std": (1, 1, 1)}, config)
    for s in range(4):
        seed_everything(s)
        x, t = tf(image, {"segmentation": seg, "depth": depth})
        kept = t["segmentation"] != IGNORE_INDEX
        assert 0.1 < float(kept.float().mean()) < 0.6  # a window of 20-50% of the area
        assert torch.equal(t["segmentation"][kept], torch.as_tensor(seg)[kept])  # in place, not rescaled
        assert torch.equal(t["depth"][kept], torch.as_tensor(depth)[kept])  # metres as measured
        assert torch.all(t["depth"][~kept] == 0) and torch.all(x[:, ~kept] == 0)


def _cli(args, cwd, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "probe", "finetune", *map(str, args)]
    if kw.get("popen"):
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=kw.get("timeout", 300))


def test_multitask_resume_after_kill_equals_uninterrupted(runs, tmp_path):
    _, out = runs
    args = CLI + ["--results-dir", tmp_path / "results", "--cache-dir", tmp_path / "cache"]
    proc = _cli(args, tmp_path, popen=True)
    deadline, checkpoint = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "results").rglob("last.pt"))
        if found:
            checkpoint = found[0]
            break
        time.sleep(0.02)
    assert checkpoint is not None, proc.communicate()[1]
    os.kill(proc.pid, signal.SIGKILL)  # the selection epoch is on disk, the refit is running
    proc.wait()
    assert not list((tmp_path / "results").rglob("*.parquet"))
    done = _cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "test\tsegmentation\tmiou" in done.stdout
    for task, ref_path in out["multi"].results_paths.items():
        resumed = pl.read_parquet(next((tmp_path / "results").rglob(f"*-{task}-*.parquet")))
        ref = pl.read_parquet(ref_path)
        for metric in probe.tasks.get(task).metric_names:
            assert resumed[metric].to_list() == ref[metric].to_list(), (task, metric)


def test_bad_dense_settings_are_one_line_errors(tmp_path, capsys):
    from tests._helpers import assert_one_line_error, run_main

    proc = run_main(capsys, "finetune", "test_vit", "digits", "--tasks", "segmentation", "--random-init",
                    "--no-progress", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "has no segmentation targets", "classification")
    with pytest.raises(probe.UsageError, match="mixes classification with dense tasks"):
        probe.finetune("test_vit", "shapes", tasks=["classification", "depth"], random_init=True, results_dir=tmp_path)
    with pytest.raises(probe.UsageError, match="--head multiscale is a dense head"):
        probe.finetune("test_vit", "shapes", head="multiscale", random_init=True, results_dir=tmp_path)
    with pytest.raises(probe.UsageError, match="mode lp-ft"):
        probe.finetune("test_vit", "shapes", tasks="depth", mode="lp-ft", random_init=True, results_dir=tmp_path)
    assert not (tmp_path / "r").exists()


def test_multitask_gain_table_figure_and_report_section(runs):
    root, out = runs
    from probe import analysis

    gains = analysis.multitask_gains(analysis.job_table(root / "results"), n_boot=200)
    assert gains.height == 1  # segmentation has its single-task run; depth alone was not run here
    r = gains.row(0, named=True)
    assert (r["task"], r["cotrained"], r["weighting"], r["metric"]) == ("segmentation", "segmentation+depth",
                                                                       "equal", "miou")
    multi = out["multi"].task_metrics["segmentation"]["miou"]
    single = out["segmentation"].task_metrics["segmentation"]["miou"]
    assert r["multi"] == pytest.approx(multi) and r["single"] == pytest.approx(single)
    assert r["gain"] == pytest.approx(multi - single) and r["family"] == "transformer"
    if r["gain_low"] is not None:  # the paired bootstrap over test images, from the saved per-image statistics
        assert r["gain_low"] <= r["gain"] <= r["gain_high"] and r["gain_n"] == 240
    fig = analysis.multitask_figure(gains)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()][0].startswith("shapes: segmentation (")
    from probe.analysis import _stats

    if not hasattr(_stats, "DENSE_METRICS"):  # the report's other sections need the dense bootstrap for these rows
        return
    path = probe.write_report(root / "results", root / "report", n_boot=200)
    text = path.read_text() if path.suffix == ".md" else (path / "report.md").read_text()
    assert "## Multi-task fine-tuning" in text and "segmentation+depth" in text
    assert (root / "report" / "figures" / "multitask.png").is_file()
