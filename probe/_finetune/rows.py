"""A fine-tune's rows and artifacts: the results contract's rows (one val row per epoch, the selected test row),
the per-item arrays beside them, and what :func:`probe.finetune` returns.

The rows name how they were scored (``evaluation``: :func:`probe.tasks.evaluation_label`, e.g. ``splits``,
``test carve 0.2``, ``cv5 by subject``) and, in ``params``, the run's ``tasks`` and ``head`` (a single-task run
with the linear head is the frozen linear probe's counterpart; a joint run names its co-trained tasks and the
rule that chose its epoch). The per-item arrays have the keys the sweeps save: ``ids``, ``labels``,
``item/<metric>`` (classification, regression) or ``stat/<k>`` (dense tasks), and ``group`` where the items
cluster by person.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import tasks as _tasks
from .._errors import ProbeError
from .config import POOLED_TASKS, FinetuneConfig
from .selection import EpochRule

#: The head of a task trained on the pooled features (the backbone's own classifier slot: one linear layer).
POOLED_HEAD = "linear"

#: Tasks whose heads sit on the feature maps.
_DENSE = ("segmentation", "depth")


def _dense_frame() -> str:
    from ..dense import FRAME

    return FRAME


def _dense_view(data_config: dict) -> dict:
    from ..dense import full_frame_config

    return full_frame_config(data_config)


def _grid_label(bb, head: str = "linear") -> str:
    """The token grid of a dense head (``"14x14"``): the finest feature map it reads at the input size."""
    import math

    from .decoders import feature_levels

    info = bb.model.feature_info
    stride = min(int(info[i]["reduction"]) for i in feature_levels(head, len(info)))
    _, h, w = (int(v) for v in bb.data_config["input_size"])
    return f"{math.ceil(h / stride)}x{math.ceil(w / stride)}"


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    frame : polars.DataFrame
        Rows in the results contract: one val row per epoch, then the selected test row.
    results_path : Path
        The parquet file.
    weights_path : Path or None
        Best-val weights as safetensors (usable as ``--weights`` for extraction and fine-tuning).
    artifacts_path : Path or None
        Test predictions (``probe.results.load_artifacts``); None without a test split.
    best_epoch : int
        The epoch chosen on val (1-based).
    test_metrics : dict or None
        top1, top5 and mean per-class accuracy on test with the chosen epoch's weights.
    history : list of dict
        Per epoch: train loss, learning rate, images/s, data-wait share, val metrics.
    checkpoint_dir : Path
        Where the per-epoch checkpoints live (removed after success unless ``keep_checkpoints``).
    skipped : bool
        True when the results existed and nothing was trained.
    resumed_from : int
        Completed epochs found in a checkpoint at the start (0 for a fresh run).
    lp : dict or None
        lp-ft only: the probe's ``C``, whether it was selected on val, and its val top1.
    initial_head : dict or None
        The new head's weights (``weight`` [C, D], ``bias`` [C]) as they were before the first step of a fresh
        run; None after a resume (classification only).
    task_metrics : dict
        Task -> its test metrics (one entry for a single-task run; ``test_metrics`` is the first task's).
    results_paths : dict
        Task -> its parquet file (each task of a multi-task run writes its own rows; ``results_path`` is the
        first task's).
    fold_epochs : list of int
        Cross-validation: the epoch chosen on val in each fold (``best_epoch`` is then 0).
    """

    frame: Any
    results_path: Path
    weights_path: Path | None
    artifacts_path: Path | None
    best_epoch: int
    test_metrics: dict | None
    history: list = field(default_factory=list)
    checkpoint_dir: Path | None = None
    skipped: bool = False
    resumed_from: int = 0
    lp: dict | None = None
    initial_head: dict | None = None
    settings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    task_metrics: dict = field(default_factory=dict)
    results_paths: dict = field(default_factory=dict)
    fold_epochs: list = field(default_factory=list)


@dataclass
class FoldOutcome:
    """What one cross-validation fold's run hands back: its rows (val per epoch, the test row) and the held-out
    per-item arrays (the caller writes every fold's rows and the pooled items)."""

    rows: list
    items: dict
    best_epoch: int


def head_of(config: FinetuneConfig) -> str:
    """The head a run trains: the backbone's linear classifier slot for pooled tasks, else ``config.head``."""
    return POOLED_HEAD if tuple(config.tasks) in {(t,) for t in POOLED_TASKS} else config.head


def evaluation_of(source, config: FinetuneConfig, evaluation: dict | None) -> str:
    """The rows' ``evaluation``: the cross-validation of ``evaluation`` (``cv``, ``cv_group``), else the dataset's
    splits (with a carved test split named by its fraction)."""
    if evaluation:
        return _tasks.evaluation_label(cv=evaluation.get("cv"), cv_group=evaluation.get("cv_group"))
    return _tasks.evaluation_label(test_fraction=0.0 if "test" in source.splits else config.test_fraction)


