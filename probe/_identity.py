"""Configuration identity of a result: which backbone configuration and which protocol produced it.

Every producer (probe sweeps, fine-tuning) fills the results columns ``backbone_config``, ``config_label`` and
``protocol`` through these three functions, so one definition holds everywhere (see /work/CONTRACT.md):

- :func:`backbone_config_id`: backbone name, weights identity, resolved preprocessing and compute precision.
  Two rows with the same id came from the same numbers-producing network.
- :func:`config_label`: the same configuration for people, ``"test_vit · random-init:1 · 160px"``.
- :func:`protocol_id`: the protocol settings that change a job's numbers (task, probe, tap, grid, val and test
  carve, selection metric, shots, refit policy, probe version), never the seed: the seeds of one protocol are
  repeats to average.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

#: Length of the hexadecimal ids stored in the results.
ID_LENGTH = 12


def _digest(material: Mapping[str, Any]) -> str:
    text = json.dumps(material, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def backbone_config_id(backbone: str, weights: str, data_config: Mapping[str, Any], precision: str) -> str:
    """12-hex id of (backbone name, weights identity, resolved timm data config, compute precision).

    Parameters
    ----------
    backbone : str
        timm name with its tag.
    weights : str
        Weights identity (``hub:<tag>[@sha256]``, ``file:<sha256[:16]>``, ``random-init:seed<N>``).
    data_config : dict
        The resolved preprocessing (input size, interpolation, mean, std, crop).
    precision : str
        ``fp32``, ``bf16`` or ``fp16``: the compute precision of the forward passes.
    """
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(data_config).items()}
    return _digest({"backbone": backbone, "weights": weights, "data_config": config, "precision": precision})


def weights_label(weights: str) -> str:
    """A short form of a weights identity for labels: ``random-init:1``, ``hub:r160_in1k``, ``file:1a2b3c4d``."""
    if weights.startswith("random-init:seed"):
        return "random-init:" + weights[len("random-init:seed"):]
    if weights.startswith("file:"):
        return weights[:13]
    return weights.split("@", 1)[0]  # hub:<tag>; the checkpoint hash stays in the id


def config_label(backbone: str, weights: str, img_size: int | None, precision: str) -> str:
    """``"backbone · weights · NNNpx"`` (+ ``" · bf16"`` when not fp32): a configuration a reader can name."""
    parts = [backbone, weights_label(weights), f"{img_size}px" if img_size else "?px"]
    if precision and precision != "fp32":
        parts.append(precision)
    return " · ".join(parts)


def img_size_of(data_config: Mapping[str, Any]) -> int | None:
    """Input side length (px) of a resolved data config (the last entry of ``input_size``)."""
    size = data_config.get("input_size") if data_config else None
    return int(size[-1]) if size else None


def protocol_id(*, task: str, probe: str, tap: str, grid: Any, val_fraction: float, test_fraction: float,
                select_metric: str, shots: int, refit: bool, probe_version: str,
                evaluation: Mapping[str, Any] | None = None) -> str:
    """12-hex id of the protocol settings that change a job's numbers; the seed is deliberately left out.

    ``grid`` is what was searched (a probe's expanded grid, or a fine-tuning recipe); ``refit`` whether the
    selected setting was retrained on train+val before test; ``evaluation`` how the test numbers were made when
    not on a test split (cross-validation folds and grouping, verification pairs), absent otherwise so that
    the ids of split-based protocols do not change.
    """
    material = {"task": task, "probe": probe, "tap": tap, "grid": grid, "val_fraction": float(val_fraction),
                "test_fraction": float(test_fraction), "select_metric": select_metric, "shots": int(shots),
                "refit": bool(refit), "probe_version": probe_version}
    if evaluation:
        material["evaluation"] = dict(evaluation)
    return _digest(material)


def identity_columns(*, backbone: str, weights: str, data_config: Mapping[str, Any], precision: str) -> dict:
    """The results columns that name a backbone configuration: img_size, precision, backbone_config, config_label."""
    size = img_size_of(data_config)
    return {"img_size": size, "precision": precision,
            "backbone_config": backbone_config_id(backbone, weights, data_config, precision),
            "config_label": config_label(backbone, weights, size, precision)}
