"""lp-ft (Kumar et al., 2022): the new head starts from a logistic probe fitted on the frozen features.

The probe is fitted on the cached frozen ``pooled`` features of train (extracted with the checkpoint's own
preprocessing through :func:`probe.extract_features`, so they are the sweeps' cache entry); its C is selected on
val with the sweeps' grid and tie rule unless ``lp_C`` is given. The refit phase refits the selected C on
train+val.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .._errors import UsageError
from .heads import probe_head


def probe_initialised_head(model, *, backbone: str, source, split_plan: dict, lp_C: float | None,
                           select_metric: str, seed: int, extract: dict, device, ckpt_dir: Path,
                           previous: dict | None = None, refit: bool = False, verbose: bool = False) -> dict:
    """Fit the logistic probe and copy it into ``model``'s classifier; returns ``{"C", "selected", "val_top1"}``.

    Parameters
    ----------
    extract : dict
        Keyword arguments of :func:`probe.extract_features` that build the backbone and read the dataset
        (weights, random_init, seed, img_size, family, data_root, cache_dir, batch_size, workers, skip_bad,
        progress).
    previous : dict, optional
        The selection phase's probe (its C is refitted on train+val when ``refit``).
    """
    import torch

    from .._cache import load_split
    from .._extract import extract_features
    from .._sweep import sweep
    from ..probes import LogisticProbe

    splits = sorted({split for s, (split, _) in split_plan.items() if s in ("train", "val")})
    entries = extract_features(backbone, source.spec, splits=splits, taps=("pooled",), device=str(device),
                               **extract)
    cached = {split: load_split(e, taps=["pooled"]) for split, e in entries.items()}

    def rows(which):
        split, idx = split_plan[which]
        data = cached[split]
        where = {id_: r for r, id_ in enumerate(data.ids)}
        ids = source.ids[split]
        keep = [where[ids[i]] for i in idx if ids[i] in where]  # ids dropped with skip_bad are left out
        return data.features["pooled"][keep].astype(np.float32), data.labels[keep]

    X_train, y_train = rows("train")
    X_val, y_val = rows("val")
    probe_device = str(device)
    selected = lp_C is None
    if refit and previous is not None:  # the C chosen in the selection phase, fitted on train+val
        C, selected = float(previous["C"]), bool(previous["selected"])
    elif selected:
        res = sweep(LogisticProbe(device=probe_device), train=(X_train, y_train), val=(X_val, y_val),
                    test=None, select_metric=select_metric, seed=seed, return_result=True)
        C = float(res.selected_params["C"])
    else:
        C = float(lp_C)
    X_fit, y_fit = ((np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])) if refit
                    else (X_train, y_train))
    est = LogisticProbe(C=C, device=probe_device).fit(X_fit, y_fit)
    val_top1 = float(np.mean(est.predict(X_val) == y_val))
    W, b = probe_head(est, len(source.classes))
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != W.shape:
        raise UsageError(f"lp-ft needs a linear classifier on the pooled features; {backbone}'s head is "
                         f"{type(head).__name__}; use --mode full")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W))
        head.bias.copy_(torch.from_numpy(b))
    np.savez(Path(ckpt_dir) / f"lp_head{'_refit' if refit else ''}.npz", weight=W, bias=b, C=C)
    if verbose:
        print(f"probe: lp-ft: logistic probe C={C:g} ({'selected on val' if selected else 'fixed'}"
              f"{', fitted on train+val' if refit else ''}), val top1 {val_top1:.4f}; head initialised from it",
              file=sys.stderr)
    return {"C": C, "selected": selected, "val_top1": val_top1}
