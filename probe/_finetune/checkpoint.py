"""Per-epoch checkpoints of a fine-tuning run, written atomically so that a run killed at any point resumes.

``<ckpt_dir>/last.pt`` holds everything a resume needs (model, optimizer, scheduler, grad scaler, RNG states,
history, the best-val record, the phase); ``best-epoch<NNNN>.safetensors`` holds the best-val weights that
``last.pt`` names (only that one is kept). Checkpoints hold only tensors and plain types, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from .._checks import check_free_space, disk_full_guard, format_bytes
from .._errors import ProbeError
from .._io import atomic_path

#: Version of the checkpoint layout; a checkpoint of another version is not resumed from.
CHECKPOINT_FORMAT = 1


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then ``os.replace`` onto ``path``."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_safetensors(model, path: Path, metadata: dict[str, str]) -> Path:
    """Write ``model``'s state dict (with its head) as safetensors, atomically, with string metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def rng_state() -> dict:
    """python's, numpy's, torch's (and CUDA's) generator states, as tensors and plain types."""
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v
                       for v in np.random.get_state()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np.random.set_state(tuple(v.numpy() if isinstance(v, torch.Tensor) else v for v in state["numpy"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoint folder of one run (settings ``digest``): last state, best weights, space checks.

    Parameters
    ----------
    folder : Path
        The run's checkpoint folder (created).
    digest : str
        The run's settings hash; a ``last.pt`` of other settings is an error, never resumed from.
    """

    def __init__(self, folder: Path, digest: str):
        self.folder, self.digest = Path(folder), digest
        self.folder.mkdir(parents=True, exist_ok=True)
        self.nbytes = 0  # expected size of one checkpoint (set by the run once the model is built)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def check_space(self, nbytes: int, what: str) -> None:
        """Fail early when the folder's disk cannot hold the checkpoints of a model of ``nbytes`` per copy."""
        self.nbytes = nbytes
        check_free_space(self.folder, nbytes, what, fix=" or pass --checkpoint-dir on a larger disk")

    def guard(self, what: str):
        """A context turning a full disk while writing ``what`` into one ProbeError line that says how to go on."""
        return disk_full_guard(self.folder, what, "the fine-tune resumes after its last completed epoch "
                                                  f"(checkpoints need about {format_bytes(self.nbytes)})")

    def save_best(self, model, epoch: int, metadata: dict[str, str]) -> str:
        """Write the epoch's weights as the best so far; returns the file name."""
        name = f"best-epoch{epoch:04d}.safetensors"
        with self.guard(f"the best weights {name}"):
            save_safetensors(model, self.folder / name, metadata)
        return name

    def save(self, state: dict, best_file: str | None) -> None:
        """Write ``state`` (plus format, digest and RNG states) as ``last.pt``; keep only the best file it names."""
        state = {"format": CHECKPOINT_FORMAT, "settings_hash": self.digest, **state, "rng": rng_state()}
        with self.guard(f"the epoch-{state['epoch']} checkpoint last.pt"):
            atomic_torch_save(state, self.last)
        self.keep_only(best_file)

    def keep_only(self, best_file: str | None) -> None:
        """Remove best-weights files other than ``best_file`` (an improvement written just before a kill is
        recomputed on resume)."""
        for p in self.folder.glob("best-epoch*.safetensors"):
            if p.name != best_file:
                p.unlink(missing_ok=True)

    def read(self) -> dict | None:
        """The last checkpoint of these settings, or None for a fresh run."""
        import torch

        path = self.last
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ProbeError(f"cannot read checkpoint {path} ({exc.__class__.__name__}); delete it to start over "
                             "or pass --overwrite") from None
        if state.get("format") != CHECKPOINT_FORMAT or state.get("settings_hash") != self.digest:
            raise ProbeError(f"checkpoint {path} belongs to other settings; delete {self.folder} or pass "
                             "--overwrite")
        state.setdefault("phase", "select")
        return state

    def announce(self, name: str, state: dict) -> None:
        where = "the refit on train+val" if state["phase"] == "refit" else "selection"
        print(f"probe: resuming {name} ({where}) after epoch {state['epoch']} from {self.last}", file=sys.stderr)


def weights_metadata(*, backbone: str, bb, source, epoch: int, mode: str, digest: str) -> dict[str, str]:
    """The string metadata of exported and best-epoch weights (safetensors): what they are and how they were made."""
    import json

    return {"format": "probe-finetune", "backbone": backbone, "weights": bb.weights_id, "dataset": source.name,
            "classes": json.dumps(source.classes), "epoch": str(epoch), "mode": mode, "settings_hash": digest,
            "data_config": json.dumps(bb.data_config)}
