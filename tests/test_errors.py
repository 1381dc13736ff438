"""Every bad input is one line before any work (issue 9): image size, output folders, study files, one-class
data, --skip-bad, an unreachable hub, a full disk, a fine-tune at chance level, and the cache's rm/prune/verify.

Most checks run the real CLI in a subprocess (exit code, one error line, no traceback, nothing left behind);
the ones that need a monkeypatch (free space) run ``probe.cli.main`` in this process.
"""

from __future__ import annotations

import collections
import inspect
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import probe
from tests._helpers import assert_one_line_error, run_cli, run_main, write_image_folder

FAST = ["--random-init", "--workers", "0", "--no-progress"]


def _files(root: Path) -> list[str]:
    """Every file and folder under ``root`` (relative), for 'nothing was written' checks."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------------ --img-size


@pytest.mark.parametrize("command,size", [("extract-features", "-3"), ("sweep", "0"), ("finetune", "-3")])
def test_bad_img_size_is_one_line_and_writes_nothing(tmp_path, command, size):
    proc = run_cli(command, "test_resnet", "digits", *FAST, "--img-size", size, cwd=tmp_path)
    assert_one_line_error(proc, 2, "--img-size must be a positive integer")
    assert _files(tmp_path) == []  # no cache/, no *.h5.parts, no results/


@pytest.mark.parametrize("args,needles", [
    (["sweep", "test_resnet", "digits", "--random-init", "--seeds", "-1"], ["--seeds", "integers >= 0", "[-1]"]),
    (["extract-features", "test_resnet", "digits", "--random-init", "--workers", "-2"], ["--workers", ">= 0"]),
    (["extract-features", "test_resnet", "digits", "--random-init", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["finetune", "test_resnet", "digits", "--random-init", "--seed", "-1"], ["--seed", ">= 0"]),
    (["finetune", "test_resnet", "digits", "--random-init", "--epochs", "abc"], ["--epochs", "invalid int", "--help"]),
    (["cache", "ls", "--cache-dir", "afile"], ["--cache-dir afile is not a directory"]),
    (["report", "afile", "--n-boot", "0"], ["--n-boot", ">= 1"]),
])
def test_flag_values_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(run_main(capsys, *args), 2, *needles)
    assert _files(tmp_path) == ["afile"]


# ------------------------------------------------------------------------------------------------ output folders


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: a read-only tmpfs when root (permission bits do not stop root),
    else a chmod 555 folder."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs as root: {done.stderr.decode().strip()}")
        yield path
        subprocess.run(["umount", str(path)], check=False)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.mark.parametrize("args,flag", [
    (["extract-features", "test_resnet", "digits", *FAST, "--cache-dir", "BAD/cache"], "--cache-dir"),
    (["sweep", "test_resnet", "digits", *FAST, "--results-dir", "BAD/results"], "--results-dir"),
    (["finetune", "test_resnet", "digits", *FAST, "--checkpoint-dir", "BAD"], "--checkpoint-dir"),
    (["report", "RESULTS", "--out", "BAD/report"], "--out"),
    (["cache", "rm", "--cache-dir", "BAD", "--partial"], "--cache-dir"),
])
def test_unwritable_output_folder_is_one_line_naming_it(tmp_path, read_only_dir, args, flag):
    from tests._results_fixture import write_fixture

    if "RESULTS" in args:
        write_fixture(tmp_path / "results")
    args = [str(read_only_dir) if a == "BAD" else a.replace("BAD", str(read_only_dir)) for a in args]
    args = [str(tmp_path / "results") if a == "RESULTS" else a for a in args]
    before = _files(tmp_path)
    proc = run_cli(*args, cwd=tmp_path)
    line = assert_one_line_error(proc, 2, flag, str(read_only_dir), "not writable")
    assert "pass a writable folder" in line
    assert _files(tmp_path) == before


def test_output_path_that_is_a_file_fails_before_pretraining(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    proc = run_cli("run", "--no-progress", "--workers", "0", cwd=tmp_path)  # the default study pretrains first
    assert_one_line_error(proc, 2, "--results-dir results is not a directory")
    assert _files(tmp_path) == ["results"]  # no pretrain/, no cache/


def test_check_output_dir_accepts_a_folder_to_be_created(tmp_path):
    from probe._checks import check_output_dir

    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert _files(tmp_path) == []  # nothing created, no probe file left


# ------------------------------------------------------------------------------------------------ study files

BASE = """
[[backbones]]
name = "test_resnet"
random_init = true
img_size = 32

