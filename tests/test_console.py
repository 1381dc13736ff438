"""What a new user reads: progress and warnings as one line each in a log, no library warning on a refusal, and a
dense manifest without classes.txt (real CLI runs in subprocesses; see probe/_console.py)."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import warnings

import pytest

import probe
from probe import _console
from tests._helpers import assert_one_line_error, run_cli

# A study small enough for a test: one tiny backbone on digits, one logistic fit that stops at max_iter (the grid's
# max_iter = 3 applies to the refit on train+val).
_WARNING_STUDY = """
[study]
name = "warn"
seeds = [0]

[[backbones]]
name = "test_resnet"
random_init = true
img_size = 16

[[datasets]]
spec = "digits"

[[sweeps]]
probes = ["logistic"]
taps = ["pooled"]
grids = { logistic = { C = [1e5], max_iter = [3] } }
"""
_REFIT_WARNING = ("probe: warning: L-BFGS did not converge in max_iter=3 iterations (C=100000); increase max_iter or "
                  "scale the features")


def _run_logged(*args, cwd) -> tuple[int, str]:
    """``python -m probe ARGS > log.txt 2>&1`` in ``cwd``: (exit code, the log's text)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = cwd / "log.txt"
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-m", "probe", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                              env=env, cwd=cwd, timeout=300).returncode
    return code, log.read_bytes().decode()  # (not read_text: universal newlines would turn a bar's \r into \n)


def _assert_readable(log: str) -> list[str]:
    """No carriage returns (bar residue), no blank lines, no indented line that is not ours (a source line)."""
    assert "\r" not in log, log
    lines = log.splitlines()
    assert "" not in lines, log
    assert not [ln for ln in lines if ln.startswith(" ") and not ln.startswith("  1 ")], log
    return lines


def test_run_log_reads_top_to_bottom_and_counts_the_warning(tmp_path):
    (tmp_path / "study.toml").write_text(_WARNING_STUDY)
    code, log = _run_logged("run", "study.toml", "--no-report", cwd=tmp_path)
    assert code == 0, log
    lines = _assert_readable(log)
    assert lines.count(_REFIT_WARNING) == 1
    sweep_line = next(i for i, ln in enumerate(lines) if ln.startswith("[2/2] sweep"))
    assert lines[sweep_line].endswith(" s)")  # the job's line is whole: the warning waited for it to end
    assert lines[sweep_line + 1] == _REFIT_WARNING
    assert lines[-2:] == ["warnings (each was printed once as it happened):",
                          "  1 logistic fit stopped at max_iter: test_resnet, C = 1e5"]
    assert not [ln for ln in lines if ln.startswith("probe: warning:") and ln != _REFIT_WARNING]
    # the streams apart (tests/_helpers.run_cli): stderr holds only the warning (no bars: not a terminal)
    proc = run_cli("run", "study.toml", "--no-report", cwd=tmp_path, check=0)
    assert proc.stderr == ""  # done before: no fit, no warning
    assert "warnings" not in proc.stdout and "skipped (done before)" in proc.stdout


def test_extraction_into_a_log_prints_one_line_per_split(tmp_path):
    args = ("extract-features", "test_resnet", "digits", "--random-init", "--img-size", "16")
    code, log = _run_logged(*args, "--cache-dir", tmp_path / "lines", cwd=tmp_path)
    assert code == 0, log
    lines = _assert_readable(log)
    assert len(lines) == 4, log  # a line per split, then the command's table (stdout)
    for line, (split, n) in zip(lines, [("train", "1,347"), ("test", "450")]):
        assert re.fullmatch(rf"test_resnet digits/{split}: {n} img in \d+\.\d s( \([\d,]+ img/s\))?", line), line
    # an explicit --progress: tqdm's bar even into a log file
    code, log = _run_logged(*args, "--cache-dir", tmp_path / "bars", "--progress", cwd=tmp_path)
    assert code == 0 and "\r" in log and "img/s]" in log, log


def test_finetune_into_a_log_prints_its_epoch_lines_only(tmp_path):
    code, log = _run_logged("finetune", "test_resnet", "digits", "--random-init", "--img-size", "16", "--epochs", "2",
                            "--batch-size", "128", "--results-dir", tmp_path / "r", "--cache-dir", tmp_path / "c",
                            cwd=tmp_path)
    assert code == 0, log
    lines = _assert_readable(log)
    # its own line per finished epoch (to choose the epoch on val, then the refit on train+val), no bar's
    epochs = [m.group(1) for ln in lines if (m := re.match(r"(\w+: (refit )?epoch \d/\d)", ln))]
    assert epochs == ["probe: epoch 1/2", "probe: epoch 2/2", "probe: refit epoch 1/1"], log


class _RunsCode:
    """Unpickling this runs code: it writes ``marker`` (what a hostile checkpoint would do, harmlessly)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("how", ["pickle.dump", "torch.save"])
def test_a_refused_pickled_checkpoint_is_one_line(tmp_path, how):
    import torch

    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pt"
    if how == "pickle.dump":
        with open(evil, "wb") as f:
            pickle.dump({"payload": _RunsCode(marker)}, f, protocol=4)
    else:
        torch.save({"payload": _RunsCode(marker)}, evil, pickle_protocol=4)
    proc = run_cli("extract-features", "test_resnet", "digits", "--weights", evil, "--cache-dir", tmp_path / "c")
    assert_one_line_error(proc, 2, "evil.pt", "needs arbitrary unpickling")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr  # torch's 'Detected pickle protocol 4' stays out
    assert not marker.exists()


def _dense_manifest(root, *, test_id=1):
    from tests.test_dense_data import write_dense_manifest

    manifest = write_dense_manifest(root, mask_value=test_id)
    (root / "classes.txt").unlink()
    return manifest


def test_dense_manifest_without_classes_txt_names_classes_by_id(tmp_path):
    manifest = _dense_manifest(tmp_path / "d")
    proc = run_cli("extract-features", "test_resnet", f"csv:{manifest}", "--task", "segmentation", "--random-init",
                   "--img-size", "16", "--cache-dir", tmp_path / "c", "--no-progress", check=0)
    assert proc.stderr.splitlines() == [
        f"probe: note: manifest {manifest} has no classes.txt: its 2 segmentation classes are named by their ids 0-1 "
        f"(from the train masks; id 0 occurs in none of them); write {tmp_path / 'd' / 'classes.txt'}, one name per "
        "line (line i = id i), to name them"]
    assert "segmentation targets" in proc.stdout
    d = probe.open_dataset(f"csv:{manifest}")
    assert d.segmentation_classes == ["0", "1"]
    assert d.dense_targets("train", 0)["segmentation"][5, 5] == 1
    # classes.txt still names them (and no note)
    (tmp_path / "d" / "classes.txt").write_text("background\nthing\n")
    assert probe.open_dataset(f"csv:{manifest}").segmentation_classes == ["background", "thing"]


def test_dense_manifest_without_classes_txt_refuses_an_id_train_lacks(tmp_path):
    manifest = _dense_manifest(tmp_path / "d", test_id=7)
    proc = run_cli("extract-features", "test_resnet", f"csv:{manifest}", "--task", "segmentation", "--random-init",
                   "--cache-dir", tmp_path / "c")
    assert_one_line_error(proc, 2, "the test masks hold class id 7", "largest id of the train masks (1)",
                          "classes.txt")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------------------------------- the parts, in-process
def test_warnings_print_once_and_are_counted(capsys):
    from sklearn.exceptions import ConvergenceWarning

    with _console.console():
        for backbone in ("test_vit", "test_resnet"):
            with _console.job_label(backbone):
                for _ in range(2):
                    warnings.warn(_console.counted_warning(ConvergenceWarning, "fit stopped\n  at max_iter",
                                                           what="logistic fit{s} stopped at max_iter",
                                                           where="C = 1e5"))
        warnings.warn("a library's\nsecond line", UserWarning)
        print("[1/1] job ...", end=" ", flush=True)
        warnings.warn("during an open line", UserWarning)
        print("done")
    out, err = capsys.readouterr()
    assert err.splitlines() == ["probe: warning: fit stopped at max_iter", "probe: warning: a library's second line",
                                "probe: warning: during an open line"]
    assert out == "[1/1] job ... done\n"
    assert _console.warning_summary() == [
        "4 logistic fits stopped at max_iter: test_vit, C = 1e5; test_resnet, C = 1e5",
        "a library's second line", "during an open line"]
    with _console.console():
        for _ in range(2):
            with _console.job_label("test_vit2"):
                _console.say_warning("fine-tuning at chance level")
    assert capsys.readouterr().err == "probe: warning: fine-tuning at chance level\n"
    assert _console.warning_summary() == ["fine-tuning at chance level (2 times; test_vit2)"]
    with pytest.warns(ConvergenceWarning):  # still caught as what it is
        warnings.warn(_console.counted_warning(ConvergenceWarning, "x", what="x", where=""))


def test_sweep_counts_each_fit_that_stopped(capsys):
    from sklearn.datasets import load_digits

    from probe.probes import LogisticProbe
    from probe._sweep import sweep

    X, y = load_digits(return_X_y=True)
    with _console.console(), _console.job_label("test_vit"):
        sweep(LogisticProbe(max_iter=2), (X[:400], y[:400]), test=(X[400:600], y[400:600]), grid={"C": [1e5]},
              context={"backbone": "test_vit", "tap": "pooled"})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "1 of 1 grid points (test_vit, C = 1e5)" in err[0], err
    assert _console.warning_summary() == ["2 logistic fits stopped at max_iter: test_vit, C = 1e5"]  # path + refit


@pytest.mark.parametrize("value, text", [(1e5, "1e5"), (1e-4, "1e-4"), (0.1, "0.1"),
                                         (100.0, "100"), (2e5, "200000"), (5, "5")])
def test_format_value(value, text):
    assert _console.format_value(value) == text


def test_progress_modes(capsys):
    assert _console.progress_option(None) is True and _console.progress_option(True) == "bar"
    assert _console.progress_option(False) is False
    assert _console.progress_mode(True) == "lines"  # pytest's stderr is not a terminal
    with _console.progress(3, desc="sweep jobs", unit="job", enabled="lines") as bar:
        for _ in range(3):
            bar.update()
    with _console.progress(3, desc="unfinished", unit="job", enabled="lines") as bar:
        bar.update()
        bar.close(finished=False)
    with _console.progress(3, desc="off", unit="job", enabled=False) as bar:
        bar.update(3)
    assert re.fullmatch(r"sweep jobs: 3 jobs in \d+\.\d s\n", capsys.readouterr().err)


def test_a_bar_ends_an_open_stdout_line_first(capsys):
    with _console.console():
        print("[1/1] extract ...", end=" ", flush=True)
        with _console.progress(2, desc="bb ds/train", unit="img", enabled="bar") as bar:
            bar.update(2)
        print("done")
    out, err = capsys.readouterr()
    assert out == "[1/1] extract ... \ndone\n"  # on a terminal the bar would have drawn over the job's line
    assert "bb ds/train" in err
