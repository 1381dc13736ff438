"""The HTML explorer: one self-contained ``report.html`` beside ``report.md``, to sort, filter and drill into.

Everything it shows comes from the same :mod:`probe.analysis` calls as the markdown report (``job_table``,
``aggregate_seeds``, ``best_by_val``, ``finetune_gains``, ``compare_families``, ``family_wins``,
``with_intervals``, ``compare_jobs``, ``multitask_gains`` and the figure builders); this module only arranges their
rows as JSON tables and their figures as inline SVG. The page's JavaScript (``_explorer.js``) sorts, filters,
formats and draws small interval bars; it computes no statistic and selects nothing.

Scopes: rows are split by ``(task, evaluation)`` before any analysis call, so that no selection, mean or
comparison ever crosses tasks or evaluation schemes (rows without an ``evaluation`` column count as ``splits``).

The file opens from disk with no server and no network: scripts, styles and figures are inline, and a
Content-Security-Policy forbids any fetch.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
from importlib import metadata
from importlib.resources import files
from pathlib import Path

from ._errors import UsageError
from ._io import write_text_atomic
from .vocab import FINETUNE


#: The evaluation scheme of rows written before the ``evaluation`` column existed.
DEFAULT_EVALUATION = "splits"
#: Packages whose versions the provenance panel lists (read from their metadata; nothing is imported).
_PACKAGES = ("probe", "timm", "torch", "numpy", "polars", "pyarrow", "h5py", "scikit-learn", "matplotlib",
             "safetensors", "pillow")
#: matplotlib marker -> a glyph for tables and the legend (markers, not only colours, carry the configuration).
_GLYPHS = {"o": "●", "s": "■", "D": "◆", "^": "▲", "v": "▼", "<": "◀", ">": "▶", "p": "⬟", "P": "✚", "*": "★",
           "X": "✖", "h": "⬢"}
_METRIC_HEAD = {"top1": "top-1", "top5": "top-5", "mean_per_class_acc": "mean per-class", "miou": "mIoU",
                "pixel_acc": "pixel acc", "rmse": "RMSE", "abs_rel": "abs rel", "log10": "log10",
                "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³", "rank1": "rank-1",
                "rank5": "rank-5", "map": "mAP", "verif_acc": "verif acc", "verif_acc_sd": "verif acc sd",
                "verif_acc_se": "verif acc SE", "roc_auc": "ROC AUC", "tar_far1e3": "TAR@FAR1e-3", "mae": "MAE",
                "cs5": "CS(5)", "ece": "ECE", "ece_ts": "ECE after TS", "nll": "NLL", "nll_ts": "NLL after TS",
                "brier": "Brier", "brier_ts": "Brier after TS"}


def write_html_report(results_dir: str | os.PathLike = "results", out_dir: str | os.PathLike | None = None, *,
                      n_boot: int = 10_000, seed: int = 0, ci: float = 0.95, command: str | None = None,
                      study: str | os.PathLike | None = None) -> Path:
    """Write ``report.html``, the self-contained explorer of every result under ``results_dir``.

    Parameters
    ----------
    results_dir : path
        Folder searched recursively for ``*.parquet`` results (and the ``.npz`` predictions beside them).
    out_dir : path, optional
        Output folder; default ``report`` beside ``results_dir`` (the markdown report's folder).
    n_boot : int
        Bootstrap resamples per interval.
    seed : int
        Seed of every bootstrap (each interval uses this seed).
    ci : float
        Confidence level of the intervals.
    command : str, optional
        The command line that produced the report, shown in the provenance panel (default: this call).
    study : path, optional
        The study file the results came from, shown in the provenance panel; default: a study file (``*.toml``
        with a ``[study]`` or ``[[backbones]]`` table) in the folder that holds ``results_dir``, if there is one.

    Returns
    -------
    pathlib.Path
        The path of ``report.html``.

    Raises
    ------
    UsageError
        When ``results_dir`` is missing or holds no results.
    """
    from ._report import default_report_dir, resamples

    results_dir = Path(results_dir)
    n_boot = resamples(n_boot)
    out_dir = default_report_dir(results_dir) if out_dir is None else Path(out_dir)
    if command is None:
        command = (f"probe.write_html_report({str(results_dir)!r}, {str(out_dir)!r}, n_boot={int(n_boot)}, "
                   f"seed={seed}, ci={ci})")
    explorer = _Explorer(results_dir, n_boot=int(n_boot), seed=seed, ci=ci, command=command,
                         study=None if study is None else Path(study))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_text_atomic(path, explorer.render())
    return path


# --------------------------------------------------------------------------------------------- table helpers

def _num(value):
    """A JSON-safe float (None for missing or NaN)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def _metric_unit(metric: str) -> str:
    """The unit of a metric column as its task declares it (:class:`probe.tasks.Metric`); fraction if unknown."""
    from .analysis import metric_of

    m = metric_of(metric)
    return m.unit if m is not None else "fraction"


def _scale(metric: str) -> float:
    return 100.0 if _metric_unit(metric) == "fraction" else 1.0


def _unit(metric: str) -> str:
    unit = _metric_unit(metric)
    return "%" if unit == "fraction" else {"target": "units", "ratio": "ratio", "log10": "log10"}.get(unit, unit)


def _head(metric: str) -> str:
    return _METRIC_HEAD.get(metric, metric)


def _col(key: str, label: str, kind: str = "text", **extra) -> dict:
    """A column: ``kind`` is ``text``, ``config`` (a configuration: opens its drill-down), ``int``, ``value``
    (a metric, scaled and rounded by ``scale``/``digits``), ``interval`` (``{est, low, high}``) or ``list``."""
    return dict(key=key, label=label, kind=kind, **extra)


def _metric_col(key: str, metric: str, label: str, **extra) -> dict:
    scale = _scale(metric)
    return _col(key, f"{label} ({'pp' if extra.get('signed') and scale == 100 else _unit(metric)})", "value",
                scale=scale, digits=1 if scale == 100 else 3, **extra)


def _interval_col(key: str, metric: str, label: str, *, signed: bool = False) -> dict:
    scale = _scale(metric)
    unit = ("pp" if signed else "%") if scale == 100 else _unit(metric)
    return _col(key, f"{label} ({unit})", "interval", scale=scale, digits=1 if scale == 100 else 3, signed=signed)


def _iv(est, low=None, high=None) -> dict | None:
    est = _num(est)
    if est is None:
        return None
    return {"est": est, "low": _num(low), "high": _num(high)}


def _facets(*, dataset=None, task=None, evaluation=None, family=(), config=(), probe=()) -> dict:
    """What the page's filters match a row on (a missing facet: the filter does not apply to that table)."""
    out = {}
    for key, value in (("dataset", dataset), ("task", task), ("evaluation", evaluation)):
        if value is not None:
            out[key] = [str(value)]
    for key, values in (("family", family), ("config", config), ("probe", probe)):
        values = [str(v) for v in values if v is not None]
        if values:
            out[key] = values
    return out


def _table(table_id: str, caption: str, columns: list[dict], rows: list[dict], *, sort: str | None = None,
           desc: bool = False) -> dict:
    return dict(id=table_id, caption=caption, columns=columns, rows=rows, sort=sort, desc=desc)


def _evaluation_of(frame):
    """``frame`` with an ``evaluation`` column, null or missing read as ``splits``."""
    import polars as pl

    if "evaluation" not in frame.columns:
        return frame.with_columns(pl.lit(DEFAULT_EVALUATION).alias("evaluation"))
    return frame.with_columns(pl.col("evaluation").cast(pl.Utf8).fill_null(DEFAULT_EVALUATION))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


# --------------------------------------------------------------------------------------------- the explorer

class _Explorer:
    """Collects the analysis layer's rows and figures for every (task, evaluation) scope, then renders one page."""

    def __init__(self, results_dir: Path, *, n_boot: int, seed: int, ci: float, command: str,
                 study: Path | None = None):
        import polars as pl

        from . import analysis

        self.a, self.pl = analysis, pl
        self.results_dir = results_dir
        self.kw = dict(n_boot=n_boot, seed=seed, ci=ci)
        self.pct = f"{ci:.0%}"
        self.command = command
        self.study = study
        self.notes: list[str] = []
        jobs = analysis.job_table(results_dir, notes=self.notes)
        self.jobs = _evaluation_of(jobs)
        self.styles = analysis.Styles.from_frame(self.jobs) if self.jobs.height else analysis.Styles()
        self.sections: list[dict] = []  # {id, title, intro, blocks: [("table", id) | ("figure", svg) | ("text", s)]}
        self.tables: dict[str, dict] = {}
        self.protocol_rows: list[dict] = []  # every protocol (seeds averaged), for the drill-down
        self.pairs: list[dict] = []  # paired comparisons between configurations, computed here
        self.curves: list[dict] = []  # layer-wise and few-shot points per configuration, for the drill-down
        self._figures = 0

    # ------------------------------------------------------------------------------------- pieces

    def _section(self, title: str, intro: str = "") -> dict:
        section = dict(id=f"s-{_slug(title)}-{len(self.sections)}", title=title, intro=intro, blocks=[])
        self.sections.append(section)
        return section

    def _add_table(self, section: dict, table: dict) -> None:
        table["id"] = f"t{len(self.tables)}-{_slug(table['id'])}"
        self.tables[table["id"]] = table
        section["blocks"].append(("table", table["id"]))

    def _add_figure(self, section: dict, fig, alt: str) -> None:
        """The figure as inline SVG (text kept as text, unique ids), with ``alt`` as its title and label."""
        import matplotlib

        self._figures += 1
        buf = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"fig{self._figures}"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = buf.getvalue()
        svg = svg[svg.index("<svg"):]
        title_id = f"fig{self._figures}-title"
        svg = svg.replace("<svg", f'<svg role="img" aria-labelledby="{title_id}" class="figure"', 1)
        start = svg.index(">", svg.index("<svg")) + 1
        svg = svg[:start] + f'<title id="{title_id}">{html.escape(alt)}</title>' + svg[start:]
        section["blocks"].append(("figure", dict(svg=svg, alt=alt)))

    def _order(self, config: str) -> int:
        """A configuration's place in every table and legend (family, then label: :class:`analysis.Styles`)."""
        return self.styles.configs.index(config) if config in self.styles.configs else len(self.styles.configs)

    def _config_cell(self, row: dict) -> dict:
        return {"id": row["backbone_config"], "label": row["config_label"]}

    def _config_info(self) -> dict:
        """Per configuration: label, family, colour, marker glyph and identity (the provenance panel)."""
        from matplotlib.colors import to_hex

        out = {}
        if not self.jobs.height:
            return out
        pl = self.pl
        for r in self.a.configurations(self.jobs).to_dicts():
            c = r["backbone_config"]
            style = self.styles.of(c)
            sub = self.jobs.filter(pl.col("backbone_config") == c)
            out[c] = dict(label=r["config_label"], backbone=r["backbone"], weights=r["weights"],
                          img_size=r["img_size"], precision=r["precision"], family=r["family"],
                          family_source=r["family_source"], color=to_hex(style["color"]),
                          marker=_GLYPHS.get(style["marker"], style["marker"]), linestyle=style["linestyle"],
                          order=self._order(c),
                          cache_keys=sorted({k for k in sub["cache_key"].to_list() if k and k != "-"}),
                          probe_versions=sorted({v for v in sub["probe_version"].to_list() if v}),
                          datasets=sorted(set(sub["dataset"].to_list())))
        return out

    # ------------------------------------------------------------------------------------- collection

    def collect(self) -> None:
        pl = self.pl
        if not self.jobs.height:
            return
        self._configurations()
        scopes = self.jobs.select("task", "evaluation").unique().sort("task", "evaluation").rows()
        for task, evaluation in scopes:
            jobs = self.jobs.filter((pl.col("task") == task) & (pl.col("evaluation") == evaluation))
            self._scope(task, evaluation, jobs)
        self._multitask()
        self._shift()
        for r in self.a.skipped_images(self.jobs).iter_rows(named=True):
            self.notes.append(f"{r['dataset']}: {r['n_skipped']} unreadable image(s) left out with --skip-bad for "
                              f"{r['config_label']}; its numbers are on the rest.")

    def _configurations(self) -> None:
        section = self._section("Backbone configurations", "Every row of every table is one backbone configuration "
                                "(backbone, weights, input size, precision). Click a configuration anywhere to open "
                                "its protocols, curves and paired comparisons.")
        rows = []
        for r in self.a.configurations(self.jobs).to_dicts():
            rows.append(dict(config=self._config_cell(r), backbone=r["backbone"], weights=r["weights"],
                             img_size=r["img_size"], precision=r["precision"], family=r["family"],
                             family_source=r["family_source"],
                             _f=_facets(family=[r["family"]], config=[r["backbone_config"]])))
        cols = [_col("config", "configuration", "config"), _col("backbone", "backbone"), _col("weights", "weights"),
                _col("img_size", "input size (px)", "int"), _col("precision", "precision"),
                _col("family", "family"), _col("family_source", "family source")]
        self._add_table(section, _table("configurations", "Backbone configurations", cols, rows))

    def _scope(self, task: str, evaluation: str, jobs) -> None:
        a, pl = self.a, self.pl
        metrics = [m for m in a.task_metrics(task) if m in jobs.columns]
        metric = a.primary_metric(task)
        # what is compared, as the task declares it (the markdown report asks the same function)
        groups = a.report_groups(jobs, task, notes=self.notes)
        protocols = groups["protocols"].with_columns(pl.lit(evaluation).alias("evaluation"))
        best_fz, best_ft, fixed_groups = groups["frozen"], groups["tuned"], groups["fixed"]
        fixed = pl.concat([f for _, f in fixed_groups], how="diagonal_relaxed") if fixed_groups else None
        chosen = {(r["dataset"], r["backbone_config"], r["protocol"]): name
                  for name, best in (("best frozen", best_fz), ("fine-tuning", best_ft))
                  for r in best.select("dataset", "backbone_config", "protocol").to_dicts()}
        self._protocol_rows(task, evaluation, metrics, protocols, chosen)
        scope = f"{task} · {evaluation}"
        section = self._section(f"{task.capitalize()} · evaluation: {evaluation}", (
            f"Rows scored by {evaluation!r}; nothing here is pooled with or selected across another task or "
            f"evaluation scheme. Best frozen probe and fine-tuning are each chosen on the seed-mean val score "
            f"(never on test), within one configuration and selection metric. Intervals are {self.pct} bootstrap "
            f"intervals over the test items ({self.kw['n_boot']} resamples, seed {self.kw['seed']})."))
        if best_fz.height or best_ft.height:
            self._gains(section, task, evaluation, metric, metrics, best_fz, best_ft)
        if fixed is not None and fixed.height:
            self._fixed(section, task, evaluation, metric, fixed)
        self._task_figures(section, task, evaluation, fixed_groups, best_fz, best_ft)
        for side, best in (("frozen", best_fz), ("fine-tune", best_ft), *fixed_groups):
            self._pairs(task, evaluation, metric, side, best)
        self._families(section, task, evaluation, metric, [("frozen", best_fz), ("fine-tune", best_ft),
                                                            *fixed_groups])
        self._layerwise(section, task, evaluation, metric, protocols)
        self._few_shot(section, task, evaluation, metric, protocols)
        self._calibration(section, task, evaluation, jobs)
        if not section["blocks"]:
            section["blocks"].append(("text", f"Only the protocols table covers {scope}: no val-selected protocol."))

    def _protocol_rows(self, task, evaluation, metrics, protocols, chosen: dict) -> None:
        for r in protocols.to_dicts():
            self.protocol_rows.append(dict(
                chosen=chosen.get((r["dataset"], r["backbone_config"], r["protocol"]), ""),
                config=self._config_cell(r), family=r["family"], dataset=r["dataset"], task=task,
                evaluation=evaluation, method=r["method"], probe=r["probe"], tap=r["tap"], shots=r["shots"],
                select_metric=r["select_metric"],
                val=_iv(r["val_score"]), val_sd=_num(r.get("val_sd")), val_scale=_scale(r["select_metric"]),
                metric=metrics[0] if metrics else None,
                test=_num(r.get(metrics[0])) if metrics else None,
                test_sd=_num(r.get(f"{metrics[0]}_sd")) if metrics else None,
                scale=_scale(metrics[0]) if metrics else 100.0,
                n=r["n"], seeds=[int(s) for s in r["seeds"]], n_train=r["n_train"], n_eval=r["n_eval"],
                others={m: _num(r.get(m)) for m in metrics[1:]},
                _f=_facets(dataset=r["dataset"], task=task, evaluation=evaluation, family=[r["family"]],
                           config=[r["backbone_config"]], probe=[r["probe"]])))

    def _gains(self, section, task, evaluation, metric, metrics, best_fz, best_ft) -> None:
        a, pl = self.a, self.pl
        t = a.task_of(task)  # the metrics the task names for paired gains (the markdown report asks the same)
        extra = [m for m in (t.gain_metrics if t is not None else ()) if m in metrics[1:]]
        gains = a.finetune_gains(best_fz, best_ft, metric=metric, extra_metrics=extra, **self.kw)
        if not gains.height:
            return
        has_fz, has_ft = bool(best_fz.height), bool(best_ft.height)
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("select_metric", "selected on")]
        # the headline first (each side's method and score, the gain), then the other metrics and the counts
        sides = [side for side, present in (("frozen", has_fz), ("finetune", has_ft)) if present]
        name = {"frozen": "frozen", "finetune": "fine-tune"}
        for side in sides:
            cols += [_col(f"{side}_method", "best frozen probe (val-selected)" if side == "frozen"
                          else "fine-tuning (val-selected)"),
                     _interval_col(side, metric, f"{name[side]} {_head(metric)}")]
        if has_fz and has_ft:
            cols += [_interval_col("gain", metric, f"gain {_head(metric)}", signed=True),
                     *(_interval_col(f"{m}_gain", m, f"gain {_head(m)}", signed=True) for m in extra)]
        for side in sides:
            cols += [*(_metric_col(f"{side}_{m}", m, f"{name[side]} {_head(m)}") for m in extra),
                     _col(f"{side}_n", f"{name[side]} seeds", "int"),
                     _col(f"{side}_n_train", f"{name[side]} train items", "int")]
        cols += [_col("n_test", "test items", "int"), _col("note", "note")]
        rows = []
        for g in sorted(gains.to_dicts(), key=lambda g: (g["dataset"], self._order(g["backbone_config"]),
                                                          g["select_metric"])):
            probes = [m.split(" / ")[0].split(" (")[0] for m in (g.get("frozen_method"), g.get("finetune_method"))
                      if m]
            row = dict(config=self._config_cell(g), family=g["family"], dataset=g["dataset"],
                       select_metric=g["select_metric"], note=g.get("note") or "",
                       n_test=g.get("gain_n") or g.get("frozen_n_eval") or g.get("finetune_n_eval"),
                       _f=_facets(dataset=g["dataset"], task=task, evaluation=evaluation, family=[g["family"]],
                                  config=[g["backbone_config"]], probe=probes))
            for side in ("frozen", "finetune"):
                row[f"{side}_method"] = g.get(f"{side}_method")
                row[side] = _iv(g.get(side), g.get(f"{side}_low"), g.get(f"{side}_high"))
                row[f"{side}_n"] = g.get(f"{side}_n")
                row[f"{side}_n_train"] = g.get(f"{side}_n_train")
                for m in extra:
                    row[f"{side}_{m}"] = _num(g.get(f"{side}_{m}"))
            row["gain"] = _iv(g.get("gain"), g.get("gain_low"), g.get("gain_high"))
            for m in extra:
                row[f"{m}_gain"] = _iv(g.get(f"{m}_gain"), g.get(f"{m}_gain_low"), g.get(f"{m}_gain_high"))
            rows.append(row)
        caption = (f"Best frozen probe vs fine-tuning ({task}, {evaluation}): test {_head(metric)}; gain = "
                   "fine-tune − frozen on the same test items, paired bootstrap interval")
        self._add_table(section, _table(f"gains-{task}-{evaluation}", caption, cols, rows))
        for dataset in sorted(set(gains["dataset"].to_list())):
            sub = gains.filter(pl.col("dataset") == dataset)
            title = (f"{dataset} ({task}, {evaluation}): best frozen probe vs fine-tuning (error bars: {self.pct} "
                     "bootstrap CI over test items)")
            try:
                fig = a.frozen_vs_finetune_figure(sub, styles=self.styles, metric=metric, title=title)
            except (ValueError, KeyError, TypeError) as exc:  # a figure a builder cannot draw: the table stays
                self.notes.append(f"{title}: figure left out ({exc}).")
                continue
            self._add_figure(section, fig, title)

    def _calibration(self, section, task, evaluation, jobs) -> None:
        """ECE before and after temperature scaling of the chosen protocols, and reliability diagrams (the
        markdown report's :func:`probe.analysis.calibration_section`, from the same analysis calls)."""
        a, pl = self.a, self.pl
        t = a.task_of(task)
        if t is None or "ece" not in jobs.columns or jobs["ece"].null_count() == jobs.height:
            return
        tables = [a.calibration_table(rows, jobs, side=label, **self.kw)
                  for label, rows in a.calibration_groups(jobs, t)]  # (their notes: the gains table's)
        tables = [x for x in tables if x.height]
        if not tables:
            return
        table = pl.concat(tables, how="diagonal_relaxed")
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("method", "method"), _col("calib_input", "calibrated from"),
                _col("temperature", "T", "value", scale=1.0, digits=2),
                _interval_col("ece", "ece", "ECE"), _interval_col("ece_ts", "ece_ts", "ECE after TS"),
                _interval_col("change", "ece", "change", signed=True),
                _metric_col("nll", "nll", "NLL"), _metric_col("nll_ts", "nll_ts", "NLL after TS"),
                _metric_col("brier", "brier", "Brier"), _metric_col("brier_ts", "brier_ts", "Brier after TS"),
                _col("n", "seeds", "int"), _col("n_test", "test items", "int"), _col("note", "note")]
        rows = []
        for r in sorted(table.to_dicts(), key=lambda r: (r["dataset"], self._order(r["backbone_config"]), r["side"])):
            rows.append(dict(config=self._config_cell(r), family=r["family"], dataset=r["dataset"],
                             method=f"{r['side']}: {r['method']}", calib_input=r["calib_input"],
                             temperature=_num(r["temperature"]), ece=_iv(r["ece"], r["ece_low"], r["ece_high"]),
                             ece_ts=_iv(r["ece_ts"], r["ece_ts_low"], r["ece_ts_high"]),
                             change=_iv(r["change"], r["change_low"], r["change_high"]),
                             **{m: _num(r[m]) for m in ("nll", "nll_ts", "brier", "brier_ts")}, n=r["n"],
                             n_test=r["n_test"], note=r["note"],
                             _f=_facets(dataset=r["dataset"], task=task, evaluation=evaluation,
                                        family=[r["family"]], config=[r["backbone_config"]])))
        caption = (f"Calibration ({task}, {evaluation}): top-label ECE (15 bins) on test before and after "
                   "temperature scaling fitted on val; change = after − before, paired bootstrap interval over the "
                   "same test items")
        self._add_table(section, _table(f"calibration-{task}-{evaluation}", caption, cols, rows))
        for dataset in sorted(set(table["dataset"].to_list())):
            curves = []
            for r in table.filter(pl.col("dataset") == dataset).to_dicts():
                bins = a.reliability_bins(r["files"], task=task)
                if bins is not None:
                    curves.append(dict(r, bins=bins))
            if curves:
                title = f"{dataset} ({task}, {evaluation}): reliability diagrams (dashed: before TS, solid: after)"
                self._add_figure(section, a.reliability_figure(curves, styles=self.styles, title=title), title)

    def _task_figures(self, section, task, evaluation, fixed_groups, best_fz, best_ft) -> None:
        """The figures the task's report hook names (:meth:`probe.tasks.Task.report_figures`: retrieved faces,
        predicted vs true, dense examples), per dataset, drawn as inline SVG by :class:`_TaskFigures`."""
        from ._report_tables import LEARNED, TUNED

        t = self.a.task_of(task)
        if t is None:
            return
        frames = [*fixed_groups, (LEARNED, best_fz), (TUNED, best_ft)]
        datasets = sorted({d for _, f in frames if f.height for d in f["dataset"].to_list()})
        sink = _TaskFigures(self, section)
        for dataset in datasets:
            shown = [(name, sorted(f.filter(self.pl.col("dataset") == dataset).to_dicts(),
                                   key=lambda r: (self._order(r["backbone_config"]), r["config_label"])))
                     for name, f in frames if f.height]
            try:
                t.report_figures(sink, dataset, evaluation, [(n, recs) for n, recs in shown if recs])
            except AttributeError as exc:  # a hook that asks for a markdown-only block: the tables stay
                self.notes.append(f"{task} ({evaluation}) on {dataset}: a figure is left out of the explorer "
                                  f"({exc}).")

    def _fixed(self, section, task, evaluation, metric, fixed) -> None:
        """Protocols that learn nothing and select nothing (cosine retrieval/verification), one row per tap."""
        a = self.a
        rows_frame = a.with_intervals(fixed, metric=metric, **self.kw) if metric in a.BOOTSTRAP_METRICS else fixed
        metrics = [m for m in a.task_metrics(task) if m in fixed.columns and m != metric]
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("method", "method (nothing selected)"),
                _interval_col(metric, metric, f"test {_head(metric)}"),
                *(_metric_col(m, m, _head(m)) for m in metrics), _col("n", "seeds", "int"),
                _col("n_eval", "test items", "int")]
        rows = []
        for r in rows_frame.to_dicts():
            row = dict(config=self._config_cell(r), family=r["family"], dataset=r["dataset"], method=r["method"],
                       n=r["n"], n_eval=r["n_eval"],
                       _f=_facets(dataset=r["dataset"], task=task, evaluation=evaluation, family=[r["family"]],
                                  config=[r["backbone_config"]], probe=[r["probe"]]))
            row[metric] = _iv(r.get(metric), r.get(f"{metric}_low"), r.get(f"{metric}_high"))
            for m in metrics:
                row[m] = _num(r.get(m))
            rows.append(row)
        self._add_table(section, _table(f"fixed-{task}-{evaluation}",
                                        f"Fixed protocols ({task}, {evaluation}): cosine similarity of the frozen "
                                        "features, per tap; nothing learned, nothing selected", cols, rows,
                                        sort=metric, desc=not a.lower_is_better(metric)))

    def _pairs(self, task, evaluation, metric, side, best) -> None:
        """Every pair of configurations on one side (same dataset, selection metric): the paired difference
        over the same test items (:func:`probe.analysis.compare_jobs`), for the drill-down."""
        if not best.height or metric not in self.a.BOOTSTRAP_METRICS:
            return
        groups: dict[tuple, list[dict]] = {}
        for r in best.to_dicts():
            groups.setdefault((r["dataset"], r["select_metric"]), []).append(r)
        for (dataset, select_metric), rows in sorted(groups.items()):
            rows.sort(key=lambda r: (self._order(r["backbone_config"]), r["config_label"]))
            for i, ra in enumerate(rows):
                for rb in rows[i + 1:]:
                    try:
                        c = self.a.compare_jobs(list(ra["files"]), list(rb["files"]), metric=metric, **self.kw)
                        note = "" if c is not None else "the two sides cannot be paired by test item id"
                    except UsageError as exc:
                        c, note = None, str(exc)
                    diff = (c.estimate, c.low, c.high) if c is not None else (
                        ra[metric] - rb[metric] if ra[metric] is not None and rb[metric] is not None else None,
                        None, None)
                    n = int(c.n) if c is not None else None
                    # both orientations, so that the page only looks rows up (it negates nothing)
                    for x, y, (est, low, high) in ((ra, rb, diff), (rb, ra, (
                            None if diff[0] is None else -diff[0], None if diff[2] is None else -diff[2],
                            None if diff[1] is None else -diff[1]))):
                        self.pairs.append(dict(
                            dataset=dataset, task=task, evaluation=evaluation, side=side,
                            select_metric=select_metric, metric=metric, scale=_scale(metric),
                            a=x["backbone_config"], b=y["backbone_config"], method_a=x["method"],
                            method_b=y["method"], value_a=_num(x[metric]), value_b=_num(y[metric]),
                            diff=_iv(est, low, high), n=n, note=note))

    def _families(self, section, task, evaluation, metric, sides) -> None:
        a = self.a
        if len(set(self.jobs.filter(self.pl.col("task") == task)["family"].to_list())) < 2:
            return
        t = a.task_of(task)
        if t is not None and not t.compare_families:  # as the task declares (the markdown report asks the same)
            return
        records = []
        for side, best in sides:
            if not best.height:
                continue
            try:
                compared = a.compare_families(best, metric=metric, **self.kw)
            except UsageError as exc:
                self.notes.append(f"{task} ({evaluation}), {side}: no family comparison ({exc}).")
                continue
            for rec in compared:
                rec["side"] = side
                records.append(rec)
        if not records:
            return
        cols = [_col("dataset", "dataset"), _col("side", "side"), _col("weights_kind", "weights"),
                _col("family_a", "family A"), _col("family_b", "family B"),
                _metric_col("mean_a", metric, f"A {_head(metric)}, mean of members"),
                _metric_col("mean_b", metric, f"B {_head(metric)}, mean of members"),
                _col("n_a", "A members", "int"), _col("n_b", "B members", "int"),
                _interval_col("diff", metric, "difference A − B", signed=True),
                _col("n_images", "test items", "int"), _col("separated", "separated"), _col("note", "note")]
        ids = {label: c for c, label in self.styles.label.items()}
        rows = []
        for r in records:
            c = r["comparison"]
            diff = _iv(c.estimate, c.low, c.high) if c is not None else _iv(r["mean_a"] - r["mean_b"])
            rows.append(dict(dataset=r["dataset"], side=r["side"], weights_kind=r["weights_kind"],
                             family_a=r["family_a"], family_b=r["family_b"], mean_a=_num(r["mean_a"]),
                             mean_b=_num(r["mean_b"]), n_a=len(r["members_a"]), n_b=len(r["members_b"]), diff=diff,
                             n_images=int(c.n_images) if c is not None else None,
                             separated=("yes" if c.separates else "no (CI includes 0)") if c is not None else "—",
                             note=r["note"] or "",
                             _f=_facets(dataset=r["dataset"], task=task, evaluation=evaluation,
                                        family=[r["family_a"], r["family_b"]],
                                        config=[ids.get(m, m) for m in (*r["members_a"], *r["members_b"])])))
        self._add_table(section, _table(f"families-{task}-{evaluation}", (
            f"Families ({task}, {evaluation}): each family's mean over its configurations (each with its "
            f"val-selected protocol); the {self.pct} interval resamples test items and, within each family, "
            "backbones"), cols, rows))
        wins = []
        for side in dict.fromkeys(r["side"] for r in records):
            for w in a.family_wins([r for r in records if r["side"] == side]):
                wins.append(dict(side=side, weights_kind=w["weights_kind"], family_a=w["family_a"],
                                 family_b=w["family_b"], wins_a=w["wins_a"], wins_b=w["wins_b"], ties=w["ties"],
                                 datasets=w["datasets"], separated_on=w["separated"], p_value=_num(w["p_value"]),
                                 separates="yes" if w["separates"] else "no: the evidence does not separate them",
                                 _f=_facets(task=task, evaluation=evaluation, family=[w["family_a"], w["family_b"]])))
        wcols = [_col("side", "side"), _col("weights_kind", "weights"), _col("family_a", "family A"),
                 _col("family_b", "family B"), _col("wins_a", "A wins", "int"), _col("wins_b", "B wins", "int"),
                 _col("ties", "ties", "int"), _col("datasets", "datasets", "int"),
                 _col("separated_on", "datasets whose CI excludes 0", "int"),
                 _col("p_value", "sign test p", "value", scale=1.0, digits=3), _col("separates", "separates")]
        self._add_table(section, _table(f"wins-{task}-{evaluation}", "Wins across datasets, exact two-sided sign "
                                        "test", wcols, wins))
        for fa, fb in dict.fromkeys((r["family_a"], r["family_b"]) for r in records):
            recs = [r for r in records if (r["family_a"], r["family_b"]) == (fa, fb)]
            na, nb = a.FAMILY_NAMES.get(fa, fa), a.FAMILY_NAMES.get(fb, fb)
            title = (f"{na} − {nb} ({task}, {evaluation}): mean over each family's backbones, {self.pct} CI "
                     "(resampling test items and backbones)")
            self._add_figure(section, a.family_figure(recs, title=title), title)

    def _layerwise(self, section, task, evaluation, metric, protocols) -> None:
        a, pl = self.a, self.pl
        blocks = protocols.filter((pl.col("shots") == 0) & (pl.col("probe") != FINETUNE)
                                  & pl.col("tap").str.contains(r"^block-?\d+$"))
        if not blocks.height:
            return
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("probe", "probe"), _col("block", "block", "int"), _col("n", "seeds", "int"),
                _interval_col(metric, metric, f"test {_head(metric)}"), _col("n_eval", "test items", "int")]
        rows = []
        for dataset in sorted(set(blocks["dataset"].to_list())):
            sub = blocks.filter(pl.col("dataset") == dataset)
            if metric in a.BOOTSTRAP_METRICS:
                sub = a.with_intervals(sub, metric=metric, **self.kw)
            counts = {c: max((a.block_index(t) for t in g["tap"]), default=0) + 1
                      for (c,), g in sub.group_by("backbone_config")}
            title = (f"{dataset} ({task}, {evaluation}): layer-wise probe {_head(metric)} (error bars: {self.pct} "
                     "bootstrap CI over test items)")
            fig = a.layerwise_figure(sub, metric=metric, relative_depth=len(set(counts.values())) > 1,
                                     styles=self.styles, title=title)
            self._add_figure(section, fig, title)
            for r in sub.to_dicts():
                value = _iv(r[metric], r.get(f"{metric}_low"), r.get(f"{metric}_high"))
                rows.append(dict(config=self._config_cell(r), family=r["family"], dataset=dataset, probe=r["probe"],
                                 block=a.block_index(r["tap"]), n=r["n"], n_eval=r["n_eval"], **{metric: value},
                                 _f=_facets(dataset=dataset, task=task, evaluation=evaluation, family=[r["family"]],
                                            config=[r["backbone_config"]], probe=[r["probe"]])))
                self.curves.append(dict(kind="layer-wise", config=r["backbone_config"], dataset=dataset, task=task,
                                        evaluation=evaluation, method=r["probe"], x=a.block_index(r["tap"]),
                                        y=value, scale=_scale(metric), metric=metric, sd=None))
        self._add_table(section, _table(f"layerwise-{task}-{evaluation}", f"Layer-wise ({task}, {evaluation}): "
                                        "probes on intermediate blocks, seeds averaged", cols, rows, sort="block"))

    def _few_shot(self, section, task, evaluation, metric, protocols) -> None:
        a, pl = self.a, self.pl
        few = protocols.filter(pl.col("shots") > 0)
        if not few.height:
            return
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("method", "probe / tap"), _col("shots", "shots per class", "int"), _col("n", "seeds", "int"),
                _metric_col(metric, metric, f"test {_head(metric)}, seed mean"),
                _metric_col(f"{metric}_sd", metric, "sd over seeds"), _col("n_val", "val items", "int")]
        rows = []
        for dataset in sorted(set(few["dataset"].to_list())):
            sub = few.filter(pl.col("dataset") == dataset)
            ref = protocols.filter((pl.col("dataset") == dataset) & (pl.col("shots") == 0)
                                   & (pl.col("probe") != FINETUNE))
            title = (f"{dataset} ({task}, {evaluation}): few-shot transfer, mean ± sd over seeds; dotted: same probe "
                     "on all training data")
            fig = a.few_shot_figure(pl.concat([sub, ref], how="diagonal_relaxed"), styles=self.styles,
                                    metric=metric, title=title)
            self._add_figure(section, fig, title)
            for r in sub.to_dicts():
                rows.append(dict(config=self._config_cell(r), family=r["family"], dataset=dataset,
                                 method=r["method"], shots=r["shots"], n=r["n"], n_val=r["n_val"],
                                 **{metric: _num(r[metric]), f"{metric}_sd": _num(r.get(f"{metric}_sd"))},
                                 _f=_facets(dataset=dataset, task=task, evaluation=evaluation, family=[r["family"]],
                                            config=[r["backbone_config"]], probe=[r["probe"]])))
                self.curves.append(dict(kind="few-shot", config=r["backbone_config"], dataset=dataset, task=task,
                                        evaluation=evaluation, method=r["method"], x=r["shots"],
                                        y=_iv(r[metric]), sd=_num(r.get(f"{metric}_sd")), scale=_scale(metric),
                                        metric=metric))
        self._add_table(section, _table(f"fewshot-{task}-{evaluation}", f"Few-shot ({task}, {evaluation}): k "
                                        "training examples per class; mean and sd over seeds (draws)", cols, rows,
                                        sort="shots"))

    def _multitask(self) -> None:
        a, pl = self.a, self.pl
        parts = []
        for (evaluation,), jobs in self.jobs.group_by("evaluation", maintain_order=True):
            g = a.multitask_gains(jobs, **self.kw)
            if g.height:
                parts.append(g.with_columns(pl.lit(evaluation).alias("evaluation")))
        if not parts:
            return
        gains = pl.concat(parts, how="diagonal_relaxed")
        section = self._section("Multi-task fine-tuning", "One backbone with one head per task trained jointly, "
                                "against single-task fine-tunes of the same settings on the same splits; multi − "
                                f"single with its paired bootstrap {self.pct} CI over test items. For errors (lower "
                                "is better) a negative difference is a gain.")
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("task", "task"), _col("evaluation", "evaluation"), _col("cotrained", "co-trained"),
                _col("weighting", "weighting"), _col("metric", "metric"),
                _col("multi", "multi", "value", scale=1.0, digits=4), _col("single", "single", "value", scale=1.0,
                                                                             digits=4),
                _col("gain", "multi − single", "interval", scale=1.0, digits=4, signed=True), _col("n", "seeds", "int"),
                _col("note", "note")]
        rows = [dict(config=self._config_cell(r), family=r["family"], dataset=r["dataset"], task=r["task"],
                     evaluation=r["evaluation"], cotrained=r["cotrained"], weighting=r["weighting"],
                     metric=r["metric"], multi=_num(r["multi"]), single=_num(r["single"]),
                     gain=_iv(r["gain"], r["gain_low"], r["gain_high"]), n=r["n"], note=r["note"] or "",
                     _f=_facets(dataset=r["dataset"], task=r["task"], evaluation=r["evaluation"],
                                family=[r["family"]], config=[r["backbone_config"]], probe=[FINETUNE]))
                for r in gains.to_dicts()]
        self._add_table(section, _table("multitask", "Multi-task minus single-task fine-tuning", cols, rows))
        self._add_figure(section, a.multitask_figure(gains, styles=self.styles),
                         "Multi-task minus single-task fine-tuning per configuration, with paired intervals")

    def _shift(self) -> None:
        """Distribution shift (:mod:`probe.analysis._shift`): each point's in-distribution and shifted accuracy and
        effective robustness, the figure of each dataset and shifted set."""
        a = self.a
        groups = a.effective_robustness(a.shift_points(a.job_table(self.results_dir, shifted=True),
                                                       notes=self.notes), **self.kw)
        if not groups:
            return
        section = self._section(
            "Distribution shift: effective robustness",
            "The selected models (frozen probe chosen on val and refitted; fine-tune's chosen epoch) scored once on "
            "shifted copies of the test images (eval_on), nothing fitted or selected on them. The line is fitted "
            "through every configuration and protocol on logit-scaled accuracies (Taori et al. 2020); effective "
            "robustness is the shifted accuracy minus the line's prediction, with a "
            f"{self.pct} bootstrap interval that resamples the images of both sets and refits the line.")
        metric = groups[0]["metric"]
        cols = [_col("config", "configuration", "config"), _col("family", "family"), _col("dataset", "dataset"),
                _col("evaluation", "evaluation"), _col("eval_dataset", "shifted set"), _col("method", "probe / tap"),
                _col("chosen", "chosen on val as"), _metric_col("acc_id", metric, "in-distribution"),
                _metric_col("acc_shift", metric, "shifted"),
                _interval_col("er", metric, "effective robustness", signed=True), _col("note", "note")]
        rows = [dict(config=self._config_cell(r), family=r["family"], dataset=r["dataset"],
                     evaluation=r["evaluation"], eval_dataset=r["eval_dataset"], method=r["method"],
                     chosen=r["chosen"], acc_id=_num(r["acc_id"]), acc_shift=_num(r["acc_shift"]),
                     er=_iv(r["er"], r["er_low"], r["er_high"]), note=r["note"] or "",
                     _f=_facets(dataset=r["dataset"], task=r["task"], evaluation=r["evaluation"],
                                family=[r["family"]], config=[r["backbone_config"]], probe=[r["probe"]]))
                for r in a.shift_rows(groups)]
        self._add_table(section, _table("shift", "Shifted vs in-distribution accuracy and effective robustness",
                                        cols, rows, sort="er", desc=True))
        for g in groups:
            if g["slope"] is not None:
                self._add_figure(section, a.shift_figure(g, styles=self.styles),
                                 f"{g['dataset']} to {g['eval_dataset']}: shifted vs in-distribution accuracy")

    # ------------------------------------------------------------------------------------- provenance

    def provenance(self) -> dict:
        from ._version import PROBE_VERSION, __version__

        packages = {}
        for name in _PACKAGES:
            try:
                packages[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                packages[name] = "not installed"
        study = None
        candidates = [self.study] if self.study is not None else sorted(
            self.results_dir.resolve().parent.glob("*.toml"))
        for candidate in candidates:
            try:
                text = candidate.read_text()
            except (OSError, UnicodeDecodeError):
                continue
            if "[study]" in text or "[[backbones]]" in text:
                study = dict(path=str(candidate), text=text)
                break
        versions = sorted({v for v in self.jobs["probe_version"].to_list() if v}) if self.jobs.height else []
        return dict(probe=__version__, probe_version=PROBE_VERSION, results_probe_versions=versions,
                    packages=packages, study=study, command=self.command, results_dir=str(self.results_dir),
                    n_boot=self.kw["n_boot"], seed=self.kw["seed"], ci=self.kw["ci"])

    # ------------------------------------------------------------------------------------- rendering

    def render(self) -> str:
        self.collect()
        jobs = self.jobs
        facets = {}
        if jobs.height:
            facets = dict(dataset=sorted(set(jobs["dataset"].to_list())), task=sorted(set(jobs["task"].to_list())),
                          evaluation=sorted(set(jobs["evaluation"].to_list())),
                          family=sorted(set(jobs["family"].to_list()), key=self.a.family_order),
                          config=[c for c in self.styles.configs], probe=sorted(set(jobs["probe"].to_list())))
        configs = self._config_info()
        protocol_cols = [_col("dataset", "dataset"), _col("task", "task"), _col("evaluation", "evaluation"),
                         _col("method", "probe / tap"), _col("chosen", "chosen on val as"),
                         _col("shots", "shots", "int"),
                         _col("select_metric", "selected on"),
                         _col("val", "val score, seed mean", "value", scale_key="val_scale", digits=1),
                         _col("test", "test (headline metric), seed mean", "value", scale_key="scale", digits=1),
                         _col("test_sd", "test sd over seeds", "value", scale_key="scale", digits=1),
                         _col("metric", "metric"), _col("n", "seeds", "int"), _col("seeds", "seed ids", "list"),
                         _col("n_train", "train items", "int"), _col("n_eval", "test items", "int")]
        for r in self.protocol_rows:
            r["val"] = r["val"]["est"] if r["val"] else None
        data = dict(
            title="Whose visual representations transfer better?",
            summary=dict(results_dir=str(self.results_dir), jobs=jobs.height,
                         datasets=facets.get("dataset", []), configs=len(configs),
                         families=facets.get("family", []), ci=self.pct),
            facets=facets, facet_labels={c: configs[c]["label"] for c in configs},
            configs=configs, tables=self.tables, protocols=dict(columns=protocol_cols, rows=self.protocol_rows),
            pairs=self.pairs, curves=self.curves, notes=list(dict.fromkeys(self.notes)),
            provenance=self.provenance())
        return _page(data, self.sections)


class _TaskFigures:
    """What a task's :meth:`~probe.tasks.Task.report_figures` hook is given by the explorer: the figure blocks of
    :class:`probe._report.Report` under the same names, each drawn (by the same :mod:`probe._report_tables`
    builders over :mod:`probe.analysis`) as inline SVG into the explorer's section; they return no markdown."""

    def __init__(self, explorer: _Explorer, section: dict):
        self.explorer, self.section = explorer, section
        self.a, self.pl, self.styles = explorer.a, explorer.pl, explorer.styles

    def retrieval_figure(self, dataset: str, evaluation: str, shown) -> list[str]:
        from ._report_tables import retrieval_figures

        for name, title, fig in retrieval_figures(self.a, dataset, shown):
            self.explorer._add_figure(self.section, fig, f"{title}; {name}, evaluation {evaluation}")
        return []

    def prediction_scatter(self, dataset: str, evaluation: str, shown) -> list[str]:
        from ._report_tables import prediction_scatter_figure

        made = prediction_scatter_figure(self.a, self.styles, dataset, shown)
        if made is not None:
            self.explorer._add_figure(self.section, made[1], f"{made[0]}; evaluation {evaluation}")
        return []

    def dense_examples(self, task, dataset: str, evaluation: str, shown) -> list[str]:
        from ._report_tables import dense_examples_figure

        made = dense_examples_figure(self.a, task, dataset, shown)
        if made is not None:
            self.explorer._add_figure(self.section, made[1], f"{made[0]}; evaluation {evaluation}")
        return []


def _asset(name: str) -> str:
    return files("probe").joinpath(name).read_text(encoding="utf-8")


def _page(data: dict, sections: list[dict]) -> str:
    """The whole page: inline CSS, the data as JSON, section skeletons with inline SVG figures, inline JS."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    payload = payload.replace("</", "<\\/").replace("<!--", "<\\!--")
    body = []
    nav = []
    for s in sections:
        nav.append(f'<li><a href="#{s["id"]}">{html.escape(s["title"])}</a></li>')
        body.append(f'<section id="{s["id"]}" aria-labelledby="{s["id"]}-h"><h2 id="{s["id"]}-h">'
                    f'{html.escape(s["title"])}</h2>')
        if s["intro"]:
            body.append(f'<p class="intro">{html.escape(s["intro"])}</p>')
        for kind, value in s["blocks"]:
            if kind == "table":
                body.append(f'<div class="table-block" data-table="{html.escape(value)}"></div>')
            elif kind == "figure":
                body.append(f'<figure>{value["svg"]}<figcaption>{html.escape(value["alt"])}</figcaption></figure>')
            else:
                body.append(f"<p>{html.escape(value)}</p>")
        body.append("</section>")
    csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
           "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(data["title"])}</title>
<style>
{_asset("_explorer.css")}
</style>
</head>
<body>
<header>
<h1>{html.escape(data["title"])}</h1>
<p id="summary"></p>
<nav aria-label="sections"><ul>{"".join(nav)}<li><a href="#protocols">All protocols</a></li>
<li><a href="#provenance">Provenance</a></li><li><a href="#notes">Notes</a></li></ul></nav>
</header>
<div id="filters" role="search" aria-label="filters"></div>
<main>
{"".join(body)}
<section id="protocols" aria-labelledby="protocols-h"><h2 id="protocols-h">All protocols</h2>
<p class="intro">Every protocol of every configuration (seeds averaged: mean, sd and n; never the best seed), with
its val score (what selection read) and its test score.</p><div class="table-block" data-table="protocols"></div>
</section>
<section id="provenance" aria-labelledby="provenance-h"><h2 id="provenance-h">Provenance</h2>
<div id="provenance-body"></div></section>
<section id="notes" aria-labelledby="notes-h"><h2 id="notes-h">Notes</h2><ul id="notes-body"></ul></section>
</main>
<dialog id="drill" aria-labelledby="drill-title"><div class="drill-head"><h2 id="drill-title"></h2>
<button type="button" id="drill-close" aria-label="close">✕</button></div><div id="drill-body"></div></dialog>
<script type="application/json" id="report-data">{payload}</script>
<script>
{_asset("_explorer.js")}
</script>
</body>
</html>
"""
