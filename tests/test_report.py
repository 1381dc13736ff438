"""The report's numbers against hand computations on a synthetic results directory, and the report CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import probe
from probe import UsageError
from probe._report import default_report_dir
from probe.analysis import family_bootstrap, paired_bootstrap
from probe.results import mean_per_class_accuracy

from tests._results_fixture import BLOCKS, FEW_SHOT, FEW_SHOT_OFFSET, PLAN, write_fixture

N_BOOT = 2000  # enough for stable intervals, fast for the tests
PYTHON = sys.executable


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    truth = write_fixture(root / "results")
    path = probe.write_report(root / "results", root / "out", n_boot=N_BOOT, seed=0)
    return truth, path, path.read_text()


def _section(text: str, heading: str) -> str:
    """The markdown between ``heading`` and the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)
    return rest[:stop.start()] if stop else rest


def _table(section: str) -> list[dict[str, str]]:
    """The first markdown table of ``section`` as dicts keyed by header."""
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _protocol_row(text: str, dataset: str, backbone: str) -> dict[str, str]:
    protocols = _section(text, "## Frozen probes vs fine-tuning")
    rows = _table(_section(protocols, f"### {dataset}"))
    return next(r for r in rows if r["configuration"] == f"`{backbone} · hub`")


@pytest.mark.parametrize("dataset, backbone", sorted(PLAN))
def test_table_cells_equal_the_selected_test_numbers(study, dataset, backbone):
    truth, _, text = study
    row = _protocol_row(text, dataset, backbone)
    probe_name, tap, frozen_top1 = truth["best_frozen"][(dataset, backbone)]
    assert row["best frozen probe (val-selected)"] == f"{probe_name} / {tap}"
    assert row["frozen top-1 (%)"] == f"{frozen_top1 * 100:.1f}"
    assert row["fine-tune top-1 (%)"] == f"{truth['finetune'][(dataset, backbone)] * 100:.1f}"
    labels = truth["labels"][dataset]
    correct = truth["correct"][(dataset, backbone, probe_name, tap)]
    pred = np.where(correct, labels, -1)
    assert row["frozen mean per-class (%)"] == f"{mean_per_class_accuracy(labels, pred) * 100:.1f}"
    assert row["test images"] == str(len(labels))


@pytest.mark.parametrize("dataset, backbone", sorted(PLAN))
def test_finetune_gain_and_its_paired_interval(study, dataset, backbone):
    truth, _, text = study
    row = _protocol_row(text, dataset, backbone)
    gain = truth["gain"][(dataset, backbone)]
    gain_cell = next(v for k, v in row.items() if k.startswith("gain top-1"))
    assert gain_cell.startswith(f"{gain * 100:+.1f} [")
    # The interval is the paired bootstrap of the two results' per-image correctness (the fine-tune predictions
    # were saved in reverse id order; the report pairs them by id).
    probe_name, tap, _ = truth["best_frozen"][(dataset, backbone)]
    ft = truth["correct"][(dataset, backbone, "finetune", "-")]
    fz = truth["correct"][(dataset, backbone, probe_name, tap)]
    expected = paired_bootstrap(ft, fz, n_boot=N_BOOT, seed=0)
    assert gain_cell == expected.format(signed=True)


def test_best_frozen_is_chosen_on_val_not_test(study):
    # vit_a on alpha: logistic has the best val (0.90, test 0.70); knn the best test (0.85, val 0.80).
    _, _, text = study
    row = _protocol_row(text, "alpha", "vit_a")
    assert row["best frozen probe (val-selected)"] == "logistic / pooled"
    assert row["frozen top-1 (%)"] == "70.0"
    assert PLAN[("alpha", "vit_a")][("knn", "pooled")][1] * 100 == 85.0


