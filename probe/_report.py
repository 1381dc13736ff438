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
- **Every task has its section through its report hook** (:meth:`probe.tasks.Task.report_section`): the report
  loops over the registered tasks present in the results and each composes the blocks of :class:`Report`
  (classification: the sections above; segmentation and depth: :func:`probe._report_tables.dense_section`;
  identification, verification, regression and any other task: :func:`probe._report_tables.scored_tables`).
- **Evaluation schemes** (the ``evaluation`` column: ``splits``, ``cv5 by subject``, ``loo``, ``pairs file whiten
  128`` ...) are never pooled or selected across: each gets its own tables, titled with it.
- **Intervals over grouped items** (people, scenes) resample the groups, paired where they are differences, and
  say so ("over people" / "over images").

Everything that is missing (no fine-tuning, one family, no saved predictions) drops the section or the interval
with a note instead of failing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import _report_tables as _tables
from . import tasks as _tasks
from ._errors import UsageError
from ._io import safe_name as _safe, write_text_atomic
from .vocab import FINETUNE


def default_report_dir(results_dir: str | os.PathLike) -> Path:
    """Where ``probe report RESULTS_DIR`` writes without ``--out``: a ``report`` folder beside RESULTS_DIR."""
    return Path(results_dir).resolve().parent / "report"


