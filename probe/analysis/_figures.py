"""Figure builders: each takes analysis frames and returns a matplotlib Figure (nothing is saved or shown).

Colours mean family everywhere (:data:`FAMILY_COLORS`); each backbone configuration keeps one marker and line
style across figures (:class:`Styles`, built once from all jobs and passed to every builder). Figures use the
object API on an Agg canvas with constrained layout, so titles and outside legends are never clipped and the
caller's pyplot state is untouched; save with ``fig.savefig(path)``, or ``display(fig)`` in Jupyter.

Every builder takes the metric to draw as a parameter (default top1), so other tasks' metrics plug in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._compare import family_order

#: One colour per family, the same in every figure of the report and the notebooks.
FAMILY_COLORS = {"convnet": "tab:blue", "transformer": "tab:orange", "hybrid": "tab:green", "mlp": "tab:purple",
                 "other": "tab:brown", "unknown": "tab:gray"}
#: Family names in prose and legends.
FAMILY_NAMES = {"convnet": "ConvNets", "transformer": "transformers", "hybrid": "hybrids", "mlp": "MLPs",
                "other": "other", "unknown": "unknown family"}
_MARKERS = "osD^v<>pP*Xh"
_LINESTYLES = ("-", "--", ":", "-.")
_METRIC_NAMES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "mean_per_class_acc": "mean per-class accuracy",
                 "miou": "mIoU", "pixel_acc": "pixel accuracy", "rmse": "RMSE", "abs_rel": "abs rel",
                 "log10": "log10 error", "delta1": "δ<1.25", "delta2": "δ<1.25²", "delta3": "δ<1.25³",
                 "rank1": "rank-1 identification rate", "rank5": "rank-5 identification rate",
                 "map": "mean average precision", "verif_acc": "verification accuracy", "roc_auc": "ROC AUC",
                 "tar_far1e3": "TAR at FAR 1e-3", "mae": "mean absolute error", "cs5": "CS(5): share within 5 units"}


def metric_name(metric: str) -> str:
    """A metric for axis labels and prose (``top1`` -> ``top-1 accuracy``; else its task's label)."""
    if metric in _METRIC_NAMES:
        return _METRIC_NAMES[metric]
    from ._select import metric_of

    m = metric_of(metric)
    return (m.label or metric) if m is not None else metric


def _lower(metric: str, task: str | None = None) -> bool:
    from ._select import lower_is_better

    return lower_is_better(metric, task)


def _is_fraction(metric: str, task: str | None = None) -> bool:
    """Whether ``metric`` is a fraction shown in percent (its unit, as its task defines it)."""
    from ._select import metric_of

    m = metric_of(metric, task)
    return m.unit == "fraction" if m is not None else True


@dataclass
class Styles:
    """Colour (by family), marker and line style (by backbone configuration), fixed for a set of results.

    Build once from every job (``Styles.from_frame(jobs)``) and pass to every figure, so that one configuration
    looks the same in all of them.
    """

    configs: list[str] = field(default_factory=list)
    family: dict[str, str] = field(default_factory=dict)
    label: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame) -> "Styles":
        """From any frame with ``backbone_config``, ``config_label`` and ``family`` columns."""
        rows = frame.select("backbone_config", "config_label", "family").unique("backbone_config").to_dicts()
        rows.sort(key=lambda r: (family_order(r["family"]), r["config_label"], r["backbone_config"]))
        return cls(configs=[r["backbone_config"] for r in rows], family={r["backbone_config"]: r["family"]
                                                                         for r in rows},
                   label={r["backbone_config"]: r["config_label"] for r in rows})

    def _add(self, config: str, family: str, label: str) -> None:
        if config not in self.family:
            self.configs.append(config)
            self.family[config] = family
            self.label[config] = label

    def color(self, config: str) -> str:
        return FAMILY_COLORS.get(self.family.get(config, "unknown"), "tab:gray")

    def of(self, config: str) -> dict:
        """Keyword arguments for ``ax.plot``/``ax.errorbar``: colour, marker, linestyle."""
        n = self.configs.index(config) if config in self.configs else len(self.configs)
        return dict(color=self.color(config), marker=_MARKERS[n % len(_MARKERS)],
                    linestyle=_LINESTYLES[n % len(_LINESTYLES)])

    def legend(self, config: str) -> str:
        return f"{self.label.get(config, config)} ({self.family.get(config, 'unknown')})"