@dataclass
class RunWriter:
    """Writes one run's rows and per-item arrays (or, for a cross-validation fold, hands them back).

    Built once when the run starts from what does not change while it trains; :meth:`write` takes what the
    training produced.
    """

    backbone: str
    source: Any
    config: FinetuneConfig
    split_plan: dict
    stems: dict  # task -> the stem of its rows and predictions
    seed: int
    init_seed: int | None  # the seed of a random initialisation (None for given or hub weights)
    digest: str
    rule: EpochRule
    fold: int | None = None
    evaluation: dict | None = None  # cross-validation settings (the protocol id's ``evaluation``)

    def params(self, *, bb, amp_dtype, accum_steps: int, best_epoch: int, lp: dict | None) -> dict:
        """The rows' ``params``: the recipe, the chosen epoch, the head and tasks, how the epoch was chosen."""
        c = self.config
        params = {"mode": c.mode, "trainable_blocks": c.trainable_blocks, "epochs": c.epochs, "lr": c.lr,
                  "batch_size": c.batch_size, "accum_steps": accum_steps, "weight_decay": c.weight_decay,
                  "warmup_epochs": c.warmup_epochs, "label_smoothing": c.label_smoothing,
                  "layer_decay": c.layer_decay, "clip_grad": c.clip_grad, "crop_scale": list(c.crop_scale),
                  "hflip": c.hflip, "color_jitter": c.color_jitter, "img_size": bb.data_config["input_size"][-1],
                  "precision": "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
                  "chosen_epoch": best_epoch, "refit": bool(c.refit and "test" in self.split_plan),
                  "init_seed": self.init_seed, "settings_hash": self.digest[:10],
                  # every run names its head and tasks: a single-task linear-head run is the frozen linear
                  # probe's counterpart, a joint run is not
                  "tasks": list(c.tasks), "head": head_of(c), "select_rule": self.rule.name}
        if lp is not None:
            params["lp_C"] = lp["C"]
        if set(c.tasks) & set(_DENSE):  # how the frame is fed and scored; how crops treat depth (issue 22)
            params.update(frame=_dense_frame(), scored="label resolution")
            if "depth" in c.tasks:
                params["depth_zoom"] = c.depth_zoom
        if len(c.tasks) > 1:
            params["task_weighting"] = c.task_weighting
        if "regression" in c.tasks:  # the target the head predicts (standardised by its phase's train statistics)
            params["target"] = _tasks.get("regression").target_name(self.source)
        return params

    def write(self, *, bb, amp_dtype, accum_steps: int, test: dict | None, history: list, refit_history: list,
              best: dict, lp: dict | None, skipped: set, refit: bool, val: dict | None = None):
        """Write each task's rows (and test predictions); returns (frames, paths, task metrics, artifacts path),
        or a :class:`FoldOutcome` for a cross-validation fold (nothing written).

        ``val`` is the evaluation of val by the weights of the chosen epoch (task -> result): a task with
        calibration metrics fits its temperature there (:func:`calibration_of`)."""
        from .._identity import identity_columns, protocol_id
        from .._version import PROBE_VERSION
        from ..results import make_row, results_frame, write_results
        from .build import precision_name

        c = self.config
        best_epoch = best["epoch"]
        params = self.params(bb=bb, amp_dtype=amp_dtype, accum_steps=accum_steps, best_epoch=best_epoch, lp=lp)
        n_train, n_val = len(self.split_plan["train"][1]), len(self.split_plan["val"][1])
        val_fraction = 0.0 if "val" in self.source.splits else c.val_fraction
        test_fraction = 0.0 if "test" in self.source.splits else c.test_fraction
        recipe = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(c).items()
                  if k not in ("select_metric", "val_fraction", "test_fraction", "refit", "precision", "skip_bad")}
        if c.tasks == (_tasks.DEFAULT,):  # the protocol id the default task's runs always had
            for k in ("tasks", "head", "task_weighting"):
                recipe.pop(k)
        if "depth" not in c.tasks:  # only depth targets are divided by a crop's zoom
            recipe.pop("depth_zoom")
        if set(c.tasks) & set(_DENSE):
            recipe["frame"] = _dense_frame()
        # a dense run is evaluated on the whole frame: its configuration is the frozen dense probe's (the same
        # preprocessing, so the two pair up in the report)
        view = _dense_view(bb.data_config) if set(c.tasks) & set(_DENSE) else bb.data_config
        identity = identity_columns(backbone=self.backbone, weights=bb.weights_id, data_config=view,
                                    precision=precision_name(amp_dtype))
        total_seconds = sum(r["train_seconds"] for r in history + refit_history)
        evaluation = evaluation_of(self.source, c, self.evaluation)
        frames, paths, task_metrics, artifacts = {}, {}, {}, None
        for task in c.tasks:  # each task its own rows (and predictions)
            metric = self.rule.monitor[task]
            protocol = protocol_id(task=task, probe="finetune", tap="-", grid=recipe, val_fraction=val_fraction,
                                   test_fraction=test_fraction, select_metric=metric, shots=0, refit=refit,
                                   probe_version=PROBE_VERSION, evaluation=self.evaluation)
            base = dict(backbone=self.backbone, family=bb.family, family_source=bb.family_source,
                        weights=bb.weights_id, dataset=self.source.name, tap="-", probe="finetune", shots=0,
                        seed=self.seed, val_fraction=val_fraction, test_fraction=test_fraction,
                        select_metric=metric, cache_key="-", protocol=protocol, n_val=n_val, task=task,
                        evaluation=evaluation, n_skipped=len(skipped), **identity,
                        **({"grid": _grid_label(bb, head_of(c))} if task in _DENSE else {}))
            rows = [make_row(**base, params={**params, "epoch": r["epoch"]}, selected=False, split="val",
                             n_train=n_train, n_eval=n_val, fit_seconds=r["train_seconds"], **r["val"][task])
                    for r in history]
            stem = self.stems[task]
            if test is not None:
                result = test[task]
                task_metrics[task] = result["metrics"]
                calibration, result["calibration"] = calibration_of(task, (val or {}).get(task), result)
                rows.append(make_row(**base, params={**params, "epoch": best_epoch}, selected=True, split="test",
                                     n_train=n_train + n_val if refit else n_train,
                                     n_eval=int(result["keep"].sum()), fit_seconds=total_seconds,
                                     **result["metrics"], **calibration))
                if self.fold is not None:  # the caller writes every fold's rows and the pooled items
                    return FoldOutcome(rows=rows, items=self.test_items(task, result), best_epoch=best_epoch)
                saved = self.save_predictions(stem, task, result, bb)
                artifacts = saved if artifacts is None else artifacts
            else:
                rows[best_epoch - 1] = dict(rows[best_epoch - 1], selected=True)
            frames[task] = results_frame(rows)
            paths[task] = write_results(frames[task], Path(str(stem) + ".parquet"))
        return frames, paths, task_metrics, artifacts

    # ------------------------------------------------------------------------------------------ per-item arrays
    def _test_ids(self, result: dict) -> np.ndarray:
        split, idx = self.split_plan["test"]
        return np.asarray([str(i) for i in np.asarray(self.source.ids[split], dtype=object)[idx]])[result["keep"]]

    def _test_groups(self, result: dict) -> np.ndarray:
        """The person of each test item (the dataset's labels are the people of a face dataset)."""
        split, idx = self.split_plan["test"]
        return np.asarray(self.source.labels[split])[idx][result["keep"]].astype(str)

    def test_items(self, task: str, result: dict) -> dict:
        """Per-image test arrays of a head that scores items (regression), as the frozen probes save them:
        ``ids``, ``labels`` (true targets), ``pred`` (in the target's units) and ``item/<metric>``."""
        keep = result["keep"]
        if self.fold is not None and not keep.all():  # cross_validate pairs each held-out image with its person
            raise ProbeError(f"{int((~keep).sum())} held-out images of fold {self.fold} are unreadable; "
                             "cross-validated fine-tuning needs every image: fix or remove them")
        return {"ids": self._test_ids(result), "labels": result["labels"], "pred": result["pred"],
                **result["items"]}

    def save_predictions(self, stem: Path, task: str, result: dict, bb) -> Path:
        """The test predictions beside the rows, with the sweeps' per-item keys: class scores and ``item/top1``,
        ``item/top5`` (classification); per-image predictions, ``item/<metric>`` and each image's person as
        ``group`` (regression); ``stat/<k>`` and a few previews (dense tasks)."""
        from .._io import save_npz_atomic
        from ..results import save_artifacts

        ids = self._test_ids(result)
        path = Path(str(stem) + ".npz")
        # what the head's evaluation returned says what is saved: per-item values, class scores, or statistics
        if "items" in result:
            arrays = {k: np.asarray(v) for k, v in self.test_items(task, result).items()}
            arrays.update(ids=arrays["ids"].astype(str), group=self._test_groups(result),
                          target_name=np.asarray(_tasks.get(task).target_name(self.source)))
            return save_npz_atomic(path, **arrays)
        if "scores" in result:
            # with the per-item hits item/top1 and item/top5 (probe.results.prediction_arrays)
            if result.get("calibration"):  # and the calibration statistics (probe._calibration)
                from ..results import prediction_arrays

                arrays = prediction_arrays(ids=ids, labels=result["labels"], scores=result["scores"],
                                           classes=self.source.classes)
                return save_npz_atomic(path, **arrays, **result["calibration"])
            return save_artifacts(stem, ids=ids, labels=result["labels"], scores=result["scores"],
                                  classes=self.source.classes)
        split, idx = self.split_plan["test"]
        preview = {f"preview/{k}": v for k, v in result["preview"].items()}
        if preview:
            k = len(result["preview"]["pred"])
            preview["preview/ids"] = ids[:k].astype(str)
            # the frames at the label resolution, where the targets and predictions were scored
            positions = np.asarray(idx)[result["keep"]][:k]
            preview["preview/image"] = np.stack([np.asarray(self.source.load(split, int(i)).convert("RGB"))
                                                 for i in positions])
        classes = self.source.segmentation_classes if task == "segmentation" else []
        return save_npz_atomic(path, task=np.asarray(task), ids=ids.astype(str),
                               classes=np.asarray(classes, dtype=str),
                               **{f"stat/{k}": v for k, v in result["stats"].items()}, **preview)

    def warnings(self, best: dict, val_labels: np.ndarray) -> list[str]:
        """A classification run whose best val score is at chance level learned nothing val can see."""
        from .heads import chance_level

        c = self.config
        if c.tasks != (_tasks.DEFAULT,):
            return []
        n_classes = len(self.source.classes)
        chance = chance_level(val_labels, c.select_metric, n_classes)
        if best["value"] <= chance["threshold"]:
            return [f"the best val {c.select_metric} ({best['value']:.3f}, epoch {best['epoch']}) is at chance "
                    f"level ({chance['chance']:.3f} with {n_classes} classes): the network learned "
                    "nothing the val split can see; try a larger --lr, more --epochs or pretrained weights"]
        return []


