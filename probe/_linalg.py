"""The package's dense linear algebra on CPU and GPU: Gram matrices and symmetric eigendecompositions.

Ridge (:mod:`probe.probes._ridge`) and the transferability scores (:mod:`probe.transfer`) share these, so a
speed or precision decision about either is made once.
"""

from __future__ import annotations

import numpy as np

from ._runtime import blas_threads

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

    with blas_threads(1):
        w, v = scipy.linalg.eigh(A.numpy(), driver="evd", check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(v)


def eigh_coordinates(A, B):
    """Eigenvalues (ascending) of the symmetric float64 tensor ``A`` [D, D] and ``V^T B``, the coordinates of the
    columns of ``B`` [D, K] in its eigenvectors ``V`` (the columns of :func:`symmetric_eigh`'s ``V``), without
    forming ``V`` on the CPU.

    ``syevd`` reduces ``A`` to a tridiagonal ``T = Q^T A Q``, finds ``T``'s eigenvectors ``Z`` and then forms
    ``V = Q Z`` for all D columns. Here ``Q`` is applied to B's K columns instead (``Q^T B``: the reflectors of
    ``dsytrd`` applied by ``dormqr``, as LAPACK's ``dormtr`` does) and ``V^T B = Z^T (Q^T B)``. The same LAPACK
    steps on one thread, as :func:`symmetric_eigh` runs them, minus the D x D back-transformation: for a 768 x 768
    Gram matrix and 100 columns, 0.05 s against 0.08 s (timed once on the AMD EPYC host in a throwaway script;
    ``benchmarks/bench_transfer.py`` prints both). On other devices, or when LAPACK's tridiagonal solver does not
    converge, ``symmetric_eigh`` and a product.
    """
    import torch

    n = A.shape[0]
    if A.device.type == "cpu" and A.dtype == torch.float64 and n >= 3:
        from scipy.linalg import lapack

        b = np.array(B.numpy(), dtype=np.float64, order="F")
        with blas_threads(1):
            c, d, e, tau, info = lapack.dsytrd(np.asfortranarray(A.numpy()), lower=1, lwork=64 * n)
            if info == 0:
                # Q = H(1)...H(n-1); reflector i sits below the subdiagonal of column i, so Q's trailing block is
                # the Q of a QR factorisation stored in c[1:, :-1] (LAPACK's dormtr, lower case)
                b[1:] = lapack.dormqr("L", "T", np.asfortranarray(c[1:, :-1]), tau, b[1:],
                                      lwork=64 * max(1, b.shape[1]))[0]
                w, z, info = lapack.dstevd(d, e)
            if info == 0:
                return torch.from_numpy(w), torch.from_numpy(z.T @ b)
    w, v = symmetric_eigh(A)
    return w, v.T @ B


class GramSum:
    """The running sum of ``a^T a`` over blocks of rows ``a`` [B, D], in float64, on ``device``.

    On the CPU, BLAS's ``dsyrk`` adds each block's product into one triangle of a column-major buffer in place
    (half the multiply-adds of a full product), on as many BLAS threads as torch has; :meth:`total` mirrors it.
    For a 20,000 x 768 float64 matrix in 8,192-row blocks, 0.13 s against 0.17 s for :func:`gram`'s block triangle in
    torch (timed once on the AMD EPYC host in a throwaway script). Elsewhere :func:`gram` per block.
    """

    def __init__(self, d: int, device=None):
        import torch

        self.device = torch.device(device or "cpu")
        if self.device.type == "cpu":
            self._upper = np.zeros((d, d), order="F")  # dsyrk's "upper" triangle (column-major), updated in place
        else:
            self._full = torch.zeros(d, d, dtype=torch.float64, device=self.device)

    def add(self, a) -> None:
        """Add ``a^T a`` of the float64 block ``a`` (a tensor on this sum's device)."""
        if self.device.type != "cpu":
            self._full += gram(a)
            return
        import torch
        from scipy.linalg import blas

        rows = a.numpy()
        if not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows)
        with blas_threads(torch.get_num_threads()):
            # rows.T is column-major [D, B]: with trans=0 dsyrk forms rows.T @ rows without a copy
            self._upper = blas.dsyrk(1.0, rows.T, beta=1.0, c=self._upper, trans=0, lower=0, overwrite_c=1)

    def trace(self) -> float:
        """The sum of the diagonal (non-finite once any block held a NaN or inf)."""
        return float(np.trace(self._upper)) if self.device.type == "cpu" else float(self._full.diagonal().sum())

    def total(self):
        """The symmetric [D, D] float64 sum, a tensor on this sum's device."""
        import torch

        if self.device.type != "cpu":
            return self._full.clone()
        u = self._upper  # the strict lower triangle is still zero: u + u^T is the matrix with a doubled diagonal
        full = np.add(u, u.T, out=np.empty(u.shape))
        np.fill_diagonal(full, np.diagonal(u))
        return torch.from_numpy(full)
