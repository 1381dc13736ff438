"""Cosine k-nearest-neighbour classification with DINO's temperature-weighted votes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._base import CHUNK_BYTES, ProbeBase, check_positive, chunk_rows


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
        self.bank_ = F.normalize(X, dim=1)
        self.bank_labels_ = y_index

    def _scores(self, X: torch.Tensor) -> torch.Tensor:
        sims, labels = _top_neighbours(F.normalize(X, dim=1), self.bank_, self.bank_labels_, self.k)
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
        sims, labels = _top_neighbours(F.normalize(X_eval, dim=1), F.normalize(X, dim=1), y_index, max_k)
        shared = (time.perf_counter() - start) / max(1, len(points))
        for i, point in enumerate(points):
            start = time.perf_counter()
            k = min(int(point.get("k", self.k)), sims.shape[1])
            scores = _votes(sims, labels, k, point.get("temperature", self.temperature), n_classes)
            yield i, scores, shared + time.perf_counter() - start

    @staticmethod
    def _strength_order(points: list[dict[str, Any]]) -> list[int]:
        # More neighbours smooth more; among equal k, uniform votes (None) smooth more than any temperature,
        # and a higher temperature more than a lower one.
        def key(i):
            t = points[i].get("temperature")
            return (-int(points[i].get("k", 1)), 0 if t is None else 1, -(t or 0.0), i)

        return sorted(range(len(points)), key=key)


#: Bytes of query-block similarities held at once on CPU, shared by the workers of :func:`for_query_blocks` (32 MiB
#: each on 2 cores). Hundreds of query rows per product keep the matmul near its peak, which outweighed reading the
#: block back from a slower cache level for the selection when 16, 32, 64 and 128 MiB single blocks were compared on
#: the 2-core AMD host (benchmarks/bench_probes.py prints the kNN sweep's share of its bound).
_BLOCK_BYTES = 64 * 2**20


def _top_neighbours(queries: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities [N, k'] (descending) and class indices [N, k'] of the k' = min(k, n_bank) nearest rows.

    Exact: equal similarities are ordered by bank row (the earlier row first), as a stable sort of each row's
    similarities would order them. Queries go in blocks (:func:`for_query_blocks`).
    """
    k = min(int(k), len(bank))
    sims = torch.empty(len(queries), k, device=queries.device, dtype=queries.dtype)
    idx = torch.empty(len(queries), k, device=queries.device, dtype=torch.long)

    def search(lo: int, hi: int, buffer: torch.Tensor) -> None:
        block = torch.mm(queries[lo:hi], bank.T, out=buffer)
        sims[lo:hi], idx[lo:hi] = _select_top(block, k)

    for_query_blocks(len(queries), len(bank), queries.device, queries.dtype, search)
    return sims, bank_labels[idx]


def for_query_blocks(n_queries: int, n_bank: int, device, dtype, work, *, block_bytes: int | None = None) -> None:
    """Call ``work(lo, hi, buffer)`` for consecutive blocks of query rows, ``buffer`` an uninitialised
    [hi - lo, n_bank] tensor for the block's similarities.

    Blocks hold about :data:`_BLOCK_BYTES` of similarities on CPU (``CHUNK_BYTES`` elsewhere, or ``block_bytes``):
    enough query rows for a full-speed product, and a bounded buffer whatever the size of the bank. Each worker
    reuses one buffer for all its blocks (a fresh tensor per block costs page faults and zeroing). On CPU the
    blocks are split over the cores: each torch thread becomes one worker that runs its own blocks on one thread,
    so the memory-bound passes over one block (a selection) overlap the other cores' products instead of idling
    every core's multipliers in turn. ``work`` must only write rows ``lo:hi`` of shared outputs.
    """
    cpu = torch.device(device).type == "cpu"
    budget = block_bytes or (_BLOCK_BYTES if cpu else CHUNK_BYTES)
    workers = torch.get_num_threads() if cpu else 1
    step = max(1, min(chunk_rows(n_queries, n_bank), budget // max(1, 4 * n_bank * workers)))
    starts = list(range(0, n_queries, step))
    workers = max(1, min(workers, len(starts)))

    def run(w: int) -> None:
        buffer = torch.empty(min(step, n_queries), n_bank, device=device, dtype=dtype)
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


def _select_top(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of ``block`` (descending; ties: lower column first) and their columns.

    ``torch.topk`` orders equal values arbitrarily, so it is asked for one entry more than needed: a row whose
    k-th and (k+1)-th values differ has a unique top-k set, which a stable sort by value over ascending columns
    puts in the promised order; a row with a tie across that boundary (rare: duplicated features) is sorted in
    full, stably.
    """
    rows, n = block.shape
    if k >= n:
        vals, cols = torch.sort(block, dim=1, descending=True, stable=True)
        return vals[:, :k], cols[:, :k]
    top, cols = torch.topk(block, k + 1, dim=1, largest=True, sorted=True)
    tied = top[:, k - 1] == top[:, k]
    cols, order = torch.sort(cols[:, :k], dim=1)  # ascending columns, then a stable sort by value
    vals, order = torch.sort(top[:, :k].gather(1, order), dim=1, descending=True, stable=True)
    cols = cols.gather(1, order)
    if bool(tied.any()):
        full_vals, full_cols = torch.sort(block[tied], dim=1, descending=True, stable=True)
        vals[tied], cols[tied] = full_vals[:, :k], full_cols[:, :k]
    return vals, cols


def _votes(sims: torch.Tensor, labels: torch.Tensor, k: int, temperature: float | None,
           n_classes: int) -> torch.Tensor:
    """Per-class votes [N, n_classes] of the first ``k`` neighbours."""
    sims, labels = sims[:, :k], labels[:, :k]
    if temperature is None:
        weights = torch.ones_like(sims)
    else:
        # Subtracting the row's best similarity rescales a row's votes by one constant (argmax and shares are
        # unchanged) and keeps exp() finite for small temperatures.
        weights = torch.exp((sims - sims[:, :1]) / float(temperature))
    votes = torch.zeros(len(sims), n_classes, device=sims.device, dtype=sims.dtype)
    return votes.scatter_add_(1, labels, weights)
