# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Frozen features vs fine-tuning
#
# For every dataset and backbone configuration (backbone, weights, input size): the best frozen probe and the
# best fine-tuning mode, both **chosen on the seed-mean val score**, their test accuracy (mean over seeds), and
# the gain from fine-tuning with a **paired bootstrap 95% CI** over the same test images. Everything below is a
# call into `probe.analysis`, the layer the report uses too.
#
# Run headless: `python notebooks/frozen_vs_finetune.py --results results [--out DIR] [--n-boot N]`, or open it
# in Jupyter (jupytext).

# %%
import polars as pl

from probe import analysis, tasks

nb = analysis.notebook_setup("Frozen probes vs fine-tuning, with paired bootstrap CIs.")
jobs = analysis.job_table(nb.results)  # one row per job: its selected test row and the val score that chose it
styles = analysis.Styles.from_frame(jobs)  # family colours, one marker per configuration: as in the report
print(f"{jobs.height} jobs, {jobs['backbone_config'].n_unique()} backbone configurations")

# %% [markdown]
# ## Best frozen probe and fine-tuning of every configuration (seed-mean val), and the gain

# %%
protocols = analysis.aggregate_seeds(jobs.filter(pl.col("shots") == 0))
dense = [t.name for t in tasks.all_tasks() if t.dense]  # dense tasks: see the report's dense section
frozen = analysis.best_by_val(protocols.filter((pl.col("probe") != "finetune") & (pl.col("tap") != "patch")))
finetune = analysis.best_by_val(protocols.filter((pl.col("probe") == "finetune") & ~pl.col("task").is_in(dense)))
gains = analysis.finetune_gains(frozen, finetune, n_boot=nb.n_boot, seed=nb.seed)  # each task's headline metric
both = gains.filter(pl.col("gain").is_not_null()) if gains.height else gains
groups = sorted({(t, e) for t, e in both.select("task", "evaluation").iter_rows()},
                key=lambda k: (tasks.names().index(k[0]) if k[0] in tasks.names() else 99, k[1])) \
    if both.height else []
if not both.height:
    print("No configuration has both a frozen probe and fine-tuning: no gains to show.")
for task, evaluation in groups:
    sub = both.filter((pl.col("task") == task) & (pl.col("evaluation") == evaluation))
    metric = sub["metric"][0]
    fraction = analysis.metric_of(metric, task).unit == "fraction"
    print(f"{task}, evaluation {evaluation}: {metric} ({'%' if fraction else 'its unit'}; "
          f"{'lower' if analysis.lower_is_better(metric, task) else 'higher'} is better), intervals over "
          f"{', '.join(sorted({o for o in sub['gain_over'].to_list() if o}))}")
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=250):
        print(sub.select("dataset", "config_label", "family", "frozen_method",
                         *[(pl.col(c) * (100 if fraction else 1)).round(1 if fraction else 3)
                           for c in ("frozen", "finetune", "gain", "gain_low", "gain_high")],
                         "frozen_n", "finetune_n", "frozen_n_train", "finetune_n_train", "gain_n"))

# %% [markdown]
# ## Figures: the gain per dataset and configuration; fine-tuned against frozen (one pair per task and scheme)

# %%
for i, (task, evaluation) in enumerate(groups):
    sub = both.filter((pl.col("task") == task) & (pl.col("evaluation") == evaluation))
    suffix = "" if i == 0 else f"_{task}_{evaluation}"
    nb.show(analysis.gain_figure(sub, metric=sub["metric"][0], styles=styles), f"gain_from_finetuning{suffix}.png")
    nb.show(analysis.finetune_scatter_figure(sub, metric=sub["metric"][0], styles=styles),
            f"frozen_vs_finetune_scatter{suffix}.png")
