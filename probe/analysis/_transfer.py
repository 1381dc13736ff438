"""Can frozen features predict fine-tuning? Rank agreement of transferability scores with our own fine-tunes.

The rules:

- Per ``(dataset, task)``, across backbone configurations (never pooled across datasets, tasks or taps), each
  score ranks the configurations; the ranking is compared with the test metric of the configurations'
  fine-tuning (the fine-tune protocol chosen on val per configuration) and with the test metric of their best
  frozen probe (the probe protocol chosen on val, shots 0). Nothing is chosen on test.
- Baselines are judged the same way: the val score of the kNN and logistic probes (each the protocol chosen on
  val), the parameter count and the forward GFLOPs (``params`` and ``gflops`` rows of ``probe transfer``).
- Statistics: weighted Kendall tau (:func:`scipy.stats.weightedtau`, hyperbolic weights on the ranks, as the
  literature reports it), Kendall tau (tau-b), the top-pick hit (the score's highest configuration is the
  target's winner) and the regret (winner's metric minus the pick's; in the metric's unit, 0 is best; for a
  lower-is-better metric the sign is turned so that regret stays >= 0).
- Intervals: percentile bootstrap over backbone configurations (resampled with replacement within the dataset).
  With few configurations the interval is wide (with 3, tau takes only a handful of values); that is the honest
  answer. Across datasets, the mean per score is taken in every replicate over datasets resampled independently
  (datasets fixed, configurations resampled).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable

import numpy as np

#: Baselines judged beside the scores: name -> how it is read.
BASELINES = ("knn_val", "logistic_val", "params", "gflops")
#: Statistics of the agreement table, in column order.
STATISTICS = ("wtau", "tau", "hit", "regret")
#: Against which test metric a score is judged.
AGAINST = ("finetune", "frozen")


def score_table(results):
    """One row per (dataset, task, backbone_config, tap, score): the score rows of ``probe transfer``.

    Parameters
    ----------
    results : path or polars DataFrame
        A results directory or the rows of one.

    Returns
    -------
    polars.DataFrame
        ``dataset, task, backbone_config, config_label, family, backbone, tap, score, value, protocol``.
    """
    import polars as pl

    from ..results import scan_results

    from ._select import with_identity

    frame = scan_results(results).collect() if isinstance(results, (str, os.PathLike)) else results
    if "score" not in frame.columns:
        return pl.DataFrame(schema={c: pl.Utf8 for c in ("dataset", "task", "backbone_config", "config_label",
                                                         "family", "backbone", "tap", "score", "protocol")}
                            | {"value": pl.Float64})
    rows = with_identity(frame.filter((pl.col("probe") == "transfer") & pl.col("score").is_not_null()))
    return (rows.sort("created").group_by(["dataset", "task", "backbone_config", "tap", "score"], maintain_order=True)
            .last()  # a recomputed job replaces the older rows of the same score
            .select("dataset", "task", "backbone_config", "config_label", "family", "backbone", "tap", "score",
                    pl.col("score_value").alias("value"), "protocol")
            .sort("dataset", "task", "score", "tap", "backbone_config"))


def target_table(results, *, notes: list[str] | None = None):
    """Per (dataset, task, backbone_config): the fine-tuned and best-frozen test metric and the probe baselines.

    Returns
    -------
    polars.DataFrame
        ``dataset, task, backbone_config, config_label, family, metric, finetune, frozen, knn_val,
        logistic_val``: the task's headline metric (``top1`` for classification) on test of the fine-tune protocol
        and of the frozen probe protocol each chosen on val; ``knn_val`` / ``logistic_val`` the val score of the
        kNN / logistic protocol chosen on val (their selection metric). Null where a configuration lacks one.
    """
    import polars as pl

    from ..vocab import FINETUNE
    from ._select import aggregate_seeds, best_by_val, job_table, primary_metric

    jobs = job_table(results, notes=notes)
    keys = ["dataset", "task", "backbone_config"]
    if jobs.is_empty():
        return pl.DataFrame()
    jobs = jobs.filter(pl.col("probe") != "transfer")
    protocols = aggregate_seeds(jobs)
    out = protocols.select(*keys, "config_label", "family").unique(keys, maintain_order=True)
    metric_of = {t: primary_metric(t) for t in out["task"].unique().to_list()}

    def pick(frame, name: str, value: str):
        if frame.is_empty():
            return pl.DataFrame(schema={**{k: pl.Utf8 for k in keys}, name: pl.Float64})
        best = best_by_val(frame, notes=notes)
        vals = [r[value if value != "metric" else metric_of[r["task"]]] for r in best.iter_rows(named=True)]
        return best.select(keys).with_columns(pl.Series(name, vals, dtype=pl.Float64))

    frozen = protocols.filter((pl.col("probe") != FINETUNE) & (pl.col("shots") == 0))
    parts = [pick(protocols.filter(pl.col("probe") == FINETUNE), "finetune", "metric"),
             pick(frozen, "frozen", "metric"),
             pick(frozen.filter(pl.col("probe") == "knn"), "knn_val", "val_score"),
             pick(frozen.filter(pl.col("probe") == "logistic"), "logistic_val", "val_score")]
    for part in parts:
        out = out.join(part, on=keys, how="left")
    return out.with_columns(pl.col("task").replace_strict(metric_of, default="top1").alias("metric"))


def _stats(score: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Agreement of one ranking with the target over the same configurations (higher is better for both)."""
    import scipy.stats

    out = {"wtau": float("nan"), "tau": float("nan")}
    if len(score) >= 2 and np.ptp(score) > 0 and np.ptp(target) > 0:
        out["wtau"] = float(scipy.stats.weightedtau(score, target).statistic)
        out["tau"] = float(scipy.stats.kendalltau(score, target).statistic)
    pick = int(np.argmax(score))  # ties: the first configuration in the table's order
    out["hit"] = float(target[pick] == target.max())
    out["regret"] = float(target.max() - target[pick])
    return out


