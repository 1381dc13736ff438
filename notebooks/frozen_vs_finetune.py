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
# For every (dataset, backbone): the best frozen probe and the best fine-tuning run, both **chosen on val**,
# their test accuracy, and the gain from fine-tuning with a **paired bootstrap 95% CI** over the same test images
# (from the predictions saved beside each results file).
#
# Run headless: `python notebooks/frozen_vs_finetune.py --results results [--out DIR]`; or open it in Jupyter
# (jupytext) and edit `RESULTS` below. Uses only the public API: `probe.scan_results`, `probe.paired_bootstrap`,
# `probe.results.load_artifacts`, and polars.

# %%
import argparse
from pathlib import Path

import matplotlib

try:  # inside Jupyter keep the inline backend; as a script draw off-screen
    get_ipython  # noqa: B018
except NameError:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

import probe
from probe.results import best_by_val, selected_jobs

parser = argparse.ArgumentParser(description="Frozen probes vs fine-tuning, with paired bootstrap CIs.")
parser.add_argument("--results", default="results", help="results directory (searched recursively)")
parser.add_argument("--out", default=None, help="figure folder (default: notebook-figures beside --results)")
parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples per interval")
parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
args, _ = parser.parse_known_args()  # known args only: Jupyter passes its own

RESULTS = Path(args.results)
OUT = Path(args.out) if args.out else RESULTS.resolve().parent / "notebook-figures"
OUT.mkdir(parents=True, exist_ok=True)
N_BOOT, SEED = args.n_boot, args.seed
print(f"results: {RESULTS}\nfigures: {OUT}")


def show(fig, name: str) -> None:
    """Save ``fig`` as OUT/name; display it in Jupyter, close it when running headless."""
    fig.savefig(OUT / name, dpi=150)
    print("wrote", OUT / name)
    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()

# %% [markdown]
# ## Load the results
# One parquet file per job. The file path is kept: `<stem>.npz` beside it holds the selected row's test
# predictions. Each job's val score is the val row with the selected row's params (the metric it was chosen on).

# %%
jobs = selected_jobs(RESULTS)  # one row per job: selected test row, its val score and its file
print(f"{jobs.height} jobs")


full = jobs.filter(pl.col("shots") == 0)
frozen = best_by_val(full.filter((pl.col("probe") != "finetune") & (pl.col("tap") != "patch")))
finetune = best_by_val(full.filter(pl.col("probe") == "finetune"))
print(f"best frozen probes: {frozen.height}; fine-tuned backbones: {finetune.height}")

# %% [markdown]
# ## Paired bootstrap of the gain (fine-tune − best frozen)
# Predictions are paired by image id, so the same test images are resampled for both results.


# %%
def paired(file_a: str, file_b: str, metric: str = "top1"):
    """Paired bootstrap of metric(a) - metric(b) on the test images both scored, or None without predictions."""
    return probe.compare_jobs(file_a, file_b, metric=metric, n_boot=N_BOOT, seed=SEED)


def accuracy_ci(file: str):
    """Bootstrap CI of one job's test top-1, or None without saved predictions."""
    return probe.job_ci(file, n_boot=N_BOOT, seed=SEED)


table = frozen.join(finetune, on=["dataset", "backbone"], suffix="_ft", how="inner")
records = []
for r in table.iter_rows(named=True):
    top1 = paired(r["file_ft"], r["file"])
    mpc = paired(r["file_ft"], r["file"], metric="mean_per_class_acc")
    ci_frozen, ci_ft = accuracy_ci(r["file"]), accuracy_ci(r["file_ft"])
    records.append({
        "dataset": r["dataset"], "backbone": r["backbone"], "family": r["family"],
        "frozen": f"{r['probe']} / {r['tap']}", "frozen_top1": r["top1"], "finetune_top1": r["top1_ft"],
        "gain": r["top1_ft"] - r["top1"],
        "gain_low": top1.low if top1 else None, "gain_high": top1.high if top1 else None,
        "gain_mpc": mpc.estimate if mpc else None, "n_test": top1.n if top1 else r["n_eval"],
        # error bars of each accuracy on its own (for the scatter plot)
        "frozen_err": [r["top1"] - ci_frozen.low, ci_frozen.high - r["top1"]] if ci_frozen else [0.0, 0.0],
        "finetune_err": [r["top1_ft"] - ci_ft.low, ci_ft.high - r["top1_ft"]] if ci_ft else [0.0, 0.0],
    })
gains = pl.DataFrame(records, schema_overrides={"gain_low": pl.Float64, "gain_high": pl.Float64,
                                                "gain_mpc": pl.Float64}) if records else None
if gains is None:
    print("No (dataset, backbone) has both a frozen probe and fine-tuning: no gains to show.")
else:
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(gains.drop("frozen_err", "finetune_err").with_columns(
            (pl.col(c) * 100).round(1) for c in
            ("frozen_top1", "finetune_top1", "gain", "gain_low", "gain_high", "gain_mpc")))

# %% [markdown]
# ## Figure: gain from fine-tuning, per dataset and backbone, with 95% CI

# %%
if gains is not None:
    datasets = gains["dataset"].unique(maintain_order=True).sort().to_list()
    backbones = gains["backbone"].unique().sort().to_list()
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(datasets) * len(backbones) ** 0.5 + 3), 4.5))
    width = 0.8 / len(backbones)
    for i, backbone in enumerate(backbones):
        sub = gains.filter(pl.col("backbone") == backbone)
        x = np.array([datasets.index(d) for d in sub["dataset"]]) + (i - (len(backbones) - 1) / 2) * width
        y = sub["gain"].to_numpy() * 100
        low = np.nan_to_num(y - sub["gain_low"].fill_null(float("nan")).to_numpy() * 100)
        high = np.nan_to_num(sub["gain_high"].fill_null(float("nan")).to_numpy() * 100 - y)
        ax.bar(x, y, width, yerr=[low, high], capsize=3, label=f"{backbone} ({sub['family'][0]})")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_xlabel("dataset")
    ax.set_ylabel("fine-tune − best frozen probe\n(test top-1, percentage points)")
    ax.set_title(f"Gain from fine-tuning (selection on val; paired bootstrap {N_BOOT} resamples, 95% CI)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    show(fig, "gain_from_finetuning.png")

# %% [markdown]
# ## Figure: frozen vs fine-tuned accuracy (points above the diagonal gain from fine-tuning)
# The error bars here are each accuracy's own interval; the gain's paired interval (above) is narrower because
# both results share the test images.

# %%
if gains is not None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for dataset in gains["dataset"].unique().sort():
        sub = gains.filter(pl.col("dataset") == dataset)
        ax.errorbar(sub["frozen_top1"] * 100, sub["finetune_top1"] * 100, fmt="o", capsize=3, label=dataset,
                    xerr=np.array(sub["frozen_err"].to_list()).T * 100,
                    yerr=np.array(sub["finetune_err"].to_list()).T * 100)
        for r in sub.iter_rows(named=True):
            ax.annotate(r["backbone"], (r["frozen_top1"] * 100, r["finetune_top1"] * 100), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.plot([0, 100], [0, 100], "--", color="gray", linewidth=1, label="no gain")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("best frozen probe, test top-1 accuracy (%)")
    ax.set_ylabel("fine-tuning, test top-1 accuracy (%)")
    ax.set_title("Frozen vs fine-tuned, one point per backbone and dataset\n(error bars: 95% bootstrap CI over "
                 "test images)", fontsize=10)
    ax.legend(fontsize=8, title="dataset", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    show(fig, "frozen_vs_finetune_scatter.png")
