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
# Per dataset and protocol (best frozen probe; fine-tuning), each backbone's test accuracy, the mean per
# family, and the **wins per dataset**: each family's representative is its backbone with the best **val**
# score, and the difference between representatives gets a **paired bootstrap 95% CI** over the same test
# images. Nothing is chosen on test.
#
# Run headless: `python notebooks/convnets_vs_transformers.py --results results [--out DIR]`; or open it in
# Jupyter (jupytext). Uses only the public API: `probe.scan_results`, `probe.paired_bootstrap`,
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

parser = argparse.ArgumentParser(description="ConvNets vs transformers: family means and wins, with paired bootstrap CIs.")
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


# %% [markdown]
# ## Best frozen probe and fine-tuning of every backbone (chosen on val)

# %%
full = jobs.filter(pl.col("shots") == 0)
best = pl.concat([
    best_by_val(full.filter((pl.col("probe") != "finetune") & (pl.col("tap") != "patch")))
    .with_columns(protocol=pl.lit("frozen")),
    best_by_val(full.filter(pl.col("probe") == "finetune")).with_columns(protocol=pl.lit("fine-tune")),
])
FAMILY_ORDER = {"convnet": 0, "transformer": 1, "hybrid": 2}
families = sorted(best["family"].fill_null("unknown").unique().to_list(), key=lambda f: (FAMILY_ORDER.get(f, 9), f))
print("families:", families)
with pl.Config(tbl_rows=100, tbl_width_chars=200):
    print(best.select("dataset", "protocol", "backbone", "family", "probe", "tap", "val_score",
                      (pl.col("top1") * 100).round(1).alias("test top-1 %"))
          .sort("dataset", "protocol", "family", "backbone"))

# %% [markdown]
# ## Mean test accuracy per family

# %%
means = (best.group_by("dataset", "protocol", "family")
         .agg((pl.col("top1").mean() * 100).round(1).alias("mean top-1 %"), pl.len().alias("backbones"))
         .sort("dataset", "protocol", "family"))
with pl.Config(tbl_rows=100):
    print(means)

# %%
def paired(file_a: str, file_b: str, metric: str = "top1"):
    """Paired bootstrap of metric(a) - metric(b) on the test images both scored, or None without predictions."""
    return probe.compare_jobs(file_a, file_b, metric=metric, n_boot=N_BOOT, seed=SEED)


def accuracy_ci(file: str):
    """Bootstrap CI of one job's test top-1, or None without saved predictions."""
    return probe.job_ci(file, n_boot=N_BOOT, seed=SEED)



# %% [markdown]
# ## Figure: family means, with every backbone and its 95% CI