def agreement(scores, targets, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95):
    """Rank agreement of every score and baseline with the fine-tuned and the best-frozen test metric.

    Parameters
    ----------
    scores : polars.DataFrame
        :func:`score_table` rows.
    targets : polars.DataFrame
        :func:`target_table` rows.
    n_boot : int
        Bootstrap replicates over backbone configurations.

    Returns
    -------
    polars.DataFrame
        One row per (dataset, task, score, tap, against): ``n`` configurations, each statistic of
        :data:`STATISTICS` with ``<stat>_low`` / ``<stat>_high``, ``pick`` (the score's top configuration) and
        ``winner`` (the target's best). Rows with fewer than two configurations are left out.
    """
    import polars as pl

    rows = []
    for key, s, t, labels in _rankings(scores, targets):
        dataset, task, name, tap, against, metric = key
        point = _stats(s, t)
        rng = np.random.default_rng(seed)
        boots = np.array([list(_stats(s[i], t[i]).values())
                          for i in (rng.integers(0, len(s), len(s)) for _ in range(n_boot))]).reshape(
            n_boot, len(STATISTICS))
        row = dict(dataset=dataset, task=task, score=name, tap=tap, against=against, metric=metric, n=len(s),
                   pick=labels[int(np.argmax(s))], winner=labels[int(np.argmax(t))])
        for j, stat in enumerate(STATISTICS):
            row[stat] = point[stat]
            row[f"{stat}_low"], row[f"{stat}_high"] = _interval(boots[:, j], ci) if n_boot else (math.nan, math.nan)
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _rankings(scores, targets):
    """(dataset, task, score, tap, against, metric), score values, signed target values and labels of every
    ranking with at least two configurations (configurations in ``backbone_config`` order)."""
    import polars as pl

    from ._select import lower_is_better

    if targets.is_empty() or scores.is_empty():
        return
    judged = _judged(scores, targets)
    for (dataset, task, name, tap), group in judged.group_by(["dataset", "task", "score", "tap"], maintain_order=True):
        for against in AGAINST:
            sub = group.filter(pl.col(against).is_not_null()).sort("backbone_config")
            if sub.height < 2:
                continue
            metric = sub["metric"][0]
            sign = -1.0 if lower_is_better(metric, task) else 1.0
            yield ((dataset, task, name, tap, against, metric), sub["value"].to_numpy().astype(float),
                   sign * sub[against].to_numpy().astype(float), sub["config_label"].to_list())


