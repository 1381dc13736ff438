"""The default study's own output through everything that reads results (issue 21, defect 0): the three notebooks,
``probe report`` and the console summary, on classification, dense (segmentation, depth, multi-task), face and
regression rows, transferability scores and similarity matrices.

The study is the embedded default study (probe/default_study.toml) with two of its four backbones (one ConvNet,
one transformer) and shorter training, run once per module through the CLI in a subprocess: every dataset, task,
evaluation scheme and fine-tune kind of the default study is there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("test_resnet", "test_vit")

# the study runs once for the module (minutes; more on a busy 2-core machine); the first test waits for it
pytestmark = pytest.mark.timeout(1800)


def _small_default_study() -> str:
    """The default study's text with two backbones, one-epoch training, two person-grouped folds on faces and
    one few-shot draw (every dataset, task, evaluation kind and fine-tune kind as they are)."""
    text = (ROOT / "probe" / "default_study.toml").read_text()
    blocks = re.split(r"(?m)^(?=\[)", text)  # one block per table, up to the next table header
    kept = [b for b in blocks if not b.startswith("[[backbones]]")
            or re.search(r'name = "(' + "|".join(KEEP) + r')"', b)]
    text = "".join(kept)
    text = re.sub(r"(?m)^epochs = \d+", "epochs = 1", text)
    text = re.sub(r"(?m)^cv = \d+", "cv = 2", text)
    text = re.sub(r"(?m)^shots = \[[^]]*\]", "shots = [5]", text)
    text = re.sub(r"(?m)^seeds = \[0, 1, 2\]", "seeds = [0]", text)
    return text


@pytest.fixture(scope="module")
def default_results(tmp_path_factory):
    work = tmp_path_factory.mktemp("default")
    (work / "study.toml").write_text(_small_default_study())
    # the reports are written by the tests below, with fewer bootstrap resamples (the run's own would take minutes)
    proc = run_cli("run", "study.toml", "--no-progress", "--no-report", "--workers", "0", cwd=work, timeout=1700,
                   check=0)
    return work, proc


def test_the_default_study_covers_every_task(default_results):
    import polars as pl

    import probe

    work, proc = default_results
    rows = probe.scan_results(work / "results").collect()
    assert set(rows["task"]) == {"classification", "segmentation", "depth", "identification", "verification",
                                 "regression"}
    assert set(rows.filter(pl.col("probe") == "finetune")["task"]) >= {"classification", "segmentation", "depth",
                                                                       "regression"}
    # the lighter copy keeps [transfer] and [similarity]: scores per configuration and task, similarity matrices
    scores = rows.filter(pl.col("probe") == "transfer")
    assert set(zip(scores["dataset"], scores["task"])) == {("digits", "classification"), ("faces", "regression")}
    assert set(scores["backbone"]) == set(KEEP) and {"logme", "params", "gflops"} <= set(scores["score"])
    # distribution shift: each configuration's fine-tune and frozen probes scored on the same shifted images
    shifted = rows.filter(pl.col("eval_dataset") != pl.col("dataset"))
    assert set(shifted["eval_dataset"]) == {"digits-c-gaussian_noise-3", "digits-c-blur-3"}
    assert set(shifted["dataset"]) == {"digits"} and shifted["selected"].all()
    assert {"finetune", "logistic"} <= set(shifted["probe"]) and set(shifted["backbone"]) == set(KEEP)
    sims = probe.scan_similarity(work / "results").collect()
    assert set(sims["kind"]) == {"configs", "blocks", "finetune"} and set(sims["dataset"]) == {"digits"}
    assert sims["value"].is_finite().all()


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.py")))
def test_notebooks_run_on_the_default_study(default_results, notebook, tmp_path):
    work, _ = default_results
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(ROOT / "notebooks" / notebook), "--results", str(work / "results"),
                           "--out", str(out), "--n-boot", "200"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_probe_report_on_the_default_study(default_results, tmp_path):
    work, _ = default_results
    proc = run_cli("report", str(work / "results"), "--out", str(tmp_path / "report"), "--n-boot", "200", cwd=work,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    for needle in ("## Frozen probes vs fine-tuning", "## Dense transfer: segmentation and depth",
                   "### shapes: depth", "Other fine-tunes of depth", "segmentation+depth",
                   "## Faces and continuous targets", "evaluation `cv2 by subject`", "evaluation `loo`",
                   "(over people)", "## Multi-task fine-tuning", "Evaluation: `splits`.",
                   "## Can frozen features predict fine-tuning?", "### digits (classification, 2 configurations)",
                   "## Do ConvNets and transformers see alike? Representation similarity", "## Calibration",
                   "| ECE after TS (%) [95% CI] | change (pp) [95% CI] |", "best frozen probe: ", "fine-tuning: ",
                   "## Distribution shift: effective robustness",
                   "### digits → digits-c-gaussian_noise-3 · evaluation `splits`",
                   "### digits → digits-c-blur-3 · evaluation `splits`", "| fine-tuned | finetune (full) |"):
        assert needle in text, needle
    assert "Traceback" not in proc.stderr
    # the calibration table's numbers are the default study's own rows: each chosen job's seed-mean ECE
    _calibration_rows_match(work / "results", text)
    png = re.search(r"!\[digits: reliability diagrams\]\((figures/[^)]+\.png)\)", text)
    assert png and (tmp_path / "report" / png.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # issue 22: each dense row shows its token grid; TAR@FAR=1e-3 is n/a with its reason (200 negative pairs)
    dense = [line for line in text.split("## Dense transfer")[1].split("\n## ")[0].splitlines()
             if line.startswith("| `") and " | " in line]
    assert dense and all(re.fullmatch(r"\d+x\d+", line.split(" | ")[1]) for line in dense), dense
    assert " n/a " in text and "needs ≥ 1,000 negative pairs" in text


def _calibration_rows_match(results, text: str) -> None:
    """Every row of the report's digits calibration table names a chosen method whose test row (read with polars)
    has that ECE before and after temperature scaling, that temperature and that calibration input."""
    import polars as pl

    import probe

    rows = probe.scan_results(results).collect().filter(pl.col("selected") & (pl.col("split") == "test")
                                                        & (pl.col("dataset") == "digits") & (pl.col("shots") == 0)
                                                        & (pl.col("eval_dataset") == "digits"))
    block = text.split("## Calibration", 1)[1].split("### digits", 1)[1].split("\n\n", 2)[1]
    lines = [ln for ln in block.splitlines() if ln.startswith("| `")]
    assert len(lines) == 2 * len(KEEP), block  # best frozen probe and fine-tuning of each configuration
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        backbone = cells[0].strip("`").split(" · ")[0]
        side, method = cells[2].split(": ", 1)
        probe_name = "finetune" if side == "fine-tuning" else method.split(" / ")[0]
        mine = rows.filter((pl.col("backbone") == backbone) & (pl.col("probe") == probe_name))
        if probe_name != "finetune":
            mine = mine.filter(pl.col("tap") == method.split(" / ")[1].split(" (")[0])
        assert mine.height == 1, (ln, mine)
        r = mine.row(0, named=True)
        assert cells[3] == r["calib_input"] == ("scores" if probe_name in ("ridge", "knn", "centroid")
                                                else "probabilities")
        assert float(cells[4]) == pytest.approx(r["temperature"], abs=0.006)
        assert float(cells[6].split(" [")[0]) == pytest.approx(100 * r["ece"], abs=0.051)
        assert float(cells[7].split(" [")[0]) == pytest.approx(100 * r["ece_ts"], abs=0.051)


def test_console_summary_covers_every_task(default_results):
    from probe import analysis

    work, _ = default_results
    lines = analysis.summary_lines(work / "results")
    titles = [ln.split(":")[0] for ln in lines if ln.endswith("(one row per backbone configuration):")]
    assert titles == ["classification", "segmentation", "depth", "identification", "verification", "regression"]
    assert any(ln.startswith("classification: test top-1 (%)") for ln in lines)


# ------------------------------------------------------------------------------------------ report.html in a browser

def _default_protocols(results: Path):
    """From the parquet files alone: per (task, dataset, evaluation, backbone, protocol), the seed means of the
    task's headline test metric (``shown``, in the page's unit) and of the val score in the selection metric
    (``val``), and the number of seeds (what the explorer's protocol rows show)."""
    import polars as pl

    import probe

    # the results rows (the similarity rows under results/similarity/ have their own schema: probe.scan_similarity)
    files = sorted(str(p) for p in results.rglob("*.parquet") if p.relative_to(results).parts[0] != "similarity")
    # each file read on its own (a task's own columns, e.g. verification's verif_acc_se, are in its files alone)
    rows = pl.concat([pl.read_parquet(f).with_columns(pl.lit(f).alias("file")) for f in files], how="diagonal_relaxed")
    if "fold" in rows.columns:  # a cross-validated job's summary rows (no fold) carry its scores
        rows = rows.filter(pl.col("fold").is_null())
    # the explorer's protocols are in-distribution: rows scored on a shifted set (eval_on) have their own section
    rows = rows.filter(pl.col("eval_dataset") == pl.col("dataset"))
    test = rows.filter(pl.col("selected") & (pl.col("split") == "test"))
    parts = []
    for (task,), sub in test.group_by("task"):
        t = probe.tasks.get(task)
        scale = 100.0 if t.metric(t.headline).unit == "fraction" else 1.0  # the page shows fractions in percent
        # the val score of the chosen params: the val row of the same job and params, in the selection metric
        val = rows.filter((pl.col("split") == "val") & (pl.col("task") == task))
        val = val.select("file", "params", *[pl.col(m).alias(f"val_{m}") for m in t.selectable() if m in val.columns])
        sub = sub.join(val, on=["file", "params"], how="left")
        val_score = pl.coalesce(*[pl.when(pl.col("select_metric") == m).then(pl.col(f"val_{m}"))
                                  for m in t.selectable() if f"val_{m}" in sub.columns], pl.lit(None))
        parts.append(sub.select("task", "dataset", "evaluation", "backbone", "backbone_config", "protocol", "probe",
                                "tap", "shots",
                                (pl.col(t.headline) * scale).alias("shown"), val_score.cast(pl.Float64).alias("val")))
    jobs = pl.concat(parts, how="diagonal_relaxed")
    return (jobs.group_by("task", "dataset", "evaluation", "backbone", "backbone_config", "protocol")
            .agg(pl.col("probe", "tap", "shots").first(), pl.col("shown", "val").mean(), pl.len().alias("n")))


def _close(shown: list[float], expected: list[float], tol: float = 0.051) -> bool:
    """Two lists of table numbers agree once sorted (each shown rounded to one decimal)."""
    return len(shown) == len(expected) and all(abs(a - b) <= tol for a, b in zip(sorted(shown), sorted(expected)))


def test_report_html_of_the_default_study_in_a_browser(default_results, tmp_path):
    """The issue-27 browser checks on the default study's own report.html: offline, sort, dataset and evaluation
    filters, a configuration's drill-down, each checked against the parquet results read with polars; a
    non-blank screenshot."""
    import polars as pl
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from tests._browser import (assert_offline, assert_screenshot_not_blank, browser_or_skip, column, number,
                                open_page, rows, table)

    work, _ = default_results
    out = tmp_path / "report"
    proc = run_cli("report", work / "results", "--out", out, "--format", "html", "--n-boot", "200", cwd=work,
                   timeout=600, env={"MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr
    page_file = out / "report.html"
    assert page_file.is_file() and not (out / "report.md").exists()
    assert page_file.stat().st_size < 5 * 2**20
    # the figures each task's report hook names, as inline SVG: retrieved faces, predicted vs true, dense examples
    text = page_file.read_text()
    for title in ("faces: nearest faces per query and backbone", "faces: predicted vs true",
                  "shapes segmentation: test images, ground truth", "shapes depth: test images, ground truth",
                  "digits (classification, splits): reliability diagrams"):
        assert re.search(r'<svg role="img"[^>]*><title id="fig\d+-title">' + re.escape(title), text), title
    truth = _default_protocols(work / "results")

    driver = browser_or_skip()
    try:
        assert_offline(open_page(driver, page_file.resolve().as_uri()))

        # sort: the classification gains table by the frozen score, descending, then ascending
        gains = table(driver, "gains-classification-splits")
        gains.find_element(By.CSS_SELECTOR, "th[data-col='frozen'] button").click()
        gains = table(driver, "gains-classification-splits")
        assert gains.find_element(By.CSS_SELECTOR, "th[data-col='frozen']").get_attribute("aria-sort") == \
            "descending"
        shown = [number(t) for t in column(gains, "frozen")]
        assert shown == sorted(shown, reverse=True) and len(shown) == len(KEEP)  # digits: one row per backbone
        # each row's frozen score is the test score of the protocol it names, and that protocol has the best val
        for r in rows(gains):
            backbone = re.sub(r"^\W+", "", r["config"].split(" · ")[0])  # the marker glyph before the label
            probe_name, tap = r["frozen_method"].split(" (")[0].split(" / ")
            cand = truth.filter((pl.col("task") == "classification") & (pl.col("dataset") == r["dataset"])
                                & (pl.col("backbone") == backbone) & (pl.col("shots") == 0)
                                & (pl.col("evaluation") == "splits") & (pl.col("probe") == probe_name)
                                & (pl.col("tap") == tap))
            assert cand.height == 1 and abs(cand["shown"][0] - number(r["frozen"])) <= 0.051, (r, cand)
            others = truth.filter((pl.col("task") == "classification") & (pl.col("dataset") == r["dataset"])
                                  & (pl.col("backbone") == backbone) & (pl.col("shots") == 0)
                                  & (pl.col("evaluation") == "splits") & (pl.col("probe") != "finetune")
                                  & (pl.col("tap") != "patch"))
            assert others.height > 1 and cand["val"][0] == others["val"].max(), others  # chosen on val, not test

        # calibration: the best frozen probe and the fine-tune of each configuration, ECE with its interval
        cal = rows(table(driver, "calibration-classification-splits"))
        assert len(cal) == 2 * len(KEEP) and {r["calib_input"] for r in cal} <= {"scores", "probabilities"}
        assert all(number(r["ece"]) >= 0 for r in cal)

        # filter by dataset: the protocols table holds exactly that dataset's protocols
        Select(driver.find_element(By.ID, "filter-dataset")).select_by_value("digits")
        digits = truth.filter(pl.col("dataset") == "digits")
        protocols = table(driver, "protocols")
        assert set(column(protocols, "dataset")) == {"digits"}
        assert _close([number(t) for t in column(protocols, "test")], digits["shown"].to_list())

        # filter by dataset and evaluation scheme: the faces rows of the person-grouped cross-validation only
        schemes = sorted(set(truth.filter(pl.col("dataset") == "faces")["evaluation"].to_list()))
        scheme = next(s for s in schemes if s.startswith("cv"))
        Select(driver.find_element(By.ID, "filter-dataset")).select_by_value("faces")
        Select(driver.find_element(By.ID, "filter-evaluation")).select_by_value(scheme)
        expected = truth.filter((pl.col("dataset") == "faces") & (pl.col("evaluation") == scheme))
        protocols = table(driver, "protocols")
        assert set(column(protocols, "evaluation")) == {scheme}
        assert sorted(set(column(protocols, "task"))) == sorted(set(expected["task"].to_list()))
        assert _close([number(t) for t in column(protocols, "test")], expected["shown"].to_list())
        driver.find_element(By.ID, "filter-reset").click()
        assert len(column(table(driver, "protocols"), "dataset")) == truth.height

        # drill-down: a configuration's protocols are all of its parquet protocols, every task and scheme (a dense
        # task's configuration is the backbone fed the whole frame: a configuration of its own)
        link = table(driver, "gains-classification-splits").find_element(By.CSS_SELECTOR,
                                                                          "button.config-link[data-config]")
        config = link.get_attribute("data-config")
        link.click()
        dialog = driver.find_element(By.ID, "drill")
        assert dialog.get_attribute("open") is not None and dialog.is_displayed()
        backbone = driver.find_element(By.ID, "drill-title").text.split(" · ")[0]
        assert backbone in KEEP
        drilled = [{td.get_attribute("data-col"): td.text for td in tr.find_elements(By.TAG_NAME, "td")}
                   for tr in dialog.find_elements(By.CSS_SELECTOR, "#drill-protocols tbody tr")]
        mine = truth.filter(pl.col("backbone_config") == config)
        assert mine.height and set(mine["backbone"]) == {backbone}
        assert len(drilled) == mine.height
        assert sorted((r["dataset"], r["task"], r["evaluation"]) for r in drilled) == \
            sorted(mine.select("dataset", "task", "evaluation").rows())
        assert _close([number(r["test"]) for r in drilled if r["test"].strip() not in ("", "—")],
                      [v for v in mine["shown"].to_list() if v is not None])
        assert dialog.find_elements(By.CSS_SELECTOR, "#drill-curves figure svg")  # layer-wise and few-shot curves
        driver.find_element(By.ID, "drill-close").click()

        assert_screenshot_not_blank(driver, tmp_path / "default-study.png")
    finally:
        driver.quit()
