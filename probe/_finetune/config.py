"""The one declaration of a fine-tuning run's settings (no heavy imports).

:class:`FinetuneConfig` is the single source: each field's type, range (``metadata["setting"]``, see
:func:`probe._schema.constraint`), CLI help and metavar live on the field. ``probe finetune``'s flags
(:func:`add_config_arguments`), a study's ``[finetune]`` / ``[pretrain]`` keys (:func:`config_settings`, used by
:func:`probe.study.study_schema`) and the Python API's checks (:func:`make_config`) are all generated from it, so
they cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from .._errors import UsageError
from .._schema import Setting, check_setting, constraint, dataclass_settings
from ..vocab import DEFAULT_VAL_FRACTION, METRICS
from ..vocab import FINETUNE_MODES as MODES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Tasks a fine-tune trains heads for (the dense ones on the backbone's feature maps; classification and
#: regression with one linear layer on the pooled features).
FINETUNE_TASKS = ("classification", "segmentation", "depth", "regression")
#: Tasks whose head is one linear layer on the pooled features (the backbone's own classifier slot).
POOLED_TASKS = ("classification", "regression")
#: Tasks a fine-tune cross-validates (``--cv``) on a dataset without a test split.
CV_TASKS = ("regression",)
#: Dense heads (see :mod:`probe._finetune.decoders`); classification always uses the backbone's linear classifier.
HEADS = ("linear", "multiscale")
#: How dense training crops treat depth (issue 22): a random resized crop zooms in, so a zoomed object would look
#: nearer while its target said it was not.
DEPTH_ZOOMS = ("divide", "no-zoom")
#: How the task losses of a multi-task fine-tune are weighed.
TASK_WEIGHTINGS = ("equal", "uncertainty")
#: Accepted values of ``accum_steps`` (not a config field: it adapts during a run).
ACCUM_STEPS = Setting(kind="int", lo=0, lo_open=True, also=("auto",))


def _field(default, help: str, *, metavar=None, **limits):
    """A config field: its default, its range/choices (``limits``), and how ``probe finetune --help`` shows it."""
    return field(default=default, metadata={**constraint(**limits), "help": help, "metavar": metavar})


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyperparameters of one fine-tuning run; every field is part of the run's settings hash.

    The defaults are a common transfer recipe (AdamW, short warmup, cosine decay, label smoothing); the study
    tunes ``lr`` per backbone family in practice. Each field's type and range (``metadata``) are the one
    declaration that ``probe finetune``'s flags and a study's ``[finetune]`` keys are generated from and checked
    against (:func:`probe._schema.dataclass_settings`).
    """

    # the heads trained on one shared backbone: classification, or one or more dense tasks (multi-task)
    tasks: tuple[str, ...] = _field(("classification",), "what the heads predict: classification (default), "
                                    "regression (the dataset's continuous target, e.g. age; L1 loss), or "
                                    "segmentation and/or depth (two dense tasks = one backbone trained jointly "
                                    "with both heads)", choices=FINETUNE_TASKS, nonempty=True)
    # dense tasks: a linear layer on the last block's patch features, or a light multi-scale decoder
    head: str = _field("linear", "dense tasks: linear (a linear layer on each patch token of the last block) or "
                                 "multiscale (a light FPN/DPT-style decoder over four blocks)", choices=HEADS)
    # multi-task loss weights: equal (sum) or learned homoscedastic uncertainty (Kendall et al., 2018)
    task_weighting: str = _field("equal", "multi-task loss weights: equal (the losses summed) or uncertainty "
                                          "(learned per-task log-variances, Kendall et al. 2018)",
                                 choices=TASK_WEIGHTINGS)
    mode: str = _field("full", "full: train everything; partial: only the last --trainable-blocks blocks/stages "
                               "(+ final norm and head); lp-ft: start the head from a logistic probe on the frozen "
                               "features, then fine-tune", choices=MODES)
    # partial / lp-ft: train the last N blocks or stages (+ norm + head)
    trainable_blocks: int | None = _field(None, "partial (required) and lp-ft: train the last N blocks (ViTs) or "
                                                "stages (ConvNets) plus the final norm and head; 0 = head only",
                                          metavar="N", lo=0)
    epochs: int = _field(10, "passes over train", metavar="N", lo=0, lo_open=True)
    # peak learning rate of AdamW, reached after warmup, for one step of batch_size images
    lr: float = _field(1e-4, "peak AdamW learning rate (after warmup; cosine decay to 0)", metavar="X", lo=0,
                       lo_open=True)
    # images per optimizer step (summed over accumulation micro-batches)
    batch_size: int = _field(64, "images per optimizer step", metavar="N", lo=0, lo_open=True)
    # AdamW decoupled decay; not applied to biases, norms, tokens, position embeddings
    weight_decay: float = _field(0.05, "AdamW weight decay (not on biases, norms, tokens, position embeddings)",
                                 metavar="X", lo=0)
    # linear warmup from ~0 to lr, then cosine decay to 0, updated every step
    warmup_epochs: float = _field(1.0, "epochs of linear lr warmup (may be fractional)", metavar="X", lo=0)
    label_smoothing: float = _field(0.1, "cross-entropy label smoothing", metavar="X", lo=0, hi=1, hi_open=True)
    # layer-wise lr decay factor per block (e.g. 0.75); None = off
    layer_decay: float | None = _field(None, "layer-wise lr decay factor per block, e.g. 0.75 (default: off)",
                                       metavar="X", lo=0, lo_open=True, hi=1)
    # max grad L2 norm; None = off (the CLI's 0)
    clip_grad: float | None = _field(1.0, "max gradient L2 norm; 0 turns clipping off", metavar="X", lo=0,
                                     lo_open=True)
    # random resized crop: fraction of the image area kept (MIN, MAX)
    crop_scale: tuple[float, float] = _field((0.08, 1.0), "random resized crop: range of the image area kept",
                                             metavar=("MIN", "MAX"), lo=0, lo_open=True, hi=1)
    hflip: bool = _field(True, "random horizontal flips during training")  # p = 0.5
    # timm jitter strength; None = off
    color_jitter: float | None = _field(None, "color jitter strength during training (default: off)", metavar="X",
                                        lo=0)
    # dense tasks: divide = the random resized crop's zoom z (relative to the whole-frame view) divides the depth
    # target, as a camera z times nearer would measure; no-zoom = the whole-frame view with a random crop_scale
    # window kept in place and the rest ignored (objects keep their size, depth is unchanged)
    depth_zoom: str = _field("divide", "dense tasks: divide (the random resized crop's zoom divides the depth "
                                       "target, as a camera that much nearer would measure) or no-zoom (crops "
                                       "without rescaling: a random window of the whole-frame view, the rest "
                                       "ignored)", choices=DEPTH_ZOOMS)
    # lp-ft: logistic probe C; None = selected on val over the sweeps' grid
    lp_C: float | None = _field(None, "lp-ft: the logistic probe's C (default: selected on val over the sweeps' "
                                      "grid)", metavar="C", lo=0, lo_open=True)
    select_metric: str = _field("top1", "val metric that chooses the epoch", choices=METRICS)
    # part of train carved off as val when the dataset has no val
    val_fraction: float = _field(DEFAULT_VAL_FRACTION, "part of train carved off as val when the dataset has no val "
                                                       "split", metavar="X", lo=0, lo_open=True, hi=1, hi_open=True)
    # auto (bf16 on CUDA, fp16 where bf16 is missing, fp32 on CPU) | fp32 | bf16 | fp16
    precision: str = _field("auto", "autocast: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU",
                            choices=PRECISIONS)
    skip_bad: bool = _field(False, "drop unreadable images instead of stopping with an error")
    refit: bool = _field(True, "after choosing the epoch count on val, retrain that many epochs on train+val and "
                               "score that model on test (as the probes refit); --no-refit scores the chosen "
                               "epoch's weights")
    # part of train carved off as test when the dataset has no test split; 0 = none
    test_fraction: float = _field(0.0, "for a dataset without a test split: part of each class of train carved off "
                                       "as test (the same images as the sweeps' --test-fraction)", metavar="F",
                                  lo=0, hi=1, hi_open=True)


