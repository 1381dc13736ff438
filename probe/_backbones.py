"""Backbones: a timm name (with tag) plus a weights source -> a model, its preprocessing, family and taps.

Weights come from exactly one place: the hub tag (default), a local checkpoint (``weights=PATH``, safetensors
or torch, loaded through timm's own state-dict reader and the architecture's checkpoint filter), or an explicit
seeded random initialisation (``random_init=True``). A missing download is an error that points at the other
two, never a silent fallback to random weights.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ProbeError, UsageError
from ._io import file_sha256
from ._families import resolve_family


@dataclass
class Backbone:
    """A created backbone and everything that identifies its features.

    Attributes
    ----------
    name : str
        timm name as given (``arch.tag`` or ``arch``).
    model : torch.nn.Module
        The timm model in eval mode, classifier removed (``num_classes=0``) unless asked otherwise.
    weights_id : str
        Identity of the weights: ``hub:<tag>@<sha256[:16]>`` (``hub:<tag>`` when the checkpoint is not on disk),
        ``file:<sha256[:16]>`` or ``random-init:seed<N>``.
    family : str
        ``convnet``, ``transformer``, ``hybrid``, ``mlp``, ``other`` or ``unknown`` (see :mod:`probe._families`).
    family_source : str
        Where the family came from: ``table``, ``override`` or ``unknown``.
    data_config : dict
        Resolved timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode): the
        checkpoint's own preprocessing, with ``img_size`` applied.
    """

    name: str
    model: Any
    weights_id: str
    family: str
    data_config: dict = field(default_factory=dict)
    weights_path: str | None = None
    family_source: str = "table"

    def eval_transform(self):
        """The checkpoint's own evaluation transform (resize, center crop, normalise)."""
        import timm.data

        return timm.data.create_transform(**self.data_config, is_training=False)