def _styles(styles: Styles | None, frame) -> Styles:
    styles = styles or Styles.from_frame(frame)
    for r in frame.select("backbone_config", "family", "config_label").iter_rows():
        styles._add(*r)
    return styles


def new_figure(width: float, height: float):
    """A Figure on the Agg canvas with constrained layout (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _scale(metric: str) -> float:
    return 100.0 if _is_fraction(metric) else 1.0


def _unit(metric: str) -> str:
    return " (%)" if _is_fraction(metric) else ""


def _panels(titles: list[str], *, sharey: bool = True):
    ncols = min(3, len(titles))
    nrows = math.ceil(len(titles) / ncols)
    fig = new_figure(4.4 * ncols + 3.2, 3.4 * nrows + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel()
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[len(titles):]:
        ax.set_visible(False)
    return fig, list(axes[:len(titles)])


def _legend_outside(fig, axes) -> None:
    """One legend entry per configuration across panels, below the panels (clear of the title)."""
    handles: dict = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8, frameon=False,
                   ncols=1 if fig.get_figwidth() < 9 else 2)


def _wrapped(text: str, fig, *, scale: float = 1.0) -> str:
    """``text`` broken into lines that fit the figure's width at a 10 pt title (titles are never clipped)."""
    import textwrap

    return textwrap.fill(text, width=max(30, int(fig.get_figwidth() * 13 * scale)), break_long_words=False)


def _errors(frame, metric: str, scale: float):
    """Error bars from ``<metric>_low/_high`` (bootstrap) when present, else the sd over seeds."""
    y = frame[metric].to_numpy().astype(float) * scale
    if f"{metric}_low" in frame.columns:
        low = frame[f"{metric}_low"].fill_null(float("nan")).to_numpy().astype(float) * scale
        high = frame[f"{metric}_high"].fill_null(float("nan")).to_numpy().astype(float) * scale
        return y, np.nan_to_num(np.vstack([y - low, high - y]))
    sd = frame[f"{metric}_sd"].fill_null(0.0).to_numpy().astype(float) * scale if f"{metric}_sd" in frame.columns \
        else np.zeros_like(y)
    return y, np.vstack([sd, sd])


def block_index(tap: str) -> int | None:
    """``i`` of a ``block<i>`` tap (negative counts from the end), or None for other taps."""
    if isinstance(tap, str) and tap.startswith("block"):
        try:
            return int(tap[len("block"):])
        except ValueError:
            return None
    return None