# %%
if best.height:
    protocols = [p for p in ("frozen", "fine-tune") if p in best["protocol"].to_list()]
    datasets = sorted(best["dataset"].unique().to_list())
    colors = {"convnet": "tab:blue", "transformer": "tab:orange", "hybrid": "tab:green"}
    fig, axes = plt.subplots(1, len(protocols), figsize=(max(5, 2.2 * len(datasets)) * len(protocols), 4.5),
                             squeeze=False, sharey=True)
    width = 0.8 / len(families)
    for ax, protocol in zip(axes[0], protocols):
        for i, family in enumerate(families):
            offset = (i - (len(families) - 1) / 2) * width
            sub = best.filter((pl.col("protocol") == protocol) & (pl.col("family") == family))
            for j, dataset in enumerate(datasets):
                members = sub.filter(pl.col("dataset") == dataset)
                if not members.height:
                    continue
                ax.bar(j + offset, members["top1"].mean() * 100, width, color=colors.get(family, "tab:gray"),
                       alpha=0.5, label=f"{family} mean" if j == 0 else None)
                for k, r in enumerate(members.iter_rows(named=True)):
                    ci = accuracy_ci(r["file"])
                    err = [[(r["top1"] - ci.low) * 100], [(ci.high - r["top1"]) * 100]] if ci else None
                    x = j + offset + (k - (members.height - 1) / 2) * width / (members.height + 1)
                    ax.errorbar(x, r["top1"] * 100, yerr=err, fmt="o", color="black", markersize=4, capsize=2,
                                label="one backbone (95% CI)" if (i, j, k) == (0, 0, 0) else None)
                    ax.annotate(r["backbone"], (x, r["top1"] * 100), xytext=(3, -10), textcoords="offset points",
                                fontsize=6, rotation=90, va="top")
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_xlabel("dataset")
        ax.set_title(f"{protocol} (val-selected)", fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test top-1 accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Family means (bars) and each backbone (points, 95% bootstrap CI over test images)", fontsize=10)
    fig.tight_layout()
    show(fig, "family_means.png")

# %% [markdown]
# ## Wins per dataset: val-selected representatives, paired difference with 95% CI

# %%
pairs = [(families[i], families[j]) for i in range(len(families)) for j in range(i + 1, len(families))]
if not pairs:
    print(f"Only one family ({', '.join(families) or 'none'}) in the results: nothing to compare.")
wins = []
for first, second in pairs:
    for (dataset, protocol), group in best.sort("dataset", "protocol").group_by("dataset", "protocol",
                                                                              maintain_order=True):
        reps = {}
        for family in (first, second):
            members = group.filter(pl.col("family") == family)
            if members.height:  # the backbone with the best val score; ties by name
                reps[family] = members.sort(["val_score", "backbone"], descending=[True, False]).row(0, named=True)
        if len(reps) < 2:
            continue
        a, b = reps[second], reps[first]
        diff = paired(a["file"], b["file"])
        estimate = diff.estimate if diff else a["top1"] - b["top1"]
        wins.append({"comparison": f"{second} − {first}", "dataset": dataset, "protocol": protocol,
                     first: b["backbone"], second: a["backbone"], "difference": estimate,
                     "low": diff.low if diff else None, "high": diff.high if diff else None,
                     "n_test": diff.n if diff else None,
                     "winner": second if estimate > 0 else first if estimate < 0 else "tie",
                     "ci_excludes_0": bool(diff and diff.excludes_zero)})
if wins:
    wins = pl.DataFrame(wins, schema_overrides={"low": pl.Float64, "high": pl.Float64, "n_test": pl.Int64})
    with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200):
        print(wins.with_columns((pl.col(c) * 100).round(1) for c in ("difference", "low", "high")))
        print(wins.group_by("comparison", "protocol", "winner").agg(
            pl.len().alias("datasets won"), pl.col("ci_excludes_0").sum().alias("with CI excluding 0"))
            .sort("comparison", "protocol", "winner"))
else:
    wins = None
    print("No dataset has two families under the same protocol: no wins to count.")

# %% [markdown]
# ## Figure: the differences, one row per dataset and protocol

# %%
if wins is not None:
    for comparison, sub in wins.group_by("comparison", maintain_order=True):
        comparison = comparison[0]
        fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.6 * sub.height))
        y = np.arange(sub.height)[::-1]
        est = sub["difference"].to_numpy() * 100
        low = np.nan_to_num(est - sub["low"].fill_null(float("nan")).to_numpy() * 100)
        high = np.nan_to_num(sub["high"].fill_null(float("nan")).to_numpy() * 100 - est)
        ax.errorbar(est, y, xerr=[low, high], fmt="o", color="black", capsize=4)
        ax.axvline(0, color="gray", linestyle="--", linewidth=1)
        second, first = comparison.split(" − ")
        ax.set_yticks(y, [f"{d} · {p}\n({r[second]} − {r[first]})" for d, p, r in
                          zip(sub["dataset"], sub["protocol"], sub.iter_rows(named=True))], fontsize=8)
        ax.set_ylim(-0.6, sub.height - 0.4)
        ax.set_xlabel(f"{comparison}: difference in test top-1 accuracy (percentage points)")
        ax.set_title(f"{comparison} (val-selected representatives), paired 95% bootstrap CI\n"
                     f"right of 0: {second} better", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        show(fig, f"wins_{second}_vs_{first}.png")