[[datasets]]
spec = "digits"
"""
SWEEP = '\n[[sweeps]]\nprobes = ["centroid"]\n'


@pytest.mark.parametrize("text,needles", [
    ('[study]\nseeds = 0.5\n' + BASE + SWEEP, ["[study] seeds", "list of integers >= 0", "0.5", "seeds = [0]"]),
    ('[study]\nseeds = -1\n' + BASE + SWEEP, ["[study] seeds", ">= 0", "-1"]),
    ('[study]\njobs = "2"\n' + BASE + SWEEP, ["[study] jobs", "drop the quotes"]),
    ('[study]\nval_fraction = 1.5\n' + BASE + SWEEP, ["[study] val_fraction", "in (0, 1)"]),
    ('[study]\nselect_metric = "acc"\n' + BASE + SWEEP, ["[study] select_metric", "top1"]),
    (BASE.replace("random_init = true", 'random_init = "no"') + SWEEP,
     ["[[backbones]] #1 random_init", "true or false", "'no'", "without quotes"]),
    (BASE.replace("img_size = 32", "img_size = 0") + SWEEP, ["[[backbones]] #1 img_size", "integer >= 1"]),
    (BASE + '\n[[backbones]]\nname = "test_vit"\nfamily = "cnn"\n' + SWEEP, ["[[backbones]] #2 family", "convnet"]),
    (BASE + '\n[[backbones]]\nrandom_init = true\n' + SWEEP, ["[[backbones]] #2", "has no name", "name = "]),
    (BASE + '\n[[sweeps]]\nprobes = ["centroid", "svm"]\n', ["[[sweeps]] #1 probes", "'svm'", "logistic"]),
    (BASE + '\n[[sweeps]]\nprobes = ["knn"]\nshots = ["1"]\n', ["[[sweeps]] #1 shots", "drop the quotes"]),
    (BASE + '\n[[sweeps]]\nprobes = ["knn"]\ntaps = ["pool"]\n', ["[[sweeps]] #1", "taps", "unknown tap"]),
    (BASE + '\n[[sweeps]]\nprobes = ["knn"]\ngrids = { svm = { k = [1] } }\n', ["grids", "'svm'"]),
    (BASE + '\n[extract]\ndtype = "float64"\n' + SWEEP, ["[extract] dtype", "float16, float32"]),
    (BASE + '\n[extract]\nbatchsize = 8\n' + SWEEP, ["'batchsize'", "[extract]", "did you mean batch_size"]),
    (BASE + '\n[finetune]\nepochs = "1"\n', ["[finetune] epochs", "positive integer", "'1'", "epochs = 10"]),
    (BASE + '\n[finetune]\nepochs = 1.5\n', ["[finetune] epochs", "not a whole number"]),
    (BASE + '\n[finetune]\nlr = 0\n', ["[finetune] lr", "positive number"]),
    (BASE + '\n[finetune]\nhflip = "no"\n', ["[finetune] hflip", "true or false"]),
    (BASE + '\n[finetune]\ncrop_scale = [0.5]\n', ["[finetune] crop_scale", "list of 2 numbers"]),
    (BASE + '\n[finetune]\ncrop_scale = [0.9, 0.5]\n', ["[finetune]", "MIN <= MAX"]),
    (BASE + '\n[finetune]\nmodes = ["partial"]\n', ["[finetune]", "partial needs trainable_blocks"]),
    (BASE + '\n[finetune]\nmodes = ["ful"]\n', ["[finetune] modes", "did you mean 'full'"]),
    (BASE + '\n[finetune]\nselect_metric = "top5"\n', ["[finetune]", "select_metric", "[study]"]),
    (BASE + '\n[finetune]\ntest_fraction = 0.2\n', ["[finetune]", "test_fraction", "[[datasets]]"]),
    (BASE + '\n[finetune]\nval_fraction = 0.1\n', ["[finetune]", "val_fraction", "[study]"]),
    (BASE + '\n[finetune]\nmode = "full"\n', ["[finetune]", "modes = "]),
    (BASE + '\n[finetune]\nwarmup = 1\n', ["'warmup'", "[finetune]", "did you mean warmup_epochs"]),
    (BASE + '\n[finetune]\naccum_steps = "many"\n', ["[finetune] accum_steps", "'auto'"]),
    (BASE + '\n[pretrain]\nepochs = 1\n' + SWEEP, ["[pretrain]", "has no dataset", "dataset = "]),
    (BASE + '\n[extras]\nx = 1\n' + SWEEP, ["unknown table", "extras"]),
    ('sweeps = 3\n' + BASE, ["sweeps", "array of tables"]),
])
def test_every_study_key_is_checked_at_load(tmp_path, capsys, text, needles):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert_one_line_error(run_main(capsys, "run", path, "--plan"), 2, str(path), *needles)


def test_a_scalar_where_a_list_is_expected_is_a_one_element_list(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[study]\nseeds = 3\n' + BASE + '\n[[sweeps]]\nprobes = "centroid"\ntaps = "pooled"\nshots = 0\n'
                    '\n[finetune]\nmodes = "lp-ft"\nepochs = 2\ncrop_scale = [0.5, 1]\n')
    study = probe.load_study(path)
    assert study.seeds == [3]
    assert study.sweeps[0]["probes"] == ["centroid"] and study.sweeps[0]["taps"] == ["pooled"]
    assert study.sweeps[0]["shots"] == [0]
    assert study.finetune["modes"] == ["lp-ft"] and study.finetune["crop_scale"] == (0.5, 1.0)
    assert isinstance(study.finetune["crop_scale"][1], float)


def test_dataset_paths_resolve_against_the_study_file_in_every_table(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "s.toml"
    path.write_text(BASE.replace('"digits"', '"imagefolder:pets"') + SWEEP + '\n[pretrain]\ndataset = "csv:m.csv"\n')
    study = probe.load_study(path)
    assert study.datasets[0].spec == f"imagefolder:{tmp_path / 'sub' / 'pets'}"
    assert study.pretrain["dataset"] == f"csv:{tmp_path / 'sub' / 'm.csv'}"


def test_plan_checks_backbone_names_with_a_suggestion(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(BASE.replace("test_resnet", "test_resnett") + SWEEP)
    proc = run_cli("run", path, "--plan", cwd=tmp_path)
    assert_one_line_error(proc, 2, "[[backbones]] #1 name", "test_resnett", "did you mean test_resnet")


def test_missing_dataset_and_weights_fail_before_the_first_job(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(BASE + '\n[[datasets]]\nspec = "imagefolder:no/such/folder"\n' + SWEEP)
    proc = run_main(capsys, "run", path, "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r",
                    "--no-report")
    assert_one_line_error(proc, 2, "[[datasets]] #2 spec", "does not exist")
    path.write_text(BASE.replace("random_init = true", 'weights = "missing.safetensors"') + SWEEP)
    proc = run_main(capsys, "run", path, "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "[[backbones]] #1", "missing.safetensors", "does not exist")
    assert "[1/" not in proc.stdout and not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_grid_keys_are_checked_before_the_first_job(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(BASE + '\n[[sweeps]]\nprobes = ["knn"]\ngrids = { knn = { kk = [1, 5] } }\n')
    proc = run_main(capsys, "run", path, "--cache-dir", tmp_path / "c", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 2, "[[sweeps]] #1 grids.knn", "kk", "temperature")
    assert not (tmp_path / "c").exists()


def test_finetune_schema_is_the_config_dataclass():
    """Every FinetuneConfig field is a `probe finetune` flag and a [finetune] or [pretrain] study key, checked by
    the same declared setting: the three cannot drift."""
    from probe._finetune import FinetuneConfig, cli_flag, config_settings
    from probe.study import study_schema
    from probe.cli import build_parser

    flags = set()
    finetune_parser = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                           if a[0] == "finetune")[1]
    for action in finetune_parser._actions:
        flags.update(action.option_strings)
    schema = study_schema()
    signature = inspect.signature(probe.finetune).parameters
    for name, setting in config_settings().items():
        assert cli_flag(name) in flags, name
        assert schema["pretrain"][name] == setting
        assert name in schema["finetune"] or name in ("mode", "select_metric", "val_fraction", "test_fraction",
                                                      "tasks", "head", "task_weighting")
        assert name in schema["multitask"] or name in ("mode", "select_metric", "val_fraction")
        default = getattr(FinetuneConfig(), name)
        canonical = list(default) if isinstance(default, tuple) and setting.length is None else default
        assert default is None or probe._schema.check_setting(default, setting, name) == canonical
        assert signature[name].default == default, name  # probe.finetune's keyword has the config's default


def test_finetune_api_checks_types_like_the_study(tmp_path):
    with pytest.raises(probe.UsageError, match="--hflip must be true or false"):
        probe.finetune("test_resnet", "digits", random_init=True, hflip="no", results_dir=tmp_path)
    with pytest.raises(probe.UsageError, match="--epochs must be a positive integer"):
        probe.finetune("test_resnet", "digits", random_init=True, epochs="3", results_dir=tmp_path)
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------------------------ --keep-going


KEEP_GOING = """
[[backbones]]
name = "test_resnet"
random_init = true
img_size = 32

