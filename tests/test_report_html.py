"""The HTML explorer (report.html) in a real headless browser, checked against the parquet results read with polars.

The results are the synthetic study of ``tests/_results_fixture.py`` (written through the real results contract)
plus two jobs scored under another evaluation scheme (``test carve 0.2``), which the page must keep apart from
the ``splits`` rows of the same backbone, probe and tap. The browser is Debian's Chromium driven by selenium
through chromedriver; where either is missing the browser tests are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import probe
from tests._browser import assert_offline, assert_screenshot_not_blank, browser_or_skip, open_page, wait_ready
from tests._browser import column as _column, number as _number, table as _table
from tests._helpers import assert_one_line_error
from tests._results_fixture import _write_job, write_fixture

N_BOOT = 300
CARVE = "test carve 0.2"
#: the jobs under CARVE: (backbone, val top1, test top1) of a logistic probe on beta's pooled features
CARVE_JOBS = (("vit_a", 0.70, 0.62), ("cnn_c", 0.65, 0.48))


def _write_results(results: Path) -> None:
    write_fixture(results)
    for backbone, val, test in CARVE_JOBS:
        # the select_metric in the identity only gives the file its own name (the stem's tag)
        _write_job(results, dataset="beta", backbone=backbone, probe="logistic", tap="pooled", val=val, test=test,
                   identity={"evaluation": CARVE, "select_metric": "top1"})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    results = root / "results"
    _write_results(results)
    (root / "study.toml").write_text('[study]\nname = "fixture-study"\n')  # found beside the results folder
    path = probe.write_html_report(results, root / "report", n_boot=N_BOOT, seed=0, command="probe report test")
    return results, path


# ------------------------------------------------------------------------------------------ the parquet truth

def _jobs(results: Path):
    """One row per job from the parquet files: its selected test row and the val score of the chosen params."""
    import polars as pl

    rows = pl.scan_parquet(sorted(str(p) for p in results.rglob("*.parquet")), include_file_paths="file").collect()
    rows = rows.with_columns(pl.col("evaluation").fill_null("splits"))
    test = rows.filter(pl.col("selected") & (pl.col("split") == "test"))
    val = rows.filter(pl.col("split") == "val").select("file", "params", pl.col("top1").alias("val"))
    return test.join(val, on=["file", "params"], how="left")


def _protocols(results: Path):
    """Seed means per (dataset, backbone, probe, tap, shots, evaluation): what the page's protocol rows show."""
    import polars as pl

    return (_jobs(results).group_by("dataset", "backbone", "probe", "tap", "shots", "evaluation")
            .agg(pl.col("top1").mean(), pl.len().alias("n")))


def _best_frozen(results: Path) -> dict:
    """(dataset, backbone) -> test top1 of the full-data frozen probe with the best val score (splits only)."""
    import polars as pl

    jobs = _jobs(results).filter((pl.col("shots") == 0) & (pl.col("probe") != "finetune")
                                 & (pl.col("tap") == "pooled") & (pl.col("evaluation") == "splits"))
    best = {}
    for r in jobs.sort("val", descending=True).to_dicts():
        best.setdefault((r["dataset"], r["backbone"]), r["top1"])
    return best


# ------------------------------------------------------------------------------------------ without a browser

def test_page_is_one_self_contained_file(report):
    _, path = report
    text = path.read_text()
    assert path.stat().st_size < 5 * 2**20
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    # nothing is loaded from anywhere: no external script, style, image or font
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", text)
    assert "<link" not in text and "@import" not in text and "url(http" not in text
    assert "fixture-study" in _data(path)["provenance"]["study"]["text"]
    assert text.count("<svg role=\"img\"") >= 4  # the figures, inline, each with a title
    for svg in re.findall(r"<svg role=\"img\".*?</svg>", text, flags=re.S):
        assert re.search(r"<title id=\"fig\d+-title\">[^<]+</title>", svg)


