"""Cosine k-nearest-neighbour classification with DINO's temperature-weighted votes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._base import CHUNK_BYTES, ProbeBase, check_positive


class KNNProbe(ProbeBase):
    """k-nearest neighbours under cosine similarity; votes weighted by ``exp(sim / temperature)`` (DINO).

    ``temperature=None`` gives each of the ``k`` neighbours one vote (scikit-learn's ``weights="uniform"``);
    ties between classes go to the first class in ``classes_``. Similarities are computed in chunks of queries,
    so memory stays bounded for large banks. ``k`` larger than the training set is clipped to its size.
    ``decision_function`` and ``predict_proba`` report each class's share of the votes.

    Parameters
    ----------
    k : int, default=20
        Number of neighbours.
    temperature : float or None, default=0.07
        Softmax temperature of the votes; None for uniform votes.
    device : str, default="auto"
        Torch device; ``"auto"`` picks cuda when available.

    Attributes
    ----------
    classes_ : ndarray [n_classes]
    bank_ : torch.Tensor [n_train, n_features]
        L2-normalised training features (float32, on ``device``).
    bank_labels_ : torch.Tensor [n_train]
        Class index (into ``classes_``) of each bank row.
    """

    name = "knn"
    # The k values of the DINO / Wu et al. evaluations, with DINO's weighted votes and plain majority votes.
    default_grid = {"k": [1, 5, 10, 20, 50, 100, 200], "temperature": [0.07, None]}

    def __init__(self, k: int = 20, *, temperature: float | None = 0.07, device: str = "auto"):
        self.k = k
        self.temperature = temperature
        self.device = device

    def _check_params(self) -> None:
        check_positive(type(self).__name__, "k", self.k, integer=True)
        check_positive(type(self).__name__, "temperature", self.temperature, allow_none=True)

    def _fit(self, X: torch.Tensor, y_index: torch.Tensor) -> None:
        # A sweep's refit on train+val finds both parts normalised by its path (the rows are compared, not trusted),
        # with the path's similarity buffers for the one test search that follows.
        known, self._refit_state = getattr(self, "_refit_state", None), None
        bank = known.bank_for(X) if known is not None else None
        self.bank_ = F.normalize(X, dim=1) if bank is None else bank
        self._spare_buffers = None if bank is None else known.buffers
        self.bank_labels_ = y_index

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        buffers, self._spare_buffers = getattr(self, "_spare_buffers", None), None  # once: never held by a model
        sims, labels = _top_neighbours(F.normalize(X, dim=1), self.bank_, self.bank_labels_, self.k,
                                       buffers=buffers)
        return _votes(sims, labels, min(self.k, sims.shape[1]), self.temperature, len(self.classes_))

    def predict_proba(self, X) -> np.ndarray:
        """Share of the (weighted) votes per class [n_samples, n_classes]."""
        return self._decision(self._scores(self._check_predict_input(X))).cpu().numpy()

    def _decision(self, votes: torch.Tensor) -> torch.Tensor:
        # Weighted vote totals differ from row to row; their shares are comparable across samples (and for two
        # classes decision_function's share difference ranks samples as predict_proba does).
        return votes / votes.sum(dim=1, keepdim=True)

    def _sweep_path(self, X, y_index, n_classes, X_eval, points):
        """One top-max(k) search; every (k, temperature) is then scored from the same neighbours."""
        start = time.perf_counter()
        for point in points:
            check_positive(type(self).__name__, "k", point.get("k", self.k), integer=True)
            check_positive(type(self).__name__, "temperature", point.get("temperature", self.temperature),
                           allow_none=True)
        max_k = max(int(p.get("k", self.k)) for p in points)
        path = _PathState(X, X_eval)
        self._path_state = path
        sims, labels = _top_neighbours(path.queries, path.bank, y_index, max_k, buffers=path.buffers)
        shared = (time.perf_counter() - start) / max(1, len(points))
        # Votes of the first k neighbours are those of the first k' < k plus neighbours k'..k-1 (a vote's weight
        # does not depend on k): per temperature, one running total grows from the smallest k to the largest.
        by_temperature: dict[Any, list[int]] = {}
        for i, point in enumerate(points):
            by_temperature.setdefault(point.get("temperature", self.temperature), []).append(i)
        for temperature, members in by_temperature.items():
            start = time.perf_counter()
            weights = _vote_weights(sims, temperature)
            votes = torch.zeros(len(sims), n_classes, device=sims.device, dtype=sims.dtype)
            done, setup = 0, (time.perf_counter() - start) / len(members)
            for i in sorted(members, key=lambda i: int(points[i].get("k", self.k))):
                start = time.perf_counter()
                k = min(int(points[i].get("k", self.k)), sims.shape[1])
                if k > done:
                    votes.scatter_add_(1, labels[:, done:k], weights[:, done:k])
                    done = k
                yield i, votes.clone(), shared + setup + time.perf_counter() - start

    def _prepare_refit(self, point_index: int) -> None:
        self._refit_state, self._path_state = getattr(self, "_path_state", None), None

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        # More neighbours smooth more; among equal k, uniform votes (None) smooth more than any temperature,
        # and a higher temperature more than a lower one.
        def key(i):
            t = points[i].get("temperature")
            return (-int(points[i].get("k", 1)), 0 if t is None else 1, -(t or 0.0), i)

        return sorted(range(len(points)), key=key)


class _PathState:
    """What a kNN sweep's path keeps for its refit on train+val: both parts normalised once, and the search buffers.

    The train rows (the path's bank) and the val rows (its queries) are normalised into one [n_train + n_val, d]
    tensor, which is the refit's bank when the refit's rows are those rows in that order; the per-worker similarity
    buffers are sized for that bank, so the test search reuses the path's memory (no page faults on fresh buffers).
    """

    def __init__(self, X: torch.Tensor, X_eval: torch.Tensor):
        n = len(X)
        self.source, self.source_eval = X, X_eval
        self.unit = torch.empty(n + len(X_eval), X.shape[1], device=X.device, dtype=X.dtype)
        torch.div(X, torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min_(1e-12), out=self.unit[:n])
        torch.div(X_eval, torch.linalg.vector_norm(X_eval, dim=1, keepdim=True).clamp_min_(1e-12),
                  out=self.unit[n:])
        self.bank, self.queries = self.unit[:n], self.unit[n:]
        self.buffers = _BlockBuffers(len(self.unit), X.device, X.dtype)

    def bank_for(self, X: torch.Tensor) -> torch.Tensor | None:
        """The normalised rows of ``X`` when ``X`` is the path's train rows followed by its val rows, else None."""
        n = len(self.source)
        same = (X.shape == self.unit.shape and X.device == self.unit.device and X.dtype == self.unit.dtype
                and torch.equal(X[:n], self.source) and torch.equal(X[n:], self.source_eval))
        return self.unit if same else None


class _BlockBuffers:
    """Per-worker similarity buffers of :func:`for_query_blocks`, kept across searches (a sweep's path search and its
    test search); each is first made large enough for a block of a bank of ``n_bank`` rows."""

    def __init__(self, n_bank: int, device, dtype):
        self.reserve = _block_rows(n_bank, device) * n_bank  # entries (counted here: the workers run on one thread)
        self.flat: dict[int, torch.Tensor] = {}

    def get(self, worker: int, rows: int, n_bank: int, device, dtype) -> torch.Tensor:
        """An uninitialised [rows, n_bank] view of worker ``worker``'s buffer (replaced when too small)."""
        numel = rows * n_bank
        buf = self.flat.get(worker)
        if buf is None or buf.numel() < numel or buf.device != torch.device(device) or buf.dtype != dtype:
            buf = self.flat[worker] = torch.empty(max(numel, self.reserve if buf is None else 0), device=device,
                                                  dtype=dtype)
        return buf[:numel].view(rows, n_bank)


#: Query rows per block on CPU. A one-thread product pays for packing the bank once per block, so more query rows
#: run it nearer the matmul peak; 1,024 rows of a 25,000-row bank are 100 MB of similarities per core.
_BLOCK_ROWS = 1024

#: Most bytes of query-block similarities held at once on CPU, over all the workers of :func:`for_query_blocks` (a
#: bank of a million rows gets blocks of 64 rows on 2 cores).
_BLOCK_BYTES = 512 * 2**20


def _top_neighbours(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                    k: int, *, buffers: "_BlockBuffers | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities [N, k'] (descending) and class indices [N, k'] of the k' = min(k, n_bank) nearest rows.

    Exact: equal similarities are ordered by bank row (the earlier row first), as a stable sort of each row's
    similarities would order them. Queries go in blocks (:func:`for_query_blocks`, with ``buffers``).
    """
    k = min(int(k), len(bank))
    sims = torch.empty(len(queries), k, device=queries.device, dtype=queries.dtype)
    idx = torch.empty(len(queries), k, device=queries.device, dtype=torch.long)

    def search(lo: int, hi: int, buffer: torch.Tensor) -> None:
        block = torch.mm(queries[lo:hi], bank.T, out=buffer)
        sims[lo:hi], idx[lo:hi] = _select_top(block, k)

    for_query_blocks(len(queries), len(bank), queries.device, queries.dtype, search, buffers=buffers)
    return sims, bank_labels[idx]


def _block_rows(n_bank: int, device, *, block_bytes: int | None = None) -> int:
    """Most query rows of one block of :func:`for_query_blocks` for a bank of ``n_bank`` rows."""
    if torch.device(device).type == "cpu":
        return max(1, min(_BLOCK_ROWS, (block_bytes or _BLOCK_BYTES) // max(1, 4 * n_bank * torch.get_num_threads())))
    return max(1, (block_bytes or CHUNK_BYTES) // max(1, 4 * n_bank))


def for_query_blocks(n_queries: int, n_bank: int, device, dtype, work, *, block_bytes: int | None = None,
                     buffers: _BlockBuffers | None = None) -> None:
    """Call ``work(lo, hi, buffer)`` for consecutive blocks of query rows, ``buffer`` an uninitialised
    [hi - lo, n_bank] tensor for the block's similarities.

    On CPU, blocks have up to :data:`_BLOCK_ROWS` rows and all blocks together hold at most :data:`_BLOCK_BYTES`
    (``CHUNK_BYTES`` per block elsewhere; ``block_bytes`` overrides either): enough query rows for a full-speed
    product, and a bounded buffer whatever the size of the bank. Each worker reuses one buffer for all its blocks
    (a fresh tensor per block costs page faults). On CPU the blocks are split over the cores: each torch thread
    becomes one worker that runs its own blocks on one thread, so the memory-bound passes over one block (a
    selection) overlap the other cores' products instead of idling every core's multipliers in turn. The blocks are
    of equal size and their number a multiple of the workers, so no core waits for another at the end. ``work``
    must only write rows ``lo:hi`` of shared outputs. ``buffers`` (:class:`_BlockBuffers`) keeps the workers'
    buffers for the next search.
    """
    if n_queries <= 0:
        return
    cpu = torch.device(device).type == "cpu"
    workers = torch.get_num_threads() if cpu else 1
    most = _block_rows(n_bank, device, block_bytes=block_bytes)
    blocks = -(-n_queries // most)
    blocks = workers * -(-blocks // workers) if blocks > workers else blocks
    step = -(-n_queries // blocks)
    starts = list(range(0, n_queries, step))
    workers = max(1, min(workers, len(starts)))

    def run(w: int) -> None:
        if buffers is None:
            buffer = torch.empty(step, n_bank, device=device, dtype=dtype)
        else:
            buffer = buffers.get(w, step, n_bank, device, dtype)
        for lo in starts[w::workers]:
            hi = min(n_queries, lo + step)
            work(lo, hi, buffer[:hi - lo])

    if workers == 1:
        run(0)
        return
    from concurrent.futures import ThreadPoolExecutor

    from .._runtime import torch_threads

    with torch_threads(1), ThreadPoolExecutor(workers, thread_name_prefix="probe-blocks") as pool:
        list(pool.map(run, range(workers)))


#: Most entries of a CPU block whose top k < 16 go through :func:`_select_top_stable` (the metrics' top-5 of a score
#: matrix): on one thread, without the barriers of several small multithreaded torch ops (which, on a host shared
#: with other jobs, cost more than the work).
_SMALL_BLOCK = 2**22


def _select_top(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``block`` (descending; ties: lower column first) and their columns.

    ``torch.topk`` orders equal values arbitrarily, so it is asked for one entry more than needed: a row whose
    k-th and (k+1)-th values differ has a unique top-k set, which a stable sort by value over ascending columns
    puts in the promised order; a row with a tie across that boundary (rare for similarities, common for vote
    counts) goes through :func:`_select_top_stable`. On CPU with one torch thread (the workers of
    :func:`for_query_blocks`) and k >= 16, the rows go through :func:`_select_top_by_threshold` instead (the same result; its work barely grows with k, while
    ``torch.topk``'s heap does). With more threads ``torch.topk`` splits the rows over them and stays, except for
    k < 16 on a block of at most :data:`_SMALL_BLOCK` entries (a score matrix), which goes to
    :func:`_select_top_stable`.
    """
    rows, n = block.shape
    if k >= n:
        vals, cols = torch.sort(block, dim=1, descending=True, stable=True)
        return vals[:, :k], cols[:, :k]
    if (k >= 16 and block.device.type == "cpu" and block.dtype in (torch.float32, torch.float64)
            and torch.get_num_threads() == 1):
        return _select_top_by_threshold(block, k)
    if k < 16 and block.device.type == "cpu" and block.dtype == torch.float32 and block.numel() <= _SMALL_BLOCK:
        return _select_top_stable(block, k)
    top, cols = torch.topk(block, k + 1, dim=1, largest=True, sorted=True)
    tied = top[:, k - 1] == top[:, k]
    cols, order = torch.sort(cols[:, :k], dim=1)  # ascending columns, then a stable sort by value
    vals, order = torch.sort(top[:, :k].gather(1, order), dim=1, descending=True, stable=True)
    cols = cols.gather(1, order)
    if bool(tied.any()):
        vals[tied], cols[tied] = _select_top_stable(block[tied], k)
    return vals, cols


def _select_top_stable(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_select_top` for rows whose top k may tie, with no full sort: one selection over unique keys.

    A float32 value's bits, with the low 31 bits flipped for negative values, order as the values do (``-0.0``
    becomes ``+0.0`` first: equal values, equal keys); shifted up 32 bits, with ``n - 1 - column`` below, every key
    of a row is distinct, and a larger key means a larger value or, among equal values, a lower column: the stable
    order itself. On CPU the keys are made and selected by numpy (one thread, no barrier between small parallel
    ops) in row groups of about :data:`_SELECT_BYTES`; elsewhere by ``torch.topk``. Other dtypes, or rows holding
    NaN, are sorted in full, stably.
    """
    rows_n, n = rows.shape
    cpu = rows.device.type == "cpu"
    if rows.dtype != torch.float32 or (bool(np.isnan(rows.numpy()).any()) if cpu else bool(rows.isnan().any())):
        full_vals, full_cols = torch.sort(rows, dim=1, descending=True, stable=True)
        return full_vals[:, :k], full_cols[:, :k]
    if not cpu:
        bits = (rows + 0.0).view(torch.int32)
        keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64) * 2**32
        keys += (n - 1) - torch.arange(n, device=rows.device)
        cols = torch.topk(keys, k, dim=1, sorted=True)[1]
        return rows.gather(1, cols), cols
    a = rows.numpy()
    low = (n - 1) - np.arange(n, dtype=np.int64)
    vals = np.empty((rows_n, k), dtype=np.float32)
    cols = np.empty((rows_n, k), dtype=np.int64)
    step = max(1, _SELECT_BYTES // (8 * n))
    for lo in range(0, rows_n, step):
        part = a[lo:lo + step]
        bits = (part + np.float32(0.0)).view(np.int32)
        keys = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
        keys <<= 32
        keys |= low
        if k < n:
            keys = np.take_along_axis(keys, np.argpartition(keys, n - k, axis=1)[:, n - k:], 1)
        keys.sort(axis=1)  # distinct keys: ascending, so the top k are read backwards
        top = (n - 1) - (keys[:, ::-1] & 0xFFFFFFFF)
        cols[lo:lo + step] = top
        vals[lo:lo + step] = np.take_along_axis(part, top, 1)
    return torch.from_numpy(vals), torch.from_numpy(cols)


#: Bytes of a block that :func:`_select_top_by_threshold` works on at a time (its temporary arrays stay in the cache
#: and in reused heap memory, instead of page-faulting fresh copies of the whole block).
_SELECT_BYTES = 2 * 2**20


def _select_top_by_threshold(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_select_top` on CPU (``k < n_columns``) through a lower bound on each row's (k+1)-th largest value.

    ``torch.topk`` on CPU copies every row into (value, index) pairs and keeps a heap of k entries, whose cost
    grows with k. Here, per row:

    1. the columns are dealt into ``m`` interleaved groups (``c`` columns each, c <= 16, chosen so that the top
       k+1 entries mostly fall in different groups; c = 1 for short rows) and each group's maximum taken. The
       (k+1)-th largest of those maxima, t, is at most the row's (k+1)-th largest value (k+1 different groups
       hold an entry >= t), so the entries >= t, found by one comparison in row order, include the top k+1 and
       every entry tied with them; usually a few more than k+1.
    2. numpy's introselect finds the exact (k+1)-th largest value among those candidates; a row with exactly k+1
       candidates at or above it (no tie there) holds its top k+1 in ascending column order, so a stable sort of
       their values gives the promised order.

    Rows with a tie at the (k+1)-th value, or with a non-finite value, go through :func:`_select_top_stable`. Rows
    go in groups of about :data:`_SELECT_BYTES`.
    """
    rows, n = block.shape
    a = block.detach().numpy()
    kk = k + 1
    c = min(16, n // (8 * kk))  # columns per group: (k+1) * c <= n / 8 keeps collisions of the top entries rare
    width = n // c if c >= 2 else n
    vals_out = np.empty((rows, k), dtype=a.dtype)
    cols_out = np.empty((rows, k), dtype=np.int64)
    step = max(1, _SELECT_BYTES // (a.itemsize * n))
    redo = []
    for lo in range(0, rows, step):
        part = a[lo:lo + step]
        r = len(part)
        if c >= 2:  # group j: columns j, j + width, ..., j + (c-1) width (and the tail beyond c * width: one more)
            maxima = part[:, :width * c].reshape(r, c, width).max(axis=1)
            if width * c < n:
                maxima = np.concatenate([maxima, part[:, width * c:].max(axis=1, keepdims=True)], axis=1)
        else:
            maxima = part
        m = maxima.shape[1]
        bound = np.partition(maxima, m - kk, axis=1)[:, m - kk:m - kk + 1]
        flat = np.flatnonzero(part >= bound)  # row-major: each row's candidates in ascending columns
        row_of = flat // n
        counts = np.bincount(row_of, minlength=r)
        if len(flat) == r * kk and (counts == kk).all():
            good, cols = np.arange(r), flat.reshape(r, kk) - (np.arange(r) * n)[:, None]
            vals = np.take_along_axis(part, cols, 1)
        else:  # candidates padded to the widest row (pads: -inf, after every real entry)
            wide = max(kk, int(counts.max()))
            pos = np.arange(len(flat)) - (np.cumsum(counts) - counts)[row_of]
            cand = np.full((r, wide), -np.inf, dtype=a.dtype)
            cand_cols = np.zeros((r, wide), dtype=np.int64)
            cand[row_of, pos] = part.reshape(-1)[flat]
            cand_cols[row_of, pos] = flat - row_of * n
            exact = np.partition(cand, wide - kk, axis=1)[:, wide - kk:wide - kk + 1]
            above = (cand >= exact) & (np.arange(wide) < counts[:, None])
            at_least = np.count_nonzero(above, axis=1)
            good = np.flatnonzero((at_least == kk) & (counts >= kk))
            redo.extend(lo + np.flatnonzero((at_least != kk) | (counts < kk)))
            pick = np.flatnonzero(above[good]).reshape(-1, kk) - (np.arange(len(good)) * wide)[:, None]
            vals = np.take_along_axis(cand[good], pick, 1)
            cols = np.take_along_axis(cand_cols[good], pick, 1)
        order = np.argsort(-vals, axis=1, kind="stable")[:, :k]  # equal values keep their ascending columns
        vals_out[lo + good] = np.take_along_axis(vals, order, 1)
        cols_out[lo + good] = np.take_along_axis(cols, order, 1)
    vals_k, cols_k = torch.from_numpy(vals_out), torch.from_numpy(cols_out)
    if redo:
        redo = torch.as_tensor(redo)
        vals_k[redo], cols_k[redo] = _select_top_stable(block[redo], k)
    return vals_k, cols_k


def _vote_weights(sims: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Each neighbour's vote [N, k]: 1 (``temperature`` None; a broadcast view, no memory) or DINO's weight."""
    if temperature is None:
        return torch.ones((), device=sims.device, dtype=sims.dtype).expand(sims.shape)
    # Subtracting the row's best similarity rescales a row's votes by one constant (argmax and shares are
    # unchanged) and keeps exp() finite for small temperatures.
    return torch.exp((sims - sims[:, :1]) / float(temperature))


def _votes(sims: torch.Tensor, labels: torch.Tensor, k: int, temperature: float | None,
           n_classes: int) -> torch.Tensor:
    """Per-class votes [N, n_classes] of the first ``k`` neighbours."""
    sims, labels = sims[:, :k], labels[:, :k]
    votes = torch.zeros(len(sims), n_classes, device=sims.device, dtype=sims.dtype)
    return votes.scatter_add_(1, labels, _vote_weights(sims, temperature))
