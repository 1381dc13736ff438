"""Turn a results directory into a markdown report with PNG figures: whose features transfer better?

The report is markdown over :mod:`probe.analysis`; it selects, pools and draws nothing itself. What it shows:

- **Backbone configurations**: every row of every table is one backbone configuration (backbone, weights,
  resolved input size, precision), named by its ``config_label``, with its family and where the family came from.
- **Frozen probes vs fine-tuning**, per dataset: the best frozen probe (probe and tap) and the best fine-tuning
  mode of each configuration, chosen on the seed-mean val score among protocols with the same selection metric;
  test numbers are seed means (± sd when there are several seeds, n shown), each side's training-set size, and
  the gain with a paired bootstrap CI over the same test images.
- **Families**: per dataset, the difference of the families' mean over their configurations, with an interval
  that resamples test images and, within each family, backbones; across datasets, wins with an exact sign test,
  and a plain statement when the evidence does not separate the families.
- **Layer-wise** (``block<i>`` taps) and **few-shot** (``shots > 0``) curves, seeds averaged per configuration.
- **Faces and continuous targets** (identification, verification, regression): see :mod:`probe._report_faces`.

Everything that is missing (no fine-tuning, one family, no saved predictions) drops the section or the interval
with a note instead of failing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ._errors import UsageError
from ._io import safe_name as _safe, write_text_atomic
from .vocab import DEFAULT_TASK, FINETUNE, METRIC_UNITS, TASK_METRICS

#: Tasks with per-pixel targets: their section is _section_dense (probe.dense.DENSE_TASKS, without numpy here).
DENSE_TASKS = ("segmentation", "depth")
_UNIT_NAMES = {"target": "m", "ratio": "ratio", "log10": "log10"}  # dense metrics' units (depth rmse in metres)

_METRIC_HEAD = {"top1": "top-1", "top5": "top-5", "mean_per_class_acc": "mean per-class", "miou": "mIoU",
                "pixel_acc": "pixel acc", "rmse": "RMSE", "abs_rel": "abs rel", "log10": "log10", "delta1": "δ<1.25",
                "delta2": "δ<1.25²", "delta3": "δ<1.25³"}


def default_report_dir(results_dir: str | os.PathLike) -> Path:
    """Where ``probe report RESULTS_DIR`` writes without ``--out``: a ``report`` folder beside RESULTS_DIR."""
    return Path(results_dir).resolve().parent / "report"


def write_report(results_dir: str | os.PathLike = "results", out_dir: str | os.PathLike | None = None, *,
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
    from . import analysis

    results_dir = Path(results_dir)
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. --n-boot 10000")
    notes: list[str] = []
    jobs = analysis.job_table(results_dir, notes=notes)
    out_dir = default_report_dir(results_dir) if out_dir is None else Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    report = _Report(jobs, results_dir=results_dir, fig_dir=fig_dir, n_boot=int(n_boot), seed=seed, ci=ci,
                     notes=notes)
    path = out_dir / "report.md"
    write_text_atomic(path, report.render())
    return path


def _pct(value, sd=None, n: int | None = None) -> str:
    """``'70.0'``, or ``'70.0 ± 1.2'`` for a mean over several seeds; ``'—'`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    text = f"{value * 100:.1f}"
    if n and n > 1:
        text += f" ± {(sd or 0.0) * 100:.1f}"
    return text


def _ci(est, low, high) -> str:
    if est is None:
        return "—"
    if low is None:
        return f"{est * 100:+.1f}"
    return f"{est * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"


def _value(metric: str, value, low=None, high=None, *, signed: bool = False) -> str:
    """A metric by its unit (:data:`probe.vocab.METRIC_UNITS`): fractions in percent, the others as numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    percent = METRIC_UNITS.get(metric, "fraction") == "fraction"
    scale, fmt = (100.0, ".1f") if percent else (1.0, ".3f")
    sign = "+" if signed else ""
    text = f"{value * scale:{sign}{fmt}}"
    if low is not None and high is not None:
        text += f" [{low * scale:{sign}{fmt}}, {high * scale:{sign}{fmt}}]"
    return text


def _metric_head(metric: str) -> str:
    unit = METRIC_UNITS.get(metric, "fraction")
    return f"{_METRIC_HEAD.get(metric, metric)} ({'%' if unit == 'fraction' else _UNIT_NAMES.get(unit, unit)})"


def _int(value) -> str:
    return "—" if value is None else str(int(value))


@dataclass
class _Report:
    jobs: object  # polars DataFrame of analysis.job_table
    results_dir: Path
    fig_dir: Path
    n_boot: int
    seed: int
    ci: float
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        import polars as pl

        from . import analysis

        self.a = analysis
        self.pl = pl
        self.kw = dict(n_boot=self.n_boot, seed=self.seed, ci=self.ci)
        self.pct = f"{self.ci:.0%}"
        # Dense tasks have their own section (_section_dense); the other sections cover one task.
        dense = self.jobs.filter(pl.col("task").is_in(list(DENSE_TASKS))) if self.jobs.height else self.jobs
        self.dense_jobs = dense
        self.jobs = self.jobs.filter(~pl.col("task").is_in(list(DENSE_TASKS))) if self.jobs.height else self.jobs
        # The headline metric is the task's (top1 for classification); tables and figures take it as a parameter.
        # Face and continuous-target tasks have their own section (probe._report_faces) over the full job table.
        from ._report_faces import FACE_TASKS

        self.all_jobs = self.jobs
        if self.jobs.height:
            self.jobs = self.jobs.filter(~pl.col("task").is_in(list(FACE_TASKS)))
        tasks = sorted(set(self.jobs["task"].to_list())) if self.jobs.height else []
        self.metric = analysis.primary_metric(tasks[0] if tasks else None)
        self.extra = [m for m in TASK_METRICS.get(tasks[0] if tasks else DEFAULT_TASK, ())[1:]
                      if m in analysis.BOOTSTRAP_METRICS and m != "top5"]
        self.head = _METRIC_HEAD.get(self.metric, self.metric)
        if len(tasks) > 1:
            self.notes.append(f"results hold several tasks ({', '.join(tasks)}); this report covers {tasks[0]}.")
            self.jobs = self.jobs.filter(pl.col("task") == tasks[0])
        every = pl.concat([self.all_jobs, dense], how="diagonal_relaxed") if dense.height else self.all_jobs
        # every task: the header, the configurations table, the faces and multi-task sections read it
        self.all_jobs = every
        self.styles = analysis.Styles.from_frame(every) if every.height else analysis.Styles()
        self.protocols = analysis.aggregate_seeds(self.jobs)
        full = self.protocols.filter(pl.col("shots") == 0)
        self.best_frozen = analysis.best_by_val(
            full.filter((pl.col("probe") != FINETUNE) & (pl.col("tap") != "patch")), notes=self.notes)
        self.best_ft = analysis.best_by_val(full.filter(pl.col("probe") == FINETUNE), notes=self.notes)
        self.datasets = sorted(set(self.jobs["dataset"].to_list())) if self.jobs.height else []
        for r in analysis.skipped_images(self.jobs).iter_rows(named=True):
            self.notes.append(f"{r['dataset']}: {r['n_skipped']} unreadable image(s) left out with --skip-bad "
                              f"for `{r['config_label']}` (listed by `probe cache ls`); its numbers are on the rest.")

    # ----------------------------------------------------------------------------------------- rendering

    def render(self) -> str:
        lines = self._header()
        lines += self._section_configurations()
        lines += self._section_protocols()
        lines += self._section_dense()
        lines += self._section_families()
        lines += self._section_layerwise()
        lines += self._section_few_shot()
        lines += self._section_multitask()
        from ._report_faces import faces_section

        lines += faces_section(self)
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(self.notes)] + [""]
        return "\n".join(lines).rstrip() + "\n"

    def _save(self, fig, name: str) -> str:
        path = self.fig_dir / f"{_safe(name)}.png"
        fig.savefig(path, dpi=150)
        return f"figures/{path.name}"

    def _header(self) -> list[str]:
        n_jobs = self.all_jobs.height
        configs = self.all_jobs["backbone_config"].n_unique() if n_jobs else 0
        fams = sorted(set(self.all_jobs["family"].to_list()), key=self.a.family_order) if n_jobs else []
        datasets = sorted(set(self.all_jobs["dataset"].to_list())) if n_jobs else []
        return [
            "# Whose visual representations transfer better?", "",
            f"Results: `{self.results_dir}` ({n_jobs} jobs; {len(datasets)} dataset(s): "
            f"{', '.join(datasets)}; {configs} backbone configuration(s); families: {', '.join(fams)}).", "",
            "How to read this report:", "",
            "- All accuracies are on the **test** split, in percent; differences are in percentage points (pp).",
            "- Every row is one **backbone configuration**: backbone, weights, input size (and precision when not "
            "fp32), as listed below. Results of different configurations or protocols are never pooled.",
            "- **Selection was on val, never on test.** Each job's hyperparameters (and a fine-tune's epoch) were "
            "chosen on val by the sweep; the *best frozen probe* of a configuration is the probe/tap whose "
            "**seed-mean** val score is best, *fine-tuning* is the fine-tune mode with the best seed-mean val score, "
            "compared only among protocols selected on the same metric. Ties on val are broken by name.",
            "- Seeds (val carves, few-shot draws) are averaged: mean ± sd over n seeds, never the best seed.",
            f"- Every difference comes with a **paired bootstrap {self.pct} confidence interval** over the same test "
            f"images (paired by image id from the saved predictions; {self.n_boot} resamples, seed {self.seed}, "
            "percentile interval), and the number of test images it was computed on. Family differences also "
            "resample the backbones within each family.",
            "",
        ]

    def _section_configurations(self) -> list[str]:
        lines = ["## Backbone configurations", ""]
        if not self.all_jobs.height:
            return lines + ["_No jobs with a selected test row._", ""]
        lines += ["| configuration | backbone | weights | input size | precision | family | family source |",
                  "|---|---|---|---:|---|---|---|"]
        rows = self.a.configurations(self.all_jobs).to_dicts()
        rows.sort(key=lambda r: (self.a.family_order(r["family"]), r["config_label"]))
        for r in rows:
            size = f"{r['img_size']} px" if r["img_size"] else "— (not recorded)"
            lines.append(f"| `{r['config_label']}` | `{r['backbone']}` | `{r['weights'] or '—'}` | {size} | "
                         f"{r['precision'] or '—'} | {r['family']} | {r['family_source'] or '— (not recorded)'} |")
        unknown = [r["backbone"] for r in rows if r["family"] == "unknown"]
        if unknown:
            self.notes.append(f"family unknown for {', '.join(sorted(set(unknown)))}: not in the families table; "
                              "set it with --family or `family =` in the study file.")
        return lines + [""]

    # ----------------------------------------------------------------------------------------- frozen vs ft

    def _gains(self):
        if not hasattr(self, "_gain_frame"):
            self._gain_frame = self.a.finetune_gains(self.best_frozen, self.best_ft, metric=self.metric,
                                                     extra_metrics=self.extra, **self.kw)
        return self._gain_frame

    def _section_protocols(self) -> list[str]:
        pl = self.pl
        lines = ["## Frozen probes vs fine-tuning", ""]
        has_fz, has_ft = bool(self.best_frozen.height), bool(self.best_ft.height)
        if not has_fz and not has_ft:
            return lines + ["_No full-data (shots = 0) frozen-probe or fine-tuning results; section omitted._", ""]
        if not has_ft:
            lines += ["_No fine-tuning results: only frozen probes are shown, and no fine-tuning gain._", ""]
        elif not has_fz:
            lines += ["_No frozen-probe results: only fine-tuning is shown, and no fine-tuning gain._", ""]
        gains = self._gains()
        header = ["configuration", "family", "selected on"]
        for side, name, present in (("frozen", "best frozen probe", has_fz), ("finetune", "fine-tuning", has_ft)):
            if present:
                short = "frozen" if side == "frozen" else "fine-tune"
                header += [f"{name} (val-selected)", f"{short} {self.head} (%)",
                           *(f"{short} {_METRIC_HEAD.get(m, m)} (%)" for m in self.extra),
                           f"{short} seeds", f"{short} train images"]
        if has_fz and has_ft:
            header += [f"gain {self.head} (pp) [{self.pct} CI]",
                       *(f"gain {_METRIC_HEAD.get(m, m)} (pp) [{self.pct} CI]" for m in self.extra)]
        header.append("test images")
        align = ["---:" if ("(%)" in h or "(pp)" in h or h.endswith(("seeds", "images"))) else "---" for h in header]
        for dataset in self.datasets:
            sub = gains.filter(pl.col("dataset") == dataset).to_dicts()
            if not sub:
                continue
            sub.sort(key=lambda r: (self.styles.configs.index(r["backbone_config"]), r["select_metric"]))
            lines += [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            for r in sub:
                cells = [f"`{r['config_label']}`", r["family"], r["select_metric"]]
                for side, present in (("frozen", has_fz), ("finetune", has_ft)):
                    if not present:
                        continue
                    if r[f"{side}_method"] is None:
                        cells += ["—"] * (4 + len(self.extra))
                        continue
                    n = r[f"{side}_n"]
                    cells += [r[f"{side}_method"], _pct(r[side], r[f"{side}_sd"], n),
                              *(_pct(r[f"{side}_{m}"]) for m in self.extra), str(n), _int(r[f"{side}_n_train"])]
                n_test = r["gain_n"] or r["frozen_n_eval"] or r["finetune_n_eval"]
                if has_fz and has_ft:
                    if r["gain"] is None:
                        cells += ["—"] * (1 + len(self.extra))
                    elif r["gain_low"] is None:
                        cells += [f"{r['gain'] * 100:+.1f} (no CI: {r['note']})"] + ["—"] * len(self.extra)
                    else:
                        cells += [_ci(r["gain"], r["gain_low"], r["gain_high"]),
                                  *(_ci(r[f"{m}_gain"], r[f"{m}_gain_low"], r[f"{m}_gain_high"])
                                    for m in self.extra)]
                        if r["note"]:
                            self.notes.append(f"{r['config_label']} on {dataset}: {r['note']}.")
                lines.append("| " + " | ".join(cells + [_int(n_test)]) + " |")
            fig = self.a.frozen_vs_finetune_figure(gains.filter(pl.col("dataset") == dataset), styles=self.styles,
                                                   metric=self.metric,
                                                   title=f"{dataset}: best frozen probe vs fine-tuning (error bars: "
                                                         f"{self.pct} bootstrap CI over test images)")
            gain = ("Gain = fine-tune − best frozen probe of the same configuration, on the same test images; "
                    "train images = examples each side was trained on (after the refit on train+val). "
                    if has_fz and has_ft else "")
            png = self._save(fig, f"{dataset}-frozen-vs-finetune")
            lines += ["", f"{gain}![{dataset}: frozen vs fine-tuning]({png})", ""]
        return lines

    # ----------------------------------------------------------------------------------------- dense

    def _section_dense(self) -> list[str]:
        a, pl = self.a, self.pl
        jobs = self.dense_jobs
        if not jobs.height:
            return []
        lines = ["## Dense transfer: segmentation and depth", "",
                 "Per dataset and task, the frozen dense probe (a linear layer on each patch token, bilinearly "
                 "upsampled to the labels; `linear / patch`) and fine-tuning when present, each chosen on val as "
                 "above. Segmentation: mIoU over the classes present in the test ground truth and pixel accuracy, "
                 "in percent; depth: RMSE (m), abs rel and log10 (lower is better), and δ thresholds in percent, on "
                 "valid pixels (see `probe.dense` for the crop and the depth cap). Intervals are bootstrap "
                 f"{self.pct} CIs over test images (paired for differences), resampling each image's saved "
                 "statistics (intersection and union counts; depth error sums).", ""]
        protocols = a.aggregate_seeds(jobs)
        best_fz = a.best_by_val(protocols.filter(pl.col("probe") != FINETUNE), notes=self.notes)
        best_ft = a.best_by_val(protocols.filter(pl.col("probe") == FINETUNE), notes=self.notes)
        for dataset in sorted(set(jobs["dataset"].to_list())):
            for task in [t for t in DENSE_TASKS if t in set(jobs.filter(pl.col("dataset") == dataset)["task"])]:
                metrics = list(TASK_METRICS[task])
                head = metrics[0]
                fz = best_fz.filter((pl.col("dataset") == dataset) & (pl.col("task") == task))
                ft = best_ft.filter((pl.col("dataset") == dataset) & (pl.col("task") == task))
                gains = a.finetune_gains(fz, ft, metric=head, extra_metrics=metrics[1:], **self.kw)
                lines += [f"### {dataset}: {task}", ""]
                header = ["configuration", "family", "method (val-selected)", "seeds",
                          f"{_metric_head(head)} [{self.pct} CI]", *(_metric_head(m) for m in metrics[1:]),
                          "train images", "test images"]
                lines += ["| " + " | ".join(header) + " |",
                          "|---|---|---|" + "---:|" * (len(header) - 3)]
                rows = []
                for side, frame in (("frozen", fz), ("finetune", ft)):
                    by_config = {r["backbone_config"]: r for r in frame.to_dicts()}
                    for g in gains.to_dicts() if gains.height else []:
                        r = by_config.get(g["backbone_config"])
                        if r is not None:
                            rows.append((side, g, r))
                rows.sort(key=lambda t: (self.styles.configs.index(t[1]["backbone_config"])
                                         if t[1]["backbone_config"] in self.styles.configs else 0, t[0]))
                for side, g, r in rows:
                    cells = [f"`{r['config_label']}`", r["family"], r["method"], str(r["n"]),
                             _value(head, r[head], g[f"{side}_low"], g[f"{side}_high"]),
                             *(_value(m, r[m]) for m in metrics[1:]), _int(r["n_train"]), _int(r["n_eval"])]
                    lines.append("| " + " | ".join(cells) + " |")
                both = [g for g in (gains.to_dicts() if gains.height else []) if g["gain"] is not None]
                if both:
                    lines += ["", f"Fine-tuning − frozen probe, same test images ({_metric_head(head)}, "
                                  f"{self.pct} CI): " + "; ".join(
                                      f"`{g['config_label']}` "
                                      + _value(head, g["gain"], g["gain_low"], g["gain_high"], signed=True)
                                      for g in both) + "."]
                previews = []
                for side, g, r in rows:
                    p = a.job_preview(list(r["files"])[0])
                    if p is not None and side == "frozen":
                        previews.append((f"{r['config_label']}", p))
                if previews:
                    classes = [str(c) for c in previews[0][1].get("classes", [])]
                    fig = a.dense_examples_figure(previews, task=task, classes=classes or None,
                                                  title=f"{dataset} {task}: test images, ground truth and each "
                                                        "configuration's frozen dense probe")
                    png = self._save(fig, f"{dataset}-{task}-examples")
                    lines += ["", f"![{dataset} {task}: examples]({png})"]
                lines.append("")
        return lines

    # ----------------------------------------------------------------------------------------- families

    def _section_families(self) -> list[str]:
        a = self.a
        lines = ["## Families", ""]
        fams = sorted(set(self.jobs["family"].to_list()), key=a.family_order) if self.jobs.height else []
        if len(fams) < 2:
            return lines + [f"_Only one family ({', '.join(fams) or 'none'}) in the results; family comparison "
                            "omitted._", ""]
        sides = [(name, best) for name, best in (("frozen", self.best_frozen), ("fine-tune", self.best_ft))
                 if best.height]
        records = []
        for side, best in sides:
            for rec in a.compare_families(best, metric=self.metric, **self.kw):
                rec["side"] = side
                records.append(rec)
        if not records:
            return lines + ["_No dataset has results from two families under the same protocol; family comparison "
                            "omitted._", ""]
        kinds = {a.weights_kind(w) for w in self.jobs["weights"].to_list()}
        lines += [f"Each family's score on a dataset is the mean over its backbone configurations (each with its "
                  f"val-selected protocol). The {self.pct} interval of a difference comes from a two-level paired "
                  "bootstrap: every resample draws the test images (the same for every backbone) and, within each "
                  "family, its backbones with replacement, so it covers the choice of backbones as well as the test "
                  "set. Across datasets, wins are counted and tested with an exact two-sided sign test.", ""]
        if len(kinds) > 1:
            lines += ["Pretrained and random-init configurations are compared only among themselves.", ""]
        pairs = list(dict.fromkeys((r["family_a"], r["family_b"]) for r in records))
        for fa, fb in pairs:
            na, nb = a.FAMILY_NAMES.get(fa, fa), a.FAMILY_NAMES.get(fb, fb)
            recs = [r for r in records if (r["family_a"], r["family_b"]) == (fa, fb)]
            weights_col = len(kinds) > 1
            lines += [f"### {na} vs {nb}", "",
                      f"| dataset | side |{' weights |' if weights_col else ''} {na} ({self.head} %, mean of n) | "
                      f"{nb} ({self.head} %, mean of n) | difference {na} − {nb} (pp) [{self.pct} CI] | test images | "
                      "separated |",
                      f"|---|---|{'---|' if weights_col else ''}---:|---:|---:|---:|---|"]
            for r in recs:
                c = r["comparison"]
                if c is not None:
                    diff, n = c.format(), str(c.n_images)
                    sep = "yes" if c.separates else "no (CI includes 0)"
                else:
                    diff, n, sep = f"{(r['mean_a'] - r['mean_b']) * 100:+.1f} (no CI: {r['note']})", "—", "—"
                if c is not None and r["note"]:
                    self.notes.append(f"{r['dataset']} ({r['side']}, {na} vs {nb}): {r['note']}.")
                weights = f" {r['weights_kind']} |" if weights_col else ""
                lines.append(f"| {r['dataset']} | {r['side']} |{weights} {_pct(r['mean_a'])} ({len(r['members_a'])}) "
                             f"| {_pct(r['mean_b'])} ({len(r['members_b'])}) | {diff} | {n} | {sep} |")
            lines.append("")
            for side in dict.fromkeys(r["side"] for r in recs):
                for w in a.family_wins([r for r in recs if r["side"] == side]):
                    kind = f", {w['weights_kind']}" if weights_col else ""
                    lines.append(f"- {side}{kind}: {na} win {w['wins_a']} and {nb} win {w['wins_b']} of "
                                 f"{w['datasets']} dataset(s) (ties {w['ties']}); exact sign test p = "
                                 f"{w['p_value']:.3g}; the {self.pct} CI excludes 0 on {w['separated']}.")
                    if not w["separates"]:
                        lines.append(f"  **The evidence does not separate {na} and {nb}** ({side}{kind}): over "
                                     f"{w['datasets']} dataset(s) the wins are not more uneven than chance (sign "
                                     f"test p = {w['p_value']:.3g} ≥ 0.05); the {self.pct} interval excludes 0 on "
                                     f"{w['separated']} of {w['datasets']} dataset(s)."
                                     + (" With fewer than 6 datasets (ties aside) no split of wins reaches p < 0.05."
                                        if w["datasets"] - w["ties"] < 6 else ""))
            fig = a.family_figure(recs, title=f"{na} − {nb}: mean over each family's backbones, {self.pct} CI "
                                              "(resampling test images and backbones)")
            lines += ["", f"![{na} vs {nb}]({self._save(fig, f'families-{fa}-vs-{fb}')})", ""]
            members = {}
            for r in recs:
                members.setdefault(fa, set()).update(r["members_a"])
                members.setdefault(fb, set()).update(r["members_b"])
            lines += [f"Members: {a.FAMILY_NAMES.get(f, f)}: " + ", ".join(f"`{m}`" for m in sorted(ms)) + "."
                      for f, ms in members.items()] + [""]
            for f, key in ((fa, "members_a"), (fb, "members_b")):
                single = sorted({r["dataset"] for r in recs if len(r[key]) == 1})
                if single:
                    lines += [f"_{a.FAMILY_NAMES.get(f, f)} have one backbone configuration on {', '.join(single)}: "
                              "there the interval covers the test images, not the choice of backbones._", ""]
        return lines

    # ----------------------------------------------------------------------------------------- curves

    def _section_layerwise(self) -> list[str]:
        a, pl = self.a, self.pl
        lines = ["## Layer-wise curves", ""]
        blocks = self.protocols.filter((pl.col("shots") == 0) & (pl.col("probe") != FINETUNE)).filter(
            pl.col("tap").str.contains(r"^block-?\d+$"))
        if not blocks.height:
            return lines + ["_No `block<i>` taps in the results; layer-wise curves omitted._", ""]
        lines += [f"Test {self.head} of probes on intermediate blocks (`block<i>` taps) per configuration, seeds "
                  "averaged, "
                  f"with {self.pct} bootstrap intervals over test images. Negative indices count from the last "
                  "block; the figure puts depth on a relative axis ((block index + 1) / number of blocks) when "
                  "configurations differ in depth.", ""]
        for dataset in self.datasets:
            sub = blocks.filter(pl.col("dataset") == dataset)
            if not sub.height:
                continue
            sub = a.with_intervals(sub, metric=self.metric, **self.kw)
            counts = {c: max((a.block_index(t) for t in g["tap"]), default=0) + 1
                      for (c,), g in sub.group_by("backbone_config")}
            fig = a.layerwise_figure(sub, metric=self.metric, relative_depth=len(set(counts.values())) > 1,
                                     styles=self.styles,
                                     title=f"{dataset}: layer-wise probe accuracy (error bars: {self.pct} bootstrap "
                                           "CI over test images)")
            lines += [f"### {dataset}", "", f"![{dataset}: layer-wise]({self._save(fig, f'{dataset}-layerwise')})",
                      "", f"| configuration | probe | block | seeds | test {self.head} (%) [{self.pct} CI] | "
                      "test images |",
                      "|---|---|---:|---:|---:|---:|"]
            rows = sorted(sub.to_dicts(), key=lambda r: (self.styles.configs.index(r["backbone_config"]), r["probe"],
                                                         a.block_index(r["tap"])))
            for r in rows:
                m = self.metric
                cell = _pct(r[m], r[f"{m}_sd"], r["n"])
                if r[f"{m}_low"] is not None:
                    cell += f" [{r[f'{m}_low'] * 100:.1f}, {r[f'{m}_high'] * 100:.1f}]"
                lines.append(f"| `{r['config_label']}` | {r['probe']} | {a.block_index(r['tap'])} | {r['n']} | {cell} "
                             f"| {_int(r['n_eval'])} |")
            lines.append("")
        return lines

    def _section_multitask(self) -> list[str]:
        a = self.a
        gains = a.multitask_gains(self.all_jobs, **self.kw) if self.all_jobs.height else self.pl.DataFrame()
        if not gains.height:
            return []  # no joint fine-tune with its single-task runs: no section
        lines = ["## Multi-task fine-tuning", "",
                 "One backbone with one head per task, trained jointly (loss weights equal, or learned "
                 "uncertainties where the weighting says so), against single-task fine-tunes of the same settings "
                 "on the same splits. Both choose their epoch on val (the joint run by the mean over its tasks of "
                 "each val metric relative to epoch 1) and are retrained on train+val for that many epochs; test "
                 f"is scored once. multi − single with its paired bootstrap {self.pct} CI over test images "
                 "(per-image statistics, seed means), grouped by family; for the depth errors (rmse, lower is "
                 "better) a negative difference is a gain.", "",
                 "| family | configuration | dataset | task | co-trained | weighting | metric | multi | single | "
                 f"multi − single [{self.pct} CI] | seeds | note |",
                 "|---|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in gains.to_dicts():
            frac = METRIC_UNITS.get(r["metric"]) == "fraction"
            value = _pct if frac else (lambda v: "—" if v is None else f"{v:.3f}")
            diff = (_ci(r["gain"], r["gain_low"], r["gain_high"]) if frac else
                    f"{r['gain']:+.3f}" + ("" if r["gain_low"] is None else
                                           f" [{r['gain_low']:+.3f}, {r['gain_high']:+.3f}]"))
            lines.append(f"| {r['family']} | `{r['config_label']}` | {r['dataset']} | {r['task']} | "
                         f"{r['cotrained']} | {r['weighting'] or '—'} | {r['metric']}{' (%)' if frac else ''} | "
                         f"{value(r['multi'])} | {value(r['single'])} | {diff} | {r['n']} | {r['note']} |")
        fig = a.multitask_figure(gains, styles=self.styles)
        lines += ["", f"![multi-task minus single-task]({self._save(fig, 'multitask')})", ""]
        return lines

    def _section_few_shot(self) -> list[str]:
        a, pl = self.a, self.pl
        lines = ["## Few-shot curves", ""]
        few = self.protocols.filter(pl.col("shots") > 0)
        if not few.height:
            return lines + ["_No few-shot results (shots > 0); few-shot curves omitted._", ""]
        lines += [f"Test {self.head} with k training examples per class, per configuration and protocol; mean ± "
                  "standard "
                  "deviation over seeds (each seed draws different training examples), n = seeds. Error bars in "
                  "the figure are the same spread; the dotted line is the same probe and tap on all training data. "
                  "val images = labelled val examples that chose the hyperparameters.", ""]
        for dataset in self.datasets:
            sub = few.filter(pl.col("dataset") == dataset)
            if not sub.height:
                continue
            ref = self.protocols.filter((pl.col("dataset") == dataset) & (pl.col("shots") == 0)
                                        & (pl.col("probe") != FINETUNE))
            fig = a.few_shot_figure(pl.concat([sub, ref], how="diagonal_relaxed"), styles=self.styles,
                                    metric=self.metric,
                                    title=f"{dataset}: few-shot transfer, mean ± sd over seeds; dotted: same probe "
                                          "on all training data")
            lines += [f"### {dataset}", "", f"![{dataset}: few-shot]({self._save(fig, f'{dataset}-few-shot')})", "",
                      f"| configuration | probe / tap | shots per class | seeds | test {self.head} (%) mean ± sd | "
                      "val images |", "|---|---|---:|---:|---:|---:|"]
            rows = sorted(sub.to_dicts(), key=lambda r: (self.styles.configs.index(r["backbone_config"]),
                                                         r["method"], r["shots"], r["protocol"]))
            for r in rows:
                sd = (r[f"{self.metric}_sd"] or 0.0) * 100
                lines.append(f"| `{r['config_label']}` | {r['method']} | {r['shots']} | {r['n']} | "
                             f"{r[self.metric] * 100:.1f} ± {sd:.1f} | {_int(r['n_val'])} |")
            lines.append("")
        return lines