def check_model_name(name: str) -> tuple[str, str]:
    """Split ``arch.tag`` and check that timm knows the architecture; suggest close names otherwise."""
    import timm

    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        candidates = timm.list_models()
        close = difflib.get_close_matches(arch, candidates, n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() for names"
        raise UsageError(f"unknown backbone {name!r}: timm has no architecture {arch!r}{hint}")
    return arch, tag


def family_of(model_or_name) -> str:
    """The family of a timm architecture from the families table (``unknown``, with a warning, outside it).

    Parameters
    ----------
    model_or_name : str or torch.nn.Module
        A timm model name (``vit_base_patch16_224.augreg_in21k``; the tag is ignored) or a created timm model.

    Returns
    -------
    str
        One of ``convnet``, ``transformer``, ``hybrid``, ``mlp``, ``other``, or ``unknown``.

    Examples
    --------
    >>> import probe
    >>> probe.family_of("mixer_b16_224"), probe.family_of("focalnet_tiny_srf")  # doctest: +SKIP
    ('mlp', 'convnet')
    """
    if isinstance(model_or_name, str):
        check_model_name(model_or_name)  # an unknown name is a UsageError that suggests close names
    return resolve_family(model_or_name)[0]


def create_backbone(name: str, *, weights: str | os.PathLike | None = None, random_init: bool = False,
                    seed: int = 0, num_classes: int = 0, img_size: int | None = None,
                    family: str | None = None) -> Backbone:
    """Create a timm backbone with its weights, eval-mode, and resolve its preprocessing.

    Parameters
    ----------
    name : str
        timm model name, optionally with a pretrained tag (``vit_base_patch16_224.augreg_in21k``).
    weights : path, optional
        Local checkpoint (``.safetensors`` or torch). The classifier in the file is ignored when its shape does
        not fit ``num_classes``; any other key that does not fit the backbone is an error naming the keys.
    random_init : bool
        Seeded random weights (``seed``). Must be asked for explicitly.
    num_classes : int
        Classifier outputs; 0 (default) removes the classifier so ``forward_head`` gives pre-logits.
    img_size : int, optional
        Square input size overriding the checkpoint's (ViT-style models get resized position embeddings).
    family : str, optional
        Override of the family from the families table (:func:`probe.family_of`).
    """
    import torch

    from ._checks import check_img_size

    img_size = check_img_size(img_size)
    arch, tag = check_model_name(name)
    if weights is not None and random_init:
        raise UsageError("--weights and --random-init exclude each other; pass one")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if weights is not None:
        model = _create(name, pretrained=False, img_size=img_size, **kwargs)
        load_weights_file(model, weights_file(weights))
    elif random_init:
        torch.manual_seed(seed)
        model = _create(name, pretrained=False, img_size=img_size, **kwargs)
    else:
        model = _create_from_hub(name, arch, tag, img_size=img_size, **kwargs)
    weights_id = weights_identity(name, model, weights=weights, random_init=random_init, seed=seed)
    model.eval()
    family, family_source = resolve_family(model, family)
    return Backbone(name=name, model=model, weights_id=weights_id, family=family, family_source=family_source,
                    data_config=resolve_data_config(model, img_size),
                    weights_path=str(Path(weights).resolve()) if weights is not None else None)


def weights_file(weights: str | os.PathLike) -> Path:
    """The local checkpoint path, or a UsageError when it does not exist."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UsageError(f"weights file {weights} does not exist; pass a .safetensors or torch checkpoint")
    return path


def weights_identity(name: str, model, *, weights=None, random_init: bool = False, seed: int = 0) -> str:
    """The weights' identity in cache keys and results: ``file:<sha256[:16]>``, ``random-init:seed<N>`` or
    ``hub:<tag>@<sha256[:16]>`` (the tag from ``model``'s pretrained config, the hash of the checkpoint file when
    it is on disk: a re-uploaded checkpoint under the same tag is a different identity; ``hub:<tag>`` alone before
    the first download). A model on the meta device is enough."""
    if weights is not None:
        return f"file:{file_sha256(weights_file(weights))[:16]}"
    if random_init:
        return f"random-init:seed{seed}"
    tag = f"hub:{model.pretrained_cfg.get('tag') or name.partition('.')[2] or 'default'}"
    local = hub_checkpoint_file(model.pretrained_cfg)
    return tag if local is None else f"{tag}@{hub_file_sha256(local)[:16]}"


def hub_checkpoint_file(pretrained_cfg: dict) -> Path | None:
    """The local copy of a timm hub checkpoint (Hugging Face hub cache, timm's ``file`` or the torch hub cache),
    or None when it has not been downloaded. Looks only at the disk, never at the network."""
    cfg = dict(pretrained_cfg or {})
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with timm
            return None
        repo, _, revision = str(hub_id).partition("@")
        wanted = cfg.get("hf_hub_filename")
        names = ([wanted[:-4] + ".safetensors", wanted] if wanted and wanted.endswith(".bin")
                 else [wanted] if wanted else ["model.safetensors", "pytorch_model.bin"])
        for filename in names:  # timm prefers the safetensors file, as here
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url:
        import torch

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(url).split("?")[0])
        if candidate.is_file():
            return candidate
    return None


_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def hub_file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a hub checkpoint. The Hugging Face cache stores large files as ``blobs/<sha256>`` (the snapshot
    file links to it), so that name is used without reading the file; anything else is hashed."""
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and _SHA256_NAME.match(target.name):
        return target.name
    return file_sha256(path)


def describe_backbone(name: str, *, weights=None, random_init: bool = False, seed: int = 0,
                      img_size: int | None = None, family: str | None = None) -> dict:
    """Weights identity, resolved preprocessing and family without loading any weights (a meta-device model),
    so a cache lookup costs no weight loading: the same values :func:`create_backbone` gives."""
    import torch

    from ._checks import check_img_size

    img_size = check_img_size(img_size)
    with torch.device("meta"):
        model = _create(name, pretrained=False, img_size=img_size, num_classes=0)
    family, family_source = resolve_family(model, family)
    return {"weights": weights_identity(name, model, weights=weights, random_init=random_init, seed=seed),
            "data_config": resolve_data_config(model, img_size), "family": family, "family_source": family_source}


def _create(name: str, *, pretrained: bool, img_size: int | None, **kwargs):
    import timm

    if img_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
        except TypeError:  # ConvNets take any input size and have no img_size argument
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _create_from_hub(name: str, arch: str, tag: str, *, img_size: int | None, **kwargs):
    """The model with its hub weights: from the local hub cache when they are there, else downloaded.

    An unreachable hub is one quick error (a connection probe with a short timeout) instead of a minute of
    retries, and ``HF_HUB_OFFLINE`` is respected and named in the error.
    """
    import timm

    if not timm.list_pretrained(name if tag else f"{arch}*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise UsageError(f"backbone {name!r} has no hub weights" + (f" (tags: {', '.join(tags)})" if tags else "")
                         + "; pass --weights PATH with a local checkpoint or --random-init")
    fix = "pass --weights PATH with a local checkpoint or --random-init"
    hub = _hub_source(name)
    if hub is not None:
        try:
            with _hub_offline():  # weights downloaded before load without any network access
                return _create(name, pretrained=True, img_size=img_size, **kwargs)
        except Exception:
            pass
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise ProbeError(f"hub weights for {name} ({hub}) are not in the local hub cache and HF_HUB_OFFLINE is "
                             f"set; unset HF_HUB_OFFLINE to download them, or {fix}")
        if not _reachable(constants.ENDPOINT):
            raise ProbeError(f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached and the weights of "
                             f"{name} ({hub}) are not in the local hub cache; connect to the network (or set "
                             f"HF_ENDPOINT to a mirror), or {fix}")
    try:
        return _create(name, pretrained=True, img_size=img_size, **kwargs)
    except Exception as exc:  # network errors come in many types (OSError, HfHubHTTPError, LocalEntryNotFound...)
        raise ProbeError(f"could not download hub weights for {name} ({exc.__class__.__name__}: "
                         f"{_first_line(exc)}); {fix}") from None


#: Seconds to wait for the hub to accept a connection before calling it unreachable.
HUB_CONNECT_TIMEOUT = 3.0


def _hub_source(name: str) -> str | None:
    """The Hugging Face hub repo that holds ``name``'s weights, or None (weights from a plain URL)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:
        return None
    return getattr(cfg, "hf_hub_id", None) or None


@contextlib.contextmanager
def _hub_offline():
    """huggingface_hub's offline mode for the block (its constant is read at call time)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _reachable(url: str, timeout: float = HUB_CONNECT_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def load_weights_file(model, path: str | os.PathLike) -> None:
    """Load a local checkpoint into ``model`` through timm's reader and the architecture's checkpoint filter.

    Accepts plain state dicts and the usual wrappers (``state_dict``, ``model``, EMA). Classifier weights that
    do not fit the model's head are dropped (extraction removes the head). Anything else missing, unexpected or
    of the wrong shape raises a UsageError that names the keys.
    """
    import torch
    from timm.models import load_state_dict

    try:
        # A weights file may come from anywhere: torch checkpoints are read with weights_only=True, named here
        # because torch < 2.6 and older timm (1.0.9 among them) default to full unpickling, which runs code in the file.
        with warnings.catch_warnings():
            # torch's note that its tensors-only reader was written for pickle protocol 2 (a file saved with
            # pickle_protocol=4, or by pickle.dump) says nothing to the user: it loads, or is refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as exc:
        if _needs_unpickling(exc):
            raise UsageError(f"weights file {path} needs arbitrary unpickling to load, which could run code from "
                             f"the file{_unsafe_globals(path)}; probe reads only tensors (weights_only=True). Where "
                             "you trust it, convert it to safetensors (safetensors.torch.save_file of its state "
                             "dict) and pass that file") from None
        raise UsageError(f"cannot read weights file {path} ({exc.__class__.__name__}: {_first_line(exc)}); "
                         f"pass a .safetensors or torch checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} holds no state dict of tensors")
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:
            pass  # the filter only converts foreign layouts; a mismatch is reported below by key
    own = model.state_dict()
    classifier_prefixes = _classifier_prefixes(model)
    is_head = lambda k: any(k == p or k.startswith(p + ".") for p in classifier_prefixes)  # noqa: E731
    state = {k: v for k, v in state.items() if not (is_head(k) and (k not in own or own[k].shape != v.shape))}
    wrong_shape = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                   if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or unexpected:
        parts = []
        for label, keys in (("wrong shape", wrong_shape), ("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        arch = model.pretrained_cfg.get("architecture", type(model).__name__)
        raise UsageError(f"weights file {path} does not fit backbone {arch}: " + "; ".join(parts)
                         + "; pass a checkpoint of this architecture")
    model.load_state_dict(state, strict=False)


def _needs_unpickling(exc: BaseException) -> bool:
    """Whether a checkpoint read failed because weights_only refused a pickled global (torch raises
    UnpicklingError; newer timm re-raises it as a RuntimeError from it)."""
    import pickle

    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _unsafe_globals(path) -> str:
    """`` (it names builtins.exec, ...)`` listing the globals a torch zip checkpoint asks for (read without running
    them; torch >= 2.5), or ``""`` where they cannot be listed."""
    import torch

    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        names = lister(str(path)) if lister is not None else []
    except Exception:
        names = []
    return f" (it names {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""


def _classifier_prefixes(model) -> list[str]:
    classifier = model.pretrained_cfg.get("classifier") or getattr(model, "default_cfg", {}).get("classifier")
    names = [classifier] if isinstance(classifier, str) else list(classifier or [])
    return [n for n in names if n] + ["head", "fc", "classifier", "head.fc"]


def resolve_data_config(model, img_size: int | None = None) -> dict:
    """The model's own timm data config (JSON-able), with a square ``img_size`` override applied."""
    import timm.data

    cfg = dict(timm.data.resolve_model_data_config(model))
    if img_size is not None:
        cfg["input_size"] = (cfg["input_size"][0], int(img_size), int(img_size))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