def config_settings() -> dict[str, Setting]:
    """Field name -> :class:`probe._schema.Setting` of :class:`FinetuneConfig` (types, ranges, choices)."""
    return dataclass_settings(FinetuneConfig)


def cli_flag(name: str) -> str:
    """The ``probe finetune`` flag of a :class:`FinetuneConfig` field: ``lp_C`` -> ``--lp-c``."""
    return "--" + name.lower().replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`FinetuneConfig` field (``dest`` = the field name), generated from its declaration.

    Booleans are ``--x/--no-x``; choices, fixed-length lists (``--crop-scale MIN MAX``) and optional values follow
    the field's setting. Values are checked again by :func:`make_config`, with the same errors as a study file.
    """
    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    for name, s in config_settings().items():
        f = fields[name]
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        kwargs = dict(dest=name, default=default, help=f.metadata.get("help"))
        if s.kind == "bool":
            parser.add_argument(cli_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = {"int": int, "float": float, "str": str}[s.kind]
        if s.choices is not None:
            kwargs["choices"] = s.choices
        elif f.metadata.get("metavar") is not None:
            kwargs["metavar"] = f.metadata["metavar"]
        if s.many:
            kwargs["nargs"] = s.length or "+"
        parser.add_argument(cli_flag(name), **kwargs)
        if name == "tasks":  # the single-task spelling the sweeps use
            parser.add_argument("--task", choices=s.choices, default=None, help="one task: the same as --tasks TASK")


def config_from_args(args: argparse.Namespace) -> dict:
    """The :class:`FinetuneConfig` values of parsed :func:`add_config_arguments` flags (``--clip-grad 0`` = off)."""
    values = {name: getattr(args, name) for name in config_settings()}
    if getattr(args, "task", None):  # --task T is --tasks T
        values["tasks"] = [args.task]
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    if values.get("clip_grad") == 0:
        values["clip_grad"] = None
    return values


def make_config(**values) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig`: every value against its declared setting (named by its CLI flag),
    then the rules between fields. Raises one UsageError line for the first problem."""
    settings = config_settings()
    unknown = sorted(set(values) - set(settings))
    if unknown:
        raise UsageError(f"unknown fine-tune setting(s) {unknown}; known: {', '.join(settings)}")
    checked = {k: check_setting(v, settings[k], cli_flag(k)) for k, v in values.items()}
    if "tasks" in checked:
        checked["tasks"] = tuple(dict.fromkeys(checked["tasks"]))  # in order, once each
    config = FinetuneConfig(**checked)
    check_config_rules(config, cli_flag)
    return config


