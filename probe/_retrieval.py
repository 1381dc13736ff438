"""Identification by retrieval on frozen features: leave-one-image-out cosine ranking, chunked.

Each image queries every other image of the dataset; a query is answered by the ranking of the others by cosine
similarity (ties: the earlier row first, the package's one tie rule). Per query: ``rank1`` (the nearest other
image has the query's identity), ``rank5`` (one of the five nearest has), and average precision over all other
images of its identity. Queries whose identity has no other image are not scored (``valid`` false).

Queries go in blocks of a few MiB of similarities, so the N x N similarity matrix is never held: memory is
O(block x N). The ranks of a query's positives come from counting (for identities with few images: one
comparison pass per positive over the block) or from one stable sort of the block (many images per identity);
both give the exact ranks of a full stable sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bytes of one block's similarities on CPU (as the kNN probe: the selection reads the block while it is in cache).
BLOCK_BYTES = 16 * 2**20
#: Most other images of one identity for which ranks are counted pass by pass; above it a block is sorted.
COUNT_POSITIVES = 32


@dataclass
class Retrieval:
    """Per-query results of :func:`loo_retrieval` (arrays over all N rows).

    Attributes
    ----------
    rank1, rank5, ap : numpy.ndarray of float64 [N]
        1/0 hits and average precision (NaN where ``valid`` is false).
    valid : numpy.ndarray of bool [N]
        The query's identity has another image.
    neighbours : numpy.ndarray of int64 [N, top]
        Rows of the ``top`` nearest other images, nearest first.
    """

    rank1: np.ndarray
    rank5: np.ndarray
    ap: np.ndarray
    valid: np.ndarray
    neighbours: np.ndarray

    def metrics(self) -> dict[str, float]:
        """``rank1``, ``rank5`` and ``map`` (fractions) over the valid queries."""
        v = self.valid
        if not v.any():
            return {"rank1": float("nan"), "rank5": float("nan"), "map": float("nan")}
        return {"rank1": float(self.rank1[v].mean()), "rank5": float(self.rank5[v].mean()),
                "map": float(self.ap[v].mean())}


def loo_retrieval(features, labels, *, top: int = 5, device: str = "cpu", block_bytes: int | None = None,
                  method: str = "auto") -> Retrieval:
    """Leave-one-image-out cosine retrieval of every row against all others (see the module docstring).

    Parameters
    ----------
    features : array [N, D]
        Features (any float dtype; compared in float32 after L2 normalisation).
    labels : array [N]
        Identity of each row.
    top : int
        Nearest neighbours kept per query (for figures); at most N - 1.
    device : str
        Torch device.
    block_bytes : int, optional
        Bytes of similarities per block (default :data:`BLOCK_BYTES` on CPU, 256 MiB on GPU).
    method : {"auto", "count", "sort"}
        How the positives' ranks are found; ``auto`` counts when every identity has at most
        :data:`COUNT_POSITIVES` other images.
    """
    import torch
    import torch.nn.functional as F

    from .probes._base import CHUNK_BYTES, resolve_device, to_tensor
    from .probes._knn import _select_top

    dev = resolve_device(device)
    labels = np.asarray(labels)
    n = len(labels)
    _, label_index = np.unique(labels, return_inverse=True)
    X = F.normalize(to_tensor(np.asarray(features), dev), dim=1)
    lab = torch.as_tensor(label_index, device=dev)
    counts = np.bincount(label_index)
    max_pos = int(counts.max()) - 1 if n else 0
    if method == "auto":
        method = "count" if max_pos <= COUNT_POSITIVES else "sort"
    if method == "count":
        positives = _positive_table(label_index, max_pos)  # [N, max_pos], -1 padded
        pos_t = torch.as_tensor(positives, device=dev)
    top = max(0, min(int(top), n - 1))
    budget = block_bytes or (BLOCK_BYTES if dev.type == "cpu" else CHUNK_BYTES)
    step = max(1, min(n, budget // max(1, 4 * n)))
    rank1 = np.full(n, np.nan)
    rank5 = np.full(n, np.nan)
    ap = np.full(n, np.nan)
    neighbours = np.zeros((n, top), dtype=np.int64)
    columns = torch.arange(n, device=dev)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        rows = torch.arange(lo, hi, device=dev)
        S = X[lo:hi] @ X.T
        S[rows - lo, rows] = -float("inf")  # a query never retrieves itself
        if top:
            neighbours[lo:hi] = _select_top(S, top)[1].cpu().numpy()
        if method == "count":
            ranks = _count_ranks(S, pos_t[lo:hi], columns)  # [b, P] float, inf on padding
        else:
            ranks = _sort_ranks(S, lab[lo:hi], lab, rows)
        r1, r5, a = _scores_from_ranks(ranks)
        rank1[lo:hi], rank5[lo:hi], ap[lo:hi] = r1, r5, a
    valid = counts[label_index] > 1
    for arr in (rank1, rank5, ap):
        arr[~valid] = np.nan
    return Retrieval(rank1=rank1, rank5=rank5, ap=ap, valid=valid, neighbours=neighbours)


def _positive_table(label_index: np.ndarray, width: int) -> np.ndarray:
    """[N, width] rows of the other images of each row's identity, ascending, padded with -1."""
    n = len(label_index)
    out = np.full((n, max(1, width)), -1, dtype=np.int64)
    order = np.argsort(label_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(label_index[order]) != 0])
    for s, e in zip(starts, np.r_[starts[1:], n]):
        members = order[s:e]
        for j, m in enumerate(members):
            others = np.delete(members, j)
            out[m, :len(others)] = others
    return out


