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
# # Layer-wise and few-shot curves
#
# **Layer-wise**: test accuracy of probes on intermediate blocks (`block<i>` taps) against relative depth
# (block / number of blocks, so backbones of different depth line up), seeds averaged, with 95% bootstrap
# intervals over test images. **Few-shot**: test accuracy against training examples per class (log scale), mean ±
# sd over seeds, per backbone configuration; the dotted line is the same probe on all training data. Everything
# below is a call into `probe.analysis`, the layer the report uses too.
#
# Run headless: `python notebooks/layerwise_and_fewshot.py --results results [--out DIR] [--n-boot N]`.

# %%
import polars as pl

from probe import analysis

nb = analysis.notebook_setup("Layer-wise curves (block taps) and few-shot curves (shots per class).")
jobs = analysis.job_table(nb.results)
styles = analysis.Styles.from_frame(jobs)
protocols = analysis.aggregate_seeds(jobs)

# %% [markdown]
# ## Layer-wise curves

# %%
blocks = protocols.filter((pl.col("shots") == 0) & pl.col("tap").str.contains(r"^block-?\d+$"))
if not blocks.height:
    print("No block<i> taps in the results: no layer-wise curves.")
for dataset in sorted(set(blocks["dataset"].to_list())):
    sub = blocks.filter(pl.col("dataset") == dataset)
    metric = analysis.primary_metric(sub["task"][0])  # the task's headline (block taps are one task's)
    sub = analysis.with_intervals(sub.filter(pl.col("task") == sub["task"][0]), metric=metric, n_boot=nb.n_boot,
                                  seed=nb.seed)
    fig = analysis.layerwise_figure(sub, metric=metric, relative_depth=True, styles=styles,
                                    title=f"{dataset}: layer-wise probe accuracy (95% bootstrap CI)")
    nb.show(fig, f"layerwise_{dataset}.png")

# %% [markdown]
# ## Few-shot curves

# %%
few = protocols.filter(pl.col("shots") > 0)
if not few.height:
    print("No few-shot results (shots > 0): no few-shot curves.")
else:
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(few.select("dataset", "config_label", "method", "shots", "n", (pl.col("top1") * 100).round(1),
                         (pl.col("top1_sd") * 100).round(1)))
for dataset in sorted(set(few["dataset"].to_list())):
    sub = protocols.filter((pl.col("dataset") == dataset) & (pl.col("probe") != "finetune"))
    nb.show(analysis.few_shot_figure(sub, styles=styles, title=f"{dataset}: few-shot transfer, mean ± sd over "
                                     "seeds; dotted: all training data"), f"fewshot_{dataset}.png")