def resamples(n_boot) -> int:
    """``n_boot`` as a number of bootstrap resamples, or a one-line error (both report writers check it so)."""
    if int(n_boot) < 1:
        raise UsageError(f"n_boot must be a positive number of resamples; got {n_boot}. Use e.g. --n-boot 10000")
    return int(n_boot)


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
    n_boot = resamples(n_boot)
    notes: list[str] = []
    jobs = analysis.job_table(results_dir, notes=notes)
    out_dir = default_report_dir(results_dir) if out_dir is None else Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    report = Report(jobs, results_dir=results_dir, fig_dir=fig_dir, n_boot=int(n_boot), seed=seed, ci=ci,
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


def _label(task, metric: str) -> str:
    """A metric's table label (``top-1``, ``RMSE``) from its task."""
    return task.metric(metric).label or metric if metric in task.metric_names else metric


def _int(value) -> str:
    return "—" if value is None else str(int(value))


@dataclass
class Report:
    """The report being written: its shared parts and the blocks a task's report hook composes.

    A task's :meth:`probe.tasks.Task.report_section` gets this object and the task's jobs; it returns markdown
    lines built from :meth:`classification_sections`, :meth:`dense_section`, :meth:`scored_tables`,
    :meth:`family_lines`, :meth:`retrieval_figure`, :meth:`prediction_scatter`, :meth:`dense_examples` and
    :meth:`group_heading`, with ``a`` (:mod:`probe.analysis`), ``pl`` (polars), ``kw`` (bootstrap settings),
    ``pct``, ``notes`` and :meth:`save` for figures.
    """

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
        self.all_jobs = self.jobs
        self.styles = analysis.Styles.from_frame(self.jobs) if self.jobs.height else analysis.Styles()
        self._groups_written: set[str] = set()
        for r in analysis.skipped_images(self.jobs).iter_rows(named=True):
            self.notes.append(f"{r['dataset']}: {r['n_skipped']} unreadable image(s) left out with --skip-bad "
                              f"for `{r['config_label']}` (listed by `probe cache ls`); its numbers are on the rest.")

    # ----------------------------------------------------------------------------------------- rendering

    def render(self) -> str:
        pl = self.pl
        lines = self._header()
        lines += self._section_configurations()
        present = set(self.all_jobs["task"].to_list()) if self.all_jobs.height else set()
        for task in _tasks.all_tasks():  # the registry's order: built-ins first, then tasks registered later
            if task.name in present:
                lines += task.report_section(self, self.all_jobs.filter(pl.col("task") == task.name))
        for name in sorted(present - set(_tasks.names())):
            self.notes.append(f"rows of task {name!r} are left out: no task module registers it in this "
                              "environment.")
        lines += self._section_multitask()
        lines += self.a.shift_section(self)  # empty without rows scored on shifted sets (eval_on)
        lines += self.a.transfer_section(self.results_dir, self.save, notes=self.notes)  # empty without scores
        lines += self.a.similarity_section(self.results_dir, self.save)  # empty without similarity rows
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(self.notes)] + [""]
        return "\n".join(lines).rstrip() + "\n"

    def save(self, fig, name: str) -> str:
        """Save a matplotlib figure as ``figures/<name>.png``; returns the path to link from the markdown."""
        path = self.fig_dir / f"{_safe(name)}.png"
        fig.savefig(path, dpi=150)
        return f"figures/{path.name}"

    _save = save

    def group_heading(self, title: str, intro: list[str] | None = None) -> list[str]:
        """``## title`` (and its intro lines) the first time a part of the report is asked for; nothing later."""
        if title in self._groups_written:
            return []
        self._groups_written.add(title)
        return [f"## {title}", ""] + (intro if intro is not None else _GROUP_INTROS.get(title, lambda r: [])(self))

    def config_index(self, config: str) -> int:
        """Position of a backbone configuration in the report's fixed order (family, then label)."""
        return self.styles.configs.index(config) if config in self.styles.configs else len(self.styles.configs)

    def schemes(self, dataset: str, task: str) -> list[str]:
        """The evaluation schemes of a task's rows on a dataset."""
        pl = self.pl
        sub = self.all_jobs.filter((pl.col("dataset") == dataset) & (pl.col("task") == task))
        return sorted(set(sub["evaluation"].to_list()))

    # blocks of the task sections (probe._report_tables)

    def scored_tables(self, task, jobs) -> list[str]:
        """The generic section of a task: tables per dataset and evaluation scheme (:mod:`probe._report_tables`)."""
        return _tables.scored_tables(self, task, jobs)

    def dense_section(self, task, jobs) -> list[str]:
        """A dense task's section: frozen probe vs its single-task linear-head fine-tune, other fine-tunes apart."""
        return _tables.dense_section(self, task, jobs)

    def retrieval_figure(self, dataset: str, evaluation: str, shown) -> list[str]:
        """Retrieved faces per query and configuration (identification's figure)."""
        return _tables.retrieval_figure(self, dataset, evaluation, shown)

    def prediction_scatter(self, dataset: str, evaluation: str, shown) -> list[str]:
        """Predicted vs true target per configuration (regression's figure)."""
        return _tables.prediction_scatter(self, dataset, evaluation, shown)

    def dense_examples(self, task, dataset: str, evaluation: str, shown) -> list[str]:
        """Test images, ground truth and each configuration's frozen dense probe (the dense tasks' figure)."""
        return _tables.dense_examples(self, task, dataset, evaluation, shown)

    def classification_sections(self, task, jobs, *, extra: tuple[str, ...] | None = None) -> list[str]:
        """Frozen probes vs fine-tuning, families, layer-wise and few-shot curves of ``task`` (classification's
        section), once per evaluation scheme; ``extra`` metrics (default :attr:`probe.tasks.Task.gain_metrics`)
        get their own columns and paired gains."""
        pl, analysis = self.pl, self.a
        schemes = sorted(set(jobs["evaluation"].to_list())) if jobs.height else ["splits"]
        lines = []
        for evaluation in schemes:
            self.task = task
            self.evaluation = evaluation
            self.suffix = "" if len(schemes) == 1 else f" · evaluation `{evaluation}`"
            self.jobs = jobs.filter(pl.col("evaluation") == evaluation) if jobs.height else jobs
            self.metric = task.headline
            self.extra = [m for m in (task.gain_metrics if extra is None else extra) if m in task.metric_names]
            self.head = _label(task, self.metric)
            groups = analysis.report_groups(self.jobs, task, notes=self.notes)
            self.protocols = groups["protocols"]
            self.best_frozen, self.best_ft = groups["frozen"], groups["tuned"]
            self.datasets = sorted(set(self.jobs["dataset"].to_list())) if self.jobs.height else []
            if hasattr(self, "_gain_frame"):
                del self._gain_frame
            lines += self._section_protocols()
            lines += self._section_families()
            lines += self._section_layerwise()
            lines += self._section_few_shot()
        return lines

    def calibration_section(self, task, jobs) -> list[str]:
        """ECE before and after temperature scaling of the chosen protocols, and reliability diagrams
        (:func:`probe.analysis.calibration_section`); empty when no row carries calibration columns."""
        return self.a.calibration_section(jobs, task, self.save, styles=self.styles, notes=self.notes, **self.kw)

    def family_lines(self, task, rows, metric: str, name: str) -> list[str]:
        """One line per pair of families among ``rows`` (best-by-val rows of one group): the difference of the
        families' means over their backbones with its two-level interval, and the caveats."""
        a = self.a
        if not task.compare_families or len(set(rows["family"].to_list())) < 2:
            return []
        lines = []
        for c in a.compare_families(rows, metric=metric, **self.kw):
            na = a.FAMILY_NAMES.get(c["family_a"], c["family_a"])
            nb = a.FAMILY_NAMES.get(c["family_b"], c["family_b"])
            comp = c["comparison"]
            if comp is None:
                diff = (None if c["mean_a"] is None or c["mean_b"] is None else c["mean_a"] - c["mean_b"])
                text = f"{_tables.fmt(task, metric, diff)} (no interval: {c['note']})"
                what = "images"
            else:
                text = (_tables.signed(task, metric, comp.estimate)
                        + _tables.interval(task, metric, comp.low, comp.high, sign=True)
                        + ("; separated" if comp.separates else "; the evidence does not separate them"))
                what = comp.over
            lines.append(f"- {name}, {na} − {nb} ({metric}, {c['weights_kind']}): {text} "
                         f"({len(c['backbones_a'])} vs {len(c['backbones_b'])} backbones, two-level bootstrap over "
                         f"{what} and backbones).")
            if comp is not None:
                lines += [f"  _{n}._" for n in comp.notes + comp.few_backbones]
        return lines + ([""] if lines else [])

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
            "- Every table names its **evaluation scheme** (`splits`, `cv5 by subject`, `loo`, `pairs file` ...): "
            "results of different schemes are never pooled, ranked or selected across.",
            "- **Selection was on val, never on test.** Each job's hyperparameters (and a fine-tune's epoch) were "
            "chosen on val by the sweep; the *best frozen probe* of a configuration is the probe/tap whose "
            "**seed-mean** val score is best, *fine-tuning* is the fine-tune mode with the best seed-mean val score, "
            "compared only among protocols selected on the same metric. Ties on val are broken by name.",
            "- Seeds (val carves, few-shot draws) are averaged: mean ± sd over n seeds, never the best seed.",
            f"- Every difference comes with a **paired bootstrap {self.pct} confidence interval** over the same test "
            f"images (paired by image id from the saved predictions; {self.n_boot} resamples, seed {self.seed}, "
            "percentile interval), and the number of test images it was computed on; where the images cluster in "
            "people or scenes, the groups are resampled instead and the interval says \"over people\". Family "
            "differences also resample the backbones within each family (an architecture counted once).",
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
        lines = [f"## Frozen probes vs fine-tuning{self.suffix}", "", f"Evaluation: `{self.evaluation}`.", ""]
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
                           *(f"{short} {_label(self.task, m)} (%)" for m in self.extra),
                           f"{short} seeds", f"{short} train images"]
        if has_fz and has_ft:
            header += [f"gain {self.head} (pp) [{self.pct} CI]",
                       *(f"gain {_label(self.task, m)} (pp) [{self.pct} CI]" for m in self.extra)]
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

    # ----------------------------------------------------------------------------------------- families

    def _section_families(self) -> list[str]:
        a = self.a
        lines = [f"## Families{self.suffix}", "", f"Evaluation: `{self.evaluation}`.", ""]
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
        lines += [f"Each family's score on a dataset is the mean over its backbones (each configuration with its "
                  "val-selected protocol; an architecture run at several input sizes counts once, as the mean of its "
                  f"sizes). The {self.pct} interval of a difference comes from a two-level paired "
                  "bootstrap: every resample draws the test images, or the people/scenes they cluster in (the same "
                  "for every backbone) and, within each "
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
                    diff, n = c.format() + _tables.over(c.over if c.over != "images" else ""), str(c.n_images)
                    sep = "yes" if c.separates else "no (CI includes 0)"
                else:
                    d = None if r["mean_a"] is None or r["mean_b"] is None else r["mean_a"] - r["mean_b"]
                    diff, n, sep = f"{_ci(d, None, None)} (no CI: {r['note']})", "—", "—"
                if c is not None and r["note"]:
                    self.notes.append(f"{r['dataset']} ({r['side']}, {na} vs {nb}): {r['note']}.")
                weights = f" {r['weights_kind']} |" if weights_col else ""
                lines.append(f"| {r['dataset']} | {r['side']} |{weights} {_pct(r['mean_a'])} ({len(r['backbones_a'])}) "
                             f"| {_pct(r['mean_b'])} ({len(r['backbones_b'])}) | {diff} | {n} | {sep} |")
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
            for f, key in ((fa, "backbones_a"), (fb, "backbones_b")):
                few = sorted({(len(r[key]), r["dataset"]) for r in recs if 1 < len(r[key]) < 4})
                for k, dataset in few:
                    lines += [f"_{a.FAMILY_NAMES.get(f, f)} have {k} backbones on {dataset}: resampling them gives "
                              f"{math.comb(2 * k - 1, k)} distinct means, so the interval barely covers the choice of "
                              "backbones (an architecture at two input sizes counts once)._", ""]
                single = sorted({r["dataset"] for r in recs if len(r[key]) == 1})
                if single:
                    lines += [f"_{a.FAMILY_NAMES.get(f, f)} have one backbone configuration on {', '.join(single)}: "
                              "there the interval covers the test images, not the choice of backbones._", ""]
        return lines

    # ----------------------------------------------------------------------------------------- curves

    def _section_layerwise(self) -> list[str]:
        a, pl = self.a, self.pl
        lines = [f"## Layer-wise curves{self.suffix}", "", f"Evaluation: `{self.evaluation}`.", ""]
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
        gains = a.multitask_gains(self.all_jobs, notes=self.notes, **self.kw) if self.all_jobs.height \
            else self.pl.DataFrame()
        if not gains.height:
            return []  # no joint fine-tune with its single-task runs: no section
        lines = ["## Multi-task fine-tuning", "",
                 "One backbone with one head per task, trained jointly (loss weights equal, or learned "
                 "uncertainties where the weighting says so), against single-task fine-tunes of the same settings "
                 "on the same splits. Both choose their epoch on val (the joint run by the mean over its tasks of "
                 "the share of each val metric's gap to perfect closed since epoch 1) and are retrained on "
                 "train+val for that many epochs; test is scored once. multi − single with its paired "
                 f"bootstrap {self.pct} CI over test images "
                 "(per-image statistics, seed means; over scenes or people where the jobs saved them), grouped by "
                 "family; for the depth errors (rmse, lower is better) a negative difference is a gain. Each joint "
                 "run is paired with the single-task run of the same configuration, dataset, evaluation, seed, val "
                 "carve and recipe apart from the tasks (a joint run without such a partner is named in the "
                 "notes).", "",
                 "| family | configuration | dataset | evaluation | task | co-trained | head | weighting | metric | "
                 f"multi | single | multi − single [{self.pct} CI] | seeds | note |",
                 "|---|---|---|---|---|---|---|---|---|---:|---:|---:|---:|---|"]
        for r in gains.to_dicts():
            task = _tasks.get(r["task"])
            frac = _tables.is_fraction(task, r["metric"])
            value = _pct if frac else (lambda v: "—" if v is None else f"{v:.3f}")
            diff = (_ci(r["gain"], r["gain_low"], r["gain_high"]) if frac else
                    f"{r['gain']:+.3f}" + ("" if r["gain_low"] is None else
                                           f" [{r['gain_low']:+.3f}, {r['gain_high']:+.3f}]"))
            diff += _tables.over(r.get("gain_over"))
            lines.append(f"| {r['family']} | `{r['config_label']}` | {r['dataset']} | {r['evaluation']} | "
                         f"{r['task']} | {r['cotrained']} | {r['head'] or 'not recorded'} | {r['weighting'] or '—'} | "
                         f"{r['metric']}{' (%)' if frac else ''} | {value(r['multi'])} | {value(r['single'])} | "
                         f"{diff} | {r['n']} | {r['note']} |")
        fig = a.multitask_figure(gains, styles=self.styles)
        lines += ["", f"![multi-task minus single-task]({self._save(fig, 'multitask')})", ""]
        return lines

    def _section_few_shot(self) -> list[str]:
        a, pl = self.a, self.pl
        lines = [f"## Few-shot curves{self.suffix}", "", f"Evaluation: `{self.evaluation}`.", ""]
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


#: Intro lines of the parts of the report that several tasks share (``Task.report_group``).
_GROUP_INTROS = {
    "Faces and continuous targets": lambda r: [
        "Identification ranks every other image of the dataset by cosine similarity of the frozen features "
        "(leave one image out: rank-1, rank-5, mAP over queries) or trains identity classifiers under "
        "cross-validation; verification picks the similarity threshold on the other folds of the pairs; "
        "regression probes are selected on val inside each training fold. Fractions are in percent, errors in "
        f"the target's unit (years for age). Intervals are {r.pct} bootstrap intervals over the items each metric "
        "averages (queries, pairs, images), or over the people they belong to where the jobs saved them (the "
        "cell says which); 'vs best' is the paired difference to the configuration with the best **val** score "
        "(never the best test score), on the same items. Each evaluation scheme has its own tables. Fine-tuning "
        "(a regression head trained with an L1 loss, its epoch chosen on val inside each training fold) is "
        "listed beside the frozen probes where it was run, with the paired difference over the same held-out "
        "images.", ""],
}

_Report = Report  # the name before report hooks