def _interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2])
    return float(lo), float(hi)


def mean_agreement(scores, targets, *, n_boot: int = 1000, seed: int = 0, ci: float = 0.95):
    """Across datasets (of one task): the mean of each statistic per (score, tap, against), with its interval.

    Each bootstrap replicate resamples the configurations of every dataset independently and averages the
    per-dataset statistics (datasets are fixed, not resampled; a dataset whose replicate leaves tau undefined
    is left out of that replicate's mean).

    Returns
    -------
    polars.DataFrame
        One row per (task, score, tap, against): ``datasets`` (how many), each statistic's mean with
        ``<stat>_low`` / ``<stat>_high``.
    """
    import polars as pl

    rows = []
    rng = np.random.default_rng(seed)
    data: dict = {}  # (task, score, tap, against) -> [(score values, target values) per dataset]
    for (_dataset, task, name, tap, against, _metric), s, t, _ in _rankings(scores, targets):
        data.setdefault((task, name, tap, against), []).append((s, t))
    for (task, name, tap, against), sets in data.items():
        with warnings.catch_warnings():  # a dataset whose tau is undefined is left out of the mean
            warnings.simplefilter("ignore", RuntimeWarning)
            point = np.nanmean([list(_stats(s, t).values()) for s, t in sets], axis=0)
        boots = []
        for _ in range(n_boot):
            reps = []
            for s, t in sets:
                i = rng.integers(0, len(s), len(s))
                reps.append(list(_stats(s[i], t[i]).values()))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                boots.append(np.nanmean(np.array(reps), axis=0) if reps else [math.nan] * len(STATISTICS))
        boots = np.array(boots)
        row = dict(task=task, score=name, tap=tap, against=against, datasets=len(sets))
        for j, stat in enumerate(STATISTICS):
            row[stat] = float(point[j])
            row[f"{stat}_low"], row[f"{stat}_high"] = _interval(boots[:, j], ci) if n_boot else (math.nan, math.nan)
        rows.append(row)
    return pl.DataFrame(rows) if rows else pl.DataFrame()


def _judged(scores, targets):
    """Scores and baselines joined with the targets: one row per (dataset, task, score, tap, configuration)."""
    import polars as pl

    baselines = [targets.select("dataset", "task", "backbone_config", pl.lit(b).alias("score"),
                                pl.lit("-").alias("tap"), pl.col(b).alias("value"))
                 for b in ("knn_val", "logistic_val")]
    table = scores.select("dataset", "task", "backbone_config", "score", "tap", "value")
    sized = table.filter(pl.col("score").is_in(["params", "gflops"])).unique(
        ["dataset", "task", "backbone_config", "score"], keep="first", maintain_order=True).with_columns(
        pl.lit("-").alias("tap"))
    table = pl.concat([table.filter(~pl.col("score").is_in(["params", "gflops"])), sized, *baselines])
    return table.filter(pl.col("value").is_not_null()).join(targets, on=["dataset", "task", "backbone_config"],
                                                            how="inner")


#: How each score and baseline is named in tables and figures.
LABELS = {"logme": "LogME", "hscore": "H-score", "hscore_shrink": "H-score (shrinkage)", "leep": "LEEP",
          "nce": "NCE", "nleep": "NLEEP", "sfda": "SFDA", "transrate": "TransRate", "gbc": "GBC",
          "knn_val": "kNN probe (val)", "logistic_val": "logistic probe (val)", "params": "parameters",
          "gflops": "GFLOPs"}