def calibration_of(task: str, val: dict | None, test: dict) -> tuple[dict, dict]:
    """The calibration columns of a fine-tune's test row and its per-item statistics (:mod:`probe._calibration`):
    the temperature fitted on the chosen epoch's val logits, the test logits scored before and after. The network's
    softmax is its probability model (``calib_input = "probabilities"``). Empty for a task without calibration
    metrics or without val and test scores."""
    if val is None or "scores" not in val or "scores" not in test or not _tasks.get(task).extra_metrics:
        return {}, {}
    from .._calibration import calibrate_model

    return calibrate_model(val["scores"], val["labels"], test["scores"], test["labels"],
                           np.arange(test["scores"].shape[1]), probabilistic=True)


def read_back(results_paths: dict, stem: Path, ckpt_dir: Path, settings: dict, verbose: bool) -> FinetuneResult:
    """The result of a run whose rows exist (nothing trained)."""
    import polars as pl

    frames, task_metrics, best_epoch, fold_epochs = {}, {}, 0, []
    for task, path in results_paths.items():
        frame = frames[task] = pl.read_parquet(path)
        test = frame.filter(pl.col("selected"))
        if "fold" in frame.columns and test["fold"].null_count() < len(test):  # cross-validated: the summary row
            fold_epochs = [int(json.loads(p)["epoch"]) for p in test.filter(pl.col("fold").is_not_null())
                           .sort("fold")["params"]]
            test = test.filter(pl.col("fold").is_null())
        best_epoch = int(json.loads(test["params"][0]).get("epoch", 0)) if len(test) else 0
        if len(test) and test["split"][0] == "test":
            task_metrics[task] = {m: float(test[m][0]) for m in _tasks.get(task).metric_names}
    first = next(iter(results_paths))
    weights_path = Path(str(stem) + ".safetensors")
    artifacts = Path(str(results_paths[first]).replace(".parquet", ".npz"))
    if verbose:
        print(f"probe: results exist, nothing trained: {', '.join(map(str, results_paths.values()))} (pass "
              "--overwrite to retrain)", file=sys.stderr)
    return FinetuneResult(frame=pl.concat(list(frames.values())), results_path=results_paths[first],
                          weights_path=weights_path if weights_path.is_file() else None,
                          artifacts_path=artifacts if artifacts.is_file() else None, best_epoch=best_epoch,
                          test_metrics=task_metrics.get(first), checkpoint_dir=ckpt_dir, skipped=True,
                          settings=settings, task_metrics=task_metrics, results_paths=dict(results_paths),
                          fold_epochs=fold_epochs)
