"""Selection by configuration: jobs, seeds averaged per protocol, the best protocol chosen on val.

The rules every table and figure follows (report, notebooks, console summary):

- A *job* is one results file: its selected test row, plus the val score of that selected setting measured in the
  job's ``select_metric`` (the number it was chosen on). A cross-validated job is its summary row (``fold``
  null: the mean over folds), and its val score the mean over folds of each fold's selected val score. A job without such a val row has no val score and is
  never chosen; a note says so.
- Rows are grouped by ``(dataset, task, evaluation, eval_dataset, backbone_config, protocol)``; ``eval_dataset``
  is the set a row was scored on (``dataset`` itself, or a shifted set the model selected on ``dataset`` was scored
  on once: :mod:`probe._shifted`), and :func:`job_table` keeps the in-distribution rows unless asked for the
  shifted ones. Nothing is pooled across
  evaluation schemes (``evaluation``: ``splits``, ``cv5 by subject``, ``loo``, ``pairs file whiten 128`` ...),
  backbone configurations or protocol ids. Rows written before the ``evaluation`` column existed get it from
  their task (:meth:`probe.tasks.Task.legacy_evaluation`: ``splits``, or ``cv<k>[ by subject]`` from a
  cross-validated summary's params). Rows written before those columns existed get their own fallback identity
  (``legacy:`` + backbone and weights; + probe, tap, shots, selection metric, val fraction and fine-tune mode), so
  they are never merged with newer rows.
- The seeds of one protocol (val carves, few-shot draws) are averaged: mean, sample sd and n, for the val score
  and for every test metric. Nothing is ever the max over seeds.
- "Best by val" picks, within one ``(dataset, task, evaluation, backbone_config, select_metric)``, the protocol
  with the best *seed-mean* val score (the lowest for a metric whose task says lower is better). Protocols
  selected on different metrics, or scored under different evaluation schemes, are never ranked against each
  other. Ties are broken by name (probe, tap, protocol id), never
  by a test number.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from .. import tasks as _tasks
from ..vocab import FINETUNE, UNKNOWN_FAMILY

DEFAULT_TASK = _tasks.DEFAULT

#: Columns that identify what a row measured; groups never cross them (the evaluation scheme included).
GROUP = ("dataset", "task", "evaluation", "eval_dataset", "backbone_config", "protocol")
#: Columns that describe a (backbone_config, protocol) group and are the same in each of its jobs.
_DESCRIBE = ("backbone", "config_label", "family", "family_source", "weights", "img_size", "precision", "probe",
             "tap", "shots", "select_metric", "val_fraction", "test_fraction", "method")


def task_of(name: str | None):
    """The registered task called ``name`` (:func:`probe.tasks.get`), or None for a task no module registers
    (rows of a task defined elsewhere: the analysis layer shows them without its metadata, never fails)."""
    try:
        return _tasks.get(name)
    except Exception:  # UsageError: unknown task
        return None


def metric_of(metric: str, task: str | None = None):
    """The :class:`probe.tasks.Metric` called ``metric`` of ``task`` (or of the first task that has it, among its
    metrics or extra metrics); None when no registered task has it."""
    t = task_of(task) if task is not None else None
    for t in ([t] if t is not None else []) + list(_tasks.all_tasks()):
        if metric in t.metric_names or metric in {m.name for m in t.extra_metrics}:
            return t.metric(metric)
    return None


def lower_is_better(metric: str, task: str | None = None) -> bool:
    """True when a smaller value of ``metric`` is better (errors such as rmse), as its task says."""
    m = metric_of(metric, task)
    return bool(m is not None and not m.higher_is_better)


def primary_metric(task: str | None) -> str:
    """The headline metric of a task (``top1`` for classification)."""
    t = task_of(task)
    return (t or _tasks.get(None)).headline


def task_metrics(task: str | None) -> tuple[str, ...]:
    """The metric columns of a task (empty for an unregistered one)."""
    t = task_of(task)
    return t.metric_names if t is not None else ()


def job_table(results, *, notes: list[str] | None = None, shifted: bool = False):
    """One row per job: its selected test row with ``val_score``, ``file``, ``method`` and filled identity.

    Parameters
    ----------
    results : path or polars DataFrame / LazyFrame
        A results directory (read with :func:`probe.scan_results`) or rows that carry a ``file`` column.
    notes : list of str, optional
        Receives one line per results file that has no selected test row (it is left out).
    shifted : bool
        Also the rows of models scored on shifted sets (``eval_dataset`` other than ``dataset``: each its own
        file, ``<job stem>.on-<name>.parquet``, whose val score is its job's). Default: only in-distribution rows,
        which every table but the distribution-shift section reads.

    Returns
    -------
    polars.DataFrame
        The contract's columns, plus ``file`` (the job's parquet path; ``.npz`` predictions beside it),
        ``val_score`` (the val row of the selected setting, in the job's ``select_metric``; null when the job has
        none) and ``method`` (``"logistic / pooled"``, ``"finetune (full)"``). Null identity columns of older
        files are filled with a ``legacy:`` fallback (see the module docstring).
    """
    import polars as pl

    from ..results import scan_results

    if isinstance(results, (str, os.PathLike)):
        frame = scan_results(results, include_file_paths="file").collect()
    else:
        frame = results.collect() if isinstance(results, pl.LazyFrame) else results
    from .._shifted import source_file

    frame = with_identity(frame)
    by_file: dict[str, list[dict]] = {}
    for row in frame.to_dicts():
        by_file.setdefault(row["file"], []).append(row)
    jobs = []
    for file, rows in sorted(by_file.items()):
        if source_file(file) != file:  # a shifted set's file: its job's val rows chose its setting
            if not shifted:
                continue
            rows = rows + [r for r in by_file.get(source_file(file), []) if r["split"] == "val"]
        tests = [r for r in rows if r["selected"] and r["split"] == "test"]
        folds = [r for r in tests if r.get("fold") is not None]
        if folds:  # cross-validated: the job is its summary row; its val score is the folds' mean
            tests = [r for r in tests if r.get("fold") is None]
        if not tests:
            # transferability-score files (probe = "transfer") hold scores, not scored settings: no note for them
            if notes is not None and any(r["probe"] != "transfer" for r in rows):
                notes.append(f"{Path(file).name} has no selected test row; it is left out.")
            continue
        vals = [r for r in rows if r["split"] == "val"]
        for row in tests:
            row = dict(row)
            if folds:
                scores = [_val_score(t, [v for v in vals if v.get("fold") == t["fold"]]) for t in folds]
                row["val_score"] = None if any(v is None for v in scores) else float(sum(scores) / len(scores))
            else:
                row["val_score"] = _val_score(row, vals)
            jobs.append(row)
    schema = {**frame.schema, "val_score": pl.Float64}
    return pl.DataFrame(jobs, schema=schema, orient="row") if jobs else pl.DataFrame(schema=schema)


def _val_score(test: dict, vals: list[dict]) -> float | None:
    """The val score of the selected setting: the val row whose params the test row's params contain.

    The exact params are preferred; a val row whose every param agrees with the test row also matches (a refit
    may add keys to the test row). One rule: no matching val row, no val score.
    """
    metric = test["select_metric"]
    chosen = _params(test["params"])
    best, best_keys = None, -1
    for r in vals:
        p = _params(r["params"])
        if all(k in chosen and chosen[k] == v for k, v in p.items()) and len(p) > best_keys:
            value = r.get(metric)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                best, best_keys = float(value), len(p)
    return best


def _params(text) -> dict:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def with_identity(frame):
    """Fill null identity columns of older rows with a ``legacy:`` fallback, and add ``method``.

    ``backbone_config`` falls back to backbone + weights (+ input size when known), ``config_label`` to
    ``"backbone · weights"``, ``protocol`` to probe, tap, shots, selection metric, val fraction and fine-tune mode;
    ``select_metric`` to the task's headline metric, ``family`` to ``unknown``.
    """
    import polars as pl

    str_ = lambda c: pl.col(c).cast(pl.Utf8).fill_null("?")  # noqa: E731
    mode = pl.col("params").str.json_path_match("$.mode").fill_null("")
    frame = frame.with_columns(
        pl.col("task").fill_null(DEFAULT_TASK),
        pl.col("family").fill_null(UNKNOWN_FAMILY),
        pl.col("shots").fill_null(0),
        pl.col("seed").fill_null(0),
        pl.col("params").fill_null("{}"),
        # rows written before eval_dataset existed were scored on their own dataset
        (pl.col("eval_dataset") if "eval_dataset" in frame.columns else pl.lit(None, dtype=pl.Utf8))
        .fill_null(pl.col("dataset")).alias("eval_dataset"),
    ).with_columns(
        pl.col("select_metric").fill_null(pl.col("task").replace_strict(
            {t.name: t.headline for t in _tasks.all_tasks()}, default=primary_metric(DEFAULT_TASK),
            return_dtype=pl.Utf8)),
        pl.when(pl.col("probe") == FINETUNE)
        .then(pl.concat_str([pl.lit("finetune ("), mode, pl.lit(")")]).str.replace(r" \(\)$", ""))
        .otherwise(pl.concat_str([pl.col("probe"), pl.lit(" / "), pl.col("tap")])).alias("method"),
        mode.alias("_mode"),
    )
    legacy_config = pl.concat_str([pl.lit("legacy:"), str_("backbone"), pl.lit("|"), str_("weights"), pl.lit("|"),
                                   str_("img_size")])
    legacy_label = pl.concat_str([str_("backbone"), pl.lit(" · "), str_("weights")]) + pl.when(
        pl.col("img_size").is_not_null()).then(pl.concat_str([pl.lit(" · "), str_("img_size"), pl.lit("px")])
                                               ).otherwise(pl.lit(""))
    legacy_protocol = pl.concat_str([pl.lit("legacy:"), str_("task"), pl.lit("|"), str_("probe"), pl.lit("|"),
                                     str_("tap"), pl.lit("|shots"), str_("shots"), pl.lit("|"), str_("select_metric"),
                                     pl.lit("|val"), str_("val_fraction"), pl.lit("|"), pl.col("_mode")])
    frame = frame.with_columns(
        pl.col("backbone_config").fill_null(legacy_config),
        pl.col("config_label").fill_null(legacy_label),
        pl.col("protocol").fill_null(legacy_protocol),
    ).drop("_mode")
    return _with_evaluation(frame)


def _with_evaluation(frame):
    """Fill a null ``evaluation`` (rows written before the column existed) from the row's task
    (:meth:`probe.tasks.Task.legacy_evaluation` of its params and protocol)."""
    import polars as pl

    if "evaluation" not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("evaluation"))
    if not frame.height or frame["evaluation"].null_count() == 0:
        return frame
    values = []
    for task, params, protocol, evaluation in frame.select("task", "params", "protocol",
                                                           "evaluation").iter_rows():
        if evaluation is None:
            t = task_of(task)
            evaluation = t.legacy_evaluation(_params(params), protocol) if t is not None else "splits"
        values.append(evaluation)
    return frame.with_columns(pl.Series("evaluation", values, dtype=pl.Utf8))


def aggregate_seeds(jobs, *, metrics: Iterable[str] | None = None):
    """Average the seeds of each :data:`GROUP` (``dataset, task, evaluation, eval_dataset, backbone_config,
    protocol``): mean, sd and n, never max.

    Parameters
    ----------
    jobs : polars.DataFrame
        Rows of :func:`job_table` (any filter of them).
    metrics : iterable of str, optional
        Test metric columns to average (default: every metric of the rows' tasks that is present).

    Returns
    -------
    polars.DataFrame
        One row per group: the describing columns (``backbone``, ``config_label``, ``family``, ``method``, ...),
        ``n`` (jobs: seeds), ``seeds`` (list), ``files`` (list, in seed order), ``val_score``/``val_sd`` (seed mean
        and sd of the val score; null when a seed has none, so the protocol cannot be chosen), each metric and
        ``<metric>_sd``, and ``n_train``, ``n_val``, ``n_eval`` (of the first seed; ``n_train_max`` the largest).
    """
    import polars as pl

    if metrics is None:
        tasks = set(jobs["task"].to_list()) if jobs.height else {DEFAULT_TASK}
        metrics = [m for t in sorted(tasks) for m in task_metrics(t) if m in jobs.columns]
    metrics = list(dict.fromkeys(metrics))
    if "eval_dataset" not in jobs.columns:  # rows built by hand: scored on their own dataset
        jobs = jobs.with_columns(pl.col("dataset").alias("eval_dataset"))
    describe = [c for c in _DESCRIBE if c in jobs.columns]
    sd = lambda c: pl.col(c).std(ddof=1).fill_nan(None)  # noqa: E731
    ordered = jobs.sort("seed", "file")
    aggs = [pl.col(c).first() for c in describe] + [
        pl.len().alias("n"), pl.col("seed").alias("seeds"), pl.col("file").alias("files"),
        # one seed without a val score makes the protocol's val mean unknown: it cannot be chosen
        pl.when(pl.col("val_score").null_count() == 0).then(pl.col("val_score").mean()).alias("val_score"),
        sd("val_score").alias("val_sd"),
        pl.col("n_train").first(), pl.col("n_train").max().alias("n_train_max"), pl.col("n_val").first(),
        pl.col("n_eval").first(),
    ]
    for m in metrics:
        aggs.append(pl.col(m).mean().alias(m))
        if f"{m}_sd" not in metrics:  # verif_acc_sd is a metric itself (the sd over pair folds), kept as its mean
            aggs.append(sd(m).alias(f"{m}_sd"))
    return ordered.group_by(list(GROUP), maintain_order=True).agg(aggs).sort(list(GROUP))


def best_by_val(protocols, *, notes: list[str] | None = None, by: Iterable[str] = ()):
    """Per ``(dataset, task, evaluation, eval_dataset, backbone_config, select_metric)`` the protocol with the best
    seed-mean val score (the val split of ``dataset``): never chosen across evaluation schemes, nor across the
    sets the rows were scored on.

    Parameters
    ----------
    protocols : polars.DataFrame
        Rows of :func:`aggregate_seeds` (a :func:`job_table` frame is aggregated first). Filter it to the
        candidates first (e.g. frozen probes at shots = 0).
    notes : list of str, optional
        Receives a line for each group that has candidates but none with a val score.
    by : iterable of str
        Extra columns that split the groups further.

    Returns
    -------
    polars.DataFrame
        One row per group: the chosen protocol's row. The direction of "best" follows the ``select_metric``
        (lower is better for errors); ties go by probe, tap and protocol id, never by test.
    """
    import polars as pl

    if "evaluation" not in protocols.columns:  # rows built by hand: one scheme
        protocols = protocols.with_columns(pl.lit(None, dtype=pl.Utf8).alias("evaluation"))
    if "eval_dataset" not in protocols.columns:  # rows built by hand: scored on their own dataset
        protocols = protocols.with_columns(pl.col("dataset").alias("eval_dataset"))
    if "n" not in protocols.columns:
        protocols = aggregate_seeds(protocols)
    keys = ["dataset", "task", "evaluation", "eval_dataset", "backbone_config", "select_metric", *by]
    if protocols.is_empty():
        return protocols
    lower = sorted({(t, m) for t, m in protocols.select("task", "select_metric").iter_rows() if lower_is_better(m, t)})
    lower_metric = pl.concat_str([pl.col("task"), pl.lit("\x00"), pl.col("select_metric")])
    ranked = protocols.with_columns(
        pl.when(lower_metric.is_in([f"{t}\x00{m}" for t, m in lower]))
        .then(pl.col("val_score")).otherwise(-pl.col("val_score")).alias("_rank"))
    chosen = (ranked.filter(pl.col("_rank").is_not_null())
              .sort(["_rank", "probe", "tap", "protocol"])
              .group_by(keys, maintain_order=True).first().drop("_rank").sort(keys))
    if notes is not None:
        missing = ranked.join(chosen.select(keys), on=keys, how="anti").unique(keys, maintain_order=True)
        for r in missing.iter_rows(named=True):
            notes.append(f"{r['config_label']} on {r['dataset']}: no val score for the selected setting, so no "
                         "protocol can be chosen without test; left out of the comparisons.")
    return chosen


def weights_kind(weights: str | None) -> str:
    """``random-init`` or ``pretrained``: family comparisons never mix the two."""
    return "random-init" if str(weights or "").startswith("random-init") else "pretrained"


def configurations(jobs):
    """One row per backbone configuration: label, backbone, weights, input size, precision, family and its source."""
    cols = ["backbone_config", "config_label", "backbone", "weights", "img_size", "precision", "family",
            "family_source"]
    return jobs.select(cols).unique("backbone_config", keep="first", maintain_order=True).sort(
        "family", "backbone", "config_label")


def as_list(value: Any) -> list:
    """A polars list cell (or a scalar) as a Python list."""
    if value is None:
        return []
    return list(value) if not isinstance(value, (str, bytes)) else [value]


def skipped_images(jobs):
    """Images left out as unreadable (``--skip-bad``) per dataset and backbone configuration, where any were.

    Returns a polars DataFrame ``dataset, config_label, n_skipped`` (the largest count over that configuration's
    jobs on the dataset: jobs of one configuration read the same cached splits), sorted; empty when nothing was
    skipped or the rows predate the ``n_skipped`` column.
    """
    import polars as pl

    if "n_skipped" not in jobs.columns:
        return pl.DataFrame(schema={"dataset": pl.Utf8, "config_label": pl.Utf8, "n_skipped": pl.Int64})
    return (jobs.filter(pl.col("n_skipped").fill_null(0) > 0)
            .group_by("dataset", "config_label").agg(pl.col("n_skipped").max())
            .sort("dataset", "config_label"))