def test_embedded_tables_hold_the_analysis_numbers(report):
    results, path = report
    data = _data(path)
    gains = next(t for t in data["tables"].values() if t["id"].endswith("gains-classification-splits"))
    truth = _best_frozen(results)
    for row in gains["rows"]:
        backbone = row["config"]["label"].split(" · ")[0]
        # vit_a on alpha: logistic has the best val (0.90) and test 0.70; kNN's test 0.85 must not be shown
        assert row["frozen"]["est"] == pytest.approx(truth[(row["dataset"], backbone)])
        assert row["frozen"]["low"] <= row["frozen"]["est"] <= row["frozen"]["high"]
    assert {r["dataset"] for r in gains["rows"]} == {"alpha", "beta"}
    carve = next(t for t in data["tables"].values() if t["id"].endswith("gains-classification-test-carve-0-2"))
    assert sorted(r["frozen"]["est"] for r in carve["rows"]) == pytest.approx(sorted(t for _, _, t in CARVE_JOBS))
    # paired comparisons are stored both ways round, each the negation of the other
    pairs = {(p["a"], p["b"], p["dataset"], p["side"], p["evaluation"]): p for p in data["pairs"]}
    for (a, b, *rest), p in pairs.items():
        q = pairs[(b, a, *rest)]
        assert p["diff"]["est"] == pytest.approx(-q["diff"]["est"])
        assert p["diff"]["low"] == pytest.approx(-q["diff"]["high"])


def _data(path: Path) -> dict:
    text = path.read_text()
    payload = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, flags=re.S)
    return json.loads(payload.group(1).replace("<\\/", "</"))


# ------------------------------------------------------------------------------------------ the CLI

def _cli(*args, cwd=None):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "probe", "report", *map(str, args)], capture_output=True,
                          text=True, timeout=180, cwd=cwd, env=env)


@pytest.mark.parametrize("fmt, files", [("html", ["report.html"]), ("md", ["report.md"]),
                                        (None, ["report.md", "report.html"])])
def test_cli_format_writes_the_chosen_files_and_prints_their_paths(tmp_path, fmt, files):
    write_fixture(tmp_path / "results", backbones=["cnn_c", "vit_a"], layerwise=False, few_shot=False)
    out = tmp_path / "out"
    proc = _cli(tmp_path / "results", "--out", out, "--n-boot", 50, *(["--format", fmt] if fmt else []))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(out / f) for f in files]
    assert sorted(p.name for p in out.glob("report.*")) == sorted(files)
    if "report.html" in files:
        text = (out / "report.html").read_text()
        assert "probe report " in text and "--n-boot 50" in text  # the command, in the provenance panel


def test_cli_bad_format_is_one_line(tmp_path):
    write_fixture(tmp_path / "results", backbones=["cnn_c"], layerwise=False, few_shot=False)
    assert_one_line_error(_cli(tmp_path / "results", "--format", "pdf"), 2, "--format", "pdf")
    assert_one_line_error(_cli(tmp_path / "missing", "--format", "html"), 2, "missing")


# ------------------------------------------------------------------------------------------ in the browser

@pytest.fixture(scope="module")
def browser(report):
    driver = browser_or_skip()
    _, path = report
    # the first load's network log and console, before anything else reads them
    driver.first_load = open_page(driver, path.resolve().as_uri())
    yield driver
    driver.quit()


@pytest.fixture
def page(browser):
    browser.get(browser.first_load["url"])
    wait_ready(browser)
    return browser


def test_no_network_request_and_no_console_error(browser):
    assert_offline(browser.first_load)


def test_sort_a_column(page, report):
    from selenium.webdriver.common.by import By

    results, _ = report
    table = _table(page, "gains-classification-splits")
    table.find_element(By.CSS_SELECTOR, "th[data-col='frozen'] button").click()
    table = _table(page, "gains-classification-splits")
    assert table.find_element(By.CSS_SELECTOR, "th[data-col='frozen']").get_attribute("aria-sort") == "descending"
    shown = [_number(t) for t in _column(table, "frozen")]
    assert shown == sorted((round(v * 100, 1) for v in _best_frozen(results).values()), reverse=True)
    table.find_element(By.CSS_SELECTOR, "th[data-col='frozen'] button").click()
    shown = [_number(t) for t in _column(_table(page, "gains-classification-splits"), "frozen")]
    assert shown == sorted(shown) and len(shown) == 6


