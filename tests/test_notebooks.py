"""Every notebook runs headless on the synthetic results and writes valid PNG figures."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._results_fixture import write_fixture

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = {
    "frozen_vs_finetune.py": {"gain_from_finetuning.png", "frozen_vs_finetune_scatter.png"},
    "convnets_vs_transformers.py": {"families_convnet_vs_transformer.png"},
    "layerwise_and_fewshot.py": {"layerwise_alpha.png", "fewshot_alpha.png", "fewshot_beta.png"},
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    write_fixture(root / "results")
    return root / "results"


def _run(notebook: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(NOTEBOOKS / notebook), *map(str, args), "--n-boot", "500"],
                          capture_output=True, text=True, timeout=180, env=dict(os.environ, MPLBACKEND="Agg"))


def _assert_png(path: Path):
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as img:
        img.verify()


def test_every_notebook_is_covered():
    assert {p.name for p in NOTEBOOKS.glob("*.py")} == set(EXPECTED)


@pytest.mark.parametrize("notebook", sorted(EXPECTED))
def test_notebook_runs_headless_and_writes_figures(results, tmp_path, notebook):
    proc = _run(notebook, "--results", results, "--out", tmp_path / "figs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {p.name for p in (tmp_path / "figs").glob("*.png")}
    assert written == EXPECTED[notebook]
    for name in written:
        _assert_png(tmp_path / "figs" / name)


@pytest.mark.parametrize("notebook", sorted(EXPECTED))
def test_notebook_survives_partial_results(tmp_path, notebook):
    # One backbone, frozen probes only: the comparisons it cannot make print a note instead of failing.
    write_fixture(tmp_path / "results", backbones=["vit_a"], finetune=False, layerwise=False, few_shot=False)
    proc = _run(notebook, "--results", tmp_path / "results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "notebook-figures").is_dir()  # the default output folder, beside the results


def test_frozen_vs_finetune_numbers(results, tmp_path):
    proc = _run("frozen_vs_finetune.py", "--results", results, "--out", tmp_path)
    line = next(ln for ln in proc.stdout.splitlines() if "alpha" in ln and "vit_a" in ln)
    cells = [c.strip() for c in line.strip("│ ").split("┆")]
    # best frozen chosen on val (logistic, test 70.0), not on test (knn, 85.0); fine-tune 90.0; gain 20.0
    assert cells[1] == "vit_a · hub"  # a row is a backbone configuration, named by its label
    assert cells[3:7] == ["logistic / pooled", "70.0", "90.0", "20.0"]


@pytest.mark.parametrize("notebook", sorted(EXPECTED))
def test_notebooks_are_percent_format_and_use_the_public_api(notebook):
    source = (NOTEBOOKS / notebook).read_text()
    assert "format_name: percent" in source and source.count("\n# %%") >= 4
    # short documents over probe.analysis: no plotting or argument parsing of their own
    assert "matplotlib" not in source and "argparse" not in source and "def " not in source
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("probe._"), node.module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "probe":
            assert not node.attr.startswith("_"), node.attr