[[datasets]]
spec = "imagefolder:one"

[[datasets]]
spec = "imagefolder:two"

[extract]
workers = 0

[[sweeps]]
probes = ["centroid"]
"""


def test_keep_going_runs_the_rest_and_lists_the_failures(tmp_path):
    write_image_folder(tmp_path / "one", classes=("cat",), per_class=6, size=16)  # a probe needs two classes
    write_image_folder(tmp_path / "two", per_class=6, size=16)
    (tmp_path / "s.toml").write_text(KEEP_GOING)
    proc = run_cli("run", "s.toml", "--keep-going", "--no-report", "--no-progress", cwd=tmp_path)
    assert_one_line_error(proc, 1, "1 of 4 study jobs failed", "rerun")
    assert "  [2/4] sweep    test_resnet on" in proc.stderr and "needs at least two classes" in proc.stderr
    assert "[4/4] sweep    test_resnet on" in proc.stdout and "1 result files written" in proc.stdout
    rows = probe.scan_results(tmp_path / "results").collect()
    assert set(rows["dataset"]) == {"two"}
    # without --keep-going the first failure stops the study, naming the job
    proc = run_cli("run", "s.toml", "--no-report", "--no-progress", cwd=tmp_path)
    assert_one_line_error(proc, 2, "study job 2/4", "needs at least two classes")


# ------------------------------------------------------------------------------------------------ one class


def test_finetune_on_one_class_is_the_sweeps_error(tmp_path):
    write_image_folder(tmp_path / "one", classes=("cat",), per_class=8, size=16)
    proc = run_cli("finetune", "test_resnet", "imagefolder:one", *FAST, "--img-size", "32", "--batch-size", "2",
                   cwd=tmp_path)
    assert_one_line_error(proc, 2, "train has a single class ('cat')", "needs at least two classes")
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------ --skip-bad


def test_skip_bad_is_reported_and_never_reused_silently(tmp_path):
    images = write_image_folder(tmp_path / "pets", per_class=4, size=16)
    (images / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    args = ["extract-features", "test_resnet", "imagefolder:pets", *FAST, "--img-size", "32", "--splits", "train"]
    made = run_cli(*args, "--skip-bad", cwd=tmp_path, check=0)
    assert "--skip-bad left out 1 unreadable image of pets/train" in made.stderr
    assert "train/cat/broken.png" in made.stderr
    again = run_cli(*args, cwd=tmp_path)  # the same data without --skip-bad: the bad-image error, not reuse
    assert_one_line_error(again, 1, "cannot read image train/cat/broken.png", "--skip-bad")
    reused = run_cli(*args, "--skip-bad", cwd=tmp_path, check=0)
    assert "reused" in reused.stdout and "train/cat/broken.png" in reused.stderr
    # the analysis layer reads the skipped ids per entry from the cache
    from probe._cache import skipped_images

    skipped = skipped_images(tmp_path / "cache")
    assert [v["skipped"] for v in skipped.values()] == [["train/cat/broken.png"]]
    (key,) = skipped
    assert skipped_images(tmp_path / "cache", keys=[key[:8]]) == skipped
    assert skipped_images(tmp_path / "cache", keys=["0000"]) == {}
    # results rows record the count, and the report notes it per dataset and configuration
    import polars as pl

    import probe

    probe.sweep_cached("test_resnet", f"imagefolder:{images}", probes=["centroid"], cache_dir=tmp_path / "cache",
                       results_dir=tmp_path / "results", random_init=True, img_size=32, workers=0, skip_bad=True,
                       progress=False)
    rows = pl.read_parquet(next((tmp_path / "results").rglob("*.parquet")))
    assert rows["n_skipped"].to_list() == [1] * rows.height
    assert probe.analysis.skipped_images(probe.analysis.job_table(tmp_path / "results"))["n_skipped"].to_list() == [1]
    report = probe.write_report(tmp_path / "results", n_boot=50).read_text()
    assert "1 unreadable image(s) left out with --skip-bad" in report


# ------------------------------------------------------------------------------------------------ the hub


@pytest.mark.parametrize("env,needles", [
    ({"HF_HUB_OFFLINE": "1"}, ["HF_HUB_OFFLINE is set", "--weights PATH", "--random-init"]),
    ({"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
     ["hub (http://127.0.0.1:9) cannot be reached", "--weights PATH", "--random-init"]),
])
def test_unreachable_hub_is_one_quick_line(tmp_path, env, needles):
    env = {**env, "HF_HOME": str(tmp_path / "hf")}  # nothing cached
    proc = run_cli("extract-features", "test_resnet.r160_in1k", "digits", "--workers", "0", cwd=tmp_path, env=env,
                   timeout=120)
    assert_one_line_error(proc, 1, "test_resnet.r160_in1k", *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no retry chatter
    assert not list((tmp_path / "cache").rglob("*.parts"))


# ------------------------------------------------------------------------------------------------ a full disk

_Usage = collections.namedtuple("_Usage", "total used free")


def test_free_space_is_checked_before_extracting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("probe._checks.shutil.disk_usage", lambda p: _Usage(10**9, 10**9 - 1000, 1000))
    monkeypatch.chdir(tmp_path)
    proc = run_main(capsys, "extract-features", "test_resnet", "digits", *FAST, "--img-size", "32",
                    "--taps", "pooled", "patch")
    line = assert_one_line_error(proc, 1, "not enough free space in cache", "1,797 rows x 2 taps", "float16",
                                 "1000 B free", "a rerun resumes")
    assert "needs about 2.0 MiB" in line
    assert _files(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (needs root); skipped with the reason when it cannot be mounted."""
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.decode().strip() or 'mount failed'}")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def test_full_disk_subprocess_fails_up_front_on_a_real_small_disk(tiny_disk):
    proc = run_cli("extract-features", "test_resnet", "digits", *FAST, "--img-size", "32", "--taps", "pooled",
                   "patch", cwd=tiny_disk)
    assert_one_line_error(proc, 1, "not enough free space in cache", "needs about", "free")
    assert _files(tiny_disk) == []


