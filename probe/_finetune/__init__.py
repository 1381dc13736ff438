"""Whole-network fine-tuning on the same splits as the probe sweeps, written to the same results table.

The protocol (the sweeps' protocol, see :mod:`probe._sweep`):

1. ``val`` is the dataset's own val split, or a stratified, seeded part of train carved off with
   :func:`probe.splits.carve_splits` (the same call the sweeps make, so both see the same images); a dataset
   without a test split gets one carved the same way when ``test_fraction`` > 0.
2. Selection: the model is trained on train for ``epochs`` epochs and scored on val after every epoch (one
   ``split="val"`` row per epoch). The epoch with the best val ``select_metric`` is chosen (ties: the earliest).
3. Refit (default, ``refit=True``; Kornblith et al., 2019, as the probes do): the same recipe is trained again
   from the same initial weights on train+val for the chosen number of epochs (its schedule spans those epochs),
   and that model is scored once on test (one ``selected=True`` row whose ``n_train`` is train+val, as for the
   probes). With ``refit=False`` the chosen epoch's weights, kept on disk as the best checkpoint, are scored
   instead. Test is never used for anything else.

Modes:

- ``full``: every parameter is trained.
- ``partial``: only the last ``trainable_blocks`` blocks (ViTs) or stages (ConvNets) are trained, plus
  everything after the trunk (final norm, pooling, head). The stem, earlier blocks and their norm statistics
  are frozen (their modules stay in eval mode). Blocks are the units of timm's coarse ``group_matcher``: the
  first index its block patterns capture (``blocks.<i>``, ``layer<i>``, ``stages.<i>``, ``layers.<i>``).
- ``lp-ft``: linear probing then fine-tuning (Kumar et al., 2022). A :class:`probe.probes.LogisticProbe` is
  fitted on the cached frozen ``pooled`` features of train (extracted with the checkpoint's own preprocessing
  through :func:`probe.extract_features`); its C is selected on val with the sweeps' grid and tie rule unless
  ``lp_C`` is given. The new head starts from the probe's ``coef_``/``intercept_``, then the whole network is
  fine-tuned (or only the last ``trainable_blocks``, when given).

Layout of the package (building is separate from the loop that uses what was built):

- :mod:`.config`: :class:`FinetuneConfig`, the one declaration of the settings; the CLI flags, the study schema
  and the API's checks are generated from it;
- :mod:`.data`: the split plan, seeded per-sample augmentation, loaders;
- :mod:`.heads`: tasks (head outputs, losses, evaluation);
- :mod:`.build`: freezing, optimizer and schedule, precision;
- :mod:`.assemble`: the model with its heads, the evaluation loaders and one phase's Trainer, built from the run's
  settings;
- :mod:`.trainer`: :class:`Trainer`, one phase's loop over built objects;
- :mod:`.selection`: :class:`EpochRule`, the rule that picks the epoch on val (a name and a direction; the mean
  share of the gap to perfect closed since epoch 1 over the tasks of a joint run);
- :mod:`.checkpoint`: per-epoch checkpoints and the best weights;
- :mod:`.lpft`: the logistic-probe head of lp-ft;
- :mod:`.rows`: the result rows (with their ``evaluation``, their head and tasks in ``params``) and the per-item
  arrays beside them;
- :mod:`.cv`: cross-validated fine-tuning (one run per fold);
- :mod:`.run`: :func:`finetune`, the protocol above, and the loop of one run.

Every run is resumable (in the selection and in the refit phase): after each epoch a checkpoint with the model, optimizer, scheduler, grad scaler, RNG
states, history and the best-val state is written atomically. Randomness is a pure function of
``(seed, epoch, sample)``: the shuffle order comes from a generator seeded by ``(seed, epoch)``, each sample's
augmentation from ``(seed, epoch, index)`` (so the number of loader workers does not matter) and the model's own
randomness (dropout, drop-path) from a reseed at the start of every epoch. A run killed at any point and started
again with the same command ends, on CPU, with the same test scores as an uninterrupted run.
"""

from .build import block_groups, freeze_for_partial, frozen_modules, set_train_mode, warmup_cosine
from .checkpoint import CHECKPOINT_FORMAT, save_safetensors
from .config import (ACCUM_STEPS, MODES, PRECISIONS, FinetuneConfig, add_config_arguments, check_config_rules,
                     cli_flag, config_from_args, config_settings, make_config)
from .data import plan_splits
from .heads import ClassificationTask, chance_level, probe_head
from .rows import FinetuneResult
from .run import finetune
from .selection import EpochRule
from .trainer import Objective, Trainer

__all__ = ["ACCUM_STEPS", "CHECKPOINT_FORMAT", "MODES", "PRECISIONS", "ClassificationTask", "EpochRule",
           "FinetuneConfig",
           "FinetuneResult", "Objective", "Trainer", "add_config_arguments", "block_groups", "chance_level",
           "check_config_rules", "cli_flag", "config_from_args", "config_settings", "finetune", "freeze_for_partial",
           "frozen_modules", "make_config", "plan_splits", "probe_head", "save_safetensors", "set_train_mode",
           "warmup_cosine"]
