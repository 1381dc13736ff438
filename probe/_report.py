"""Turn a results directory into a markdown report with PNG figures: whose features transfer better?

What the report compares, and how it keeps test out of every choice:

- For each (dataset, backbone), the *best frozen probe* is the job (probe, tap, seed) whose selected setting has
  the best val score, and *fine-tuning* is the fine-tune job (mode) with the best val score. Test numbers are
  only read after those choices. Ties on val are broken by name (probe, tap, params, seed), never by test.
- The gain from fine-tuning is fine-tune minus best frozen, with a paired bootstrap CI over the same test images
  (predictions from the ``.npz`` saved beside each parquet file, paired by image id).
- Family aggregates: per dataset, each family's representative is its backbone with the best val score; the
  difference of the representatives' test accuracy gets a paired bootstrap CI; "wins" count the datasets where
  a family's representative has the higher test accuracy.
- Layer-wise curves (``block<i>`` taps) and few-shot curves (``shots > 0``) plot the selected test rows.

Everything that is missing (no fine-tuning, one backbone, one family, no saved predictions) drops the section
or the interval with a note instead of failing. Figures are drawn with matplotlib's object API on the Agg canvas,
imported only here, so the caller's pyplot backend is never changed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import UsageError
from ._stats import BootstrapResult, bootstrap_ci, job_predictions, pair_by_id, paired_bootstrap
from ._io import safe_name as _safe, write_text_atomic
from .results import scan_results

#: Family display order and names; a family not listed here sorts after these.
FAMILIES = {"convnet": "ConvNets", "transformer": "transformers", "hybrid": "hybrids"}
#: One colour per family, the same in every figure.
FAMILY_COLORS = {"convnet": "tab:blue", "transformer": "tab:orange", "hybrid": "tab:green"}
FINETUNE = "finetune"


def default_report_dir(results_dir: str | os.PathLike) -> Path:
    """Where ``probe report RESULTS_DIR`` writes without ``--out``: a ``report`` folder beside RESULTS_DIR."""
    return Path(results_dir).resolve().parent / "report"


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 n_boot: int = 10_000, seed: int = 0, ci: float = 0.95) -> Path:
    """Write ``report.md`` and its PNG figures for every result under ``results_dir``.

    Parameters
    ----------
    results_dir : path
        Folder searched recursively for ``*.parquet`` results (and the ``.npz`` predictions beside them).
    out_dir : path, optional
        Output folder; default :func:`default_report_dir` (``report`` beside ``results_dir``). Figures go to
        ``out_dir/figures``; PNGs left there by an earlier report are removed first.
    n_boot : int
        Bootstrap resamples per interval.
    seed : int
        Seed of every bootstrap (each interval uses this seed, so one interval does not depend on the others).
    ci : float
        Confidence level of the intervals.

    Returns
    -------
    pathlib.Path
        The path of ``report.md``.

    Raises
    ------
    UsageError
        When ``results_dir`` is missing or holds no results.
    """
    results_dir = Path(results_dir)
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. --n-boot 10000")
    rows = _load_rows(results_dir)
    out_dir = default_report_dir(results_dir) if out_dir is None else Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    report = _Report(rows, results_dir=results_dir, fig_dir=fig_dir, n_boot=int(n_boot), seed=seed, ci=ci)
    text = report.render()
    path = out_dir / "report.md"
    write_text_atomic(path, text)
    return path


# --------------------------------------------------------------------------------------------- loading


@dataclass
class _Job:
    """The selected (test) row of one job, with the val score that chose it and where its predictions are."""

    row: dict[str, Any]
    val: float | None  # val score of the selected setting (metric: the row's select_metric)
    stem: Path

    def __getattr__(self, name):
        try:
            return self.__dict__["row"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def label(self) -> str:
        if self.probe == FINETUNE:
            mode = self.params_dict.get("mode")
            return f"finetune ({mode})" if mode else "finetune"
        return f"{self.probe} / {self.tap}"

    @property
    def params_dict(self) -> dict:
        try:
            return json.loads(self.params or "{}")
        except (TypeError, ValueError):
            return {}

    @property
    def sort_key(self):
        # Best val first; ties broken by names only (never by a test number).
        return (-(self.val if self.val is not None else -math.inf), self.probe, self.tap, self.params or "",
                self.seed or 0, str(self.stem))


def _load_rows(results_dir: Path) -> list[dict[str, Any]]:
    """Every result row with the file it came from (the job), as dicts."""

    frame = scan_results(results_dir, include_file_paths="_file").collect()
    return frame.to_dicts()


def _jobs(rows: list[dict[str, Any]]) -> tuple[list[_Job], list[str]]:
    """One :class:`_Job` per selected test row; also notes about rows that could not be used."""
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(r["_file"], []).append(r)
    jobs, notes = [], []
    for file, file_rows in sorted(by_file.items()):
        selected = [r for r in file_rows if r["selected"] and r["split"] == "test"]
        if not selected:
            notes.append(f"{_rel(file)} has no selected test row; it is left out.")
            continue
        for row in selected:
            metric = row.get("select_metric") or "top1"
            vals = [r for r in file_rows if r["split"] == "val" and r.get(metric) is not None]
            same = [r for r in vals if r["params"] == row["params"]]
            # The sweep chose the selected setting as the val best, so the job's best val is its val score.
            pool = same or vals
            val = max(r[metric] for r in pool) if pool else None
            jobs.append(_Job(row=row, val=val, stem=Path(file).with_suffix("")))
    return jobs, notes


def _rel(path) -> str:
    return Path(path).name


# --------------------------------------------------------------------------------------------- the report


@dataclass
class _Comparison:
    """A paired difference a - b on one dataset."""

    a: _Job
    b: _Job
    top1: BootstrapResult | None
    mpc: BootstrapResult | None
    note: str = ""

    @property
    def estimate(self) -> float:
        return self.top1.estimate if self.top1 else self.a.top1 - self.b.top1


@dataclass
class _Report:
    rows: list[dict[str, Any]]
    results_dir: Path
    fig_dir: Path
    n_boot: int
    seed: int
    ci: float
    notes: list[str] = field(default_factory=list)
    _preds: dict = field(default_factory=dict)

    def __post_init__(self):
        self.jobs, notes = _jobs(self.rows)
        self.notes.extend(notes)
        self.datasets = sorted({j.dataset for j in self.jobs})
        self.backbones = sorted({j.backbone for j in self.jobs}, key=lambda b: (self._family_rank(b), b))
        self.family = {j.backbone: j.family or "unknown" for j in self.jobs}
        self.full = [j for j in self.jobs if (j.shots or 0) == 0]
        self.best_frozen = self._best([j for j in self.full if j.probe != FINETUNE and j.tap != "patch"])
        self.best_ft = self._best([j for j in self.full if j.probe == FINETUNE])

    # ----------------------------------------------------------------------------------------- selection

    def _family_rank(self, backbone: str) -> int:
        fam = next((j.family for j in self.jobs if j.backbone == backbone), None)
        return list(FAMILIES).index(fam) if fam in FAMILIES else len(FAMILIES)

    def _best(self, candidates: list[_Job]) -> dict[tuple[str, str], _Job]:
        """(dataset, backbone) -> the candidate job with the best val score."""
        best: dict[tuple[str, str], _Job] = {}
        for job in sorted(candidates, key=lambda j: j.sort_key):
            if job.val is None:
                continue
            best.setdefault((job.dataset, job.backbone), job)
        unchosen = {(j.dataset, j.backbone) for j in candidates} - set(best)
        for dataset, backbone in sorted(unchosen):
            self.notes.append(f"{backbone} on {dataset}: no val rows, so no setting can be chosen without test; "
                              "left out of the comparisons.")
        return best

    # ----------------------------------------------------------------------------------------- predictions

    def _predictions(self, job: _Job):
        """(ids, labels, pred) of a job's test predictions, or None when they were not saved."""
        key = str(job.stem)
        if key not in self._preds:
            self._preds[key] = job_predictions(job.stem)
        return self._preds[key]

    def _interval(self, job: _Job) -> BootstrapResult | None:
        preds = self._predictions(job)
        if preds is None:
            return None
        _, labels, pred = preds
        return bootstrap_ci(pred == labels, n_boot=self.n_boot, seed=self.seed, ci=self.ci)

    def _compare(self, a: _Job, b: _Job) -> _Comparison:
        pa, pb = self._predictions(a), self._predictions(b)
        if pa is None or pb is None:
            missing = a if pa is None else b
            return _Comparison(a, b, None, None, note=f"no saved predictions for {missing.backbone} "
                                                      f"{missing.label}")
        pair = pair_by_id(pa, pb)
        if pair.correct_a is None:
            return _Comparison(a, b, None, None, note=pair.note)
        ca, cb = pair.correct_a, pair.correct_b
        kw = dict(n_boot=self.n_boot, seed=self.seed, ci=self.ci)
        return _Comparison(a, b, paired_bootstrap(ca, cb, **kw),
                           paired_bootstrap(ca, cb, labels=pair.labels, metric="mean_per_class_acc", **kw),
                           pair.note)

    # ----------------------------------------------------------------------------------------- rendering

    def render(self) -> str:
        lines = self._header()
        lines += self._section_protocols()
        lines += self._section_families()
        lines += self._section_layerwise()
        lines += self._section_few_shot()
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(self.notes)] + [""]
        return "\n".join(lines).rstrip() + "\n"

    def _header(self) -> list[str]:
        fams = sorted({self.family[b] for b in self.backbones}, key=_family_order)
        pct = f"{self.ci:.0%}"
        return [
            "# Whose visual representations transfer better?", "",
            f"Results: `{self.results_dir}` ({len({str(j.stem) for j in self.jobs})} jobs; "
            f"{len(self.datasets)} dataset(s): {', '.join(self.datasets)}; {len(self.backbones)} backbone(s): "
            + ", ".join(f"{b} ({self.family[b]})" for b in self.backbones) + f"; families: {', '.join(fams)}).",
            "",
            "How to read this report:", "",
            "- All accuracies are on the **test** split, in percent; differences are in percentage points (pp).",
            "- **Selection was on val, never on test.** Each job's hyperparameters (and a fine-tune's epoch) were "
            "chosen on val by the sweep; the *best frozen probe* of a backbone is the probe/tap whose selected "
            "setting has the best val score, *fine-tuning* is the fine-tune mode with the best val score, and a "
            "family's representative on a dataset is its backbone with the best val score. Ties on val are broken "
            "by name.",
            f"- Every difference comes with a **paired bootstrap {pct} confidence interval** over the same test "
            f"images (paired by image id from the saved predictions; {self.n_boot} resamples, seed {self.seed}, "
            "percentile interval), and the number of test images it was computed on. Error bars in figures are "
            f"{pct} bootstrap intervals over test images unless a caption says otherwise.",
            "",
        ]

    def _section_protocols(self) -> list[str]:
        lines = ["## Frozen probes vs fine-tuning", ""]
        has_fz, has_ft = bool(self.best_frozen), bool(self.best_ft)
        if not has_fz and not has_ft:
            return lines + ["_No full-data (shots = 0) frozen-probe or fine-tuning results; section omitted._", ""]
        if not has_ft:
            lines += ["_No fine-tuning results: only frozen probes are shown, and no fine-tuning gain._", ""]
        elif not has_fz:
            lines += ["_No frozen-probe results: only fine-tuning is shown, and no fine-tuning gain._", ""]
        pct = f"{self.ci:.0%}"
        header = ["backbone", "family"]
        if has_fz:
            header += ["best frozen probe (val-selected)", "frozen top-1 (%)", "frozen mean per-class (%)"]
        if has_ft:
            header += ["fine-tuning (val-selected)", "fine-tune top-1 (%)", "fine-tune mean per-class (%)"]
        if has_fz and has_ft:
            header += [f"gain top-1 (pp) [{pct} CI]", f"gain mean per-class (pp) [{pct} CI]"]
        header.append("test images")
        align = ["---" if h in ("backbone", "family") or "(val-selected)" in h else "---:" for h in header]
        for dataset in self.datasets:
            keys = [b for b in self.backbones if (dataset, b) in self.best_frozen or (dataset, b) in self.best_ft]
            if not keys:
                continue
            lines += [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            bars = []
            for backbone in keys:
                fz, ft = self.best_frozen.get((dataset, backbone)), self.best_ft.get((dataset, backbone))
                cells = [f"`{backbone}`", self.family[backbone]]
                for job, present in ((fz, has_fz), (ft, has_ft)):
                    if present:
                        cells += [job.label, _pct(job.top1), _pct(job.mean_per_class_acc)] if job else ["—"] * 3
                n_test = str((fz or ft).n_eval)
                if fz and ft:
                    comp = self._compare(ft, fz)
                    if comp.top1:
                        cells += [comp.top1.format(signed=True), comp.mpc.format(signed=True)]
                        n_test = str(comp.top1.n)
                        if comp.note:
                            self.notes.append(f"{backbone} on {dataset}: {comp.note}.")
                    else:
                        cells += [f"{(ft.top1 - fz.top1) * 100:+.1f} (no CI: {comp.note})", "—"]
                elif has_fz and has_ft:
                    cells += ["—", "—"]
                lines.append("| " + " | ".join(cells + [n_test]) + " |")
                bars.append((backbone, fz, ft))
            fig = self._plot_protocols(dataset, bars)
            gain = "Gain = fine-tune − best frozen probe, on the same test images. " if has_fz and has_ft else ""
            lines += ["", f"{gain}![{dataset}: frozen vs fine-tuning]({fig})", ""]
        return lines

    def _section_families(self) -> list[str]:
        lines = ["## ConvNets vs transformers (family aggregates)", ""]
        fams = sorted({self.family[b] for b in self.backbones}, key=_family_order)
        if len(fams) < 2:
            return lines + [f"_Only one family ({', '.join(fams) or 'none'}) in the results; family comparison "
                            "omitted._", ""]
        protocols = [(name, best) for name, best in (("frozen", self.best_frozen), ("fine-tune", self.best_ft))
                     if best]
        # Means per family: over backbones within a dataset.
        lines += ["Mean test top-1 (%) over each family's backbones (number of backbones in parentheses):", "",
                  "| dataset | protocol | " + " | ".join(FAMILIES.get(f, f) for f in fams) + " |",
                  "|---|---|" + "---:|" * len(fams)]
        for dataset in self.datasets:
            for pname, best in protocols:
                cells = []
                for fam in fams:
                    accs = [j.top1 for (d, b), j in best.items() if d == dataset and self.family[b] == fam]
                    cells.append(f"{np.mean(accs) * 100:.1f} ({len(accs)})" if accs else "—")
                lines.append(f"| {dataset} | {pname} | " + " | ".join(cells) + " |")
        lines.append("")
        pairs = [(fams[i], fams[j]) for i in range(len(fams)) for j in range(i + 1, len(fams))]
        pct = f"{self.ci:.0%}"
        for first, second in pairs:
            name1, name2 = FAMILIES.get(first, first), FAMILIES.get(second, second)
            forest = []
            lines += [f"### {name2} vs {name1}: wins per dataset", "",
                      f"Each family's representative is its backbone with the best val score on that dataset; "
                      f"difference = {name2} − {name1} test top-1, paired bootstrap {pct} CI.", "",
                      f"| dataset | protocol | {name1} (val-selected) | top-1 (%) | {name2} (val-selected) | "
                      f"top-1 (%) | difference (pp) [{pct} CI] | test images | winner |",
                      "|---|---|---|---:|---|---:|---:|---:|---|"]
            wins: dict[str, dict[str, int]] = {}
            for pname, best in protocols:
                tally = wins.setdefault(pname, {first: 0, second: 0, "clear": 0, "datasets": 0})
                for dataset in self.datasets:
                    reps = [self._representative(best, dataset, fam) for fam in (first, second)]
                    if None in reps:
                        continue
                    r1, r2 = reps
                    comp = self._compare(r2, r1)
                    diff = comp.estimate
                    winner = second if diff > 0 else first if diff < 0 else None
                    tally["datasets"] += 1
                    if winner:
                        tally[winner] += 1
                    clear = bool(comp.top1 and comp.top1.excludes_zero)
                    tally["clear"] += clear
                    ci_text = comp.top1.format(signed=True) if comp.top1 else f"{diff * 100:+.1f} (no CI: {comp.note})"
                    win_text = (FAMILIES.get(winner, winner) + ("" if clear else " (CI includes 0)")) if winner \
                        else "tie"
                    n = str(comp.top1.n) if comp.top1 else str(r1.n_eval)
                    lines.append(f"| {dataset} | {pname} | `{r1.backbone}` | {_pct(r1.top1)} | `{r2.backbone}` | "
                                 f"{_pct(r2.top1)} | {ci_text} | {n} | {win_text} |")
                    forest.append((f"{dataset} · {pname}\n({r2.backbone} − {r1.backbone})", comp))
            lines.append("")
            for pname, tally in wins.items():
                if tally["datasets"]:
                    lines.append(f"- {pname}: {name2} win {tally[second]} and {name1} win {tally[first]} of "
                                 f"{tally['datasets']} dataset(s); the {pct} CI excludes 0 on {tally['clear']}.")
            if forest:
                fig = self._plot_forest(forest, name1, name2, f"families-{second}-vs-{first}")
                lines += ["", f"![{name2} vs {name1}]({fig})", ""]
            else:
                lines += ["_No dataset has results from both families under the same protocol; wins omitted._",
                          ""]
        return lines

    def _representative(self, best: dict, dataset: str, family: str) -> _Job | None:
        members = [j for (d, b), j in best.items() if d == dataset and self.family[b] == family]
        # Best val; ties by backbone name (as in notebooks/convnets_vs_transformers.py).
        return min(members, key=lambda j: (j.sort_key[0], j.backbone)) if members else None

    def _section_layerwise(self) -> list[str]:
        lines = ["## Layer-wise curves", ""]
        blocks = [j for j in self.full if j.probe != FINETUNE and _block_index(j.tap) is not None]
        if not blocks:
            return lines + ["_No `block<i>` taps in the results; layer-wise curves omitted._", ""]
        pct = f"{self.ci:.0%}"
        lines += [f"Test top-1 of probes on intermediate blocks (`block<i>` taps), with {pct} bootstrap intervals "
                  "over test images. Negative indices count from the last block.", ""]
        for dataset in self.datasets:
            series: dict[tuple[str, str], list[tuple[int, _Job]]] = {}
            for j in blocks:
                if j.dataset == dataset:
                    series.setdefault((j.backbone, j.probe), []).append((_block_index(j.tap), j))
            if not series:
                continue
            # Several seeds of one block: keep the val-best job (ties by name), never the test-best.
            curves = {}
            for key, points in sorted(series.items()):
                by_block: dict[int, _Job] = {}
                for idx, job in sorted(points, key=lambda p: (p[0], p[1].sort_key)):
                    by_block.setdefault(idx, job)
                curves[key] = [(idx, job, self._interval(job)) for idx, job in sorted(by_block.items())]
            fig = self._plot_layerwise(dataset, curves)
            lines += [f"### {dataset}", "", f"![{dataset}: layer-wise]({fig})", "",
                      f"| backbone | probe | block | test top-1 (%) [{pct} CI] | test images |",
                      "|---|---|---:|---:|---:|"]
            for (backbone, probe), points in curves.items():
                for idx, job, iv in points:
                    cell = iv.format() if iv else _pct(job.top1)
                    lines.append(f"| `{backbone}` | {probe} | {idx} | {cell} | {job.n_eval} |")
            lines.append("")
        return lines

    def _section_few_shot(self) -> list[str]:
        lines = ["## Few-shot curves", ""]
        shots = [j for j in self.jobs if (j.shots or 0) > 0]
        if not shots:
            return lines + ["_No few-shot results (shots > 0); few-shot curves omitted._", ""]
        lines += ["Test top-1 with k training examples per class; mean ± standard deviation over seeds (each seed "
                  "draws different training examples). Error bars in the figure are the same spread over seeds.",
                  ""]
        for dataset in self.datasets:
            curves: dict[tuple[str, str], dict[int, list[float]]] = {}
            for j in shots:
                if j.dataset == dataset:
                    curves.setdefault((j.backbone, j.label), {}).setdefault(int(j.shots), []).append(j.top1)
            if not curves:
                continue
            # The same probe and tap on all training data (val-best over seeds) is drawn as a reference line.
            refs = {}
            for j in sorted(self.full, key=lambda j: j.sort_key):
                if j.dataset == dataset and j.val is not None:
                    refs.setdefault((j.backbone, j.label), j)
            fig = self._plot_few_shot(dataset, curves, refs)
            lines += [f"### {dataset}", "", f"![{dataset}: few-shot]({fig})", "",
                      "| backbone | probe | shots per class | seeds | test top-1 (%) mean ± sd |",
                      "|---|---|---:|---:|---:|"]
            for (backbone, label), per_shot in sorted(curves.items()):
                for k, accs in sorted(per_shot.items()):
                    sd = np.std(accs, ddof=1) * 100 if len(accs) > 1 else 0.0
                    lines.append(f"| `{backbone}` | {label} | {k} | {len(accs)} | {np.mean(accs) * 100:.1f} ± "
                                 f"{sd:.1f} |")
            lines.append("")
        return lines

    # ----------------------------------------------------------------------------------------- figures

    def _save(self, fig, name: str) -> str:
        path = self.fig_dir / f"{_safe(name)}.png"
        fig.savefig(path, dpi=150)
        return f"figures/{path.name}"

    def _plot_protocols(self, dataset: str, bars) -> str:
        from matplotlib.patches import Patch

        fig = _figure(width=max(6.0, 1.6 * len(bars) + 2.5), height=4.5)
        ax = fig.add_subplot()
        x = np.arange(len(bars))
        width = 0.38
        protocols = [(label, pick, hatch, alpha) for label, pick, hatch, alpha in
                     (("best frozen probe (val-selected)", 1, "", 0.45), ("fine-tuning (val-selected)", 2, "//", 0.95))
                     if any(b[pick] for b in bars)]
        for offset, (_, pick, hatch, alpha) in enumerate(protocols):
            for i, bar in enumerate(bars):
                job = bar[pick]
                if job is None:
                    continue
                iv = self._interval(job)
                y = job.top1 * 100
                yerr = None if iv is None else [[y - iv.low * 100], [iv.high * 100 - y]]
                ax.bar(x[i] + (offset - (len(protocols) - 1) / 2) * width, y, width, yerr=yerr, capsize=4, hatch=hatch, alpha=alpha,
                       color=FAMILY_COLORS.get(self.family[bar[0]], "tab:gray"), edgecolor="black")
        # The legend names the protocol by bar style and the family by colour (bars are coloured by family).
        handles = [Patch(facecolor="lightgray", alpha=alpha, hatch=hatch, edgecolor="black", label=label)
                   for label, pick, hatch, alpha in protocols]
        handles += [Patch(facecolor=FAMILY_COLORS.get(f, "tab:gray"), edgecolor="black", label=f)
                    for f in sorted({self.family[b[0]] for b in bars}, key=_family_order)]
        ax.set_xticks(x, [_wrap(b[0]) + f"\n({self.family[b[0]]})" for b in bars], fontsize=8)
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.set_xlabel("backbone (family)")
        ax.set_ylim(0, 100)
        ax.set_xlim(-0.7, len(bars) - 0.3)
        ax.set_title(f"{dataset}: best frozen probe vs fine-tuning\n(error bars: {self.ci:.0%} bootstrap CI over "
                     "test images)", fontsize=10)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        return self._save(fig, f"{dataset}-frozen-vs-finetune")

    def _plot_forest(self, forest, name1: str, name2: str, name: str) -> str:
        fig = _figure(width=7.5, height=1.4 + 0.6 * len(forest))
        ax = fig.add_subplot()
        for i, (label, comp) in enumerate(forest):
            y = len(forest) - 1 - i
            est = comp.estimate * 100
            if comp.top1:
                ax.errorbar(est, y, xerr=[[est - comp.top1.low * 100], [comp.top1.high * 100 - est]], fmt="o",
                            color="black", capsize=4)
            else:
                ax.plot(est, y, "o", color="gray")
        ax.axvline(0, color="gray", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(forest)), [f[0] for f in reversed(forest)], fontsize=8)
        ax.set_xlabel(f"{name2} − {name1}: difference in test top-1 accuracy (percentage points)")
        ax.set_title(f"{name2} vs {name1} (val-selected representatives), paired {self.ci:.0%} bootstrap CI\n"
                     f"right of 0: {name2} better; left of 0: {name1} better", fontsize=10)
        ax.set_ylim(-0.6, len(forest) - 0.4)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return self._save(fig, name)

    def _style(self, backbone: str) -> dict:
        """Line style of a backbone, the same in every panel: colour by family, marker and dashes by backbone."""
        n = self.backbones.index(backbone)
        return dict(color=FAMILY_COLORS.get(self.family[backbone], "tab:gray"), marker="osD^v<>p*"[n % 9],
                    linestyle=("-", "--", ":", "-.")[n % 4])

    def _panels(self, titles: list[str]):
        """A figure with one panel per title (at most 3 per row), sharing the y axis."""
        ncols = min(3, len(titles))
        nrows = math.ceil(len(titles) / ncols)
        fig = _figure(width=4.6 * ncols + 2.6, height=3.6 * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
        for ax, title in zip(axes, titles):
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes[len(titles):]:
            ax.set_visible(False)
        return fig, axes[:len(titles)]

    def _finish_panels(self, fig, axes, title: str, xlabel: str) -> None:
        for ax in axes:
            ax.set_xlabel(xlabel, fontsize=8)
        for ax in axes[::min(3, len(axes))]:
            ax.set_ylabel("test top-1 accuracy (%)")
        handles = {}
        for ax in axes:  # one legend entry per backbone across panels
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.0 - 2.5 / fig.get_figwidth(), 0.9),
                   fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1.0 - 2.6 / fig.get_figwidth(), 1))

    def _plot_layerwise(self, dataset: str, curves) -> str:
        probes = sorted({probe for _, probe in curves})
        fig, axes = self._panels([f"probe: {p}" for p in probes])
        for ax, probe in zip(axes, probes):
            lines = [(b, pts) for (b, p), pts in curves.items() if p == probe]
            for n, (backbone, points) in enumerate(lines):
                # A small horizontal offset per line keeps overlapping error bars apart.
                xs = np.array([p[0] for p in points], dtype=float) + 0.06 * (n - (len(lines) - 1) / 2)
                ys = np.array([p[1].top1 * 100 for p in points])
                lo = np.array([(p[1].top1 - p[2].low) * 100 if p[2] else 0.0 for p in points])
                hi = np.array([(p[2].high - p[1].top1) * 100 if p[2] else 0.0 for p in points])
                ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=f"{backbone} ({self.family[backbone]})",
                            **self._style(backbone))
            ax.xaxis.get_major_locator().set_params(integer=True)
        self._finish_panels(fig, axes, f"{dataset}: layer-wise probe accuracy (error bars: {self.ci:.0%} "
                                       "bootstrap CI over test images)", "block index (tap block<i>)")
        return self._save(fig, f"{dataset}-layerwise")

    def _plot_few_shot(self, dataset: str, curves, refs) -> str:
        labels = sorted({label for _, label in curves})
        fig, axes = self._panels([f"probe / tap: {lab}" for lab in labels])
        for ax, label in zip(axes, labels):
            lines = [(b, per_shot) for (b, lab), per_shot in sorted(curves.items()) if lab == label]
            all_k = sorted({k for _, per_shot in lines for k in per_shot})
            for n, (backbone, per_shot) in enumerate(lines):
                ks = sorted(per_shot)
                # A small multiplicative offset per line (the axis is logarithmic) keeps error bars apart.
                xs = np.array(ks, dtype=float) * 1.03 ** (n - (len(lines) - 1) / 2)
                means = [np.mean(per_shot[k]) * 100 for k in ks]
                sds = [np.std(per_shot[k], ddof=1) * 100 if len(per_shot[k]) > 1 else 0.0 for k in ks]
                style = self._style(backbone)
                ax.errorbar(xs, means, yerr=sds, capsize=3, label=f"{backbone} ({self.family[backbone]})", **style)
                ref = refs.get((backbone, label))
                if ref is not None:
                    ax.axhline(ref.top1 * 100, color=style["color"], linestyle=(0, (1, 3)), linewidth=1)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(all_k, [str(k) for k in all_k])
            if len(all_k) == 1:
                ax.set_xlim(all_k[0] / 1.5, all_k[0] * 1.5)
        seeds = sorted({len(v) for per_shot in curves.values() for v in per_shot.values()})
        seeds_text = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        self._finish_panels(fig, axes, f"{dataset}: few-shot transfer, mean ± sd over {seeds_text} seed(s); "
                                       "dotted: same probe on all training data",
                            "training examples per class (shots, log scale)")
        return self._save(fig, f"{dataset}-few-shot")


# --------------------------------------------------------------------------------------------- helpers


def _figure(*, width: float, height: float):
    # The object API with the Agg canvas: no pyplot state, no global backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _family_order(family: str) -> tuple[int, str]:
    return (list(FAMILIES).index(family) if family in FAMILIES else len(FAMILIES), family)


def _block_index(tap: str) -> int | None:
    if isinstance(tap, str) and tap.startswith("block"):
        try:
            return int(tap[len("block"):])
        except ValueError:
            return None
    return None


def _pct(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:.1f}"


def _wrap(name: str, width: int = 18) -> str:
    # Long timm names (vit_base_patch16_224.augreg_in21k) break at the tag dot, then at underscores.
    parts, line, out = name.replace(".", ".\n").split("\n"), "", []
    for part in parts:
        for chunk in part.split("_"):
            piece = chunk if not line else f"_{chunk}"
            if len(line) + len(piece) > width and line:
                out.append(line)
                line = chunk
            else:
                line += piece
        out.append(line)
        line = ""
    return "\n".join(out)