def test_full_disk_while_extracting_is_one_line_and_leaves_no_temporary_file(tiny_disk, capsys, monkeypatch):
    # the up-front check is fooled, so the writers meet ENOSPC for real
    monkeypatch.setattr("probe._checks.shutil.disk_usage", lambda p: _Usage(10**12, 0, 10**12))
    monkeypatch.chdir(tiny_disk)
    proc = run_main(capsys, "extract-features", "test_resnet", "digits", *FAST, "--img-size", "32",
                    "--taps", "pooled", "patch")
    assert_one_line_error(proc, 1, "no space left in cache/test_resnet/digits", "the missing entries need about",
                          "resumes from its last finished batch")
    left = _files(tiny_disk)
    assert not [p for p in left if ".tmp" in p], left
    shards = [p for p in left if p.endswith(".npz")]
    assert shards and all(np.load(tiny_disk / p)["ok"].all() for p in shards)  # finished shards are whole


def test_full_disk_at_a_results_writer_is_one_line(tiny_disk):
    import polars as pl

    from probe.results import RESULT_COLUMNS, write_results

    frame = pl.DataFrame({c: [None] for c in RESULT_COLUMNS}).with_columns(
        pl.lit(os.urandom(1 << 20).hex()).alias("params"))  # 2 MiB that do not compress, on a 1 MiB disk
    with pytest.raises(probe.ProbeError, match="no space left in .* while writing the results file x.parquet; "
                                               "free some space and rerun: jobs whose results exist are skipped"):
        write_results(frame, tiny_disk / "r" / "x.parquet")
    assert not [p for p in _files(tiny_disk) if ".tmp" in p]


