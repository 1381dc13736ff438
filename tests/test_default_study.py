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
    proc = run_cli("run", "study.toml", "--no-progress", "--workers", "0", cwd=work, timeout=1700, check=0)
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
    assert (work / "report" / "report.md").is_file()
    # the lighter copy keeps [transfer] and [similarity]: scores per configuration and task, similarity matrices
    scores = rows.filter(pl.col("probe") == "transfer")
    assert set(zip(scores["dataset"], scores["task"])) == {("digits", "classification"), ("faces", "regression")}
    assert set(scores["backbone"]) == set(KEEP) and {"logme", "params", "gflops"} <= set(scores["score"])
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
                   "## Do ConvNets and transformers see alike? Representation similarity"):
        assert needle in text, needle
    assert "Traceback" not in proc.stderr


def test_console_summary_covers_every_task(default_results):
    from probe import analysis

    work, _ = default_results
    lines = analysis.summary_lines(work / "results")
    titles = [ln.split(":")[0] for ln in lines if ln.endswith("(one row per backbone configuration):")]
    assert titles == ["classification", "segmentation", "depth", "identification", "verification", "regression"]
    assert any(ln.startswith("classification: test top-1 (%)") for ln in lines)
