"""The package's dense linear algebra on CPU and GPU: Gram matrices and symmetric eigendecompositions.

Ridge (:mod:`probe.probes._ridge`) and the transferability scores (:mod:`probe.transfer`) share these, so a
speed or precision decision about either is made once.
"""

from __future__ import annotations

#: Column blocks of a wide Gram matrix (see :func:`gram`).
_GRAM_BLOCKS = 4


def gram(a):
    """``a^T a`` of a [N, D] tensor, in ``a``'s dtype and on its device.

    For D >= 256 only the block upper triangle is multiplied (``_GRAM_BLOCKS`` column blocks, each against itself
    and the blocks after it) and mirrored: 5/8 of the full product's multiply-adds, each entry accumulated over the
    N rows exactly as in one full product.
    """
    import torch

    d = a.shape[1]
    if d < 256:
        return a.T @ a
    edges = [d * i // _GRAM_BLOCKS for i in range(_GRAM_BLOCKS + 1)]
    g = torch.empty(d, d, dtype=a.dtype, device=a.device)
    for lo, hi in zip(edges, edges[1:]):
        g[lo:hi, lo:] = a[:, lo:hi].T @ a[:, lo:]
        g[hi:, lo:hi] = g[lo:hi, hi:].T
    return g


def symmetric_eigh(A):
    """Eigenvalues (ascending) and eigenvectors of the symmetric float32/float64 tensor ``A``: every full
    eigendecomposition of the package goes through it (ridge, the transferability scores).

    On CPU, LAPACK's divide-and-conquer ``syevd`` through scipy (OpenBLAS), held to one thread: timed once on the AMD
    EPYC host (a throwaway script, not a benchmark) for a 768 x 768 float64 Gram matrix, 0.080 s against 0.099 s for
    torch's (MKL's) on one thread, and under a competing two-thread job 0.106 s against 0.126 s. Two threads are faster on an idle host (0.060 s and
    0.056 s) but collapse under load (0.81 s and 0.39 s), the reason :func:`probe._runtime.factor_threads` gives;
    one fixed thread count also keeps the result the same bit for bit from run to run (another count changes the
    eigenvectors' last bits). Elsewhere ``torch.linalg.eigh``. Returns tensors on ``A``'s device, in its dtype.
    """
    import torch

    if A.device.type != "cpu" or A.dtype not in (torch.float32, torch.float64):
        return torch.linalg.eigh(A)
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        w, v = scipy.linalg.eigh(A.numpy(), driver="evd", check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(v)
