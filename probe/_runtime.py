"""Process-level helpers shared by extraction and fine-tuning: device choice, loader workers, CPU threads, and
job locks that die with their process."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

from ._errors import UsageError


def resolve_device(device: str):
    """``auto`` -> cuda when available, else cpu; anything else is checked (a clear error for missing CUDA)."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} requested but CUDA is not available; use --device cpu")
    return dev


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which Slurm and taskset set; else all cores)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


def default_workers(device=None) -> int:
    """Data-loading workers when none are asked for: one fewer than the usable cores, at least 1 and at most 8
    (32 when ``device`` is a GPU).

    On CPU the workers take cores from the model's own threads, so few pay off. Feeding a GPU, decoding is the
    work: on an H200 machine with 16 cores, 15 workers instead of 8 raised ViT-B/16 extraction from 1,250 to 1,677
    images/s (``benchmarks/bench_extract.py``).
    """
    cap = 32 if getattr(device, "type", device) == "cuda" else 8
    return max(1, min(cap, usable_cores() - 1))


@contextmanager
def cpu_threads(device, n_workers: int):
    """On CPU, leave one core to each loader worker while the block runs (restored afterwards).

    Oversubscribed OpenMP threads spin-wait on each other, which on a small, busy machine slows a small model's
    steps many times over. On GPU nothing changes.
    """
    import torch

    threads = torch.get_num_threads()
    if getattr(device, "type", device) == "cpu" and n_workers > 0:
        torch.set_num_threads(max(1, min(threads, usable_cores() - n_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class CpuPlan(NamedTuple):
    """How a CPU extraction runs: see :func:`cpu_plan`."""

    threads: int  # torch threads of the main process's forward
    workers: int  # loader worker processes that decode (0: decode in the main process between forwards)
    forward_processes: int  # > 0: that many worker processes decode AND forward whole batches, one thread each


def cpu_plan(data_seconds: float, forward_seconds: float, threads: int, *, max_workers: int = 8,
             forward1_seconds: float | None = None) -> CpuPlan:
    """Torch threads and processes for a CPU extraction, chosen from one batch's measured times.

    Parameters
    ----------
    data_seconds : float
        Time to decode and transform one batch in this process (on ``threads`` decoding threads).
    forward_seconds : float
        Time of the forward on one batch with ``threads`` torch threads.
    threads : int
        The cores the run may use (torch's thread count when it was measured).
    max_workers : int
        Upper bound on loader workers.
    forward1_seconds : float, optional
        Time of the forward on one batch with one torch thread; enables the forward-in-workers layout.

    Returns
    -------
    CpuPlan
        ``workers == 0`` and ``forward_processes == 0`` means: decode in the main process, between forwards, with
        every thread on the forward.

    Notes
    -----
    A pure function of the measurements (no clock inside), so the decision is testable. Layouts are compared by
    their predicted time per batch:

    - no workers: the main process decodes a batch (``data``, measured with as many decoding threads as torch
      threads), then runs the forward on all threads: ``data + forward``;
    - ``w`` workers, each with a core of its own, the forward on the rest: ``max(data / w, forward * threads /
      (threads - w))``;
    - ``threads`` worker processes that each decode (one thread: ``data * threads``) and forward (``forward1``)
      whole batches: ``(data * threads + forward1) / threads``. A forward that scales poorly over threads (a
      small backbone) runs faster this way; decoding costs a worker a whole core's time, so a cheap decode
      favours it too.

    A forward-heavy backbone (ViT-S/16 at 224: ~100 ms per image on 2 cores, against a few ms to decode a photo)
    keeps every core on its forward, where giving a core to a decoding worker would halve it.
    """
    threads = max(1, int(threads))
    best = (data_seconds + forward_seconds, CpuPlan(threads, 0, 0))
    for w in range(1, min(max_workers, threads - 1) + 1):
        predicted = max(data_seconds / w, forward_seconds * threads / (threads - w))
        if predicted < best[0]:
            best = (predicted, CpuPlan(threads - w, w, 0))
    if forward1_seconds is not None and threads > 1:
        predicted = (data_seconds * threads + forward1_seconds) / threads
        if predicted < best[0]:
            best = (predicted, CpuPlan(1, 0, threads))
    return best[1]


@contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def full_fp32(device, precision: str):
    """With ``precision == "fp32"`` on CUDA, run the block with TF32 off in matmuls and convolutions (restored
    afterwards).

    cuDNN convolutions use TF32 by default on Ampere and newer GPUs (10-bit mantissa): "fp32" features would not
    be float32 computations, yet share the CPU's fp32 cache entry. Elsewhere, or in bf16, nothing changes.
    """
    import torch

    if getattr(device, "type", device) != "cuda" or precision != "fp32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


_BLAS_CONTROLLER = []


@contextmanager
def blas_threads(n: int):
    """Run the block with numpy's and scipy's BLAS (OpenBLAS) on ``n`` threads (restored afterwards).

    The loaded BLAS libraries are found once per process (``threadpoolctl.ThreadpoolController``): a fresh
    ``threadpool_limits`` scans them again on every entry, about 1 ms, which the per-block calls of a streaming pass
    would pay each time. scipy's own OpenBLAS is loaded before they are found, so it is among them.
    """
    if not _BLAS_CONTROLLER:
        import numpy  # noqa: F401  (numpy's and scipy's OpenBLAS, loaded before the scan)
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER.append(ThreadpoolController())
    with _BLAS_CONTROLLER[0].limit(limits=max(1, int(n)), user_api="blas"):
        yield


@contextmanager
def quiet_blas():
    """Hold numpy/scipy's BLAS (OpenBLAS) to one thread while torch does the heavy work on the CPU.

    Between torch's kernels, scipy and numpy make small BLAS calls; OpenBLAS's idle threads then spin-wait on the
    cores torch's OpenMP threads need (benchmarks/bench_probes.py shows the effect on the logistic sweep).
    """
    with blas_threads(1):
        yield


class ProcessLock:
    """An exclusive lock on ``path`` that belongs to this process and vanishes with it, even after ``kill -9``.

    POSIX record locks (``lockf``) are not inherited by forked children, so data-loader workers that outlive a
    killed parent for a few seconds do not hold it (``flock`` locks would be shared with them). Elsewhere,
    filelock's lock is used.

    Parameters
    ----------
    path : path
        The lock file (created; removed on release).
    wait : bool
        Block until the lock is free (printing ``waiting_message`` once) instead of raising ``busy_error``.
    """

    def __init__(self, path: str | os.PathLike, *, wait: bool, busy_error: str = "",
                 waiting_message: str = ""):
        self.path = Path(path)
        self.wait, self.busy_error, self.waiting_message = wait, busy_error, waiting_message
        self.fd: int | None = None
        self._fallback = None

    def __enter__(self) -> "ProcessLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX
            from filelock import FileLock, Timeout

            self._fallback = FileLock(str(self.path))
            try:
                self._fallback.acquire(timeout=0)
            except Timeout:
                self._busy()
                self._fallback.acquire()
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._busy()
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.lockf(fd, fcntl.LOCK_EX)  # blocks until the holder releases or dies
            # the holder may have removed the file on release: a lock on an unlinked file guards nothing
            if os.path.exists(self.path) and os.path.samestat(os.fstat(fd), os.stat(self.path)):
                self.fd = fd
                return
            os.close(fd)

    def _busy(self) -> None:
        if not self.wait:
            raise UsageError(self.busy_error or f"{self.path} is locked by another process; wait for it to finish")
        if self.waiting_message:
            print(self.waiting_message, file=sys.stderr, flush=True)

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
        elif self.fd is not None:
            self.path.unlink(missing_ok=True)  # no lock files left behind
            os.close(self.fd)  # closing drops the record lock
            self.fd = None


#: Matrix order per torch thread of a CPU factorisation (:func:`factor_threads`).
_FACTOR_ORDER_PER_THREAD = 1024


def factor_threads(A):
    """Context in which a float64 eigendecomposition or Cholesky factorisation of the square ``A`` runs: on CPU
    with one torch thread per :data:`_FACTOR_ORDER_PER_THREAD` rows (at least one, at most the current count).

    MKL's multithreaded ``syevd`` and ``potrf`` at these orders cost far more than one thread on a 2-core host shared
    with other jobs (measured outside the benchmarks on the AMD EPYC host with other agents running: a 768 x 768
    ``eigh`` 0.10 s of CPU on one thread, 0.57 s on two). On the idle host two threads win little or nothing
    (``benchmarks/bench_transfer.py`` prints LogME's eigen step on one thread through scipy and on two through torch:
    0.079-0.083 s against 0.060-0.101 s in six runs on Dec 7); one thread is kept as the rule that never loses
    badly. On other devices nothing changes. Used by every float64 Cholesky factorisation and solve of
    the package (ridge, the transferability scores); eigendecompositions go through
    :func:`probe._linalg.symmetric_eigh`.
    """
    import torch

    if A.device.type != "cpu":
        return nullcontext()
    return torch_threads(min(torch.get_num_threads(), max(1, A.shape[0] // _FACTOR_ORDER_PER_THREAD)))