def layerwise_figure(protocols, *, metric: str = "top1", relative_depth: bool = False,
                     n_blocks: dict | None = None, styles: Styles | None = None, title: str | None = None):
    """Metric per block (``block<i>`` taps), one panel per probe, one line per backbone configuration.

    Parameters
    ----------
    protocols : polars.DataFrame
        :func:`aggregate_seeds` rows of one dataset (others than block taps are ignored). Error bars come from
        ``<metric>_low``/``<metric>_high`` (see :func:`with_intervals`) when present, else the sd over seeds.
    relative_depth : bool
        Put depth on a relative axis, (block index + 1) / number of blocks (1 = the last block), so backbones of
        different depth line up.
    n_blocks : dict, optional
        Number of blocks per ``backbone_config`` (or per ``backbone``); default: the largest non-negative block
        index seen + 1 (exact when every block was tapped, as ``block*`` does).
    """
    import polars as pl

    rows = protocols.filter(pl.col("tap").str.contains(r"^block-?\d+$"))
    styles = _styles(styles, rows) if rows.height else styles
    probes = sorted(set(rows["probe"].to_list())) or ["-"]
    fig, axes = _panels([f"probe: {p}" for p in probes])
    scale = _scale(metric)
    for ax, probe in zip(axes, probes):
        part = rows.filter(pl.col("probe") == probe)
        configs = sorted(set(part["backbone_config"].to_list()), key=lambda c: styles.configs.index(c))
        for n, config in enumerate(configs):
            line = part.filter(pl.col("backbone_config") == config)
            idx = np.array([block_index(t) for t in line["tap"]], dtype=float)
            count = (n_blocks or {}).get(config) or (n_blocks or {}).get(line["backbone"][0])
            count = count or (int(idx[idx >= 0].max()) + 1 if (idx >= 0).any() else None)
            if count:
                idx = np.where(idx < 0, idx + count, idx)
            x = (idx + 1) / count if relative_depth and count else idx
            order = np.argsort(x)
            y, err = _errors(line, metric, scale)
            offset = (0.01 if relative_depth else 0.06) * (n - (len(configs) - 1) / 2)  # keeps error bars apart
            ax.errorbar(x[order] + offset, y[order], yerr=err[:, order], capsize=3, label=styles.legend(config),
                        **styles.of(config))
        if not relative_depth:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("relative depth ((block index + 1) / number of blocks)" if relative_depth
                      else "block index (tap block<i>)", fontsize=8)
        ax.set_ylabel(f"test {metric_name(metric)}{_unit(metric)}", fontsize=8)
    _legend_outside(fig, axes)
    fig.suptitle(_wrapped(title or f"layer-wise test {metric_name(metric)}", fig), fontsize=10)
    return fig


def few_shot_figure(protocols, *, metric: str = "top1", styles: Styles | None = None, title: str | None = None):
    """Metric against shots per class (log axis), mean ± sd over seeds; one panel per probe / tap.

    ``protocols`` are :func:`aggregate_seeds` rows of one dataset; rows with ``shots > 0`` are the curves, and a
    row of the same configuration, probe and tap at ``shots = 0`` (all training data) is drawn as a dotted line.
    """
    import polars as pl

    few = protocols.filter(pl.col("shots") > 0)
    full = protocols.filter(pl.col("shots") == 0)
    styles = _styles(styles, protocols) if protocols.height else styles
    methods = sorted(set(few["method"].to_list())) or ["-"]
    fig, axes = _panels([f"probe / tap: {m}" for m in methods])
    scale = _scale(metric)
    for ax, method in zip(axes, methods):
        part = few.filter(pl.col("method") == method)
        configs = sorted(set(part["backbone_config"].to_list()), key=lambda c: styles.configs.index(c))
        shots = sorted(set(part["shots"].to_list()))
        for n, config in enumerate(configs):
            line = part.filter(pl.col("backbone_config") == config).sort("shots")
            x = line["shots"].to_numpy() * 1.03 ** (n - (len(configs) - 1) / 2)  # log axis: multiplicative offset
            mean = line[metric].to_numpy() * scale
            sd = line[f"{metric}_sd"].fill_null(0.0).to_numpy() * scale
            st = styles.of(config)
            ax.errorbar(x, mean, yerr=sd, capsize=3, label=styles.legend(config), **st)
            ref = full.filter((pl.col("backbone_config") == config) & (pl.col("method") == method))
            if ref.height and ref[metric][0] is not None:
                ax.axhline(ref[metric][0] * scale, color=st["color"], linestyle=(0, (1, 3)), linewidth=1)
        ax.set_xscale("log")
        ax.minorticks_off()
        if shots:
            ax.set_xticks(shots, [str(k) for k in shots])
            if len(shots) == 1:
                ax.set_xlim(shots[0] / 1.5, shots[0] * 1.5)
        ax.set_xlabel("training examples per class (shots, log scale)", fontsize=8)
        ax.set_ylabel(f"test {metric_name(metric)}{_unit(metric)}", fontsize=8)
    _legend_outside(fig, axes)
    fig.suptitle(_wrapped(title or f"few-shot test {metric_name(metric)}, mean ± sd over seeds; dotted: all "
                          "training data", fig), fontsize=10)
    return fig


