"""Figures and the report section of representation similarity (rows of :mod:`probe.similarity`).

Heatmaps put configurations in family order (:func:`family_order`, then by label), colour their tick labels by
family (:data:`FAMILY_COLORS`) and share one labelled colour scale per measure (0 to 1 unless told otherwise), so
two heatmaps of a report read alike. The fine-tuning curve draws, per configuration, the similarity of each
frozen block to the same block after fine-tuning, coloured by family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ._compare import family_order
from ._figures import FAMILY_COLORS, FAMILY_NAMES, Styles, block_index, new_figure

#: How each measure is named on axes, colour bars and in prose.
MEASURE_NAMES = {"cka": "linear CKA", "cka_debiased": "linear CKA (debiased)",
                 "mutual_knn": "mutual k-NN alignment"}
#: The colour map of every similarity heatmap.
CMAP = "viridis"


def measure_name(measure: str) -> str:
    """``cka`` -> ``linear CKA``."""
    return MEASURE_NAMES.get(measure, measure)


def _side_order(frame) -> list[tuple[str, str, str]]:
    """(backbone_config, config_label, family) of every configuration in the frame, in family order."""
    seen = {}
    for side in ("a", "b"):
        for c, label, fam in frame.select(f"backbone_config_{side}", f"config_label_{side}",
                                          f"family_{side}").iter_rows():
            seen.setdefault(c, (label, fam))
    return sorted(((c, lab, fam) for c, (lab, fam) in seen.items()), key=lambda r: (family_order(r[2]), r[1], r[0]))


def config_matrix_values(frame, *, measure: str = "cka"):
    """The configuration x configuration matrix of one job's rows: (configs, value [n, n], low, high).

    ``frame`` holds the rows of one dataset and tap (kind ``configs``); the matrix is symmetric with 1 on the
    diagonal, configurations in family order (a list of (backbone_config, config_label, family)).
    """
    import polars as pl

    rows = frame.filter(pl.col("measure") == measure)
    configs = _side_order(rows)
    index = {c: i for i, (c, _, _) in enumerate(configs)}
    n = len(configs)
    value, low, high = (np.eye(n) for _ in range(3))
    for r in rows.iter_rows(named=True):
        i, j = index[r["backbone_config_a"]], index[r["backbone_config_b"]]
        for m, key in ((value, "value"), (low, "low"), (high, "high")):
            m[i, j] = m[j, i] = r[key] if r[key] is not None else np.nan
    return configs, value, low, high


def _heatmap(ax, values, *, vmin, vmax, annotate=True):
    image = ax.imshow(values, cmap=CMAP, vmin=vmin, vmax=vmax, aspect="auto")
    if annotate and values.size <= 144:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < vmin + 0.6 * (vmax - vmin) else "black")
    return image


def _color_ticks(labels, families):
    for label, fam in zip(labels, families):
        label.set_color(FAMILY_COLORS.get(fam, "tab:gray"))


def config_heatmap_figure(frame, *, measures=("cka", "mutual_knn"), vmin: float = 0.0, vmax: float = 1.0,
                          title: str | None = None):
    """Configuration x configuration heatmaps, one panel per measure, sharing one colour bar.

    Parameters
    ----------
    frame : polars.DataFrame
        Similarity rows of one ``configs`` job (one dataset, one tap).
    measures : tuple of str
        Measures to draw (those absent from the frame are skipped).
    vmin, vmax : float
        The colour scale shared by the panels (and, left at 0-1, by every similarity heatmap).
    """
    measures = [m for m in measures if m in set(frame["measure"].to_list())]
    configs = _side_order(frame)
    n = len(configs)
    side = 1.2 + 0.45 * n
    fig = new_figure(side * len(measures) + 1.6, side + 1.2)
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    image = None
    for ax, measure in zip(axes, measures):
        cfg, value, _, _ = config_matrix_values(frame, measure=measure)
        image = _heatmap(ax, value, vmin=vmin, vmax=vmax)
        labels = [lab for _, lab, _ in cfg]
        fams = [fam for _, _, fam in cfg]
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        _color_ticks(ax.get_xticklabels(), fams)
        _color_ticks(ax.get_yticklabels(), fams)
        ax.set_title(measure_name(measure), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="similarity (shared 0-1 scale)", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def block_heatmap_figure(frame, *, measure: str = "cka", vmin: float = 0.0, vmax: float = 1.0,
                         title: str | None = None):
    """Block x block heatmaps, one panel per pair of configurations (rows: blocks of a, columns: blocks of b),
    sharing one labelled colour bar.

    ``frame`` holds ``blocks`` rows of one dataset; pairs are drawn in family order of their a side.
    """
    import polars as pl

    rows = frame.filter(pl.col("measure") == measure)
    pairs = rows.select("backbone_config_a", "config_label_a", "family_a", "backbone_config_b", "config_label_b",
                        "family_b").unique(maintain_order=True).to_dicts()
    pairs.sort(key=lambda p: (family_order(p["family_a"]), p["config_label_a"], family_order(p["family_b"]),
                              p["config_label_b"]))
    ncols = min(3, len(pairs)) or 1
    nrows = int(np.ceil(len(pairs) / ncols)) or 1
    fig = new_figure(4.2 * ncols + 1.4, 3.8 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image = None
    for ax, p in zip(axes, pairs):
        part = rows.filter((pl.col("backbone_config_a") == p["backbone_config_a"])
                           & (pl.col("backbone_config_b") == p["backbone_config_b"]))
        ta = sorted(set(part["tap_a"].to_list()), key=lambda t: block_index(t))
        tb = sorted(set(part["tap_b"].to_list()), key=lambda t: block_index(t))
        values = np.full((len(ta), len(tb)), np.nan)
        for r in part.iter_rows(named=True):
            values[ta.index(r["tap_a"]), tb.index(r["tap_b"])] = r["value"]
        image = _heatmap(ax, values, vmin=vmin, vmax=vmax)
        ax.set_yticks(range(len(ta)), [str(block_index(t)) for t in ta], fontsize=7)
        ax.set_xticks(range(len(tb)), [str(block_index(t)) for t in tb], fontsize=7)
        ax.set_ylabel(f"{p['config_label_a']} block", fontsize=8, color=FAMILY_COLORS.get(p["family_a"], "tab:gray"))
        ax.set_xlabel(f"{p['config_label_b']} block", fontsize=8, color=FAMILY_COLORS.get(p["family_b"], "tab:gray"))
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(pairs)]), label=f"{measure_name(measure)} (shared scale)", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def finetune_curve_figure(frame, *, measure: str = "cka", relative_depth: bool = True, styles: Styles | None = None,
                          title: str | None = None):
    """Frozen block i vs fine-tuned block i, per configuration: how far fine-tuning moved each layer.

    ``frame`` holds ``finetune`` rows of one dataset. x: block index, or relative depth (index + 1) / blocks
    when ``relative_depth``; y: the measure with its interval as error bars; colour by family.
    """
    import polars as pl

    rows = frame.filter((pl.col("measure") == measure) & pl.col("tap_a").str.contains(r"^block\d+$"))
    side = rows.rename({"backbone_config_a": "backbone_config", "config_label_a": "config_label",
                        "family_a": "family"})
    if styles is None:
        styles = Styles.from_frame(side) if side.height else Styles()
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    for config in sorted(set(side["backbone_config"].to_list()),
                         key=lambda c: styles.configs.index(c) if c in styles.configs else 0):
        line = side.filter(pl.col("backbone_config") == config)
        line = line.with_columns(pl.col("tap_a").map_elements(block_index, return_dtype=pl.Int64).alias("i")).sort("i")
        idx = line["i"].to_numpy().astype(float)
        x = (idx + 1) / (idx.max() + 1) if relative_depth else idx
        y = line["value"].to_numpy()
        err = np.vstack([y - line["low"].fill_null(np.nan).to_numpy(), line["high"].fill_null(np.nan).to_numpy() - y])
        ax.errorbar(x, y, yerr=np.nan_to_num(np.clip(err, 0, None)), capsize=2, label=styles.legend(config),
                    **styles.of(config))
    ax.set_xlabel("relative depth ((block + 1) / blocks)" if relative_depth else "block")
    ax.set_ylabel(f"{measure_name(measure)}: frozen vs fine-tuned")
    ax.set_ylim(0, 1.05)
    ax.axhline(1.0, color="0.7", lw=0.8, ls=":")
    if side.height:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or "how far fine-tuning moved each block (1 = unchanged)", fontsize=9)
    return fig


def family_pairs_table(frame, *, measure: str = "cka") -> list[dict]:
    """Mean of the measure over configuration pairs, by pair of families (one ``configs`` job's rows):
    dicts with families, pairs and mean, in family order."""
    import polars as pl

    rows = frame.filter(pl.col("measure") == measure)
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows.iter_rows(named=True):
        key = tuple(sorted((r["family_a"], r["family_b"]), key=family_order))
        groups.setdefault(key, []).append(r["value"])
    return [{"families": k, "pairs": len(v), "mean": float(np.mean(v))}
            for k, v in sorted(groups.items(), key=lambda kv: (family_order(kv[0][0]), family_order(kv[0][1])))]


def similarity_section(results_dir: str | Path, save_figure: Callable[[object, str], str]) -> list[str]:
    """The report's markdown lines on representation similarity (empty when no similarity rows exist).

    Parameters
    ----------
    results_dir : path
        The results directory; rows are read from ``<results_dir>/similarity/`` (:func:`probe.scan_similarity`).
    save_figure : callable
        ``save_figure(fig, name) -> link``: saves a matplotlib Figure under a name (no extension) and returns the
        path the markdown links to (the report's ``_save``).

    Returns
    -------
    list of str
        Markdown lines: a heading, what was measured, and per dataset the configuration heatmaps (per tap), the
        family means, the block x block heatmaps and the fine-tuning curve.
    """
    import polars as pl

    from ..similarity import scan_similarity

    scan = scan_similarity(results_dir)
    if scan is None:
        return []
    rows = scan.collect()
    if not rows.height:
        return []
    pct = f"{round(float(rows['ci'][0]) * 100)}%"
    lines = ["## Do ConvNets and transformers see alike? Representation similarity", "",
             "The same test images' features of two configurations (or two blocks) compared directly, without a "
             "probe: linear CKA (Kornblith et al. 2019; 1 = the same up to rotation and scale), its debiased form "
             "(on the unbiased HSIC of Song et al. 2007; less inflated on few images or wide features), and mutual "
             "k-NN alignment (Huh et al. 2024: the share of each image's k nearest neighbours both "
             f"representations agree on). Intervals ({pct}): CKA by a jackknife over random groups of images, "
             "mutual k-NN by a bootstrap over images. Colours of labels and lines: family "
             f"({', '.join(f'{FAMILY_NAMES[f]} {c[4:]}' for f, c in FAMILY_COLORS.items() if f != 'unknown')}).",
             ""]
    for dataset in sorted(set(rows["dataset"].to_list())):
        sub = rows.filter(pl.col("dataset") == dataset)
        lines += [f"### {dataset}", ""]
        configs = sub.filter(pl.col("kind") == "configs")
        for (tap,), part in configs.group_by("tap_a", maintain_order=True):
            n_img = int(part["n_images"][0])
            fig = config_heatmap_figure(part, title=f"{dataset}, tap {tap}: configuration x configuration "
                                                    f"({n_img} {part['split'][0]} images)")
            lines += [f"![{dataset} {tap}: similarity of configurations]"
                      f"({save_figure(fig, f'{dataset}-similarity-{tap}')})", ""]
            table = family_pairs_table(part, measure="cka")
            if table:
                lines += [f"Mean {measure_name('cka')} at `{tap}` by pair of families:", "",
                          "| families | configuration pairs | mean |", "|---|---:|---:|"]
                lines += [f"| {FAMILY_NAMES.get(t['families'][0], t['families'][0])} vs "
                          f"{FAMILY_NAMES.get(t['families'][1], t['families'][1])} | {t['pairs']} | {t['mean']:.3f} |"
                          for t in table]
                lines += [""]
        blocks = sub.filter(pl.col("kind") == "blocks")
        if blocks.height:
            fig = block_heatmap_figure(blocks, measure="cka",
                                       title=f"{dataset}: block x block {measure_name('cka')} (rows: first "
                                             "configuration's blocks)")
            lines += [f"![{dataset}: block x block]({save_figure(fig, f'{dataset}-similarity-blocks')})", ""]
        tuned = sub.filter(pl.col("kind") == "finetune")
        if tuned.height:
            measure = "cka" if "cka" in set(tuned["measure"].to_list()) else tuned["measure"][0]
            fig = finetune_curve_figure(tuned, measure=measure,
                                        title=f"{dataset}: frozen vs fine-tuned, block by block "
                                              f"({pct} intervals)")
            lines += [f"![{dataset}: fine-tuning per block]({save_figure(fig, f'{dataset}-similarity-finetune')})",
                      "", f"| configuration | family | block | {measure_name(measure)} [{pct}] |",
                      "|---|---|---:|---:|"]
            part = tuned.filter(pl.col("measure") == measure)
            for r in sorted(part.iter_rows(named=True), key=lambda r: (family_order(r["family_a"]),
                                                                        r["config_label_a"],
                                                                        block_index(r["tap_a"]) or 0)):
                lines.append(f"| {r['config_label_a']} | {r['family_a']} | {block_index(r['tap_a'])} | "
                             f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}] |")
            lines += [""]
    return lines