def test_family_difference_is_over_backbones_with_a_two_level_interval(study):
    truth, _, text = study
    section = _section(text, "## Families")
    rows = _table(_section(section, "### ConvNets vs transformers"))
    alpha = next(r for r in rows if r["dataset"] == "alpha" and r["side"] == "frozen")
    # Each family's score is the mean over its configurations' val-selected probes (vit_a: logistic, 70.0, though
    # its kNN tests 85.0; vit_b: logistic 80.0), not one hand-picked representative.
    assert alpha["transformers (top-1 %, mean of n)"] == "75.0 (2)"
    assert alpha["ConvNets (top-1 %, mean of n)"] == "75.0 (1)"
    # The interval is the two-level bootstrap over test images and backbones, on the per-image correctness.
    correct = lambda b: truth["correct"][("alpha", b, *truth["best_frozen"][("alpha", b)][:2])]  # noqa: E731
    expected = family_bootstrap(np.c_[correct("cnn_c")], np.c_[correct("vit_a"), correct("vit_b")],
                                labels=truth["labels"]["alpha"], n_boot=N_BOOT, seed=0)
    assert alpha["difference ConvNets − transformers (pp) [95% CI]"] == expected.format()
    beta = next(r for r in rows if r["dataset"] == "beta" and r["side"] == "frozen")
    expected = np.mean([truth["best_frozen"][("beta", b)][2] for b in ("vit_a", "vit_b")])
    assert beta["transformers (top-1 %, mean of n)"] == f"{expected * 100:.1f} (2)"
    assert "frozen: ConvNets win 0 and transformers win 1 of 2 dataset(s) (ties 1); exact sign test p = 1" in section
    assert "**The evidence does not separate ConvNets and transformers** (frozen)" in section
    assert "ConvNets have one backbone configuration on alpha, beta" in section


def test_layerwise_and_few_shot_tables(study):
    _, _, text = study
    layer = _section(text, "## Layer-wise curves")
    assert "### beta" not in layer  # only alpha has block taps
    rows = _table(_section(layer, "### alpha"))
    assert len(rows) == sum(len(v) for v in BLOCKS.values())
    r = next(r for r in rows if r["configuration"] == "`vit_b · hub`" and r["block"] == "3")
    assert r["test top-1 (%) [95% CI]"].startswith(f"{BLOCKS['vit_b'][3] * 100:.1f} [")
    few = _table(_section(_section(text, "## Few-shot curves"), "### beta"))
    r = next(r for r in few if r["configuration"] == "`vit_b · hub`" and r["shots per class"] == "1")
    accs = np.array(FEW_SHOT[1]) + FEW_SHOT_OFFSET["vit_b"]
    assert r["seeds"] == "3"
    assert r["test top-1 (%) mean ± sd"] == f"{accs.mean() * 100:.1f} ± {accs.std(ddof=1) * 100:.1f}"


def test_report_states_selection_ci_and_figures(study):
    _, path, text = study
    assert "Selection was on val, never on test" in text
    assert "paired bootstrap 95% confidence interval" in text and f"{N_BOOT} resamples" in text
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert {Path(f).name for f in figures} == {
        "alpha-frozen-vs-finetune.png", "beta-frozen-vs-finetune.png", "families-convnet-vs-transformer.png",
        "alpha-layerwise.png", "alpha-few-shot.png", "beta-few-shot.png"}
    for f in figures:
        _assert_png(path.parent / f)


def _assert_png(path: Path):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.verify()
        assert img.size[0] > 300 and img.size[1] > 200