def frozen_vs_finetune_figure(gains, *, metric: str = "top1", styles: Styles | None = None,
                              title: str | None = None):
    """Bars per configuration: best frozen probe and fine-tuning side by side, coloured by family.

    ``gains`` has one row per configuration (of one dataset) with ``frozen``, ``finetune`` (either may be null)
    and optional ``frozen_low/_high``, ``finetune_low/_high`` interval columns (see
    :func:`probe.analysis.finetune_gains`).
    """
    from matplotlib.patches import Patch

    styles = _styles(styles, gains) if gains.height else styles
    rows = sorted(gains.to_dicts(), key=lambda r: styles.configs.index(r["backbone_config"]))
    fig = new_figure(max(6.0, 1.5 * len(rows) + 3.5), 4.8)
    ax = fig.add_subplot()
    scale = _scale(metric)
    sides = [(s, hatch, alpha) for s, hatch, alpha in (("frozen", "", 0.45), ("finetune", "//", 0.95))
             if any(r.get(s) is not None for r in rows)]
    width = 0.38
    for k, (side, hatch, alpha) in enumerate(sides):
        for i, r in enumerate(rows):
            if r.get(side) is None:
                continue
            y = r[side] * scale
            lo, hi = r.get(f"{side}_low"), r.get(f"{side}_high")
            yerr = None if lo is None else [[y - lo * scale], [hi * scale - y]]
            ax.bar(i + (k - (len(sides) - 1) / 2) * width, y, width, yerr=yerr, capsize=4, hatch=hatch, alpha=alpha,
                   color=styles.color(r["backbone_config"]), edgecolor="black")
    names = {"frozen": "best frozen probe (val-selected)", "finetune": "fine-tuning (val-selected)"}
    handles = [Patch(facecolor="lightgray", alpha=alpha, hatch=hatch, edgecolor="black", label=names[s])
               for s, hatch, alpha in sides]
    handles += [Patch(facecolor=FAMILY_COLORS.get(f, "tab:gray"), edgecolor="black", label=f)
                for f in sorted({styles.family[r["backbone_config"]] for r in rows}, key=family_order)]
    ax.set_xticks(range(len(rows)), [_wrap(r["config_label"]) for r in rows], fontsize=7)
    ax.set_xlabel("backbone configuration (bar colour: family)")
    ax.set_ylabel(f"test {metric_name(metric)}{_unit(metric)}")
    if _is_fraction(metric):
        ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(_wrapped(title or "best frozen probe vs fine-tuning (error bars: bootstrap CI over test images)",
                          fig, scale=0.75), fontsize=10)
    return fig


def gain_figure(gains, *, metric: str = "top1", styles: Styles | None = None, title: str | None = None):
    """Gain from fine-tuning (fine-tune − best frozen) per dataset and configuration, with its paired CI.

    ``gains`` rows: ``dataset``, ``backbone_config``, ``config_label``, ``family``, ``gain`` and optional
    ``gain_low``/``gain_high`` (see :func:`probe.analysis.finetune_gains`).
    """
    import polars as pl

    gains = gains.filter(pl.col("gain").is_not_null())
    styles = _styles(styles, gains) if gains.height else styles
    datasets = sorted(set(gains["dataset"].to_list()))
    configs = sorted(set(gains["backbone_config"].to_list()), key=lambda c: styles.configs.index(c))
    fig = new_figure(max(6.0, 1.2 * max(1, len(datasets)) * max(1, len(configs)) ** 0.5 + 4.0), 4.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(configs))
    scale = _scale(metric)
    for i, config in enumerate(configs):
        sub = gains.filter(pl.col("backbone_config") == config)
        x = np.array([datasets.index(d) for d in sub["dataset"]]) + (i - (len(configs) - 1) / 2) * width
        y = sub["gain"].to_numpy() * scale
        if "gain_low" in sub.columns:
            low = np.nan_to_num(y - sub["gain_low"].fill_null(float("nan")).to_numpy() * scale)
            high = np.nan_to_num(sub["gain_high"].fill_null(float("nan")).to_numpy() * scale - y)
            yerr = [low, high]
        else:
            yerr = None
        st = styles.of(config)
        ax.bar(x, y, width, yerr=yerr, capsize=3, color=st["color"], edgecolor="black", hatch=_hatch(st["marker"]),
               label=styles.legend(config))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_xlabel("dataset")
    unit = " (percentage points)" if _is_fraction(metric) else ""
    ax.set_ylabel(f"fine-tune − best frozen probe\ntest {metric_name(metric)}{unit}")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    ax.set_title(_wrapped(title or "gain from fine-tuning (selection on val; paired bootstrap CI)", fig,
                          scale=0.75), fontsize=10)
    return fig


