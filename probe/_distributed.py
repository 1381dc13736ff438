"""torch.distributed plumbing shared by extraction and fine-tuning (no torch at import).

``probe`` never launches processes itself: under ``torchrun`` every rank runs the same command, finds its rank and
the world size in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) and joins one
process group (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables everything here answers as a single
process (rank 0 of 1), so the callers have one code path.

What the callers rely on:

- :func:`init` joins the group once (idempotent); :func:`rank`, :func:`world_size`, :func:`is_main`.
- :func:`share` makes every rank take rank 0's decision (which batches are missing, whether an entry is reusable),
  so a race with another process on the shared file system cannot split the ranks.
- :func:`on_main` runs a step on rank 0 only and hands its result (or its error) to every rank.
- :func:`gather_errors` is a collective that every rank reaches even when its own work failed: a failure on one
  rank becomes one error on every rank instead of the others waiting forever at the next barrier.
- :func:`main_process_lock` holds a per-process lock (an entry's job lock) on rank 0 only, for the whole group.
- :func:`rank_batches` deals a list of batches to the ranks round-robin, keeping the batches themselves intact.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Sequence

from ._errors import ProbeError

_solo = False  # True while rank 0 runs a step alone (on_main): nothing inside it is collective

#: How long a rank waits at a collective: long enough for rank 0 to wait on an entry another job is writing.
TIMEOUT = timedelta(hours=6)


def launched() -> bool:
    """Whether this process was started by a launcher with more than one rank (``torchrun``, ``srun`` + env)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def init(device: str = "auto") -> bool:
    """Join the process group described by the environment, once; returns whether this run is distributed.

    The backend is ``nccl`` when the run uses CUDA and ``gloo`` otherwise. On CUDA each rank is bound to the GPU
    of its ``LOCAL_RANK``.
    """
    if not launched():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    cuda = device != "cpu" and not str(device).startswith("cpu") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    # leave the group before the interpreter tears down: gloo's threads destroyed at exit abort the process
    atexit.register(_leave)
    return True


def _leave() -> None:
    """Leave the group at exit, the ranks together.

    On gloo the ranks first meet at a barrier (at most a minute): a rank that tears its group down while its peer
    still holds the connections can abort at exit ("terminate called without an active exception"), which
    happened on the 2-core host under load after a finished job (the job's file already written).
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo" and dist.get_world_size() > 1:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
    except Exception:  # a peer already gone: leave anyway
        pass
    try:
        dist.destroy_process_group()
    except Exception:  # exiting anyway
        pass


def active() -> bool:
    """Whether a process group with more than one rank is initialised (and this is not a step rank 0 runs alone)."""
    if _solo or not launched():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    if not active():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    if not active():
        return 1
    import torch.distributed as dist

    return dist.get_world_size()


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 when not set)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process writes what only one process may write (rank 0)."""
    return rank() == 0


def local_device(dev):
    """A CUDA device without an index becomes this rank's GPU (``cuda:LOCAL_RANK``) in a distributed run."""
    import torch

    if dev.type == "cuda" and dev.index is None and active():
        return torch.device("cuda", local_rank())
    return dev


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


def share(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; returned as is when not distributed)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def alone():
    """Run the block as a single process (rank 0 of 1): what it calls makes no collective."""
    global _solo
    before, _solo = _solo, True
    try:
        yield
    finally:
        _solo = before


def on_main(fn):
    """Call ``fn()`` on rank 0 only, as a single process (:func:`alone`); every rank returns its result, or
    raises when it failed (rank 0 its own exception, the others a :class:`probe.ProbeError` with its message)."""
    if not active():
        return fn()
    result = message = error = None
    if is_main():
        try:
            with alone():
                result = fn()
        except Exception as exc:  # reported on every rank below
            error, message = exc, f"{exc}" or exc.__class__.__name__
    result, message = share((result, message))
    if error is not None:
        raise error
    if message is not None:
        raise ProbeError(message)
    return result


def gather_errors(error: BaseException | None) -> None:
    """Collective: raise on every rank when any rank failed.

    The failing rank re-raises its own exception (so its type, e.g. a full disk's OSError, is kept); the others
    raise a :class:`probe.ProbeError` naming the first failed rank and its message.
    """
    if not active():
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    mine = None if error is None else f"{error}" or error.__class__.__name__
    messages: list = [None] * world_size()
    dist.all_gather_object(messages, mine)
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        r, m = failed[0]
        raise ProbeError(f"rank {r} of {len(messages)} failed: {m}")


@contextmanager
def main_process_lock(lock):
    """Hold ``lock`` (a :class:`probe._runtime.ProcessLock`) on rank 0 while every rank runs the block.

    The other ranks wait for rank 0 to get it (when rank 0 cannot, every rank raises); when not distributed it
    is the plain lock.
    """
    if not active():
        with lock:
            yield
        return
    error = None
    if is_main():
        try:
            lock.acquire()
        except Exception as exc:  # e.g. busy: every rank raises, none waits forever
            error = exc
    gather_errors(error)
    try:
        yield
    finally:
        if is_main():
            lock.release()


def all_sum(value: float) -> float:
    """The sum of ``value`` over the ranks (``value`` when not distributed)."""
    if not active():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def wrap_model(model, *, sync_batchnorm: bool = False):
    """``model`` in DistributedDataParallel (gradients averaged over the ranks), or ``model`` itself when not
    distributed. ``sync_batchnorm`` makes BatchNorm layers use the statistics of the global batch."""
    if not active():
        return model
    import torch

    if sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [local_rank()] if next(model.parameters()).is_cuda else None
    # frozen blocks (partial, lp-ft) have no gradient; their parameters are simply not reduced
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                                     find_unused_parameters=False)


def rank_batches(batches: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share of ``batches``: batch ``i`` goes to rank ``i % world`` (round robin, batches intact)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return list(batches[rank_::world])