def test_full_disk_at_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import probe._finetune.checkpoint as ckpt

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_torch_save", full)
    write_image_folder(tmp_path / "pets", per_class=6, size=16)
    proc = run_main(capsys, "finetune", "test_resnet", f"imagefolder:{tmp_path / 'pets'}", *FAST, "--img-size", "32",
                    "--epochs", "1", "--batch-size", "4", "--results-dir", tmp_path / "r")
    assert_one_line_error(proc, 1, "no space left in", ".ckpt while writing the epoch-1 checkpoint last.pt",
                          "resumes after its last completed epoch", "checkpoints need about")
    assert not list((tmp_path / "r").rglob("*.parquet"))


# ------------------------------------------------------------------------------------------------ chance level


def test_finetune_at_chance_level_warns(tmp_path):
    write_image_folder(tmp_path / "pets", per_class=8, size=16)
    proc = run_cli("finetune", "test_resnet", "imagefolder:pets", *FAST, "--img-size", "32", "--epochs", "1",
                   "--batch-size", "4", "--lr", "1e-9", "--warmup-epochs", "0", cwd=tmp_path, check=0)
    assert "probe: warning: the best val top1" in proc.stderr and "chance level" in proc.stderr
    assert "larger --lr" in proc.stderr and "pretrained weights" in proc.stderr