def _hatch(marker: str) -> str:
    # bars cannot carry markers: a hatch per marker tells configurations of one family apart
    return {"o": "", "s": "//", "D": "\\\\", "^": "..", "v": "xx", "<": "--", ">": "++", "p": "oo", "P": "||",
            "*": "**", "X": "x", "h": "O"}.get(marker, "")


def finetune_scatter_figure(gains, *, metric: str = "top1", styles: Styles | None = None,
                            title: str | None = None):
    """Fine-tuned against best frozen, one point per (dataset, configuration); above the diagonal: a gain.

    Points carry the configuration's marker and family colour and are named in the legend (no text labels that
    could overlap); the dataset is told by the marker's fill (one fill style per dataset).
    """
    import polars as pl

    gains = gains.filter(pl.col("frozen").is_not_null() & pl.col("finetune").is_not_null())
    styles = _styles(styles, gains) if gains.height else styles
    fig = new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    scale = _scale(metric)
    datasets = sorted(set(gains["dataset"].to_list()))
    fills = ("full", "none", "left", "bottom", "right", "top")
    for r in gains.iter_rows(named=True):
        st = styles.of(r["backbone_config"])
        fill = fills[datasets.index(r["dataset"]) % len(fills)]
        x, y = r["frozen"] * scale, r["finetune"] * scale
        xerr = [[x - r["frozen_low"] * scale], [r["frozen_high"] * scale - x]] if r.get("frozen_low") is not None \
            else None
        yerr = [[y - r["finetune_low"] * scale], [r["finetune_high"] * scale - y]] \
            if r.get("finetune_low") is not None else None
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=3, color=st["color"], marker=st["marker"], fillstyle=fill,
                    markersize=7, linestyle="none",
                    label=f"{styles.legend(r['backbone_config'])} · {r['dataset']}")
    lim = (0, 100) if _is_fraction(metric) else None
    if lim:
        ax.plot(lim, lim, "--", color="gray", linewidth=1, label="no gain")
        ax.set_xlim(*lim)
        ax.set_ylim(*lim)
    ax.set_xlabel(f"best frozen probe, test {metric_name(metric)}{_unit(metric)}")
    ax.set_ylabel(f"fine-tuning, test {metric_name(metric)}{_unit(metric)}")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    ax.set_title(_wrapped(title or "frozen vs fine-tuned (error bars: bootstrap CI over test images)", fig,
                          scale=0.7), fontsize=10)
    return fig


