"""Representation similarity from the feature cache: linear CKA (biased and debiased) and mutual k-NN alignment.

Two cache entries of the same dataset split are compared image by image, their rows joined by ``ids``.

Measures (the ``measure`` column of the rows written here):

- ``cka``: linear CKA (Kornblith et al. 2019) in its feature-space form. With X [n, p] and Y [n, q] centred,
  ``CKA = ||X'Y||_F^2 / (||X'X||_F ||Y'Y||_F)``, the biased HSIC estimator normalised.
- ``cka_debiased``: the same ratio built on the unbiased HSIC estimator of Song et al. (2007),
  ``HSIC_1(K, L) = [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))`` with K = XX',
  L = YY' and ~ the diagonal set to zero. For centred X (the estimator is unchanged by a shift of either side),
  ``1'K~1 = -||X||_F^2``, ``K~1 = -a`` with a_i = ||x_i||^2, so
  ``n(n-3) HSIC_1 = ||X'Y||_F^2 - n/(n-2) sum_i a_i b_i + ||X||_F^2 ||Y||_F^2 / ((n-1)(n-2))``:
  D x D cross-products, column sums and per-image squared norms, no n x n matrix. It needs n >= 4.
- ``mutual_knn``: mutual k-nearest-neighbour alignment (Huh et al. 2024): each image's k nearest other images
  by cosine similarity in either representation; the value is the mean over images of the share of those k that
  both representations have in common. Ties between equal similarities go to the lower row (the one rule of
  :func:`probe.probes._knn._select_top`).

How CKA streams: both files are read in blocks of rows (``block_rows``), each tap shifted by the mean of the first
block it is read in (so that the float64 sums lose no digits to a large common offset); only D x D products and
sums of the shifted rows are accumulated (float64 always; the block products in float64, or in float32 with
``product_dtype="float32"``). Memory is flat in the number of images. Mutual k-NN holds one tap's features at a
time (n x D, float32) and every tap's k-neighbour lists (n x k), never an n x n matrix: the similarities are
computed for blocks of query rows.

Intervals, over images, computed while streaming:

- CKA: a delete-one-group jackknife. The joined images are dealt into ``groups`` (32) random groups, fixed by
  ``seed`` (balanced within each block of rows); the D x D products and sums are accumulated per group, and each
  of the G replicates (every group but one) is recomputed exactly from them, by read-only passes over the groups'
  products. The interval is ``value +- t_{G-1} se``. Why not a bootstrap: a resample with replacement repeats
  images, and a repeated image agrees with itself in both representations, which inflates both CKA estimators
  (measured on 500 synthetic images: the whole 95% percentile interval lay above the value, for the debiased
  estimator too); leaving groups out repeats nothing. Random groups of independent images are independent; with
  32 groups the standard error has 31 degrees of freedom (the t quantile accounts for it). Per pair the group
  products take ``groups`` x p x q float64 values while the pair is accumulated; pairs are accumulated in passes
  over the files that fit ``memory_bytes``.
- mutual k-NN: a bootstrap over images of the per-image overlaps (the neighbour lists are those of all images;
  recomputing them in a resample would make each repeated image its own neighbour), ``n_boot`` resamples,
  percentile interval. The overlaps take k + 1 values, so a resample is a multinomial draw of the counts.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ._errors import UsageError
from ._io import atomic_path, safe_name
from ._version import PROBE_VERSION

#: The measures, in the order rows are written.
MEASURES = ("cka", "cka_debiased", "mutual_knn")
#: Neighbours per image of mutual k-NN (Huh et al. 2024 use 10).
DEFAULT_K = 10
#: Bootstrap resamples of the mutual k-NN interval.
DEFAULT_N_BOOT = 1000
#: Random groups of images the CKA jackknife leaves out one at a time (see the module docstring).
JACKKNIFE_GROUPS = 32
#: Rows read from each file at a time.
DEFAULT_BLOCK_ROWS = 4096
#: Budget of one pass's per-group accumulators, bytes (pairs beyond it go to further passes over the files).
DEFAULT_MEMORY_BYTES = 1 << 30
#: Fewest common images a comparison accepts (the debiased estimator divides by n - 3).
MIN_IMAGES = 4
#: Query rows x stored rows of one similarity block of mutual k-NN (float32 values).
_KNN_BLOCK_CELLS = 1 << 25

#: Matrix kinds: configuration x configuration at a tap, block x block of two configurations, frozen block i vs
#: fine-tuned block i of one configuration, and a free list of tap pairs.
KINDS = ("configs", "blocks", "finetune", "pairs")

#: Column name -> polars dtype of the similarity rows (one parquet per job under ``<results>/similarity/``).
SIMILARITY_COLUMNS: dict[str, str] = {
    "kind": "Utf8",  # configs | blocks | finetune | pairs: which matrix the row belongs to
    "dataset": "Utf8",  # dataset name of both entries
    "split": "Utf8",  # the split both entries hold
    "n_images": "Int64",  # images compared (the joined ids)
    "join": "Utf8",  # exact (both entries hold the same ids) | common (the ids they share)
    **{f"{name}_{side}": dtype for side in ("a", "b") for name, dtype in (
        ("backbone", "Utf8"),  # timm name with tag
        ("family", "Utf8"),  # convnet | transformer | hybrid | mlp | other | unknown
        ("weights", "Utf8"),  # weights identity of the entry
        ("backbone_config", "Utf8"),  # configuration id (probe._identity.backbone_config_id)
        ("config_label", "Utf8"),  # that configuration for people
        ("cache_key", "Utf8"),  # the entry's cache key
        ("tap", "Utf8"),  # pooled, cls, mean, block<i>
    )},
    "measure": "Utf8",  # cka | cka_debiased | mutual_knn
    "value": "Float64",  # the measure on all joined images (CKA in [0, 1] up to the debiased estimator's noise)
    "low": "Float64",  # lower end of the bootstrap percentile interval
    "high": "Float64",  # upper end
    "ci": "Float64",  # coverage of the interval, e.g. 0.95
    "interval": "Utf8",  # group jackknife (CKA: t interval) | image bootstrap (mutual_knn: percentile interval)
    "n_boot": "Int64",  # bootstrap resamples of images (mutual_knn; null for CKA)
    "groups": "Int64",  # random groups of images the jackknife leaves out one at a time (CKA; null for k-NN)
    "k": "Int64",  # neighbours per image (mutual_knn; null for CKA)
    "seed": "Int64",  # seed of the groups and of the bootstrap draws
    "product_dtype": "Utf8",  # float64 | float32: dtype of the block products (accumulation is float64)
    "seconds": "Float64",  # wall time of the job that wrote the row
    "created": "Utf8",  # ISO 8601 UTC time the row was written
    "probe_version": "Utf8",  # probe package version of the code that wrote the row
}


# --------------------------------------------------------------------------------------------------- reading
class _Entry:
    """One side's rows: a complete cache file (kept open) or arrays in memory, with the metadata rows need."""

    def __init__(self, source: Any, *, name: str = "a"):
        self.file = None
        self.arrays: dict[str, np.ndarray] = {}
        if isinstance(source, dict):  # {tap: array}, ids 0..n-1 (the in-memory functions)
            self.arrays = {t: np.asarray(v) for t, v in source.items()}
            n = len(next(iter(self.arrays.values())))
            self.ids = np.array([str(i) for i in range(n)], dtype=object)
            self.path = Path(f"<{name}>")
            self.attrs = {"backbone": name, "family": "unknown", "weights": "-", "dataset": "-", "split": "-",
                          "key": "-", "data_config": {}, "precision": "fp32"}
            self.shapes = {t: v.shape for t, v in self.arrays.items()}
            return
        import h5py

        from ._cache import CacheEntry, read_attrs

        self.path = Path(source.path if isinstance(source, CacheEntry) else source)
        if not self.path.is_file():
            raise UsageError(f"cache file {self.path} does not exist; run 'probe extract-features' first")
        self.file = h5py.File(self.path, "r")
        self.attrs = read_attrs(self.file)
        if not self.attrs.get("complete"):
            raise UsageError(f"cache file {self.path} is incomplete; rerun the extraction to finish it")
        self.ids = np.array([s.decode() if isinstance(s, bytes) else str(s) for s in self.file["ids"][()]],
                            dtype=object)
        self.shapes = {t: self.file["features"][t].shape for t in self.file["features"]}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    @property
    def label(self) -> str:
        return f"{self.attrs.get('backbone')} ({self.path.name})" if self.file is not None else str(self.path)

    def check_tap(self, tap: str) -> int:
        """The tap's feature dimension; a UsageError for a tap the entry lacks or a non-vector tap."""
        if tap not in self.shapes:
            raise UsageError(f"{self.label} has no tap {tap!r}; it has {', '.join(sorted(self.shapes))}. "
                             f"Extract it with 'probe extract-features ... --taps {tap}'")
        shape = self.shapes[tap]
        if len(shape) != 2:
            raise UsageError(f"tap {tap!r} of {self.label} is not one vector per image (shape {tuple(shape)}); "
                             "compare pooled, cls, mean or block<i> taps")
        return int(shape[1])

    def read(self, tap: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (file indices, any order) of ``tap``, in that order."""
        if self.file is None:
            return self.arrays[tap][rows]
        ds = self.file["features"][tap]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo == len(rows) and (len(rows) < 2 or bool(np.all(np.diff(rows) == 1))):
            return ds[lo:hi]
        if hi - lo <= 4 * len(rows):  # a covering slice, then a gather in memory
            return ds[lo:hi][rows - lo]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
        out[order] = ds[np.sort(rows)]
        return out

    def describe(self, tap: str) -> dict[str, Any]:
        """The row columns naming this side (without the ``_a``/``_b`` suffix)."""
        from ._identity import backbone_config_id, config_label, img_size_of

        a = self.attrs
        precision = a.get("precision") or "fp32"
        return {"backbone": a.get("backbone"), "family": a.get("family"), "weights": a.get("weights"),
                "backbone_config": backbone_config_id(a.get("backbone"), a.get("weights"), a.get("data_config") or {},
                                                      precision),
                "config_label": config_label(a.get("backbone"), a.get("weights"),
                                             img_size_of(a.get("data_config") or {}), precision),
                "cache_key": a.get("key"), "tap": tap}


def _join(entries: Sequence[_Entry], join: str) -> list[np.ndarray]:
    """Row indices of each entry that line up image by image (the first entry's order)."""
    if join not in ("exact", "common"):
        raise UsageError(f"join must be 'exact' or 'common'; got {join!r}")
    for e in entries:
        if len(set(e.ids.tolist())) != len(e.ids):
            raise UsageError(f"{e.label} holds duplicate ids; it cannot be joined image by image (re-extract it)")
    first = entries[0]
    common = set(first.ids.tolist())
    for e in entries[1:]:
        theirs = set(e.ids.tolist())
        if join == "exact" and theirs != set(first.ids.tolist()):
            only_a = len(set(first.ids.tolist()) - theirs)
            only_b = len(theirs - set(first.ids.tolist()))
            shared = len(theirs & set(first.ids.tolist()))
            raise UsageError(f"the ids of {first.label} and {e.label} differ: {only_a} only in the first, "
                             f"{only_b} only in the second ({shared} shared); pass --join common (join='common') "
                             "to compare the shared images")
        common &= theirs
    keep = np.array([i for i, s in enumerate(first.ids) if s in common], dtype=np.int64)
    if len(keep) < MIN_IMAGES:
        raise UsageError(f"only {len(keep)} image(s) common to {', '.join(e.label for e in entries)}; similarity "
                         f"needs at least {MIN_IMAGES} (the debiased CKA divides by n - 3)")
    order = first.ids[keep]
    out = [keep]
    for e in entries[1:]:
        index = {s: i for i, s in enumerate(e.ids.tolist())}
        out.append(np.array([index[s] for s in order], dtype=np.int64))
    return out


def _check_same_data(entries: Sequence[_Entry]) -> None:
    first = entries[0]
    for e in entries[1:]:
        for key in ("dataset", "split"):
            if e.attrs.get(key) != first.attrs.get(key):
                raise UsageError(f"{first.label} and {e.label} hold different {key}s ({first.attrs.get(key)!r} vs "
                                 f"{e.attrs.get(key)!r}); compare entries of the same dataset split")


# --------------------------------------------------------------------------------------------------- engine
@dataclass
class _Plan:
    """What one job compares: views (entry index, tap) and pairs of views (cross pairs; self pairs implied)."""

    views: list[tuple[int, str]]
    pairs: list[tuple[int, int]]
    dims: list[int] = field(default_factory=list)


class _GroupStats:
    """Per-group sums of one pair of views (x, y), accumulated over row blocks (float64); the products ``Z`` live
    in a buffer the caller owns (reused from pass to pass: no fresh pages per pair)."""

    def __init__(self, Z, device, same: bool):
        import torch

        G, p, q = Z.shape
        f = dict(dtype=torch.float64, device=device)
        self.same = same
        self.Z = Z  # sum u v' (written by the first block, no zeroing pass)
        self.fresh = True
        self.su = torch.zeros(G, p, **f)
        self.sv = self.su if same else torch.zeros(G, q, **f)
        self.alpha = torch.zeros(G, **f)  # sum ||u||^2
        self.beta = self.alpha if same else torch.zeros(G, **f)
        self.ab = torch.zeros(G, **f)  # sum ||u||^2 ||v||^2
        self.av = torch.zeros(G, q, **f)  # sum ||u||^2 v
        self.bu = self.av if same else torch.zeros(G, p, **f)  # sum ||v||^2 u

    def add(self, U, V, nu, nv, scratch, sums) -> None:
        """U [G, m, p], V [G, m, q]: a block's shifted rows per group, padded with zero rows, as (float64, product
        dtype) pairs; nu, nv their squared norms [G, m]; ``scratch``: a buffer for float32 products."""
        import torch

        (Ud, Up), (Vd, Vp) = U, V
        if self.fresh and Up is Ud:
            torch.bmm(Ud.transpose(1, 2), Vd, out=self.Z)
        elif Up is Ud:  # float64 products, summed in place
            self.Z.baddbmm_(Ud.transpose(1, 2), Vd)
        else:
            G, p, q = self.Z.shape
            out = torch.bmm(Up.transpose(1, 2), Vp, out=scratch[:G * p * q].view(G, p, q))
            self.Z.copy_(out) if self.fresh else self.Z.add_(out)
        self.fresh = False
        (su, alpha), (sv, beta) = sums
        self.su += su
        self.alpha += alpha
        self.ab += (nu * nv).sum(1)
        self.av += torch.bmm(nu[:, None, :], Vd)[:, 0]
        if not self.same:
            self.sv += sv
            self.beta += beta
            self.bu += torch.bmm(nv[:, None, :], Ud)[:, 0]

    def values(self, n_g) -> tuple[tuple[float, float], Any, Any]:
        """(biased, unbiased) HSIC numerators of all images, and of each delete-one-group replicate [G] each.

        The replicates' ``||S_g||^2`` with S_g = Z_total - Z_g come from read-only passes over the group products
        (``||Z_t||^2 - 2 <Z_t, Z_g> + ||Z_g||^2``; in shifted coordinates no term cancels the others), the point
        value from the exactly centred total.
        """
        import torch

        G = self.Z.shape[0]
        flat = self.Z.view(G, -1)
        # <Z_g, Z_h> of every two groups in one product (one read of the group products): ||Z_g||^2 on its
        # diagonal, <Z_total, Z_g> its row sums, ||Z_total||^2 its sum
        inner = flat @ flat.T
        Zt = self.Z.sum(0)
        tot = [t.sum(0) for t in (self.su, self.sv, self.alpha, self.beta, self.ab, self.av, self.bu)]
        su, sv, alpha, beta, ab, av, bu = tot
        n = n_g.sum()
        exact = Zt - torch.outer(su, sv) / n  # the centred cross-product, exactly
        point = _hsic_terms(torch.sum(exact * exact)[None], su[None], sv[None], n[None], alpha[None], beta[None],
                            ab[None], av[None], bu[None], (su @ Zt @ sv)[None])
        rsu, rsv, rn = su - self.su, sv - self.sv, n - n_g  # every group but g
        S2 = inner.sum() - 2 * inner.sum(1) + inner.diagonal()
        suSsv = ((rsu @ Zt) * rsv).sum(1) - (torch.bmm(self.Z, rsv[:, :, None])[:, :, 0] * rsu).sum(1)
        c2 = S2 - 2 * suSsv / rn + (rsu * rsu).sum(1) * (rsv * rsv).sum(1) / rn**2
        reps = _hsic_terms(c2, rsu, rsv, rn, alpha - self.alpha, beta - self.beta, ab - self.ab, av - self.av,
                           bu - self.bu, suSsv)
        self.Z = None
        return (float(point[0][0]), float(point[1][0])), reps[0], reps[1]


def _hsic_terms(c2, su, sv, n, alpha, beta, ab, av, bu, suSsv):
    """Biased and unbiased HSIC numerators, ``||X'Y||_F^2`` and ``n(n-3) HSIC_1``, of B sets of images (leading
    dimension B) from ``c2`` = ``||X'Y||_F^2`` of their centred rows and the sums of their shifted rows: su, sv,
    n, alpha = sum ||u||^2, beta = sum ||v||^2, ab = sum ||u||^2 ||v||^2, av = sum ||u||^2 v,
    bu = sum ||v||^2 u, suSsv = su' (sum u v') sv."""
    m, w = su / n[:, None], sv / n[:, None]
    mSw = suSsv / n**2
    M, W = (m * m).sum(1), (w * w).sum(1)
    sab = ab - 2 * (w * av).sum(1) - 2 * (m * bu).sum(1) + 4 * mSw + W * alpha + M * beta - 3 * n * M * W
    A, B = alpha - n * M, beta - n * W
    return c2, c2 - n / (n - 2) * sab + A * B / ((n - 1) * (n - 2))


def _groups(n: int, G: int, seed: int, block_rows: int) -> np.ndarray:
    """A random group for each joined image, fixed by ``seed``: within every block of ``block_rows`` rows the
    groups' sizes differ by at most one (so a block's rows fill a [G, ceil(rows / G), D] array)."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int64)
    for start in range(0, n, block_rows):
        length = min(block_rows, n - start)
        out[start:start + length] = (rng.permutation(length) + rng.integers(G)) % G
    return out


def _jackknife_interval(value: float, reps: np.ndarray, ci: float) -> tuple[float, float]:
    """``value +- t_{G-1} se`` with the delete-one-group jackknife's standard error over the G replicates."""
    from scipy.stats import t as student_t

    G = len(reps)
    if not np.isfinite(value) or not np.isfinite(reps).all():
        return float("nan"), float("nan")
    se = float(np.sqrt((G - 1) / G * np.sum((reps - reps.mean()) ** 2)))
    half = float(student_t.ppf((1 + ci) / 2, G - 1)) * se
    return value - half, value + half


def _bootstrap_mean(values: np.ndarray, levels: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap (over images) of the mean of per-image values that take ``levels`` values 0..levels-1, scaled
    to [0, 1]: a resample of n images is a multinomial draw of how many fall on each level, so each replicate
    costs O(levels) instead of O(n) and follows the same distribution as drawing images."""
    n = len(values)
    freq = np.bincount(values.astype(np.int64), minlength=levels) / n
    rng = np.random.default_rng([seed, 2])
    draws = rng.multinomial(n, freq, size=n_boot)
    return draws @ (np.arange(levels) / (levels - 1)) / n


def _percentile_interval(reps: np.ndarray, ci: float) -> tuple[float, float]:
    tail = (1 - ci) / 2 * 100
    low, high = np.percentile(reps, [tail, 100 - tail])
    return float(low), float(high)


def _pass_order(plan: _Plan, G: int, memory_bytes: int) -> list[tuple[int, int]]:
    """Every pair the CKA needs (the plan's pairs and each view's self pair) in the order passes take them.

    The cross pairs go tile by tile: a few left views against a few right views, as many pairs as one pass's
    accumulators hold, so that a pass reads few views (a block x block matrix of t x t taps takes about
    2 t^2 / sqrt(P) view reads instead of t^2 (1 + 1 / P) pair by pair, P pairs per pass); a view's self pair
    comes just before the first pair that reads it.
    """
    import math

    unit = G * max(plan.dims) ** 2 * 8
    per_pass = max(1, memory_bytes // max(1, unit))
    ta = max(1, int(math.sqrt(per_pass)))
    tb = max(1, per_pass // ta)
    rights: dict[int, list[int]] = {}
    for a, b in plan.pairs:
        rights.setdefault(a, []).append(b)
    lefts = sorted(rights)
    order: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for i in range(0, len(lefts), ta):
        chunk = lefts[i:i + ta]
        bs = sorted({b for a in chunk for b in rights[a]})
        for j in range(0, len(bs), tb):
            for a in chunk:
                for b in bs[j:j + tb]:
                    if b not in rights[a] or (a, b) in seen:
                        continue
                    for v in (a, b):
                        if (v, v) not in seen:
                            seen.add((v, v))
                            order.append((v, v))
                    if (a, b) not in seen:
                        seen.add((a, b))
                        order.append((a, b))
    return order


def _cka_values(entries, rows, plan: _Plan, *, groups, G, device, product_dtype, block_rows, memory_bytes,
                ) -> dict[tuple[int, int], dict[str, tuple[float, np.ndarray]]]:
    """CKA (biased, debiased) of every pair of the plan: the value and its G delete-one-group replicates."""
    import torch

    dt = torch.float64 if product_dtype == "float64" else torch.float32
    n = len(rows[0])
    n_g = torch.as_tensor(np.bincount(groups, minlength=G).astype(np.float64), device=device)
    all_pairs = _pass_order(plan, G, memory_bytes)
    cost = {pr: G * plan.dims[pr[0]] * plan.dims[pr[1]] * 8 for pr in all_pairs}
    passes, current, used = [], [], 0
    for pr in all_pairs:  # consecutive pairs share views
        if current and used + cost[pr] > memory_bytes:
            passes.append(current)
            current, used = [], 0
        current.append(pr)
        used += cost[pr]
    if current:
        passes.append(current)
    # buffers reused by every pass: the pass's products, float32 products, each view slot's padded rows
    pool = torch.empty(max(sum(cost[pr] for pr in todo) for todo in passes) // 8, dtype=torch.float64, device=device)
    big = max(G * plan.dims[a] * plan.dims[b] for a, b in all_pairs)
    scratch = torch.empty(big if dt != torch.float64 else 0, dtype=dt, device=device)
    m_max = -(-min(block_rows, n) // G)
    width = max(plan.dims)
    slots = [(torch.empty(G * m_max * width, dtype=torch.float64, device=device),
              torch.empty(G * m_max * width if dt != torch.float64 else 0, dtype=dt, device=device),
              torch.empty(min(block_rows, n) * width, dtype=torch.float64, device=device))
             for _ in range(max(len({v for pr in todo for v in pr}) for todo in passes))]
    shifts: dict[int, Any] = {}
    values: dict[tuple[int, int], tuple] = {}
    for todo in passes:
        views = sorted({v for pr in todo for v in pr})
        stats, offset = {}, 0
        for a, b in todo:
            size = G * plan.dims[a] * plan.dims[b]
            stats[(a, b)] = _GroupStats(pool[offset:offset + size].view(G, plan.dims[a], plan.dims[b]), device,
                                        a == b)
            offset += size
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            g = groups[start:stop]
            order = np.argsort(g, kind="stable")
            sizes = np.bincount(g, minlength=G)
            m = int(sizes.max())
            pos = np.arange(stop - start) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            gi = torch.as_tensor(g[order], device=device)
            pi = torch.as_tensor(pos, device=device)
            padded, norms, sums = {}, {}, {}
            for slot, v in enumerate(views):
                e, tap = plan.views[v]
                d = plan.dims[v]
                x = torch.as_tensor(entries[e].read(tap, rows[e][start:stop][order]), device=device)
                if v not in shifts:  # the first block's mean: a shift that keeps the float64 sums exact
                    shifts[v] = x.double().mean(0)
                shifted = slots[slot][2][:x.numel()].view(x.shape).copy_(x).sub_(shifts[v])
                U = slots[slot][0][:G * m * d].view(G, m, d)
                U[:, int(sizes.min()):].zero_()  # the padding rows (group sizes differ by at most one)
                U[gi, pi] = shifted
                norms[v] = torch.linalg.vector_norm(U, dim=-1).square_()
                sums[v] = (U.sum(1), norms[v].sum(1))  # per view, shared by every pair that reads it
                Up = U if dt == torch.float64 else slots[slot][1][:G * m * d].view(G, m, d).copy_(U)
                padded[v] = (U, Up)
            for (a, b), st in stats.items():
                st.add(padded[a], padded[b], norms[a], norms[b], scratch, (sums[a], sums[b]))
        for pr in list(stats):
            values[pr] = stats.pop(pr).values(n_g)
    out = {}
    for a, b in plan.pairs:
        vals = {}
        for i, measure in enumerate(("cka", "cka_debiased")):
            xy, xx, yy = values[(a, b)][0][i], values[(a, a)][0][i], values[(b, b)][0][i]
            value = xy / np.sqrt(xx * yy) if xx > 0 and yy > 0 else float("nan")
            r_xy, r_xx, r_yy = values[(a, b)][1 + i], values[(a, a)][1 + i], values[(b, b)][1 + i]
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = (r_xy / torch.sqrt(r_xx * r_yy)).cpu().numpy()
            vals[measure] = (float(value), reps)
        out[(a, b)] = vals
    return out


def _knn_lists(entry: _Entry, tap: str, rows: np.ndarray, k: int, device, block_rows: int):
    """Each joined image's k nearest other joined images by cosine similarity [n, k] (ties: lower row first)."""
    import torch

    from .probes._knn import _select_top

    X = torch.as_tensor(entry.read(tap, rows).astype(np.float32), device=device)
    X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = len(X)
    step = max(1, min(block_rows, _KNN_BLOCK_CELLS // n))
    out = torch.empty(n, k, dtype=torch.long, device=device)
    for start in range(0, n, step):
        sims = X[start:start + step] @ X.T
        idx = torch.arange(start, min(n, start + step), device=device)
        sims[idx - start, idx] = -float("inf")  # an image is not its own neighbour
        out[start:start + step] = _select_top(sims, k)[1]
    return out


def _overlap(a, b) -> np.ndarray:
    """Per image, how many of its k neighbours two lists share [n]."""
    return (a[:, :, None] == b[:, None, :]).any(-1).sum(-1).cpu().numpy().astype(np.float64)


def _compare(sources: Sequence[Any], views: Sequence[tuple[int, str]], pairs: Sequence[tuple[int, int]], *,
             measures: Iterable[str] = MEASURES, k: int = DEFAULT_K, n_boot: int = DEFAULT_N_BOOT,
             ci: float = 0.95, seed: int = 0, groups: int = JACKKNIFE_GROUPS, join: str = "exact",
             device: str = "auto", product_dtype: str = "float64", block_rows: int = DEFAULT_BLOCK_ROWS,
             memory_bytes: int = DEFAULT_MEMORY_BYTES, kind: str = "pairs") -> list[dict[str, Any]]:
    """The engine: every measure of every pair of views, as rows. Checks everything before reading a feature."""
    measures = _check_measures(measures)
    if product_dtype not in ("float64", "float32"):
        raise UsageError(f"product_dtype must be float64 or float32; got {product_dtype!r}")
    for name, value, lo in (("n_boot", n_boot, 1), ("groups", groups, 2), ("block_rows", block_rows, 1),
                            ("k", k, 1)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise UsageError(f"{name} must be an integer >= {lo}; got {value!r}")
    if not 0 < ci < 1:
        raise UsageError(f"ci must be in (0, 1); got {ci}")
    from ._runtime import full_fp32, resolve_device

    dev = resolve_device(device)
    start_time = time.perf_counter()
    entries = [_Entry(s, name="ab"[i] if i < 2 else f"x{i}") for i, s in enumerate(sources)]
    try:
        _check_same_data(entries)
        plan = _Plan(views=list(views), pairs=list(pairs))
        plan.dims = [entries[e].check_tap(tap) for e, tap in plan.views]
        rows = _join(entries, join)
        n = len(rows[0])
        if "mutual_knn" in measures and k >= n:
            raise UsageError(f"k = {k} neighbours needs more than {k} images; {n} are common. Pass a smaller --k")
        G = min(groups, n)
        grp = _groups(n, G, seed, block_rows)
        results: dict[tuple[int, int], dict[str, tuple[float, np.ndarray]]] = {pr: {} for pr in plan.pairs}
        with _threads(dev, 2 * min(block_rows, n) * max(plan.dims) ** 2), full_fp32(dev, "fp32"):
            if {"cka", "cka_debiased"} & set(measures):
                cka = _cka_values(entries, rows, plan, groups=grp, G=G, device=dev, product_dtype=product_dtype,
                                  block_rows=block_rows, memory_bytes=memory_bytes)
                for pr in plan.pairs:
                    results[pr].update({m: (v, _jackknife_interval(v, reps, ci)) for m, (v, reps) in cka[pr].items()
                                        if m in measures})
            if "mutual_knn" in measures:
                lists = {}
                for v in sorted({v for pr in plan.pairs for v in pr}):
                    e, tap = plan.views[v]
                    lists[v] = _knn_lists(entries[e], tap, rows[e], k, dev, block_rows)
                for a, b in plan.pairs:
                    o = _overlap(lists[a], lists[b])
                    reps = _bootstrap_mean(o, k + 1, n_boot, seed)
                    results[(a, b)]["mutual_knn"] = (float(o.mean() / k), _percentile_interval(reps, ci))
        seconds = time.perf_counter() - start_time
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        out = []
        for a, b in plan.pairs:
            (ea, ta), (eb, tb) = plan.views[a], plan.views[b]
            side = {**{f"{c}_a": v for c, v in entries[ea].describe(ta).items()},
                    **{f"{c}_b": v for c, v in entries[eb].describe(tb).items()}}
            for measure in measures:
                value, (low, high) = results[(a, b)][measure]
                knn = measure == "mutual_knn"
                out.append({"kind": kind, "dataset": entries[0].attrs.get("dataset"),
                            "split": entries[0].attrs.get("split"), "n_images": n, "join": join, **side,
                            "measure": measure, "value": value, "low": low, "high": high, "ci": ci,
                            "interval": "image bootstrap" if knn else "group jackknife",
                            "n_boot": n_boot if knn else None, "groups": None if knn else G,
                            "k": k if knn else None, "seed": seed,
                            "product_dtype": product_dtype, "seconds": seconds, "created": created,
                            "probe_version": PROBE_VERSION})
        return out
    finally:
        for e in entries:
            e.close()


#: Below this many FLOPs in a block product, CPU work runs on one torch thread: threads that spin-wait on each
#: other cost more than small products gain (measured: 41 pairs of 96 x 64-d taps on 450 images took 8.2 s on two
#: threads of a busy 2-core host and 0.6 s on one).
_SMALL_FLOPS = 2e8


def _threads(device, flops: float):
    """One torch thread on CPU for small products, the default otherwise (a context manager)."""
    import contextlib

    import torch

    from ._runtime import torch_threads

    if device.type == "cpu" and flops < _SMALL_FLOPS:
        return torch_threads(1)
    return contextlib.nullcontext(torch.get_num_threads())


def _check_measures(measures) -> tuple[str, ...]:
    measures = (measures,) if isinstance(measures, str) else tuple(measures)
    bad = [m for m in measures if m not in MEASURES]
    if bad or not measures:
        raise UsageError(f"unknown measure(s) {bad}; measures are {', '.join(MEASURES)}")
    return tuple(m for m in MEASURES if m in measures)


# --------------------------------------------------------------------------------------------------- public
def linear_cka(x: np.ndarray, y: np.ndarray, *, debiased: bool = False, device: str = "cpu",
               product_dtype: str = "float64", block_rows: int = DEFAULT_BLOCK_ROWS) -> float:
    """Linear CKA of two representations of the same images held in memory (rows aligned).

    Parameters
    ----------
    x, y : array [n, p], [n, q]
        Features of the same n images (n >= 4).
    debiased : bool
        Build the ratio on the unbiased HSIC estimator (Song et al. 2007) instead of the biased one.
    device, product_dtype, block_rows
        As in :func:`compare_entries`; the same streaming code runs over the arrays.

    Returns
    -------
    float
        The value (no interval; :func:`compare_entries` gives intervals).
    """
    measure = "cka_debiased" if debiased else "cka"
    rows = _compare([{"x": np.asarray(x)}, {"x": np.asarray(y)}], [(0, "x"), (1, "x")], [(0, 1)],
                    measures=[measure], n_boot=1, device=device, product_dtype=product_dtype,
                    block_rows=block_rows)
    return rows[0]["value"]


def mutual_knn(x: np.ndarray, y: np.ndarray, *, k: int = DEFAULT_K, device: str = "cpu") -> float:
    """Mutual k-nearest-neighbour alignment of two representations of the same images (Huh et al. 2024).

    Parameters
    ----------
    x, y : array [n, p], [n, q]
        Features of the same n images (rows aligned).
    k : int
        Neighbours per image (cosine similarity, the image itself excluded; ties to the lower row).

    Returns
    -------
    float
        Mean over images of |N_x(i) & N_y(i)| / k, in [0, 1].
    """
    rows = _compare([{"x": np.asarray(x)}, {"x": np.asarray(y)}], [(0, "x"), (1, "x")], [(0, 1)],
                    measures=["mutual_knn"], k=k, n_boot=1, device=device)
    return rows[0]["value"]


def compare_entries(a, b, *, taps: Sequence[tuple[str, str]] | Sequence[str] = ("pooled",), kind: str = "pairs",
                    **options) -> "pl.DataFrame":  # noqa: F821
    """Every measure between two cache entries of one dataset split, for pairs of taps, as tidy rows.

    Parameters
    ----------
    a, b : CacheEntry or path
        Complete cache files of the same dataset and split.
    taps : list of str or of (tap_a, tap_b)
        A tap name compares that tap of both entries; a pair compares ``tap_a`` of ``a`` with ``tap_b`` of ``b``.
    kind : str
        The ``kind`` column of the rows (see :data:`KINDS`).
    measures : iterable of str
        Any of :data:`MEASURES` (default all).
    k : int
        Neighbours of mutual k-NN.
    n_boot, ci, seed, groups
        The intervals: bootstrap resamples (mutual k-NN), coverage, seed of the groups and draws, random groups
        of images of the CKA jackknife.
    join : {"exact", "common"}
        ``exact``: the entries must hold the same ids (else a UsageError naming how many differ); ``common``:
        compare the ids they share.
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda``...
    product_dtype : {"float64", "float32"}
        dtype of the block products; the sums are float64 either way.
    block_rows, memory_bytes
        Rows read at a time; the budget of one pass's accumulators (see the module docstring).

    Returns
    -------
    polars.DataFrame
        One row per (tap pair, measure) with the columns of :data:`SIMILARITY_COLUMNS`.
    """
    pairs = [(t, t) if isinstance(t, str) else tuple(t) for t in ([taps] if isinstance(taps, str) else taps)]
    views = sorted({(0, ta) for ta, _ in pairs} | {(1, tb) for _, tb in pairs})
    index = {v: i for i, v in enumerate(views)}
    return similarity_frame(_compare([a, b], views, [(index[(0, ta)], index[(1, tb)]) for ta, tb in pairs],
                                     kind=kind, **options))


def config_matrix(entries: Sequence[Any], *, tap: str = "pooled", **options) -> "pl.DataFrame":  # noqa: F821
    """Configuration x configuration at one tap: every pair of ``entries`` (one pass over the files).

    ``entries`` are cache entries (or paths) of the same dataset split, one per configuration; the rows hold
    each unordered pair once (a before b in the order given; the diagonal is 1 by definition and not written).
    Options as in :func:`compare_entries`.
    """
    if len(entries) < 2:
        raise UsageError("a configuration matrix needs at least two entries (backbones)")
    views = [(i, tap) for i in range(len(entries))]
    pairs = [(i, j) for i in range(len(entries)) for j in range(i + 1, len(entries))]
    return similarity_frame(_compare(list(entries), views, pairs, kind="configs", **options))


def block_taps(entry) -> list[str]:
    """The ``block<i>`` taps (i >= 0) an entry stores, in block order."""
    e = _Entry(entry)
    try:
        taps = [t for t in e.shapes if t.startswith("block") and t[5:].isdigit()]
    finally:
        e.close()
    return sorted(taps, key=lambda t: int(t[5:]))


def block_matrix(a, b, *, taps_a: Sequence[str] | None = None, taps_b: Sequence[str] | None = None,
                 **options) -> "pl.DataFrame":  # noqa: F821
    """Block x block between two configurations: every ``block<i>`` tap of ``a`` against every one of ``b``.

    ``taps_a``/``taps_b`` default to every non-negative block tap the entry stores (:func:`block_taps`). Options
    as in :func:`compare_entries`.
    """
    taps_a = list(taps_a or block_taps(a))
    taps_b = list(taps_b or block_taps(b))
    if not taps_a or not taps_b:
        which = a if not taps_a else b
        raise UsageError(f"cache file {getattr(which, 'path', which)} stores no block<i> taps; extract them with "
                         "--taps block0 block1 ... (or block* in a study)")
    return compare_entries(a, b, taps=[(ta, tb) for ta in taps_a for tb in taps_b], kind="blocks", **options)


def finetune_curve(frozen, finetuned, *, taps: Sequence[str] | None = None, **options) -> "pl.DataFrame":  # noqa: F821
    """Frozen block i vs fine-tuned block i of one configuration: how far fine-tuning moved each layer.

    ``frozen`` is the cache entry of the backbone's pre-trained weights, ``finetuned`` the entry of the same
    backbone on the same split extracted with the fine-tuned export as ``--weights``. ``taps`` default to the
    block taps both store (and ``pooled`` when both have it). Options as in :func:`compare_entries`.
    """
    if taps is None:
        both = [t for t in block_taps(frozen) if t in set(block_taps(finetuned))]
        taps = both
    if not taps:
        raise UsageError("no block<i> taps common to the frozen and the fine-tuned entries; extract both with the "
                         "same --taps block0 block1 ...")
    return compare_entries(frozen, finetuned, taps=list(taps), kind="finetune", **options)


# --------------------------------------------------------------------------------------------------- results
def similarity_frame(rows: Iterable[dict[str, Any]]):
    """Rows as a polars DataFrame with exactly the columns and dtypes of :data:`SIMILARITY_COLUMNS`."""
    import polars as pl

    schema = {name: getattr(pl, dtype) for name, dtype in SIMILARITY_COLUMNS.items()}
    return pl.DataFrame([{c: r.get(c) for c in SIMILARITY_COLUMNS} for r in rows], schema=schema, orient="row")


def job_path(results_dir: str | os.PathLike, *, kind: str, dataset: str, name: str, material: dict) -> Path:
    """``<results_dir>/similarity/<dataset>/<kind>-<name>-<id>.parquet``; ``id`` hashes everything that changes
    the rows (entries' keys, taps, measures and the bootstrap settings), so a finished job is found again."""
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return (Path(results_dir) / "similarity" / safe_name(dataset)
            / f"{safe_name(kind)}-{safe_name(name)[:80]}-{digest}.parquet")


def write_similarity(frame, path: str | os.PathLike) -> Path:
    """Write similarity rows (a frame of :func:`similarity_frame`) to ``path`` as parquet, atomically."""
    from ._checks import disk_full_guard

    missing = [c for c in SIMILARITY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"similarity rows are missing columns {missing}")
    path = Path(path)
    with disk_full_guard(path.parent, f"the similarity results {path.name}", "finished jobs are skipped"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            frame.write_parquet(tmp)
    return path


def scan_similarity(results_dir: str | os.PathLike):
    """Every similarity row under ``<results_dir>/similarity/`` as one polars LazyFrame (None when there is none)."""
    import polars as pl

    files = sorted(str(p) for p in (Path(results_dir) / "similarity").rglob("*.parquet"))
    if not files:
        return None
    return pl.scan_parquet(files, missing_columns="insert",
                           schema={name: getattr(pl, dtype) for name, dtype in SIMILARITY_COLUMNS.items()})


def run_job(kind: str, entries: Sequence[Any], *, results_dir: str | os.PathLike, overwrite: bool = False,
            tap: str = "pooled", **options) -> Path:
    """Compute one matrix and write it as one parquet file; a finished job (its file exists) is skipped.

    Parameters
    ----------
    kind : {"configs", "blocks", "finetune"}
        ``configs``: :func:`config_matrix` of ``entries`` at ``tap``; ``blocks``: :func:`block_matrix` of the two
        entries; ``finetune``: :func:`finetune_curve` of (frozen, fine-tuned).
    entries : list of CacheEntry or path
    results_dir : path
        The rows go to :func:`job_path` under ``<results_dir>/similarity/``.
    overwrite : bool
        Recompute a job whose file exists.
    options
        As in :func:`compare_entries` (measures, k, n_boot, ci, seed, groups, join, device, product_dtype,
        block_rows, memory_bytes).

    Returns
    -------
    Path
        The parquet file (read it with :func:`scan_similarity` or ``polars.read_parquet``).
    """
    if kind not in ("configs", "blocks", "finetune"):
        raise UsageError(f"kind must be configs, blocks or finetune; got {kind!r}")
    if kind != "configs" and len(entries) != 2:
        raise UsageError(f"a {kind} job compares two entries; got {len(entries)}")
    opened = [_Entry(e) for e in entries]
    try:
        keys = [e.attrs.get("key") for e in opened]
        names = [str(e.attrs.get("backbone")) for e in opened]
        dataset = str(opened[0].attrs.get("dataset"))
    finally:
        for e in opened:
            e.close()
    settings = {k: options.get(k, v) for k, v in (("measures", MEASURES), ("k", DEFAULT_K),
                                                   ("n_boot", DEFAULT_N_BOOT), ("ci", 0.95), ("seed", 0),
                                                   ("groups", JACKKNIFE_GROUPS), ("join", "exact"),
                                                   ("product_dtype", "float64"))}
    settings["measures"] = list(_check_measures(settings["measures"]))
    material = {"kind": kind, "keys": keys, "tap": tap if kind == "configs" else None, **settings,
                "probe_version": PROBE_VERSION}
    name = f"{tap}-{len(names)}" if kind == "configs" else "-vs-".join(names)
    path = job_path(results_dir, kind=kind, dataset=dataset, name=name, material=material)
    if path.is_file() and not overwrite:
        return path
    if kind == "configs":
        frame = config_matrix(list(entries), tap=tap, **options)
    elif kind == "blocks":
        frame = block_matrix(entries[0], entries[1], **options)
    else:
        frame = finetune_curve(entries[0], entries[1], **options)
    return write_similarity(frame, path)
