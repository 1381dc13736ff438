"""`probe run --executor local` (submitit's local executor: real separate processes, one job array per stage)
against the in-process run, `--status` with a failed job, what a rerun submits, and the [executor] table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import probe
from probe._errors import ProbeError
from tests._helpers import assert_one_line_error, run_main, write_image_folder

pytest.importorskip("submitit")

STUDY = """
[study]
name = "tiny-exec"

[[backbones]]
name = "test_resnet"
random_init = true
img_size = 32

[[datasets]]
spec = "imagefolder:good"

[[datasets]]
spec = "imagefolder:bad"

[extract]
workers = 0

[[sweeps]]
probes = ["knn", "centroid"]

[executor]
timeout_min = 30
"""


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The study run once through `--executor local` (the CLI in this process; each job a separate process) and
    once in-process, in separate output folders; its second dataset has an unreadable image, so its extraction
    fails and its sweep is skipped."""
    import contextlib
    import io
    import subprocess

    from probe.cli import main

    work = tmp_path_factory.mktemp("exec")
    write_image_folder(work / "good")
    write_image_folder(work / "bad")
    (work / "bad" / "train" / "cat" / "img_0.png").write_bytes(b"not a png")
    (work / "study.toml").write_text(STUDY)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", "study.toml", "--executor", "local", "--no-progress", "--no-report"])
    finally:
        os.chdir(cwd)
    proc = subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())
    with pytest.raises(ProbeError, match="1 of 4 study jobs failed"):
        probe.run_study(work / "study.toml", cache_dir=work / "ip-cache", results_dir=work / "ip-results",
                        report_dir=None, progress=False, keep_going=True, out=open(work / "ip.log", "w"))
    return work, proc


def _rows(results: Path) -> pl.DataFrame:
    return (probe.scan_results(results).collect().drop("created", "fit_seconds")
            .sort("dataset", "probe", "split", "params"))


def test_local_executor_writes_the_in_process_results(local_run):
    work, proc = local_run
    assert_one_line_error(proc, 1, "2 of 4 study jobs did not finish", "--status")
    assert "extract: 2 jobs submitted" in proc.stdout and "sweep: 2 jobs submitted" in proc.stdout
    assert "skipped (extract failed)" in proc.stdout
    local, inprocess = _rows(work / "results"), _rows(work / "ip-results")
    assert set(local["dataset"]) == {"good"} and set(local["probe"]) == {"knn", "centroid"}
    assert local.equals(inprocess)
    for path in sorted((work / "results").rglob("*.npz")):  # the selected probes' test scores, bit for bit
        twin = work / "ip-results" / path.relative_to(work / "results")
        a, b = np.load(path), np.load(twin)
        np.testing.assert_array_equal(a["scores"], b["scores"])
    keys = sorted(r["full_key"] for r in probe.list_cache(work / "cache"))  # the in-process run's cache entries
    assert len(keys) >= 2 and keys == sorted(r["full_key"] for r in probe.list_cache(work / "ip-cache"))


def test_status_names_the_failed_job_and_its_log(local_run, capsys, monkeypatch):
    work, _ = local_run
    monkeypatch.chdir(work)
    proc = run_main(capsys, "run", "study.toml", "--status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[1] for ln in lines[:4]] == ["done", "done", "failed", "skipped"]
    failed = lines[2]
    assert "imagefolder:" in failed and "bad" in failed and "cannot read image" in failed
    log = Path(failed.split("log: ")[1].split()[0])
    assert log.is_file() and log.parent == work / "logs" / "tiny-exec" and "cannot read image" in log.read_text()
    assert lines[-1] == "2 done; 1 failed; 1 skipped"
    # a rerun submits only what is not done: the failed extraction and the sweep that needs it
    from probe.study.executor import pending

    assert pending(probe.study.load_study(work / "study.toml"), work / "logs" / "tiny-exec") == [2, 3]


@pytest.mark.parametrize("table,needles", [
    ("gpus = -1", ["[executor] gpus", "an integer >= 0", "gpus = 1"]),
    ("mem_gb = \"64G\"", ["[executor] mem_gb", "drop the quotes", "mem_gb = 64"]),
    ("partitoin = \"gpu\"", ["'partitoin'", "[executor]", "did you mean partition?"]),
    ("extra = 3", ["[executor] extra", "must be a table", "constraint = \"a100\""]),
    ("setup = [1]", ["[executor] setup", "strings", "module load cuda"]),
])
def test_executor_table_is_validated_like_the_rest(tmp_path, capsys, table, needles):
    path = tmp_path / "s.toml"
    path.write_text("[[backbones]]\nname='test_vit'\n[[datasets]]\nspec='digits'\n[[sweeps]]\nprobes=['knn']\n"
                    f"[executor]\n{table}\n")
    assert_one_line_error(run_main(capsys, "run", path, "--plan"), 2, *needles)


def test_slurm_arrays_get_the_executor_table(tmp_path, monkeypatch):
    """The sbatch header of each stage's array: the [executor] resources, one task per GPU for extraction only,
    and the extra sbatch options (no sbatch is run)."""
    import shutil

    from probe.study.executor import _make_executor

    if shutil.which("srun") is None:  # submitit insists on it; an error line says so (below)
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / "srun").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    resources = {"partition": "gpu", "account": "proj", "gpus": 4, "cpus": 8, "mem_gb": 64, "timeout_min": 90,
                 "setup": ["module load cuda"], "extra": {"constraint": "a100"}}
    extract = _make_executor("slurm", tmp_path, resources, "extract")._make_submission_file_text("run", "x")
    sweep = _make_executor("slurm", tmp_path, resources, "sweep")._make_submission_file_text("run", "x")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=64GB", "#SBATCH --time=90", "#SBATCH --constraint=a100", "module load cuda"):
        assert line in extract and line in sweep, line
    assert "#SBATCH --ntasks-per-node=4" in extract and "#SBATCH --gpus-per-node=4" in extract
    assert "#SBATCH --ntasks-per-node=1" in sweep and "#SBATCH --gpus-per-node=1" in sweep


def test_slurm_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text("[[backbones]]\nname='test_vit'\nrandom_init=true\n[[datasets]]\n"
                                     "spec='digits'\n[[sweeps]]\nprobes=['knn']\n")
    assert_one_line_error(run_main(capsys, "run", "s.toml", "--executor", "slurm"), 2, "needs Slurm",
                          "--executor local")
