"""probe.analysis: selection by configuration, seed means, no pooling, the family bootstrap, figures.

The README scenario of issue 8 (one backbone name with pretrained-like weights and with --random-init at two
input sizes) is written through the real results contract by tests/_results_fixture.write_mixed_fixture.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

import probe
from probe import analysis
from probe.results import make_row, write_results

from tests._results_fixture import CONFIGS, MIXED, MIXED_FEW_SHOT, MIXED_OFFSET, write_fixture, write_mixed_fixture

N_BOOT = 300


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_mixed_fixture(root / "results")
    report = probe.write_report(root / "results", root / "report", n_boot=N_BOOT).read_text()
    return root / "results", report


def _section(text: str, heading: str) -> str:
    level = heading.split(" ")[0]
    rest = text[text.index(heading + "\n") + len(heading) + 1:]
    stop = re.search(rf"^#{{1,{len(level)}}} ", rest, flags=re.M)
    return rest[:stop.start()] if stop else rest


def _table(section: str) -> list[dict[str, str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _label(config: str) -> str:
    return f"`{CONFIGS[config]['config_label']}`"


# ----------------------------------------------------------------------------------------- selection


def test_public_names_are_the_analysis_functions():
    assert probe.compare_jobs is analysis.compare_jobs and probe.paired_bootstrap is analysis.paired_bootstrap
    assert probe.analysis.best_by_val is analysis.best_by_val


def test_import_is_cheap():
    code = ("import sys, probe.analysis; heavy = [m for m in ('torch', 'polars', 'matplotlib') if m in sys.modules];"
            " assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_seed_mean_val_never_the_luckiest_carve(mixed):
    results, _ = mixed
    protocols = analysis.aggregate_seeds(analysis.job_table(results).filter(pl.col("shots") == 0))
    config = "bbbbbbbbbbbb"
    logistic = protocols.filter((pl.col("backbone_config") == config) & (pl.col("probe") == "logistic")).row(
        0, named=True)
    vals, tests = MIXED[config][("logistic", "pooled")]
    assert logistic["n"] == 3 and logistic["seeds"] == [0, 1, 2]
    assert logistic["val_score"] == pytest.approx(np.mean(vals))
    assert logistic["top1"] == pytest.approx(np.mean(tests)) and logistic["top1_sd"] == pytest.approx(
        np.std(tests, ddof=1))
    best = analysis.best_by_val(protocols.filter(pl.col("probe") != "finetune"))
    chosen = best.filter(pl.col("backbone_config") == config).row(0, named=True)
    assert chosen["probe"] == "knn"  # val mean 0.70 > logistic's 0.683, though logistic's seed 0 scored 0.95
    # one row per configuration: the three test_vit configurations are never merged
    assert sorted(best["backbone_config"].to_list()) == sorted(CONFIGS)


def test_select_metric_is_part_of_what_is_compared(tmp_path):
    # One configuration: logistic selected on top1 (val 0.6) and knn selected on top5 (val 0.9 in top5).
    common = dict(backbone="b", family="convnet", weights="hub", dataset="d", tap="pooled", shots=0, seed=0,
                  backbone_config="cfg000000000", config_label="b · hub · 224px", n_eval=10)
    for probe_name, metric, val in (("logistic", "top1", 0.6), ("knn", "top5", 0.9)):
        rows = [make_row(**common, probe=probe_name, params={"k": 1}, selected=False, split="val", top1=0.5,
                         top5=val, select_metric=metric, protocol=f"p-{metric}"),
                make_row(**common, probe=probe_name, params={"k": 1}, selected=True, split="test", top1=0.5,
                         top5=0.9, select_metric=metric, protocol=f"p-{metric}")]
        rows[0]["top1"] = val if metric == "top1" else 0.1
        write_results(rows, tmp_path / f"{probe_name}.parquet")
    best = analysis.best_by_val(analysis.aggregate_seeds(analysis.job_table(tmp_path)))
    assert sorted(zip(best["select_metric"], best["probe"], best["val_score"])) == [
        ("top1", "logistic", 0.6), ("top5", "knn", 0.9)]


def test_lower_is_better_metrics_select_the_smallest():
    frame = pl.DataFrame({"dataset": ["d"] * 2, "task": ["regression"] * 2, "backbone_config": ["c"] * 2,
                          "select_metric": ["rmse"] * 2, "protocol": ["p1", "p2"], "probe": ["ridge", "knn"],
                          "tap": ["pooled"] * 2, "val_score": [0.3, 0.2], "n": [1, 1], "config_label": ["c"] * 2})
    assert analysis.best_by_val(frame)["probe"].to_list() == ["knn"]
    assert analysis.lower_is_better("rmse") and not analysis.lower_is_better("top1")


def test_a_job_without_the_selected_val_row_is_never_chosen(tmp_path):
    # One rule: the val score is the val row of the selected params; no such row, no val score (and a note).
    common = dict(backbone="b", family="convnet", weights="hub", dataset="d", tap="pooled", probe="logistic",
                  shots=0, seed=0, select_metric="top1", n_eval=10)
    write_results([make_row(**common, params={"C": 0.1}, selected=False, split="val", top1=0.99),
                   make_row(**common, params={"C": 1.0}, selected=True, split="test", top1=0.5)],
                  tmp_path / "a.parquet")
    jobs = analysis.job_table(tmp_path)
    assert jobs["val_score"].to_list() == [None]
    notes: list[str] = []
    assert analysis.best_by_val(analysis.aggregate_seeds(jobs), notes=notes).is_empty()
    assert notes and "no val score for the selected setting" in notes[0]


def test_older_rows_are_their_own_configuration(tmp_path):
    common = dict(backbone="b", family="convnet", weights="hub", dataset="d", tap="pooled", probe="logistic",
                  shots=0, select_metric="top1", n_eval=10, params={"C": 1.0})
    for seed, ident in ((0, {}), (1, dict(backbone_config="0123456789ab", config_label="b · hub · 224px",
                                          protocol="fedcba987654", img_size=224))):
        write_results([make_row(**common, **ident, seed=seed, selected=False, split="val", top1=0.5),
                       make_row(**common, **ident, seed=seed, selected=True, split="test", top1=0.5)],
                      tmp_path / f"s{seed}.parquet")
    protocols = analysis.aggregate_seeds(analysis.job_table(tmp_path))
    assert protocols.height == 2 and set(protocols["n"]) == {1}  # never pooled into one mean of 2 seeds
    legacy = protocols.filter(pl.col("backbone_config").str.starts_with("legacy:")).row(0, named=True)
    assert legacy["config_label"] == "b · hub" and legacy["protocol"].startswith("legacy:")


# ----------------------------------------------------------------------------------------- README scenario


def test_report_rows_are_configurations(mixed):
    _, text = mixed
    configs = _table(_section(text, "## Backbone configurations"))
    assert {r["configuration"] for r in configs} == {_label(c) for c in CONFIGS}
    r160 = next(r for r in configs if r["configuration"] == _label("bbbbbbbbbbbb"))
    assert (r160["weights"], r160["input size"], r160["family source"]) == ("`random-init:seed0`", "160 px", "table")
    rows = _table(_section(_section(text, "## Frozen probes vs fine-tuning"), "### alpha"))
    assert len(rows) == len(CONFIGS)
    by = {r["configuration"]: r for r in rows}
    pre = by[_label("aaaaaaaaaaaa")]
    vals, tests = MIXED["aaaaaaaaaaaa"][("logistic", "pooled")]
    # the pretrained-like row keeps its own best frozen probe, and its gain compares it with its own fine-tune
    assert pre["best frozen probe (val-selected)"] == "logistic / pooled"
    assert pre["frozen top-1 (%)"] == f"{np.mean(tests) * 100:.1f} ± {np.std(tests, ddof=1) * 100:.1f}"
    assert pre["frozen seeds"] == "3" and pre["frozen train images"] == "40"
    gain = np.mean(MIXED["aaaaaaaaaaaa"][("finetune", "-")][1]) - np.mean(tests)
    assert pre["gain top-1 (pp) [95% CI]"].startswith(f"{gain * 100:+.1f} [")
    for config in ("bbbbbbbbbbbb", "cccccccccccc"):  # random-init: no fine-tuning of its own
        assert by[_label(config)]["fine-tuning (val-selected)"] == "—"
        assert by[_label(config)]["gain top-1 (pp) [95% CI]"] == "—"
    assert by[_label("bbbbbbbbbbbb")]["best frozen probe (val-selected)"] == "knn / pooled"


def test_few_shot_table_never_pools_configurations(mixed):
    _, text = mixed
    rows = _table(_section(_section(text, "## Few-shot curves"), "### alpha"))
    assert len(rows) == len(CONFIGS) * len(MIXED_FEW_SHOT)
    assert {r["seeds"] for r in rows} == {"3"}  # not "6" or "9": configurations are never pooled
    for r in rows:
        config = next(c for c in CONFIGS if _label(c) == r["configuration"])
        accs = np.array(MIXED_FEW_SHOT[int(r["shots per class"])]) + MIXED_OFFSET[config]
        assert r["test top-1 (%) mean ± sd"] == f"{accs.mean() * 100:.1f} ± {accs.std(ddof=1) * 100:.1f}"


def test_family_comparison_keeps_random_init_apart(mixed):
    _, text = mixed
    rows = _table(_section(_section(text, "## Families"), "### ConvNets vs transformers"))
    kinds = {(r["side"], r["weights"]): r for r in rows}
    # pretrained-like: test_resnet vs test_vit (file weights); random-init transformers have no ConvNet to meet
    assert set(kinds) == {("frozen", "pretrained"), ("fine-tune", "pretrained")}
    assert kinds[("frozen", "pretrained")]["transformers (top-1 %, mean of n)"].endswith("(1)")


def test_console_summary_has_one_row_per_configuration(mixed):
    results, _ = mixed
    tables = analysis.summary_tables(results)
    (title, summary, metric), = [t for t in tables if t[0].startswith("classification:")]
    assert metric.name == "top1"
    assert summary.columns[:5] == ["dataset", "configuration", "family", "selected on", "seeds"]
    assert summary.columns[5:] == ["logistic / pooled", "knn / pooled", "finetune (full)"]  # fixed order
    assert sorted(summary["configuration"].to_list()) == sorted(c["config_label"] for c in CONFIGS.values())
    for r in summary.iter_rows(named=True):
        config = next(c for c in CONFIGS if CONFIGS[c]["config_label"] == r["configuration"])
        assert r["logistic / pooled"] == pytest.approx(np.mean(MIXED[config][("logistic", "pooled")][1]))
        assert r["seeds"] == "3"
    text = "\n".join(analysis.summary_lines(results, tables=tables))
    assert "shots = 0" in text and "all shots" not in text


# ----------------------------------------------------------------------------------------- bootstrap


def test_seed_means_are_bootstrapped_with_compare_jobs(mixed):
    results, _ = mixed
    jobs = analysis.job_table(results)
    files = lambda c, p: jobs.filter((pl.col("backbone_config") == c) & (pl.col("probe") == p)  # noqa: E731
                                     & (pl.col("shots") == 0)).sort("seed")["file"].to_list()
    ft, fz = files("aaaaaaaaaaaa", "finetune"), files("aaaaaaaaaaaa", "logistic")
    r = analysis.compare_jobs(ft, fz, n_boot=500)
    expected = np.mean(MIXED["aaaaaaaaaaaa"][("finetune", "-")][1]) - np.mean(
        MIXED["aaaaaaaaaaaa"][("logistic", "pooled")][1])
    assert r.estimate == pytest.approx(expected) and r.n == 200 and r.low < r.estimate < r.high
    single = analysis.job_ci(fz, n_boot=500)
    assert single.estimate == pytest.approx(np.mean(MIXED["aaaaaaaaaaaa"][("logistic", "pooled")][1]))


def test_top5_is_computed_from_the_saved_top5_columns(tmp_path):
    from probe.results import save_artifacts

    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    scores = np.tile(np.arange(8, dtype=np.float32), (8, 1))  # every row ranks classes 7, 6, 5, 4, 3 first
    save_artifacts(tmp_path / "a", ids=np.array([f"i{i}" for i in range(8)]), labels=labels, scores=scores)
    assert analysis.job_ci(tmp_path / "a", metric="top5", n_boot=50).estimate == pytest.approx(5 / 8)
    assert analysis.job_ci(tmp_path / "a", metric="top1", n_boot=50).estimate == pytest.approx(1 / 8)
    with pytest.raises(probe.UsageError, match="cannot bootstrap metric"):
        analysis.job_ci(tmp_path / "a", metric="miou")


def test_pairing_refuses_duplicate_ids():
    ids = np.array(["a", "a", "b"])
    out = analysis.align_by_id([(ids, np.zeros(3), np.ones(3)), (ids, np.zeros(3), np.ones(3))])
    assert isinstance(out, str) and "duplicate" in out


def _family(accuracies, n, rng):
    """Per-image correctness [n, members] with exactly round(acc * n) correct images per member."""
    cols = []
    for acc in accuracies:
        c = np.zeros(n)
        c[rng.permutation(n)[:int(round(acc * n))]] = 1
        cols.append(c)
    return np.stack(cols, axis=1)


def test_family_bootstrap_known_separation(seed=0):
    rng = np.random.default_rng(seed)
    a, b = _family([0.90, 0.88, 0.92], 1000, rng), _family([0.60, 0.62, 0.58], 1000, rng)
    r = analysis.family_bootstrap(a, b, n_boot=2000, seed=seed)
    assert r.estimate == pytest.approx(0.30) and r.separates and r.low > 0.2 and r.winner == "a"
    assert r.p_le_zero == 0.0 and r.n_images == 1000 and not r.notes


def test_family_bootstrap_no_separation_when_backbones_disagree():
    # Family means differ by 5 points, and on 4000 images an image-only bootstrap would call that clear; but
    # family a's two backbones are 40 points apart, so the choice of backbones decides it: no separation.
    rng = np.random.default_rng(1)
    a, b = _family([0.95, 0.55], 4000, rng), _family([0.70, 0.70], 4000, rng)
    r = analysis.family_bootstrap(a, b, n_boot=4000, seed=0)
    assert r.estimate == pytest.approx(0.05)
    assert not r.separates and r.low < 0 < r.high
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)  # the same difference without backbone resampling
    idx = rng.integers(0, 4000, size=(2000, 4000))
    diffs = mean_a[idx].mean(axis=1) - mean_b[idx].mean(axis=1)
    assert np.quantile(diffs, 0.025) > 0  # ...which would have "separated" the families


def test_family_bootstrap_mean_per_class_and_single_member_note():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 50)
    a, b = _family([0.8], 200, rng), _family([0.5, 0.6], 200, rng)
    r = analysis.family_bootstrap(a, b, labels=labels, metric="mean_per_class_acc", names_a=["cnn"], n_boot=500)
    per_class = lambda v: np.mean([v[labels == c].mean() for c in range(4)])  # noqa: E731
    assert r.estimate == pytest.approx(per_class(a[:, 0]) - np.mean([per_class(b[:, 0]), per_class(b[:, 1])]))
    assert r.notes and "one backbone (cnn)" in r.notes[0]


@pytest.mark.parametrize("wins_a, wins_b", [(0, 0), (3, 0), (6, 0), (5, 1), (4, 4), (10, 2), (1, 9)])
def test_sign_test_matches_scipy(wins_a, wins_b):
    from scipy.stats import binomtest

    expected = 1.0 if wins_a + wins_b == 0 else binomtest(wins_a, wins_a + wins_b, 0.5).pvalue
    assert analysis.sign_test(wins_a, wins_b) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------- figures


def _labelled(fig) -> list:
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() or ax.get_yticklabels()
    return axes


def test_figures_return_labelled_figures_with_family_colours(mixed, tmp_path):
    from matplotlib.colors import to_hex

    results, _ = mixed
    jobs = analysis.job_table(results)
    styles = analysis.Styles.from_frame(jobs)
    protocols = analysis.aggregate_seeds(jobs)
    full = protocols.filter(pl.col("shots") == 0)
    frozen = analysis.best_by_val(full.filter(pl.col("probe") != "finetune"))
    ft = analysis.best_by_val(full.filter(pl.col("probe") == "finetune"))
    gains = analysis.finetune_gains(frozen, ft, n_boot=100)
    figs = {
        "few": analysis.few_shot_figure(protocols, styles=styles),
        "gain": analysis.gain_figure(gains, styles=styles),
        "scatter": analysis.finetune_scatter_figure(gains, styles=styles),
        "bars": analysis.frozen_vs_finetune_figure(gains, styles=styles),
        "family": analysis.family_figure(analysis.compare_families(frozen, n_boot=100)),
    }
    for name, fig in figs.items():
        _labelled(fig)
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    # colours mean family, and one configuration keeps one marker in every figure
    ax = figs["few"].axes[0]
    resnet = next(c.lines[0] for c in ax.containers if c.get_label().startswith("test_resnet"))
    assert to_hex(resnet.get_color()) == to_hex(analysis.FAMILY_COLORS["convnet"])
    assert resnet.get_marker() == styles.of("dddddddddddd")["marker"]
    markers = {styles.of(c)["marker"] for c in CONFIGS}
    assert len(markers) == len(CONFIGS)
    assert figs["scatter"].axes[0].get_xlabel().startswith("best frozen probe")
    assert not [t for t in figs["scatter"].axes[0].texts]  # no point labels that could overlap: a legend instead


def test_layerwise_relative_depth(tmp_path):
    write_fixture(tmp_path / "results", finetune=False, few_shot=False)
    protocols = analysis.aggregate_seeds(analysis.job_table(tmp_path / "results"))
    blocks = protocols.filter(pl.col("tap").str.starts_with("block"))
    fig = analysis.layerwise_figure(blocks, relative_depth=True, n_blocks={"vit_a": 8})
    ax = _labelled(fig)[0]
    assert "relative depth" in ax.get_xlabel()
    xs = {c.get_label().split(" ")[0]: c.lines[0].get_xdata() for c in ax.containers}
    # four taps, block0..block3: x = (i + 1) / n; vit_a was told it has 8 blocks (offsets keep lines apart)
    assert np.allclose(np.sort(xs["cnn_c"]) - np.sort(xs["cnn_c"])[0], [0, 0.25, 0.5, 0.75], atol=1e-9)
    assert np.sort(xs["vit_a"])[-1] == pytest.approx(0.5, abs=0.02)
    fig = analysis.layerwise_figure(blocks)
    assert "block index" in fig.axes[0].get_xlabel()
    assert math.isclose(max(max(c.lines[0].get_xdata()) for c in fig.axes[0].containers), 3, abs_tol=0.1)
