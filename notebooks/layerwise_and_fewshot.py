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
# **Layer-wise**: test accuracy of probes on intermediate blocks (`block<i>` taps) against the block index,
# with 95% bootstrap intervals over test images. **Few-shot**: test accuracy against training examples per class
# (log scale), mean ± standard deviation over seeds (each seed draws other training examples); the full-data
# accuracy of the same probe and tap is drawn as a dotted line when it exists.
#
# Run headless: `python notebooks/layerwise_and_fewshot.py --results results [--out DIR]`; or open it in Jupyter
# (jupytext). Uses only the public API: `probe.scan_results`, `probe.paired_bootstrap`,
# `probe.results.load_artifacts`, and polars.

# %%
import argparse
import re
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
from probe.results import selected_jobs

parser = argparse.ArgumentParser(description="Layer-wise curves (block taps) and few-shot curves (shots per class).")
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


# %%
def paired(file_a: str, file_b: str, metric: str = "top1"):
    """Paired bootstrap of metric(a) - metric(b) on the test images both scored, or None without predictions."""
    return probe.compare_jobs(file_a, file_b, metric=metric, n_boot=N_BOOT, seed=SEED)


def accuracy_ci(file: str):
    """Bootstrap CI of one job's test top-1, or None without saved predictions."""
    return probe.job_ci(file, n_boot=N_BOOT, seed=SEED)



COLORS = {"convnet": "tab:blue", "transformer": "tab:orange", "hybrid": "tab:green"}
BACKBONES = sorted(jobs["backbone"].unique().to_list())


def style(backbone: str, family: str) -> dict:
    """Colour by family; marker and dashes by backbone, the same in every panel."""
    n = BACKBONES.index(backbone)
    return dict(color=COLORS.get(family, "tab:gray"), marker="osD^v<>p*"[n % 9], linestyle=("-", "--", "-.")[n % 3])


def panels(titles: list[str]):
    """One panel per title, at most three per row, sharing the y axis."""
    ncols = min(3, len(titles))
    nrows = -(-len(titles) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 2.6, 3.6 * nrows + 0.9), squeeze=False,
                             sharey=True)
    axes = axes.ravel()
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    return fig, axes[:len(titles)]


def finish(fig, axes, title: str, xlabel: str) -> None:
    """Axis labels, one legend entry per backbone (outside the panels), and the title."""
    for ax in axes:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[::3]:
        ax.set_ylabel("test top-1 accuracy (%)")
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    right = 1.0 - 2.6 / fig.get_figwidth()
    fig.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(right, 0.9), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, right, 1))

# %% [markdown]
# ## Layer-wise curves

# %%
blocks = (jobs.filter((pl.col("shots") == 0) & pl.col("tap").str.contains(r"^block-?\d+$"))
          .with_columns(block=pl.col("tap").str.slice(5).cast(pl.Int64))
          # several jobs for one block (seeds): keep the val-best, never the test-best
          .sort(["val_score", "seed"], descending=[True, False], nulls_last=True)
          .group_by("dataset", "backbone", "probe", "block", maintain_order=True).first()
          .sort("dataset", "backbone", "probe", "block"))
if not blocks.height:
    print("No block<i> taps in the results: no layer-wise curves.")
for (dataset,), sub in blocks.group_by("dataset", maintain_order=True):
    probes = sorted(sub["probe"].unique().to_list())
    fig, axes = panels([f"probe: {p}" for p in probes])
    for ax, probe_name in zip(axes, probes):
        lines = sub.filter(pl.col("probe") == probe_name).group_by("backbone", maintain_order=True)
        n_lines = sub.filter(pl.col("probe") == probe_name)["backbone"].n_unique()
        for n, ((backbone,), line) in enumerate(lines):
            x = line["block"].to_numpy() + 0.06 * (n - (n_lines - 1) / 2)  # offset keeps error bars apart
            y = line["top1"].to_numpy() * 100
            cis = [accuracy_ci(f) for f in line["file"]]
            err = np.array([[(t - c.low) * 100, (c.high - t) * 100] if c else [0, 0]
                            for t, c in zip(line["top1"], cis)]).T
            family = line["family"][0]
            ax.errorbar(x, y, yerr=err, capsize=3, label=f"{backbone} ({family})", **style(backbone, family))
        ax.xaxis.get_major_locator().set_params(integer=True)
    finish(fig, axes, f"{dataset}: layer-wise probe accuracy (error bars: 95% bootstrap CI over test images)",
           "block index (tap block<i>; negative: from the last)")
    show(fig, f"layerwise_{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset)}.png")

# %% [markdown]
# ## Few-shot curves

# %%
few = (jobs.filter(pl.col("shots") > 0)
       .group_by("dataset", "backbone", "family", "probe", "tap", "shots")
       .agg((pl.col("top1").mean() * 100).alias("mean"), (pl.col("top1").std(ddof=1) * 100).alias("sd"),
            pl.len().alias("seeds"))
       .with_columns(pl.col("sd").fill_null(0.0))  # one seed: no spread to show
       .sort("dataset", "backbone", "probe", "tap", "shots"))
# The full-data accuracy of the same probe and tap (val-selected over seeds), drawn as a reference line.
full_data = (jobs.filter(pl.col("shots") == 0)
             .sort(["val_score", "seed"], descending=[True, False], nulls_last=True)
             .group_by("dataset", "backbone", "probe", "tap", maintain_order=True).first()
             .select("dataset", "backbone", "probe", "tap", (pl.col("top1") * 100).alias("all_data")))
few = few.join(full_data, on=["dataset", "backbone", "probe", "tap"], how="left")
if not few.height:
    print("No few-shot results (shots > 0): no few-shot curves.")
else:
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(few.with_columns(pl.col("mean", "sd", "all_data").round(1)))
for (dataset,), sub in few.group_by("dataset", maintain_order=True):
    sub = sub.with_columns(probe_tap=pl.col("probe") + " / " + pl.col("tap"))
    combos = sorted(sub["probe_tap"].unique().to_list())
    fig, axes = panels([f"probe / tap: {c}" for c in combos])
    for ax, combo in zip(axes, combos):
        part = sub.filter(pl.col("probe_tap") == combo)
        n_lines = part["backbone"].n_unique()
        for n, ((backbone,), line) in enumerate(part.group_by("backbone", maintain_order=True)):
            st = style(backbone, line["family"][0])
            x = line["shots"].to_numpy() * 1.03 ** (n - (n_lines - 1) / 2)  # log axis: multiplicative offset
            ax.errorbar(x, line["mean"], yerr=line["sd"], capsize=3, label=f"{backbone} ({line['family'][0]})", **st)
            if line["all_data"][0] is not None:
                ax.axhline(line["all_data"][0], color=st["color"], linestyle=(0, (1, 3)), linewidth=1)
        shots = sorted(part["shots"].unique().to_list())
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(shots, [str(k) for k in shots])
        if len(shots) == 1:
            ax.set_xlim(shots[0] / 1.5, shots[0] * 1.5)
    seeds = sorted(sub["seeds"].unique().to_list())
    finish(fig, axes, f"{dataset}: few-shot transfer, mean ± sd over {'-'.join(map(str, sorted({seeds[0], seeds[-1]})))}"
           " seed(s); dotted: same probe on all training data", "training examples per class (shots, log scale)")
    show(fig, f"fewshot_{re.sub(r'[^A-Za-z0-9._-]+', '_', dataset)}.png")
