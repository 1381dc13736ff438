"""Identification by retrieval on frozen features: cosine ranking of a gallery for each query, chunked.

Two protocols, one implementation (:func:`retrieve`): leave-one-image-out, where each image queries every other
image of the dataset, and gallery/probe splits, where each query image ranks every gallery image. A query is
answered by the ranking of the gallery by cosine similarity. Per query: ``rank1`` (the nearest gallery image has
the query's identity), ``rank5`` (one of the five nearest has), and average precision over all gallery images of
its identity (itself excluded). Queries whose identity has no such image are not scored (``valid`` false).

Exact similarity ties (duplicated images) never depend on the order of the files. Average precision scores them
as scikit-learn's ``average_precision_score`` does: the images of one similarity are taken together, each positive
among them at the precision after the whole group. ``rank1`` and ``rank5`` are averaged over the orders of the tied
images: where the k-th place falls inside a group of g tied images holding p positives, m of them inside the top k,
and no positive ranks above the group, the hit is ``1 - C(g - p, m) / C(g, m)`` (rank-1: p / g). ``neighbours``
(figures only) lists tied images in row order.

Queries go in blocks of at most 1,024 rows and 512 MiB of similarities on CPU
(:func:`probe.probes._knn.for_query_blocks`), so the Nq x Ng similarity matrix is never held: memory is
O(block x Ng). Each block is read once more after its matmul, by one exact top-K selection (the kNN probe's
:func:`probe.probes._knn._select_top`: ties to the earlier row) with K a few times the largest number of other
images of one identity. A query whose positives are not all inside its top K (features that rank its own person
far down) gets its positives' ranks by counting: one comparison pass keeps the entries at or above its lowest
positive, and one interval search over those entries counts how many rank above each positive. A row where a
positive ties exactly with another image (found in its top K, or by the counting) is scored from a full sort of
the row, its tie groups counted (:func:`_tied_scores`). All give the scores of that full-row computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Most neighbours a block's top-K selection keeps (above it, rows are sorted in full).
MAX_TOP_K = 2048


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


def loo_retrieval(features, labels, **kwargs) -> Retrieval:
    """Leave-one-image-out retrieval: :func:`retrieve` with every row a query against all the others."""
    return retrieve(features, labels, **kwargs)


def retrieve(query_features, query_labels, gallery_features=None, gallery_labels=None, *, top: int = 5,
             device: str = "cpu", block_bytes: int | None = None, method: str = "auto") -> Retrieval:
    """Cosine retrieval of each query against a gallery (see the module docstring).

    Parameters
    ----------
    query_features : array [Nq, D]
        Query features (any float dtype; compared in float32 after L2 normalisation).
    query_labels : array [Nq]
        Identity of each query.
    gallery_features, gallery_labels : array [Ng, D], array [Ng], optional
        The gallery. None (default): leave-one-image-out, every query ranks all the other queries.
    top : int
        Nearest gallery images kept per query (for figures); at most the gallery size (minus one when
        leave-one-out).
    device : str
        Torch device.
    block_bytes : int, optional
        Bytes of similarities held at once, shared by the block workers (default: the kNN probe's on CPU,
        256 MiB on GPU; :func:`probe.probes._knn.for_query_blocks`).
    method : {"auto", "sort"}
        ``auto``: a top-K selection per block, rows sorted in full only when their positives fall outside it;
        ``sort``: every row sorted in full (the reference path; slower).

    Returns
    -------
    Retrieval
        Per query; ``valid`` is false where the gallery holds no other image of the query's identity.
    """
    import torch
    import torch.nn.functional as F

    from .probes._base import resolve_device, to_tensor
    from .probes._knn import _select_top, for_query_blocks

    if method not in ("auto", "sort"):
        raise ValueError(f"method must be 'auto' or 'sort'; got {method!r}")
    loo = gallery_features is None
    if loo != (gallery_labels is None):
        raise ValueError("give both gallery_features and gallery_labels, or neither (leave-one-image-out)")
    dev = resolve_device(device)
    q_labels = np.asarray(query_labels)
    g_labels = q_labels if loo else np.asarray(gallery_labels)
    n, n_gallery = len(q_labels), len(g_labels)
    names, index = np.unique(np.r_[q_labels, g_labels] if not loo else q_labels, return_inverse=True)
    q_index, g_index = (index, index) if loo else (index[:n], index[n:])
    Q = F.normalize(to_tensor(np.asarray(query_features), dev), dim=1)
    G = Q if loo else F.normalize(to_tensor(np.asarray(gallery_features), dev), dim=1)
    if G.shape[1] != Q.shape[1]:
        raise ValueError(f"queries have {Q.shape[1]} features and the gallery {G.shape[1]}")
    glab = torch.as_tensor(g_index, device=dev)
    counts = np.bincount(g_index, minlength=len(names))  # gallery images of each identity
    own = counts[q_index] - (1 if loo else 0)  # a query's positives in the gallery (itself excluded)
    n_pos = torch.as_tensor(own, device=dev)
    max_pos = int(own.max()) if n else 0
    members = np.argsort(g_index, kind="stable")  # gallery rows of each identity, contiguous (CSR with starts)
    starts = np.r_[0, np.cumsum(counts)]
    candidates = n_gallery - (1 if loo else 0)
    top = max(0, min(int(top), candidates))
    k = min(candidates, max(top, 4 * max_pos + 8)) if method == "auto" else 0
    k = k if k <= MAX_TOP_K else 0
    rank1 = np.full(n, np.nan)
    rank5 = np.full(n, np.nan)
    ap = np.full(n, np.nan)
    neighbours = np.zeros((n, top), dtype=np.int64)

    def block(lo: int, hi: int, buffer) -> None:
        S = torch.mm(Q[lo:hi], G.T, out=buffer)
        rows = torch.arange(lo, hi, device=dev)
        if loo:
            S[rows - lo, rows] = -float("inf")  # a query never retrieves itself
        self_rows = rows if loo else torch.full_like(rows, -1)
        qlab, qpos = torch.as_tensor(q_index[lo:hi], device=dev), n_pos[lo:hi]
        tied = torch.zeros(hi - lo, dtype=torch.bool, device=dev)  # rows scored from a full sort, ties counted
        if k:
            vals, cols = _select_top(S, k)
            hit = glab[cols] == qlab[:, None]
            inside = hit.sum(dim=1) == qpos  # every positive of the row is in its top k
            # a positive tied with its neighbour in the top k, or kept last (it may tie with an entry left out)
            tied = ((vals[:, 1:] == vals[:, :-1]) & (hit[:, 1:] | hit[:, :-1])).any(dim=1)
            if k < candidates:
                tied |= hit[:, -1]
            tied &= inside & (qpos > 0)
            r1, r5, a = (np.array(v) for v in _scores(hit, qpos))
            if top:
                neighbours[lo:hi] = cols[:, :top].cpu().numpy()
            # rows whose positives are not all in the top k: ranks by counting
            out = torch.nonzero(~inside & (qpos > 0)).flatten()
            if len(out):
                idx = out.cpu().numpy()
                ranks, counted_ties = _counted_ranks(S[out], members, starts, q_index[lo + idx],
                                                     (lo + idx) if loo else None)
                r1[idx], r5[idx], a[idx] = _scores_from_ranks(ranks)
                tied[out[torch.as_tensor(np.flatnonzero(counted_ties), device=dev)]] = True
        else:
            r1, r5, a = (np.full(hi - lo, np.nan) for _ in range(3))
            tied = torch.ones_like(tied)
        if bool(tied.any()):  # a full sort of the row, exact ties scored by their groups
            t = torch.nonzero(tied).flatten()
            cols = torch.arange(n_gallery, device=dev)
            positive = (glab[None, :] == qlab[t, None]) & (cols[None, :] != self_rows[t, None])
            ti = t.cpu().numpy()
            r1[ti], r5[ti], a[ti] = _tied_scores(S[t], positive)
            if top and not k:
                order = torch.sort(S[t], dim=1, descending=True, stable=True)[1]
                neighbours[lo + ti] = order[:, :top].cpu().numpy()
        rank1[lo:hi], rank5[lo:hi], ap[lo:hi] = r1, r5, a

    for_query_blocks(n, n_gallery, dev, Q.dtype, block, block_bytes=block_bytes)
    valid = own > 0
    for arr in (rank1, rank5, ap):
        arr[~valid] = np.nan
    return Retrieval(rank1=rank1, rank5=rank5, ap=ap, valid=valid, neighbours=neighbours)


def _counted_ranks(S, members, starts, identities, self_rows):
    """1-based ranks [r, P] (ascending, inf padded) of each query's positives in its row of ``S``, by counting.

    ``identities``: each row's identity; ``self_rows``: each row's own gallery row (left out of its positives),
    or None. The positives' similarities, sorted, split the row into intervals; a ``searchsorted`` puts every
    entry at or above the lowest positive in its interval, and the entries above a positive are the counts of the
    intervals above it. Returns (ranks, tied): ``tied`` marks rows where another entry equals a positive's
    similarity exactly (their order would need the column tie rule); those rows' ranks are not used.
    """
    import torch

    dev = S.device
    lists = []
    for i, lab in enumerate(identities):
        m = members[starts[lab]:starts[lab + 1]]
        lists.append(m if self_rows is None else m[m != self_rows[i]])
    width = max(len(m) for m in lists)
    pos = np.zeros((len(lists), width), dtype=np.int64)
    pad = np.ones((len(lists), width), dtype=bool)
    for i, m in enumerate(lists):
        pos[i, :len(m)] = m
        pad[i, :len(m)] = False
    pad_t = torch.as_tensor(pad, device=dev)
    ps = S.gather(1, torch.as_tensor(pos, device=dev)).masked_fill(pad_t, float("inf"))
    asc = torch.sort(ps, dim=1)[0].contiguous()  # padding (inf) last
    r, w = asc.shape
    # Only entries at or above a row's lowest positive can rank above (or tie with) a positive: one comparison
    # pass selects them, and the interval search and counts run over those entries alone, all rows at once, on
    # order-preserving int64 keys (row << 32 | the float's sortable bits), so one 1-D search serves every row.
    rows, cols = torch.nonzero(S >= asc[:, :1], as_tuple=True)
    keys = _row_keys(rows, S[rows, cols])
    sequence = _row_keys(torch.arange(r, device=dev).repeat_interleave(w), asc.flatten())
    first = rows * w
    below = torch.searchsorted(sequence, keys, right=False) - first  # positives strictly below each entry
    at_or_below = torch.searchsorted(sequence, keys, right=True) - first
    equal = torch.zeros(r, dtype=torch.int64, device=dev).index_add_(0, rows, at_or_below - below)
    counts = torch.bincount(rows * (w + 1) + below, minlength=r * (w + 1)).view(r, w + 1)
    above = counts.flip(1).cumsum(1).flip(1)[:, 1:]  # [r, w]: entries strictly above positive j (ascending j)
    ranks = (above + 1).double().masked_fill(torch.isinf(asc), float("inf"))
    n_pos = torch.as_tensor([len(m) for m in lists], device=dev)
    tied = (equal != n_pos).cpu().numpy()  # entries equal to some positive's similarity (positives included)
    return ranks, tied


def _row_keys(rows, values):
    """int64 keys ordered as (row, value): the row in the high 32 bits, the float32 value's bits made
    order-preserving (negative values' magnitude bits flipped; -0.0 as +0.0) in the low 32."""
    import torch

    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long() + 2**31  # in [0, 2**32), ordered as the floats
    return (rows.long() << 32) | bits


def _scores_from_ranks(ranks):
    """rank1, rank5 hits and average precision from the positives' 1-based ranks (inf = padding)."""
    import torch

    ranks = torch.sort(ranks, dim=1)[0]
    finite = torch.isfinite(ranks)
    i = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    ap = torch.where(finite, i / ranks, torch.zeros_like(ranks)).sum(dim=1) / finite.sum(dim=1).clamp_min(1)
    first = ranks[:, 0]
    return (first == 1).double().cpu().numpy(), (first <= 5).double().cpu().numpy(), ap.cpu().numpy()


def _scores(hit, n_pos):
    """rank1, rank5 hits and average precision per query from its ranked hits [b, K] (every positive inside)."""
    import torch

    hit = hit.double()
    position = torch.arange(1, hit.shape[1] + 1, device=hit.device, dtype=torch.float64)
    ap = (torch.cumsum(hit, dim=1) / position * hit).sum(dim=1) / n_pos.clamp_min(1)
    return (hit[:, 0].cpu().numpy(), hit[:, :5].amax(dim=1).cpu().numpy(), ap.cpu().numpy())


def _tied_scores(S, positive):
    """rank1, rank5 hits and average precision of full rows whose similarities may tie exactly.

    ``S`` [b, G] similarities (``-inf`` for an excluded entry, the query itself); ``positive`` [b, G] bool. The
    entries of one similarity form a group: average precision counts each positive of a group at the precision
    after the whole group (scikit-learn's ``average_precision_score``); rank-k is averaged over the orders of
    the group holding the k-th place (see the module docstring).
    """
    import torch

    vals, order = torch.sort(S, dim=1, descending=True)
    hit = positive.gather(1, order).double()
    b, g = vals.shape
    start = torch.ones_like(vals, dtype=torch.bool)
    start[:, 1:] = vals[:, 1:] != vals[:, :-1]
    gid = torch.cumsum(start.long(), dim=1) - 1  # the tie group of each sorted entry
    pos_g = torch.zeros(b, g, dtype=torch.float64, device=S.device).scatter_add_(1, gid, hit)
    size_g = torch.zeros(b, g, dtype=torch.float64, device=S.device).scatter_add_(1, gid, torch.ones_like(hit))
    cum_pos, cum_size = pos_g.cumsum(dim=1), size_g.cumsum(dim=1)
    n_pos = hit.sum(dim=1)
    ap = (pos_g * cum_pos / cum_size.clamp_min(1)).sum(dim=1) / n_pos.clamp_min(1)
    before, pos_before = cum_size - size_g, cum_pos - pos_g
    out = []
    for k in (1, 5):
        m = (k - before).clamp_min(0)  # places of the group inside the top k
        holds = (size_g > 0) & (before < k) & (cum_size >= k)  # the group holding the k-th place
        miss = torch.ones_like(size_g)  # no positive among m of the group's entries drawn at random
        for i in range(k):
            step = (size_g - pos_g - i).clamp_min(0) / (size_g - i).clamp_min(1)
            miss = miss * torch.where(i < m, step, torch.ones_like(step))
        found = torch.where(pos_before > 0, torch.ones_like(miss), 1 - miss)
        hit_k = (holds * found).sum(dim=1)
        out.append(torch.where(cum_size[:, -1] < k, (n_pos > 0).double(), hit_k).cpu().numpy())
    return out[0], out[1], ap.cpu().numpy()
