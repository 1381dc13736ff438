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
# # ConvNets vs transformers: whose features transfer better?
#
# A claim about families, not about two hand-picked backbones. Per dataset and side (best frozen probe;
# fine-tuning), each family's score is the mean over its backbone configurations (each val-selected on seed
# means), and the difference gets a **two-level paired bootstrap 95% CI** that resamples the test images and,
# within each family, the backbones. Across datasets: wins, with an exact sign test. Everything below is a call
# into `probe.analysis`, the layer the report uses too.
#
# Run headless: `python notebooks/convnets_vs_transformers.py --results results [--out DIR] [--n-boot N]`.

# %%
import polars as pl

from probe import analysis, tasks

nb = analysis.notebook_setup("ConvNets vs transformers: family differences with backbone-aware CIs.")
jobs = analysis.job_table(nb.results)
protocols = analysis.aggregate_seeds(jobs.filter(pl.col("shots") == 0))
dense = [t.name for t in tasks.all_tasks() if t.dense]  # dense tasks: the report's dense section compares them
sides = {
    "frozen": analysis.best_by_val(protocols.filter((pl.col("probe") != "finetune") & (pl.col("tap") != "patch"))),
    "fine-tune": analysis.best_by_val(protocols.filter((pl.col("probe") == "finetune")
                                                       & ~pl.col("task").is_in(dense))),
}
with pl.Config(tbl_rows=100, tbl_width_chars=200):
    print(analysis.configurations(jobs))

# %% [markdown]
# ## Family differences per dataset, task and evaluation scheme
#
# Each task's headline metric, in its unit (percentage points for fractions); the interval resamples the test
# images, or the people they cluster in where the jobs saved them, and the backbones (an architecture once).

# %%
records = []
for side, best in sides.items():
    for rec in analysis.compare_families(best, n_boot=nb.n_boot, seed=nb.seed):
        records.append({**rec, "side": side})
for r in records:
    c = r["comparison"]
    scale = 100.0 if analysis.metric_of(r["metric"], r["task"]).unit == "fraction" else 1.0
    if c is not None:
        interval = (f"{c.estimate * scale:+.2f} [{c.low * scale:+.2f}, {c.high * scale:+.2f}] over {c.over}"
                    + ("  separated" if c.separates else ""))
    elif r["mean_a"] is not None and r["mean_b"] is not None:
        interval = f"{(r['mean_a'] - r['mean_b']) * scale:+.2f} (no CI: {r['note']})"
    else:
        interval = f"— (no CI: {r['note']})"
    print(f"{r['dataset']:>10} {r['task']:>14} [{r['evaluation']}] {r['side']:>9} {r['metric']}: "
          f"{r['family_a']} ({len(r['backbones_a'])}) − {r['family_b']} ({len(r['backbones_b'])}): {interval}")
    for note in (c.notes + c.few_backbones) if c is not None else ():
        print(f"{'':>12}{note}")
if not records:
    print("No dataset has two families under the same protocol: nothing to compare.")

# %% [markdown]
# ## Wins across datasets (exact sign test) and the forest plot of each pair

# %%
for side in sides:
    for w in analysis.family_wins([r for r in records if r["side"] == side]):
        verdict = "separates" if w["separates"] else "does NOT separate"
        print(f"{side} {w['task']} [{w['evaluation']}]: {w['family_a']} win {w['wins_a']}, {w['family_b']} win "
              f"{w['wins_b']} of {w['datasets']} dataset(s); sign test p = {w['p_value']:.3g}: the evidence "
              f"{verdict} the families")
for pair in dict.fromkeys((r["family_a"], r["family_b"]) for r in records):
    fig = analysis.family_figure([r for r in records if (r["family_a"], r["family_b"]) == pair])
    nb.show(fig, f"families_{pair[0]}_vs_{pair[1]}.png")
