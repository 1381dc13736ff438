"""The training loop of one phase, over built objects.

:class:`Trainer` is given the model (or a wrapper of it, e.g. DistributedDataParallel), the tasks (loss and
evaluation per head), the objective that weighs the task losses, the optimizer, scheduler and grad scaler, and
the loaders. It builds nothing: :mod:`probe._finetune.run` does (once per phase). The pieces a distributed run
replaces are attributes: ``plan_batches(epoch)`` (which items this process loads in each step), ``model`` (the
wrapped module) and ``evaluate`` (score on one rank, or gather first).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _distributed
from .._errors import ProbeError
from .build import set_train_mode
from .data import STREAM_MODEL, image_name, mix, seed_everything


class Objective:
    """The training loss of one or several tasks.

    Equal weights (default): the sum of the task losses. With ``log_vars`` (homoscedastic uncertainty weighting,
    Kendall, Gal and Cipolla, 2018, in its common form): ``sum_t exp(-s_t) L_t + s_t`` with one learned ``s_t``
    per task (the log-variance, starting at 0 = equal weights).

    Parameters
    ----------
    tasks : dict
        Task name -> task (:mod:`probe._finetune.heads`).
    log_vars : torch.nn.ParameterDict, optional
        Task -> learned log-variance; owned by the model, so the optimizer, a distributed wrapper and the
        checkpoints see it as one of the model's parameters.
    """

    def __init__(self, tasks: dict, log_vars=None):
        self.tasks, self.log_vars = tasks, log_vars

    def __call__(self, outputs: dict, targets: dict):
        """(total loss, {task: loss}) of one micro-batch."""
        import torch

        losses = {name: task.loss(outputs[name], targets[name]) for name, task in self.tasks.items()}
        if self.log_vars is None:
            return sum(losses.values()), losses
        total = sum(torch.exp(-self.log_vars[t].float()) * loss + self.log_vars[t].float()
                    for t, loss in losses.items())
        return total, losses

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Trainer:
    """One phase of a fine-tune (selection on train, or the refit on train+val) over built objects.

    Attributes
    ----------
    model : torch.nn.Module
        Images -> output tensor (one task) or dict task -> output.
    tasks : dict
        Task name -> task object (loss, evaluator); see :mod:`probe._finetune.heads`.
    objective : callable
        ``(outputs, targets) -> (total loss, per-task losses)``; :class:`Objective` by default.
    optimizer, scheduler, scaler
        torch optimizer, per-step lr scheduler, ``torch.amp.GradScaler`` (disabled outside fp16).
    train_loader, train_batches
        The training DataLoader and its :class:`probe._finetune.data.Batches` (set per epoch).
    plan_batches : callable
        ``epoch -> list of batches`` of ``(epoch, position)`` items this process loads in that epoch.
    eval_loaders : dict
        Split -> DataLoader whose batch sampler is a :class:`~probe._finetune.data.Batches`.
    step_model : torch.nn.Module, optional
        What the training steps run (default ``model``): under torchrun, ``model`` in DistributedDataParallel
        (:func:`probe._distributed.wrap_model`), whose gradients are averaged over the ranks once per step.
        Evaluation, checkpoints and exports use ``model`` itself.
    """

    model: Any
    tasks: dict
    optimizer: Any
    scheduler: Any
    scaler: Any
    train_loader: Any
    train_batches: Any
    plan_batches: Callable[[int], list]
    eval_loaders: dict
    device: Any
    batch_size: int
    epochs: int  # of this phase (for the progress bar)
    seed: int
    amp_dtype: Any = None
    accum_steps: int = 1
    accum_auto: bool = False
    clip_grad: float | None = None
    frozen: list = field(default_factory=list)
    skip_bad: bool = False
    lr_hint: float = 0.0  # the configured lr, named in the divergence error
    checkpoint_dir: Path | None = None
    progress: bool = False
    verbose: bool = False
    objective: Any = None
    skipped: set = field(default_factory=set)  # unreadable images left out with skip_bad
    step_model: Any = None  # what training steps run: ``model``, or under torchrun ``model`` in DDP

    def __post_init__(self):
        if self.objective is None:
            self.objective = Objective(self.tasks)
        if self.step_model is None:
            self.step_model = self.model

    # ------------------------------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the epoch's batches; returns the epoch's record (loss, lr, throughput, data wait)."""
        from .._console import progress

        # (seed, epoch) fixes the shuffle, and the model's own randomness starts from a fresh seed each epoch
        batches = self.plan_batches(epoch)
        seed_everything(mix(self.seed, STREAM_MODEL, epoch))
        self.train_batches.batches = batches
        set_train_mode(self.model, self.frozen)
        bar = progress(len(batches) * self.batch_size, unit="img", desc=f"epoch {epoch}/{self.epochs}",
                       enabled=self.progress)
        loss_sum, seen, wait, start, steps = 0.0, 0, 0.0, time.perf_counter(), []
        it = iter(self.train_loader)
        for step in range(len(batches)):
            t0 = time.perf_counter()
            x, targets, errors = next(it)
            wait += time.perf_counter() - t0
            x, targets = self._check_batch(x, targets, errors)
            if len(x) == 0:  # every image of the batch was unreadable (--skip-bad)
                continue
            loss = self.step(x, targets)
            if not math.isfinite(loss):
                bar.close(finished=False)
                kept = (f"checkpoints up to epoch {epoch - 1} are kept in {self.checkpoint_dir}" if epoch > 1
                        else "no epoch had completed")
                raise ProbeError(f"fine-tuning diverged: the loss is {loss} at epoch {epoch} (step {step + 1}) "
                                 f"with --lr {self.lr_hint:g}; use a lower --lr (e.g. {self.lr_hint / 10:g}); "
                                 f"{kept}")
            steps.append(loss)
            loss_sum += loss * len(x)
            seen += len(x)
            bar.update(len(x))
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{self.lr():.2e}")  # + tqdm's img/s
        bar.close()
        del it
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": self.lr(),
                "images_per_s": seen / seconds, "data_wait_share": wait / seconds, "train_seconds": seconds,
                "accum_steps": self.accum_steps, "step_losses": steps}

    def lr(self) -> float:
        """The peak learning rate now (the top layer's under layer decay)."""
        return max(g["lr"] for g in self.optimizer.param_groups)

    def _check_batch(self, x, targets, errors):
        bad = [e for e in errors if e]
        if bad:
            if not self.skip_bad:
                raise ProbeError(bad[0] + "; fix or remove it, or pass --skip-bad")
            self.skipped.update(image_name(e) for e in bad)
            keep = [i for i, e in enumerate(errors) if not e]
            x, targets = x[keep], {k: v[keep] for k, v in targets.items()}
        return x, targets

    def step(self, x, targets) -> float:
        """One optimizer step over the batch, in ``accum_steps`` micro-batches; returns the batch's mean loss.

        Out of GPU memory with ``accum_auto``, the step is retried with twice the micro-batches."""
        import torch

        x = x.to(self.device, non_blocking=True)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        while True:
            try:
                return self._accumulate(x, targets)
            except torch.OutOfMemoryError:
                self.optimizer.zero_grad(set_to_none=True)
                micro = math.ceil(len(x) / self.accum_steps)
                if _distributed.world_size() > 1:  # the other ranks are inside this step's collectives
                    raise ProbeError(f"out of GPU memory with micro-batches of {micro} images on rank "
                                     f"{_distributed.rank()}; under torchrun pass a larger --accum-steps N (it "
                                     "cannot adapt there), a smaller --img-size or --mode partial") from None
                if not self.accum_auto or micro <= 1:
                    raise ProbeError(f"out of GPU memory with micro-batches of {micro} images "
                                     f"({self.batch_size} per step / {self.accum_steps} accumulation steps); "
                                     "use a smaller --img-size, --mode partial, or --accum-steps auto") from None
                torch.cuda.empty_cache()
                self.accum_steps *= 2
                if self.verbose:
                    print(f"probe: out of GPU memory; accumulating {self.accum_steps} micro-batches of "
                          f"{math.ceil(len(x) / self.accum_steps)} images per step", file=sys.stderr)

    def _outputs(self, out) -> dict:
        if isinstance(out, dict):
            return out
        (name,) = self.tasks
        return {name: out}

    def _accumulate(self, x, targets) -> float:
        import contextlib

        import torch

        # under torchrun x is this rank's share of the global batch: its loss is its share of the global mean,
        # times the world size that DistributedDataParallel divides the summed gradients by, and the gradients
        # are reduced once, on the last micro-batch
        world = _distributed.world_size()
        n = _distributed.all_sum(len(x)) if world > 1 else len(x)
        micro = math.ceil(len(x) / self.accum_steps)
        total = torch.zeros((), device=self.device)
        parts = {k: v.split(micro) for k, v in targets.items()}
        chunks = x.split(micro)
        for j, xs in enumerate(chunks):
            ys = {k: v[j] for k, v in parts.items()}
            defer = world > 1 and j < len(chunks) - 1
            with self.step_model.no_sync() if defer else contextlib.nullcontext():
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self._outputs(self.step_model(xs))
                loss, _ = self.objective(out, ys)
                loss = loss * (len(xs) / n)
                self.scaler.scale(loss * world if world > 1 else loss).backward()
            total += loss.detach()
        value = _distributed.all_sum(float(total))  # the global batch's mean loss, the same on every rank
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return value
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return value

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> dict:
        """Score the model on ``split``: task -> the task evaluator's result (metrics, loss, predictions)."""
        import torch

        loader = self.eval_loaders[split]
        n = len(loader.dataset)
        micro = max(1, math.ceil(self.batch_size / self.accum_steps))
        loader.batch_sampler.batches = [list(range(s, min(s + micro, n))) for s in range(0, n, micro)]
        self.model.eval()
        evaluators = {name: task.evaluator() for name, task in self.tasks.items()}
        with torch.inference_mode():
            for x, targets, errors in loader:
                ok = [not e for e in errors]
                if not all(ok) and not self.skip_bad:
                    raise ProbeError(next(e for e in errors if e) + "; fix or remove it, or pass --skip-bad")
                self.skipped.update(image_name(e) for e in errors if e)
                x = x.to(self.device, non_blocking=True)
                if self.device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self._outputs(self.model(x))
                keep = torch.tensor(ok)
                for name, ev in evaluators.items():
                    ev.add(out[name].float().cpu(), targets[name], keep)
        return {name: ev.result() for name, ev in evaluators.items()}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """What a checkpoint needs to continue this phase: model, optimizer, scheduler, scaler, objective."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "objective": self.objective.state_dict(), "accum_steps": self.accum_steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state.get("objective", {}))
        self.accum_steps = int(state["accum_steps"])