def _count_ranks(S, pos, columns):
    """1-based ranks [b, P] of each query's positives in its row of ``S`` (stable: ties to the earlier column)."""
    import torch

    valid = pos >= 0
    ps = S.gather(1, pos.clamp_min(0))
    ranks = torch.full(ps.shape, float("inf"), device=S.device, dtype=torch.float64)
    for p in range(pos.shape[1]):
        if not bool(valid[:, p].any()):
            break  # padding from here on (identities are padded at the end)
        s = ps[:, p:p + 1]
        greater = (S > s).sum(dim=1)
        equal = S == s
        tied = equal.sum(dim=1) > 1  # the positive itself is one equal entry
        r = greater.to(torch.float64) + 1
        if bool(tied.any()):
            before = (equal[tied] & (columns[None, :] < pos[tied, p:p + 1])).sum(dim=1)
            r[tied] += before.to(torch.float64)
        ranks[:, p] = torch.where(valid[:, p], r, ranks[:, p])
    return ranks


def _sort_ranks(S, query_labels, labels, rows):
    """The same ranks from one stable sort of the block: ranks [b, P_max] of the positives, inf padded."""
    import torch

    order = torch.sort(S, dim=1, descending=True, stable=True)[1]
    hit = labels[order] == query_labels[:, None]
    hit &= order != rows[:, None]
    n_pos = hit.sum(dim=1)
    width = max(1, int(n_pos.max()))
    position = torch.arange(1, S.shape[1] + 1, device=S.device, dtype=torch.float64)
    ranks = torch.where(hit, position[None, :], torch.full_like(position, float("inf"))[None, :])
    return torch.sort(ranks, dim=1)[0][:, :width]


def _scores_from_ranks(ranks):
    """rank1, rank5 hits and average precision per query from its positives' ranks (inf = padding)."""
    import torch

    ranks = torch.sort(ranks, dim=1)[0]
    finite = torch.isfinite(ranks)
    n_pos = finite.sum(dim=1)
    i = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    precision = torch.where(finite, i[None, :] / ranks, torch.zeros_like(ranks))
    ap = precision.sum(dim=1) / n_pos.clamp_min(1)
    first = ranks[:, 0]
    return ((first == 1).double().cpu().numpy(), (first <= 5).double().cpu().numpy(), ap.cpu().numpy())