def _label(score: str, tap: str = "-") -> str:
    name = LABELS.get(score, score)
    return name if tap in ("-", "pooled") else f"{name} ({tap})"


def score_figure(scores, targets, *, against: str = "finetune", styles=None, title: str | None = None):
    """Score against the target's test metric, one panel per (score, dataset); family colours, one marker per
    configuration (the same as every other figure's).

    Parameters
    ----------
    scores, targets : polars.DataFrame
        :func:`score_table` and :func:`target_table` rows.
    against : str
        ``finetune`` (default) or ``frozen``.
    """
    import polars as pl

    from ._figures import Styles, _legend_outside, _scale, _unit, metric_name, new_figure

    judged = _judged(scores, targets).filter(pl.col(against).is_not_null())
    keys = judged.select("score", "tap").unique(maintain_order=True).to_dicts()
    order = list(LABELS)
    keys.sort(key=lambda r: (order.index(r["score"]) if r["score"] in order else len(order), r["tap"]))
    datasets = sorted(judged["dataset"].unique().to_list()) if judged.height else []
    styles = styles or Styles.from_frame(targets.filter(pl.col(against).is_not_null()))
    ncols, nrows = max(1, len(datasets)), max(1, len(keys))
    fig = new_figure(3.2 * ncols + 2.5, 2.2 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, key in enumerate(keys):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            sub = judged.filter((pl.col("score") == key["score"]) & (pl.col("tap") == key["tap"])
                                & (pl.col("dataset") == dataset))
            for r in sub.iter_rows(named=True):
                st = styles.of(r["backbone_config"])
                ax.plot(r["value"], r[against] * _scale(r["metric"]), color=st["color"], marker=st["marker"],
                        linestyle="none", label=styles.legend(r["backbone_config"]))
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(dataset, fontsize=9)
            if j == 0:
                ax.set_ylabel(_label(key["score"], key["tap"]), fontsize=8)
    for j in range(ncols):
        metric = judged["metric"][0] if judged.height else "top1"
        axes[-1][j].set_xlabel(f"score (y: {'fine-tuned' if against == 'finetune' else 'best frozen'} test "
                               f"{metric_name(metric)}{_unit(metric)})", fontsize=7)
    _legend_outside(fig, [ax for row in axes for ax in row])
    fig.suptitle(title or "transferability score vs fine-tuned test metric, per dataset", fontsize=10)
    return fig


def _cell(value, low, high, *, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def transfer_section(results, save_figure: Callable, *, n_boot: int = 1000, seed: int = 0,
                     notes: list[str] | None = None) -> list[str]:
    """Markdown lines of the report section "Can frozen features predict fine-tuning?".

    Parameters
    ----------
    results : path or polars DataFrame
        A results directory (or its rows).
    save_figure : callable
        ``save_figure(fig, name) -> str``: saves a matplotlib Figure under a file name stem and returns the path
        to link from the markdown.
    n_boot, seed : int
        Bootstrap replicates over configurations, and their seed.
    notes : list of str, optional
        Receives lines about jobs left out (no val score, no selected test row).

    Returns
    -------
    list of str
        The section's lines (empty when there are no ``probe transfer`` rows).
    """
    scores = score_table(results)
    if scores.is_empty():
        return []
    targets = target_table(results, notes=notes)
    lines = ["## Can frozen features predict fine-tuning?", "",
             "Transferability scores computed on each configuration's cached train features (`probe transfer`), "
             "judged by how well they rank the configurations against their own fine-tuning on the same splits "
             "(the fine-tune protocol chosen on val), and against the best frozen probe (chosen on val). Per "
             "dataset: weighted Kendall τ (scipy's `weightedtau`, hyperbolic rank weights, as the literature "
             "reports it), Kendall τ, whether the score's top pick is the winner, and the regret (the winner's "
             "metric minus the pick's, in points). Brackets: 95% bootstrap intervals over configurations. With few "
             "configurations τ can take only a few values and its interval is wide: read a τ of 1 over three "
             "backbones as \"consistent with\", not as \"proven\" (a random score orders n configurations perfectly "
             "once in n! tries, and a perfect order stays perfect in every resample, so its interval collapses to "
             "a point). Baselines: the val score of the kNN and "
             "logistic probes, the parameter count and the forward GFLOPs.", ""]
    per = agreement(scores, targets, n_boot=n_boot, seed=seed) if not targets.is_empty() else None
    if per is None or per.is_empty():
        lines += ["No dataset has at least two configurations with both scores and a fine-tuned or frozen test "
                  "metric yet, so no ranking can be judged.", ""]
        return lines
    import polars as pl

    order = list(LABELS)
    rank = lambda r: (order.index(r["score"]) if r["score"] in order else len(order), r["tap"])  # noqa: E731
    for (dataset, task), group in per.group_by(["dataset", "task"], maintain_order=True):
        ft = group.filter(pl.col("against") == "finetune")
        fr = {(r["score"], r["tap"]): r for r in group.filter(pl.col("against") == "frozen").iter_rows(named=True)}
        n = int(group["n"].max())
        lines += [f"### {dataset} ({task}, {n} configurations)", "",
                  "| score | weighted τ vs fine-tuned | Kendall τ | top pick = winner | regret (points) | "
                  "weighted τ vs best frozen |", "|---|---|---|---|---|---|"]
        rows = sorted((ft if ft.height else group.filter(pl.col("against") == "frozen")).to_dicts(), key=rank)
        for r in rows:
            f = fr.get((r["score"], r["tap"]))
            scale = 100.0 if r["metric"] not in ("mae", "rmse") else 1.0
            reg = _cell(r["regret"] * scale, r["regret_low"] * scale, r["regret_high"] * scale, digits=1) \
                if r["against"] == "finetune" else "—"
            lines.append(f"| {_label(r['score'], r['tap'])} | "
                         f"{_cell(r['wtau'], r['wtau_low'], r['wtau_high']) if r['against'] == 'finetune' else '—'}"
                         f" | {_cell(r['tau'], r['tau_low'], r['tau_high']) if r['against'] == 'finetune' else '—'}"
                         f" | {'yes' if r['hit'] == 1 else 'no'} (`{r['pick']}`) | {reg} | "
                         f"{_cell(f['wtau'], f['wtau_low'], f['wtau_high']) if f else '—'} |")
        lines.append("")
    means = mean_agreement(scores, targets, n_boot=n_boot, seed=seed)
    if not means.is_empty() and int(means["datasets"].max()) > 1:
        lines += ["Across datasets (mean of the per-dataset statistics; intervals resample configurations within "
                  "each dataset):", "", "| task | score | datasets | weighted τ vs fine-tuned | top-pick hits | "
                  "weighted τ vs best frozen |", "|---|---|---|---|---|---|"]
        ft = means.filter(pl.col("against") == "finetune")
        fr = {(r["task"], r["score"], r["tap"]): r for r in means.filter(pl.col("against") == "frozen").to_dicts()}
        for r in sorted(ft.to_dicts(), key=lambda r: (r["task"], *rank(r))):
            f = fr.get((r["task"], r["score"], r["tap"]))
            lines.append(f"| {r['task']} | {_label(r['score'], r['tap'])} | {r['datasets']} | "
                         f"{_cell(r['wtau'], r['wtau_low'], r['wtau_high'])} | "
                         f"{_cell(r['hit'], r['hit_low'], r['hit_high'])} | "
                         f"{_cell(f['wtau'], f['wtau_low'], f['wtau_high']) if f else '—'} |")
        lines.append("")
    if targets["finetune"].is_not_null().any():
        path = save_figure(score_figure(scores, targets), "transfer_scores")
        lines += [f"![transferability score vs fine-tuned test metric]({path})", ""]
    return lines