def family_figure(comparisons: list[dict], *, title: str | None = None):
    """Forest plot of family differences, one row per dataset (and side), with the two-level bootstrap CI.

    ``comparisons`` are records of :func:`probe.analysis.compare_families` for one pair of families (each may
    carry a ``side`` key, e.g. ``"frozen"``).
    """
    fig = new_figure(8.0, 1.6 + 0.55 * max(1, len(comparisons)))
    ax = fig.add_subplot()
    if not comparisons:
        ax.set_axis_off()
        return fig
    fa, fb, metric = comparisons[0]["family_a"], comparisons[0]["family_b"], comparisons[0]["metric"]
    scale = _scale(metric)
    labels = []
    for i, c in enumerate(comparisons):
        y = len(comparisons) - 1 - i
        comp = c["comparison"]
        if comp is not None:
            est = comp.estimate * scale
            ax.errorbar(est, y, xerr=[[est - comp.low * scale], [comp.high * scale - est]], fmt="o",
                        color="black", capsize=4)
        else:
            ax.plot((c["mean_a"] - c["mean_b"]) * scale, y, "o", color="gray")
        side = f" · {c['side']}" if c.get("side") else ""
        labels.append(f"{c['dataset']}{side}\n({len(c['members_a'])} vs {len(c['members_b'])} backbones)")
    ax.axvline(0, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(comparisons)), list(reversed(labels)), fontsize=8)
    ax.set_ylim(-0.6, len(comparisons) - 0.4)
    na, nb = FAMILY_NAMES.get(fa, fa), FAMILY_NAMES.get(fb, fb)
    unit = " (percentage points)" if _is_fraction(metric) else ""
    from ._select import lower_is_better

    better = nb if lower_is_better(metric) else na
    ax.set_xlabel(_wrapped(f"{na} − {nb}: difference of the families' mean test {metric_name(metric)}{unit}; "
                           f"right of 0: {better} better", fig, scale=0.85))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(_wrapped(title or f"{na} vs {nb}: CI resamples test images and, within each family, backbones",
                          fig, scale=0.85), fontsize=10)
    return fig


def _wrap(text: str, width: int = 16) -> str:
    # labels like "vit_base_patch16_224.augreg_in21k · hub:augreg_in21k · 224px" break at " · ", then at "_"
    out = []
    for part in text.split(" · "):
        line = ""
        for chunk in part.replace(".", "._").split("_"):
            piece = chunk if not line else f"_{chunk}"
            if len(line) + len(piece) > width and line:
                out.append(line)
                line = chunk
            else:
                line += piece
        out.append(line.replace("._", "."))
    return "\n".join(out)


#: Fixed segmentation palette: class id -> RGB (the same colours in every figure); ignored pixels are black.
def segmentation_palette(n_classes: int) -> np.ndarray:
    """[n_classes, 3] RGB floats: tab20's colours, then a seeded draw; one fixed colour per class id."""
    from matplotlib import colormaps

    base = np.asarray(colormaps["tab20"].colors)
    extra = np.random.default_rng(0).uniform(0.15, 0.95, size=(max(0, n_classes - len(base)), 3))
    return np.concatenate([base, extra])[:n_classes]


