"""Leave-one-image-out identification vs scikit-learn's NearestNeighbors, side by side on the same features.

Ours (:func:`probe._retrieval.loo_retrieval`): every image queries all others by cosine similarity in blocks of
up to 1,024 queries, one block per core at a time (no N x N matrix held), giving rank-1, rank-5 and mAP (the exact
ranks of every same-identity image: a top-K selection per block, and counting for the rows whose positives fall
outside it).
scikit-learn: ``NearestNeighbors(metric="cosine", algorithm="brute").kneighbors(n_neighbors=5)`` on the fitted
set (each point left out of its own neighbours), which gives rank-1 and rank-5 only (mAP would need every
rank). Both read the same float32 features; rank-1 and rank-5 must agree.

Printed: the CPU model, this machine's float32 matmul peak measured in the same run, both wall times and their
ratio, our achieved similarity GFLOP/s (2 N^2 D) as a share of the peak, and the metrics of both.

Features: N images of N / ``per_person`` people, 768-d, identities spread in a 64-d subspace with within-person
spread and isotropic noise (like backbone features of faces).

Usage::

    python benchmarks/bench_identify.py                 # 100,000 x 768 (the issue's size; minutes on 2 cores)
    python benchmarks/bench_identify.py --n 20000       # a reduced size
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_probes import cpu_model, matmul_peak  # noqa: E402  (one definition of both, shared by the benchmarks)


def make_faces(n: int, dim: int = 768, per_person: int = 10, intrinsic: int = 64, seed: int = 0):
    """(features float32 [n, dim], identity labels [n])."""
    rng = np.random.default_rng(seed)
    people = max(2, n // per_person)
    y = rng.integers(0, people, size=n)
    centres = rng.normal(size=(people, intrinsic))
    basis = np.linalg.qr(rng.normal(size=(dim, intrinsic)))[0].T * np.linspace(3.0, 0.5, intrinsic)[:, None]
    z = centres[y] + 0.9 * rng.normal(size=(n, intrinsic))
    X = (z @ basis + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    return X, y


def ours(X, y):
    from probe._retrieval import loo_retrieval

    start = time.perf_counter()
    r = loo_retrieval(X, y, device="cpu")
    return time.perf_counter() - start, r.metrics()


def sklearn_side(X, y):
    from sklearn.neighbors import NearestNeighbors

    start = time.perf_counter()
    nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(X)
    idx = nn.kneighbors(n_neighbors=5, return_distance=False)  # each point is left out of its own neighbours
    seconds = time.perf_counter() - start
    counts = np.bincount(y)
    valid = counts[y] > 1
    hits = y[idx] == y[:, None]
    return seconds, {"rank1": float(hits[valid, 0].mean()), "rank5": float(hits[valid].any(axis=1).mean())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images (queries = gallery)")
    parser.add_argument("--dim", type=int, default=768, help="feature dimension")
    parser.add_argument("--per-person", type=int, default=10, help="images per identity on average")
    args = parser.parse_args(argv)

    X, y = make_faces(args.n, args.dim, args.per_person)
    print(f"CPU: {cpu_model()}; torch threads {torch.get_num_threads()}; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    peak = matmul_peak(torch.device("cpu"))
    print(f"float32 matmul peak (4096^3, best of 5): {peak:.1f} GFLOP/s")
    print(f"features: {args.n:,} x {args.dim}, {len(np.unique(y)):,} identities")
    t_ours, m_ours = ours(X, y)
    time.sleep(1.0)  # let the other side's spinning BLAS/OpenMP threads settle (see bench_probes.py)
    t_sk, m_sk = sklearn_side(X, y)
    flops = 2.0 * args.n * args.n * args.dim
    print(f"ours (rank-1, rank-5, mAP; chunked):   {t_ours:8.2f} s   {flops / t_ours / 1e9:7.1f} GFLOP/s = "
          f"{flops / t_ours / 1e9 / peak:.0%} of the matmul peak")
    print(f"scikit-learn NearestNeighbors (k=5):   {t_sk:8.2f} s   (scikit-learn time / ours: {t_sk / t_ours:.2f})")
    print(f"ours:    rank-1 {m_ours['rank1']:.4f}  rank-5 {m_ours['rank5']:.4f}  mAP {m_ours['map']:.4f}")
    print(f"sklearn: rank-1 {m_sk['rank1']:.4f}  rank-5 {m_sk['rank5']:.4f}")


if __name__ == "__main__":
    main()
