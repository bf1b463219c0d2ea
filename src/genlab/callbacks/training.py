"""Training infrastructure: best-checkpoint selection, per-epoch seeding, divergence
stops, the progress bar and epoch timing."""

from __future__ import annotations

import math
import random
import time

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from torch import Tensor

from genlab.checks import NonNegativeInt, PositiveInt, Seed, check_args
from genlab.errors import ConfigError, DivergenceError


def is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True every ``every_n_epochs`` epochs and after the last one."""
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % max(every_n_epochs, 1) == 0 or last


def check_logged(trainer: pl.Trainer, pl_module: pl.LightningModule, metric: str, key: str) -> None:
    """Raise ConfigError unless ``metric`` was logged by now (after the sanity check or a
    validation) or will be by a callback that logs later (SampleScores' FID) or by a
    model whose later stages log it (``pl_module.metrics_of_later_stages()``, e.g. the DBN's
    fine-tuning loss)."""
    later: set[str] = set(getattr(pl_module, "metrics_of_later_stages", set)())
    for cb in trainer.callbacks:
        if hasattr(cb, "metric_names"):
            later |= cb.metric_names(pl_module, "val")
    if metric in trainer.callback_metrics or metric in later:
        return
    logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/")) + sorted(later)
    fix = "model.monitor" if key.endswith("monitor") else key
    raise ConfigError(
        f"{key}={metric!r} is not logged by this run (it logs "
        f"{', '.join(logged) or 'no val/ metrics'}): set {fix} to one of them"
    )


class LoggedMetricCheck(pl.Callback):
    """Stops a run right after its sanity check (or first validation) when a setting
    names a validation metric the run does not log, e.g. ``optimized_metric=val/los``
    (which a sweep would otherwise find out only when the trial ends)."""

    def __init__(self, metrics: dict[str, str]) -> None:
        self.metrics = dict(metrics)  # setting -> metric
        self._done = False

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._done:
            for key, metric in self.metrics.items():
                check_logged(trainer, pl_module, metric, key)
            self._done = True

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, pl_module)


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint: ``best.ckpt`` by ``monitor`` and ``last.ckpt`` after
    every training epoch, with two changes.

    - Monitors logged on some epochs only, such as ``val/fid`` (every
      ``metrics.every_n_epochs`` epochs): the best is chosen among the epochs that logged
      it. A monitor this run never logs stops it with one line after the sanity check (or
      the first validation) instead of a Lightning error later.
    - ``last.ckpt`` is written at the end of every training epoch (Lightning 2.6 writes it
      only when it also wrote a top-k checkpoint at that step, so a run whose metric
      stops improving would resume from an old epoch).
    """

    _seen: Tensor | None = None  # the monitor's value at the last comparison
    _fresh: bool | None = None  # whether this epoch's validation logged a new value

    def _check_known(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is not None:
            check_logged(trainer, pl_module, self.monitor, "callbacks.model_checkpoint.monitor")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_known(trainer, pl_module)

    def _fresh_value(self, trainer: pl.Trainer) -> bool:
        """Whether the monitor has a new value to compare: logged, and not the tensor
        of the last comparison (a value kept from an earlier epoch)."""
        if self.monitor is None:
            return True
        value = trainer.callback_metrics.get(self.monitor)
        fresh = value is not None and value is not self._seen
        self._seen = value
        return fresh

    def _lightning_saves(self, trainer, pl_module, hook: str, fresh: bool) -> None:
        """Lightning's ``hook``: top-k only with a fresh value; no last.ckpt (below)."""
        top_k, save_last = self.save_top_k, self.save_last
        self.save_top_k = top_k if fresh else 0
        self.save_last = False
        try:
            getattr(super(), hook)(trainer, pl_module)
        finally:
            self.save_top_k, self.save_last = top_k, save_last

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor is not None and self.monitor not in trainer.callback_metrics:
            self._check_known(trainer, pl_module)
        self._fresh = self._fresh_value(trainer)
        self._lightning_saves(trainer, pl_module, "on_validation_end", self._fresh)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning saves here when validation runs once per epoch (after it).
        fresh = getattr(self, "_fresh", None)
        fresh = self._fresh_value(trainer) if fresh is None else fresh
        self._fresh = None
        self._lightning_saves(trainer, pl_module, "on_train_epoch_end", fresh)
        if self.save_last and not trainer.fast_dev_run and not trainer.sanity_checking:
            path = self.format_checkpoint_name({}, filename=self.CHECKPOINT_NAME_LAST)
            self.last_model_path = path  # part of the saved state: set before saving
            trainer.save_checkpoint(path, self.save_weights_only)


class EpochSeeder(pl.Callback):
    """Reseeds Python, NumPy and torch (CPU and CUDA) at the start of every training
    epoch from (seed, epoch, global rank). Each epoch's randomness (noise, dropout, the
    GAN's z) then depends only on those three, so a run resumed from an epoch-end
    checkpoint repeats the uninterrupted run exactly, whatever ran before (sanity checks,
    evaluation, a different process); ranks draw different noise."""

    def __init__(self, seed: Seed = 0) -> None:
        check_args(type(self), locals(), "callbacks.epoch_seeder")
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        s = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % 2**32
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s``: wall seconds of each training epoch (validation excluded)
    and ``time/val_s`` for each validation pass, so runs report their cost per epoch."""

    def __init__(self) -> None:
        self._t0 = self._v0 = self._val_time = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._val_time = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            seconds = time.perf_counter() - self._v0
            self._val_time += seconds
            pl_module.log("time/val_s", seconds, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation inside the epoch (val_check_interval < 1) is not training time.
        seconds = time.perf_counter() - self._t0 - self._val_time
        pl_module.log("time/epoch_s", seconds, sync_dist=True)  # mean over ranks


class DivergenceGuard(pl.Callback):
    """Stop with a clear error when the training loss becomes NaN or infinite.

    On the CPU every step is checked (reading a CPU scalar costs nothing). On a GPU the
    losses are summed on the device (NaN/inf propagate through the sum) and read back
    every ``check_every_n_steps`` steps, so there is no host sync per step. Either way
    the check also runs before validation and at epoch end, i.e. before ModelCheckpoint
    (always ordered last) can save, so checkpoints on disk stay good.
    """

    def __init__(
        self, check_every_n_steps: PositiveInt = 20, every_step: bool | None = None
    ) -> None:
        check_args(type(self), locals(), "callbacks.divergence_guard")
        self.check_every_n_steps = check_every_n_steps
        self.every_step = every_step  # None: every step on the CPU, batched on accelerators
        self._acc: Tensor | None = None  # sum of the losses since the last read-back
        self._since = 0  # first step covered by _acc
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this batch computes (before it increments)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float().sum()
        if self.every_step or (self.every_step is None and loss.device.type == "cpu"):
            if not math.isfinite(loss.item()):
                self._fail(trainer, "train/loss", f"at step {self._step}")
            return
        if self._acc is None:
            self._acc, self._since = loss.clone(), self._step
        else:
            self._acc.add_(loss)
        if (self._step + 1) % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is not None and not torch.isfinite(value).all():
            self._fail(trainer, "val/loss", f"in validation after step {trainer.global_step}")

    def _check(self, trainer: pl.Trainer) -> None:
        if self._acc is not None:
            bad = not math.isfinite(self._acc.item())
            self._acc = None
            if bad:
                self._fail(trainer, "train/loss", f"between steps {self._since} and {self._step}")

    def _fail(self, trainer: pl.Trainer, what: str, when: str) -> None:
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
        # Manual-optimisation models (GANs) have per-player learning rates and no
        # trainer-side gradient clipping.
        hparams = getattr(trainer.lightning_module, "hparams", {})
        hint = (
            "Try lower model.lr_g / model.lr_d"
            if "lr_d" in hparams
            else "Try a lower model.lr or trainer.gradient_clip_val=1.0"
        )
        raise DivergenceError(
            f"{what} became NaN/inf {when} (epoch {trainer.current_epoch}); training "
            f"stopped, {where}. {hint}"
        )


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar showing ``keys`` of the logged metrics, read back
    every ``metrics_every_n_steps`` training steps.

    Metrics logged with ``prog_bar=True`` are converted to floats by Lightning after
    every step (a host sync on a GPU); this bar reads the ones it shows from the
    callback metrics instead, and only now and then. Hides ``v_num``.
    """

    def __init__(
        self,
        keys: list[str] | tuple[str, ...] = ("train/loss",),
        metrics_every_n_steps: PositiveInt = 25,
        refresh_rate: NonNegativeInt = 1,
        leave: bool = False,
    ) -> None:
        check_args(type(self), locals(), "callbacks.progress_bar")
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.keys = tuple(keys)
        self.metrics_every_n_steps = metrics_every_n_steps
        self._cached: dict | None = None
        self._cached_step = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        step = trainer.global_step
        fresh = self._cached is None or not trainer.training
        if fresh or step - self._cached_step >= self.metrics_every_n_steps:
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            logged = trainer.callback_metrics
            metrics.update({k: float(logged[k]) for k in self.keys if k in logged})
            self._cached, self._cached_step = metrics, step
        return self._cached


class TestProgress(pl.Callback):
    """Log lines with the test loop's progress and the time left (:mod:`genlab.progress`)
    once it has run a few seconds: a test pass of importance sampling or ODE likelihoods
    can take many minutes, and ``eval.py`` or a cluster job's log has no live bar."""

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from genlab.progress import Progress

        batches = trainer.num_test_batches
        total = int(sum(batches) if isinstance(batches, list) else batches)
        self.progress = Progress("Test batches", total, "batches")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self.progress.update()
        if self.progress.done >= self.progress.total:  # before the epoch-end scores
            self.progress.finish()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.progress.finish()