def dense_examples_figure(previews: list[tuple[str, dict]], *, task: str, classes=None, max_depth: float = 10.0,
                          title: str | None = None):
    """A few test images with their ground truth and each configuration's prediction.

    Parameters
    ----------
    previews : list of (label, arrays)
        One per configuration: its legend label and the ``preview/*`` arrays its dense job saved (``ids``,
        ``image`` [k, H, W, 3], ``target``, ``pred`` [k, H, W]). The images and ground truth of the first are
        drawn; the others' predictions are matched by image id.
    task : {"segmentation", "depth"}
        Masks in the fixed :func:`segmentation_palette` (ignored pixels black), depth in one colour scale (shared
        by the ground truth and every prediction) with one colour bar in metres.
    """
    from matplotlib.colors import Normalize

    from ..dense import IGNORE_INDEX, depth_valid

    first = previews[0][1]
    ids = [str(i) for i in first["ids"]][:3]
    ncols = 2 + len(previews)
    fig = new_figure(1.9 * ncols + (0.8 if task == "depth" else 0.0), 1.9 * len(ids) + 0.9)
    axes = fig.subplots(len(ids), ncols, squeeze=False)
    if task == "segmentation":
        n = max(len(classes or []), int(max(np.max(np.where(p["pred"] == IGNORE_INDEX, 0, p["pred"]))
                                            for _, p in previews)) + 1, 1)
        palette = segmentation_palette(n)

        def show(ax, m):
            rgb = np.zeros((*m.shape, 3))
            ok = (m != IGNORE_INDEX) & (m >= 0) & (m < n)
            rgb[ok] = palette[m[ok]]
            ax.imshow(rgb, interpolation="nearest")
    else:
        valid = [p["target"][depth_valid(p["target"], max_depth=max_depth)] for _, p in previews[:1]]
        values = np.concatenate([v.ravel() for v in valid] + [p["pred"].ravel() for _, p in previews])
        norm = Normalize(vmin=float(np.min(values)), vmax=float(np.max(values)))
        image = None

        def show(ax, m):
            nonlocal image
            shown = np.ma.masked_where(~depth_valid(m, max_depth=max_depth), m)
            image = ax.imshow(shown, cmap="viridis", norm=norm, interpolation="nearest")
    for row, image_id in enumerate(ids):
        k = [str(i) for i in first["ids"]].index(image_id)
        axes[row, 0].imshow(first["image"][k])
        show(axes[row, 1], first["target"][k])
        for col, (label, p) in enumerate(previews, start=2):
            where = [str(i) for i in p["ids"]]
            if image_id in where:
                show(axes[row, col], p["pred"][where.index(image_id)])
        for col in range(ncols):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(image_id, fontsize=8)
    for col, name in enumerate(["image", "ground truth", *(_wrap(label, 18) for label, _ in previews)]):
        axes[0, col].set_title(name, fontsize=8)
    if task == "depth" and image is not None:
        fig.colorbar(image, ax=axes[:, -1].tolist(), label="depth (m)", shrink=0.8)
    if task == "segmentation" and classes:
        from matplotlib.patches import Patch

        handles = [Patch(color=palette[i], label=str(c)) for i, c in enumerate(classes[:20])]
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False,
                   ncols=min(len(handles), 7))
    if title:
        fig.suptitle(_wrapped(title, fig), fontsize=10)
    return fig


def multitask_figure(gains, *, styles: Styles | None = None, title: str | None = None):
    """Multi-task minus single-task fine-tuning per backbone configuration (grouped by family), one panel per
    dataset and task, with the paired bootstrap CI (rows of :func:`probe.analysis.multitask_gains`)."""
    import polars as pl

    gains = gains.filter(pl.col("gain").is_not_null())
    styles = _styles(styles, gains) if gains.height else (styles or Styles())
    panels = sorted({(d, t) for d, t in gains.select("dataset", "task").iter_rows()})
    titles = []
    for d, t in panels:
        metric = gains.filter((pl.col("dataset") == d) & (pl.col("task") == t))["metric"][0]
        titles.append(f"{d}: {t} ({metric_name(metric)}{', lower is better' if _lower(metric, t) else ''})")
    fig, axes = _panels(titles or ["no multi-task runs"], sharey=False)
    for ax, (dataset, task) in zip(axes, panels):
        sub = gains.filter((pl.col("dataset") == dataset) & (pl.col("task") == task))
        configs = sorted(set(sub["backbone_config"].to_list()), key=lambda c: styles.configs.index(c))
        metric = sub["metric"][0]
        scale = _scale(metric)
        for i, config in enumerate(configs):
            r = sub.filter(pl.col("backbone_config") == config).row(0, named=True)
            y = r["gain"] * scale
            yerr = None
            if r["gain_low"] is not None and r["gain_high"] is not None:
                yerr = [[max(0.0, y - r["gain_low"] * scale)], [max(0.0, r["gain_high"] * scale - y)]]
            st = styles.of(config)
            ax.bar([i], [y], 0.7, yerr=yerr, capsize=3, color=st["color"], edgecolor="black",
                   hatch=_hatch(st["marker"]), label=styles.legend(config))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(configs)), [styles.label.get(c, c) for c in configs], rotation=30, ha="right",
                      fontsize=7)
        unit = " (pp)" if _is_fraction(metric) else ""
        ax.set_ylabel(f"multi-task − single-task\ntest {metric_name(metric)}{unit}")
    _legend_outside(fig, axes)
    fig.suptitle(_wrapped(title or "multi-task minus single-task fine-tuning, grouped by family (paired bootstrap "
                                   "CI over test images)", fig, scale=0.75), fontsize=10)
    return fig