def test_filters_show_the_rows_of_the_parquet_results(page, report):
    import polars as pl
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    results, _ = report
    truth = _protocols(results)
    Select(page.find_element(By.ID, "filter-dataset")).select_by_value("alpha")
    gains = _table(page, "gains-classification-splits")
    assert set(_column(gains, "dataset")) == {"alpha"} and len(_column(gains, "dataset")) == 3
    protocols = _table(page, "protocols")
    assert len(_column(protocols, "dataset")) == truth.filter(pl.col("dataset") == "alpha").height

    Select(page.find_element(By.ID, "filter-dataset")).select_by_value("beta")
    Select(page.find_element(By.ID, "filter-evaluation")).select_by_value(CARVE)
    protocols = _table(page, "protocols")
    expected = truth.filter((pl.col("dataset") == "beta") & (pl.col("evaluation") == CARVE))
    assert set(_column(protocols, "evaluation")) == {CARVE}
    assert sorted(_number(t) for t in _column(protocols, "test")) == \
        sorted(round(v * 100, 1) for v in expected["top1"].to_list())
    # the splits scope's tables have no row left, the carve scope's have its two configurations
    assert _column(_table(page, "gains-classification-splits"), "dataset") == []
    assert len(_column(_table(page, "gains-classification-test-carve-0-2"), "dataset")) == 2
    page.find_element(By.ID, "filter-reset").click()
    assert len(_column(_table(page, "protocols"), "dataset")) == truth.height


def test_drill_down_shows_the_configurations_protocols_curves_and_pairs(page, report):
    import polars as pl
    from selenium.webdriver.common.by import By

    results, _ = report
    table = _table(page, "gains-classification-splits")
    table.find_element(By.CSS_SELECTOR, "button.config-link[data-config]").click()
    dialog = page.find_element(By.ID, "drill")
    assert dialog.get_attribute("open") is not None and dialog.is_displayed()
    label = page.find_element(By.ID, "drill-title").text
    backbone = label.split(" · ")[0]
    rows = dialog.find_elements(By.CSS_SELECTOR, "#drill-protocols tbody tr")
    truth = _protocols(results).filter(pl.col("backbone") == backbone)
    assert len(rows) == truth.height
    shown = []
    for row in rows:
        cell = {td.get_attribute("data-col"): td.text for td in row.find_elements(By.TAG_NAME, "td")}
        probe_name, tap = cell["method"].split(" (")[0].split(" / ") if " / " in cell["method"] else ("finetune", "-")
        shown.append((cell["dataset"], probe_name, tap, int(cell["shots"]), cell["evaluation"], _number(cell["test"]),
                      int(cell["n"])))
    expected = [(r["dataset"], r["probe"], r["tap"], r["shots"], r["evaluation"], round(r["top1"] * 100, 1), r["n"])
                for r in truth.to_dicts()]
    assert sorted(shown) == sorted(expected)
    # its layer-wise and few-shot curves, one small chart per curve, markers drawn
    curves = dialog.find_elements(By.CSS_SELECTOR, "#drill-curves figure svg")
    assert len(curves) == 1 + 2  # layer-wise on alpha, few-shot on alpha and beta
    # paired comparisons with another configuration: this − other with its interval
    pairs = dialog.find_elements(By.CSS_SELECTOR, "#drill-pairs tbody td[data-col='diff']")
    assert pairs and all(re.match(r"[+-]?\d+\.\d \[[+-]?\d+\.\d, [+-]?\d+\.\d\]", p.text) for p in pairs)
    page.find_element(By.ID, "drill-close").click()
    assert dialog.get_attribute("open") is None


def test_screenshot_is_not_blank(page, tmp_path):
    assert_screenshot_not_blank(page, tmp_path / "page.png")