@pytest.mark.parametrize("kind", ["frozen-only", "finetune-only", "one-backbone", "no-predictions"])
def test_partial_results_drop_sections_with_a_note(tmp_path, kind):
    results = tmp_path / "results"
    if kind == "frozen-only":
        write_fixture(results, finetune=False, layerwise=False, few_shot=False)
    elif kind == "finetune-only":
        write_fixture(results, frozen=False)
    elif kind == "one-backbone":
        write_fixture(results, backbones=["vit_a"])
    else:
        write_fixture(results, layerwise=False, few_shot=False)
        for npz in results.rglob("finetune-*.npz"):
            npz.unlink()
    text = probe.write_report(results, tmp_path / "out", n_boot=200).read_text()
    if kind == "frozen-only":
        assert "No fine-tuning results" in text
        assert "No `block<i>` taps" in text and "No few-shot results" in text
        assert _protocol_row(text, "alpha", "vit_a")["frozen top-1 (%)"] == "70.0"
    elif kind == "finetune-only":
        assert "No frozen-probe results" in text and "No few-shot results" in text
        assert _protocol_row(text, "beta", "cnn_c")["fine-tune top-1 (%)"] == "71.0"
        assert "### ConvNets vs transformers" in text  # the family comparison works on fine-tuning alone
    elif kind == "one-backbone":
        assert "Only one family (transformer)" in text
        assert _protocol_row(text, "alpha", "vit_a")["frozen top-1 (%)"] == "70.0"
    else:
        cell = next(v for k, v in _protocol_row(text, "alpha", "vit_a").items() if k.startswith("gain top-1"))
        assert cell.startswith("+20.0 (no CI: no saved predictions")
    for png in (tmp_path / "out" / "figures").glob("*.png"):
        _assert_png(png)


def test_default_output_is_beside_the_results_and_stale_figures_go(tmp_path):
    results = tmp_path / "study" / "results"
    write_fixture(results, backbones=["cnn_c"], layerwise=False, few_shot=False)
    assert default_report_dir(results) == (tmp_path / "study" / "report").resolve()
    stale = tmp_path / "study" / "report" / "figures" / "old.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    path = probe.write_report(results, n_boot=100)
    assert path == (tmp_path / "study" / "report" / "report.md").resolve()
    assert not stale.exists()


def test_job_without_val_rows_is_left_out_with_a_note(tmp_path):
    import polars as pl

    results = tmp_path / "results"
    write_fixture(results, backbones=["vit_a"], layerwise=False, few_shot=False)
    for file in (results / "vit_a" / "beta").glob("*.parquet"):
        pl.read_parquet(file).filter(pl.col("split") == "test").write_parquet(file)
    text = probe.write_report(results, tmp_path / "out", n_boot=100).read_text()
    assert "vit_a · hub on beta: no val score for the selected setting" in text
    assert "### beta" not in _section(text, "## Frozen probes vs fine-tuning")


def test_missing_or_empty_results_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        probe.write_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no results"):
        probe.write_report(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------- CLI


def _cli(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([PYTHON, "-m", "probe", "report", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def test_cli_writes_the_report_and_prints_its_path(tmp_path):
    results = tmp_path / "results"
    write_fixture(results)
    out = tmp_path / "out"
    proc = _cli(results, "--out", out, "--n-boot", 500, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.splitlines()[0])  # report.md, then report.html (--format both)
    assert path == out / "report.md" and path.is_file()
    text = path.read_text()
    for heading in ("## Frozen probes vs fine-tuning", "## Families", "## Layer-wise curves",
                    "## Few-shot curves", "500 resamples, seed 3"):
        assert heading in text
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 6
    for png in pngs:
        _assert_png(png)


def test_cli_defaults_to_results_like_every_other_command(tmp_path):
    write_fixture(tmp_path / "results", backbones=["cnn_c"], layerwise=False, few_shot=False)
    proc = _cli("--n-boot", 50, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[0]) == (tmp_path / "report" / "report.md").resolve()
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.parametrize("args", [["missing"], ["empty"], ["results", "--n-boot", "0"]])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args):
    (tmp_path / "empty").mkdir()
    if args[0] == "results":
        write_fixture(tmp_path / "results", backbones=["cnn_c"], layerwise=False, few_shot=False)
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: error: "), proc.stderr


def test_cli_module_imports_nothing_heavy():
    code = ("import sys, probe.commands.report; "
            "heavy = [m for m in ('matplotlib', 'polars', 'torch', 'probe._report') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([PYTHON, "-c", code], check=True, timeout=60)