def test_chance_level():
    from probe._finetune import chance_level

    labels = np.repeat(np.arange(10), 20)
    c = chance_level(labels, "top1", 10)
    assert c["chance"] == pytest.approx(0.1) and 0.1 < c["threshold"] < 0.15
    assert chance_level(labels, "mean_per_class_acc", 10)["chance"] == pytest.approx(0.1)
    assert chance_level(labels, "top5", 10)["chance"] == pytest.approx(0.5)
    assert chance_level(np.array([0] * 90 + [1] * 10), "top1", 2)["chance"] == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------------ the cache


def _partial(cache: Path, key: str, rows: int = 0) -> Path:
    parts = cache / "test_resnet" / "pets" / f"train-{key[:12]}.h5.parts"
    parts.mkdir(parents=True)
    (parts / "meta.json").write_text(json.dumps({"key": key, "backbone": "test_resnet", "dataset": "pets",
                                                 "split": "train", "taps": ["pooled"]}))
    if rows:
        np.savez(parts / f"rows-{0:010d}-{rows:010d}.npz", ok=np.ones(rows, bool))
    return parts


def test_cache_verify_rm_and_prune_never_touch_an_entry_being_written(tmp_path):
    from probe._cache import entry_lock

    write_image_folder(tmp_path / "pets", per_class=3, size=16)
    run_cli("extract-features", "test_resnet", "imagefolder:pets", *FAST, "--img-size", "32", cwd=tmp_path,
            check=0)
    cache = tmp_path / "cache"
    idle = _partial(cache, "a" * 64, rows=2)
    busy = _partial(cache, "b" * 64)
    with entry_lock(cache, "b" * 64, wait=False):  # this process is "writing" the busy entry
        verify = run_cli("cache", "verify", cwd=tmp_path, check=0)
        assert f"PARTIAL {idle.relative_to(tmp_path)}: 2 rows written; interrupted" in verify.stdout
        assert f"PARTIAL {busy.relative_to(tmp_path)}: 0 rows written; being written" in verify.stdout
        assert "2 of 2 entries ok; 2 partial (1 being written)" in verify.stdout
        dry = run_cli("cache", "prune", "--dry-run", cwd=tmp_path, check=0)
        assert "2 entries would be removed" in dry.stdout and idle.is_dir()
        pruned = run_cli("cache", "prune", cwd=tmp_path, check=0)
        assert not idle.exists() and busy.is_dir()
        assert "kept 1 that another process is writing" in pruned.stdout
        assert_one_line_error(run_cli("cache", "rm", cwd=tmp_path), 2, "needs a filter")
        kept = run_cli("cache", "rm", "--backbone", "test_*", "--split", "test", cwd=tmp_path, check=0)
        assert "removed 1 entries" in kept.stdout
    assert busy.is_dir()  # released now: prune removes it
    run_cli("cache", "prune", cwd=tmp_path, check=0)
    assert not busy.exists()
    left = run_cli("cache", "ls", cwd=tmp_path, check=0).stdout
    assert "1 entries" in left and " train " in left and " test " not in left
    run_cli("cache", "rm", "--older-than", "0", cwd=tmp_path, check=0)
    assert not list(cache.rglob("*.h5")) and not list((cache / ".locks").glob("*"))