def check_config_rules(c: FinetuneConfig, name=cli_flag) -> None:
    """The rules between fields of a (type-checked) config; ``name(field)`` spells a key in the error."""
    lo, hi = c.crop_scale
    if lo > hi:
        raise UsageError(f"{name('crop_scale')} must be MIN <= MAX (e.g. 0.08 1.0); got {lo} {hi}")
    if c.mode == "partial" and c.trainable_blocks is None:
        raise UsageError(f"mode partial needs {name('trainable_blocks')} N (the last N blocks or stages are "
                         "trained)")
    if c.mode == "full" and c.trainable_blocks is not None:
        raise UsageError(f"{name('trainable_blocks')} applies to mode partial or lp-ft; drop it or change the mode")
    tasks = tuple(c.tasks)
    if "regression" in tasks:
        if len(tasks) > 1:
            others = ", ".join(t for t in tasks if t != "regression")
            raise UsageError(f"{name('tasks')} regression trains one head alone; drop {others}")
        if c.mode == "lp-ft":
            raise UsageError("mode lp-ft starts a classification head from a logistic probe; use mode full or "
                             "partial for regression")
        if c.head != "linear":
            raise UsageError(f"{name('head')} {c.head} is a dense head; regression uses one linear output on the "
                             "pooled features (drop it)")
        return
    dense = [t for t in tasks if t != "classification"]
    if dense and "classification" in tasks:
        raise UsageError(f"{name('tasks')} mixes classification with dense tasks; train classification alone, or "
                         "segmentation and/or depth together")
    if dense and c.mode == "lp-ft":
        raise UsageError(f"mode lp-ft starts a classification head from a logistic probe; use mode full or partial "
                         f"for {', '.join(dense)}")
    if dense and c.layer_decay is not None:
        raise UsageError(f"{name('layer_decay')} applies to classification fine-tunes; drop it for "
                         f"{', '.join(dense)}")
    if not dense and c.head != "linear":
        raise UsageError(f"{name('head')} {c.head} is a dense head; classification uses the backbone's linear "
                         f"classifier (pass {name('tasks')} segmentation or depth)")
