"""Figures of the face and continuous-target tasks: retrieved faces per query, predicted vs true age.

Like every figure builder, these return a matplotlib Figure (Agg, constrained layout) and take the style of each
backbone configuration from :class:`probe.analysis.Styles`; they read the per-item arrays the jobs saved beside
their results (:func:`probe.results.load_artifacts`).
"""

from __future__ import annotations

import numpy as np

from ._figures import FAMILY_COLORS, Styles, _wrapped, metric_name, new_figure

#: Border colours of a retrieved face: the query's identity, or another.
RIGHT, WRONG = "tab:green", "tab:red"


def retrieval_examples(files: dict[str, str], *, queries: int = 3, top: int = 5) -> dict:
    """The top retrieved gallery ids of a few queries, per configuration, from leave-one-out retrieval jobs.

    Parameters
    ----------
    files : dict
        Configuration label -> the job file of its ``cosine`` identification job.
    queries : int
        How many queries: spread evenly over the (sorted) query ids every job scored, preferring ones on which the
        configurations disagree at rank 1.

    Returns
    -------
    dict
        ``queries`` (ids), ``query_labels``, and ``rows``: configuration -> list (per query) of
        ``(gallery ids, correct flags)``; empty when a job saved no neighbours.
    """
    from ..results import load_artifacts

    arts = {}
    for label, f in files.items():
        try:
            art = load_artifacts(f)
        except (OSError, KeyError, ValueError):
            continue
        if "neighbours" in art:
            arts[label] = art
    if not arts:
        return {"queries": [], "query_labels": [], "rows": {}}
    common = sorted(set.intersection(*(set(a["ids"].tolist()) for a in arts.values())))
    hits = {label: dict(zip(a["ids"].tolist(), a["item/rank1"])) for label, a in arts.items()}
    disagree = [q for q in common if len({hits[label][q] for label in arts}) > 1]
    pool = disagree if len(disagree) >= queries else common
    pick = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, min(queries, len(pool)))] if pool else []
    rows, query_labels = {}, []
    for label, a in arts.items():
        where = {q: i for i, q in enumerate(a["ids"].tolist())}
        gallery_ids, gallery_labels = a["gallery_ids"], a["gallery_labels"]
        out = []
        for q in pick:
            i = where[q]
            nb = a["neighbours"][i][:top]
            out.append((gallery_ids[nb].tolist(), (gallery_labels[nb] == a["labels"][i]).tolist()))
        rows[label] = out
    first = next(iter(arts.values()))
    where = {q: i for i, q in enumerate(first["ids"].tolist())}
    query_labels = [first["labels"][where[q]] for q in pick]
    return {"queries": pick, "query_labels": query_labels, "rows": rows}


def retrieval_figure(examples: dict, load_image, *, title: str | None = None):
    """Grid of retrieved faces: per query, one row per configuration (query, then its nearest faces), each
    retrieved face framed green when it is the query's person and red when not.

    ``examples`` comes from :func:`retrieval_examples`; ``load_image(id)`` returns a PIL image.
    """
    rows = examples["rows"]
    queries = examples["queries"]
    labels = list(rows)
    top = max((len(r[0][0]) for r in rows.values() if r), default=0)
    n_rows = max(1, len(queries) * len(labels))
    fig = new_figure(1.1 * (top + 1) + 2.6, 1.05 * n_rows + 0.8)
    if not queries or not top:
        fig.add_subplot().set_axis_off()
        return fig
    axes = fig.subplots(n_rows, top + 1, squeeze=False)
    for qi, q in enumerate(queries):
        for ci, label in enumerate(labels):
            r = qi * len(labels) + ci
            ax = axes[r, 0]
            ax.imshow(load_image(q))
            ax.set_ylabel(_short(label), fontsize=6, rotation=0, ha="right", va="center")
            ax.set_title("query" if r == 0 else "", fontsize=7)
            _frame(ax, "black")
            ids, correct = rows[label][qi]
            for j in range(top):
                ax = axes[r, j + 1]
                if j < len(ids):
                    ax.imshow(load_image(ids[j]))
                    _frame(ax, RIGHT if correct[j] else WRONG)
                else:
                    ax.set_axis_off()
                if r == 0:
                    ax.set_title(f"#{j + 1}", fontsize=7)
    fig.suptitle(_wrapped(title or "leave-one-out retrieval: nearest faces of each query (green: same person, red: "
                                   "another)", fig, scale=0.9), fontsize=9)
    return fig


def _frame(ax, colour: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)


def _short(label: str) -> str:
    return "\n".join(label.split(" · ")[:2])


def prediction_scatter_figure(entries: list[dict], *, styles: Styles | None = None, unit: str = "years",
                              title: str | None = None):
    """Predicted vs true target, one panel per configuration, with the identity line and the panel's MAE.

    ``entries`` are dicts with ``backbone_config``, ``config_label``, ``family``, ``method`` and ``file`` (a
    regression job whose artifacts hold ``labels`` (true) and ``pred``; a cross-validated job's pooled held-out
    predictions).
    """
    from ..results import load_artifacts

    panels = []
    for e in entries:
        try:
            art = load_artifacts(e["file"])
        except (OSError, KeyError, ValueError):
            continue
        if "pred" in art:
            panels.append((e, np.asarray(art["labels"], dtype=float), np.asarray(art["pred"], dtype=float)))
    ncols = min(4, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    fig = new_figure(3.2 * ncols + 0.4, 3.2 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    lo = min((min(t.min(), p.min()) for _, t, p in panels), default=0.0)
    hi = max((max(t.max(), p.max()) for _, t, p in panels), default=1.0)
    for ax, (e, true, pred) in zip(axes, panels):
        colour = styles.color(e["backbone_config"]) if styles else FAMILY_COLORS.get(e.get("family"), "tab:gray")
        ax.scatter(true, pred, s=8, alpha=0.6, color=colour)
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        mae = float(np.mean(np.abs(pred - true)))
        ax.set_title(_wrapped(f"{e['config_label']} ({e['method']}): MAE {mae:.2f} {unit}", fig, scale=0.3),
                     fontsize=7)
        ax.set_xlabel(f"true ({unit})", fontsize=8)
        ax.set_ylabel(f"predicted ({unit})", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(_wrapped(title or f"predicted vs true ({metric_name('mae')} in the titles)", fig), fontsize=9)
    return fig
