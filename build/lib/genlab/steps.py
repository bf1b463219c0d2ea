"""``inner_steps=k``: k optimizer steps per Lightning training step.

A tiny model's step costs less than Lightning's own loop around it (hooks, the
optimizer closure, progress tracking: about a millisecond on a CPU), so for such models
the runner is slower than a hand-written loop. With ``inner_steps=k`` the training
loader serves k batches of ``data.batch_size`` at once (consecutive slices of the same
shuffled order) and the family's training step runs on each in turn, each followed by
its own optimizer step, learning-rate scheduler step and the module's
``on_train_batch_end``: the same updates on the same data in the same order, with
Lightning's per-step cost paid once per k. ``global_step`` counts optimizer steps, and
the logging step counter advances by k per Lightning step, so curves, ``max_steps`` and
``log_every_n_steps`` (a multiple of k) mean what they mean without it.

Where nothing hooks into Lightning's backward / optimizer-step path (one device, no
16-bit gradient scaler, no callback or module overriding ``on_before_backward``,
``on_after_backward``, ``on_before_optimizer_step``, ``backward``...), the inner steps
call ``loss.backward()`` and the torch optimizer directly (counted in ``global_step``
as Lightning counts them): that path's hooks are most of Lightning's per-step cost.
Otherwise they go through ``manual_backward`` and ``LightningOptimizer.step``.

Families with manual optimisation (GANs, ...) already take their own steps and run
unchanged (one step per batch).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

from genlab._lightning import advance_logging_steps, plain_optimizer_step
from genlab.errors import ConfigError

log = logging.getLogger(__name__)


def _split(batch: Any, size: int) -> list[Any]:
    """A batch (tensors or a tuple/list of them, first dimension the examples) -> chunks
    of ``size`` examples (the last one shorter)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.split(size))
    parts = [_split(t, size) for t in batch]
    return [type(batch)(chunk) for chunk in zip(*parts, strict=True)]


# Hooks on the backward / optimizer-step path: where any callback or the module
# overrides one, inner steps go through Lightning's path (manual_backward, opt.step()).
PATH_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
PLAIN_PRECISIONS = ("32-true", "32", "64-true", "bf16-mixed", "bf16-true")


def plain_path_ok(model: pl.LightningModule) -> bool:
    """True when Lightning's backward and optimizer-step path would add nothing but
    cost: one device, no gradient scaler (16-bit AMP), no hook overridden on it (module
    or callbacks), no custom ``backward`` / ``optimizer_step``."""
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from lightning.pytorch.utilities.model_helpers import is_overridden

    trainer = model.trainer
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return False
    if str(trainer.precision) not in PLAIN_PRECISIONS:
        return False
    module_hooks = (*PATH_HOOKS, "backward", "optimizer_step", "optimizer_zero_grad")
    if any(is_overridden(h, model, pl.LightningModule) for h in module_hooks):
        return False
    return not any(
        is_overridden(h, cb, pl.Callback) for cb in trainer.callbacks for h in PATH_HOOKS
    )


def _clip(model: pl.LightningModule, value: float, algorithm: str) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)


def use_inner_steps(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    k: int,
    clip_val: float | None = None,
    clip_algorithm: str | None = None,
    accumulate: int = 1,
) -> bool:
    """Make ``model`` take ``k`` optimizer steps per Lightning step on ``datamodule``'s
    training batches (``k`` x ``data.batch_size``). False (and one log line) where the
    family optimises manually already. Call before building the Trainer, which must then
    get no ``gradient_clip_val`` (passed here instead)."""
    if k == 1:
        return False
    if k < 1:
        raise ConfigError(f"inner_steps={k} must be a positive integer")
    family = type(model).__name__
    if accumulate > 1:
        raise ConfigError(
            f"inner_steps={k} takes one optimizer step per batch: it cannot accumulate "
            f"gradients (trainer.accumulate_grad_batches={accumulate}); use one of the two"
        )
    if not model.automatic_optimization:
        log.info(f"inner_steps={k}: {family} optimises manually; one step per batch")
        return False
    batch_size = datamodule.batch_size
    datamodule.train_batch_size = k * batch_size
    inner_step = model.training_step
    batch_end = model.on_train_batch_end
    model.automatic_optimization = False

    plain_path: list[bool] = []  # decided once, at the first step (the trainer is known)

    def training_step(batch, batch_idx: int):
        opt = model.optimizers()
        if not plain_path:
            plain_path.append(plain_path_ok(model))
        plain = plain_path[0]
        configs = model.trainer.lr_scheduler_configs
        chunks = _split(batch, batch_size)
        max_steps = model.trainer.max_steps
        if max_steps >= 0:  # stop at trainer.max_steps, not at the next multiple of k
            chunks = chunks[: max(1, max_steps - model.global_step)]
        # The loggers' step counter (and log_every_n_steps) as if each chunk were a batch:
        # the last chunk's logging then happens at its own step.
        advance_logging_steps(model.trainer, len(chunks) - 1)
        losses = []
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            model.train_window.defer = not last  # one logging window write per Lightning step
            index = batch_idx * k + i
            out = inner_step(chunk, index)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad(set_to_none=True)
            if plain:  # what Lightning's path does when nothing hooks into it
                loss.backward()
                if clip_val:
                    _clip(model, clip_val, clip_algorithm or "norm")
                plain_optimizer_step(opt)
            else:
                model.manual_backward(loss)
                if clip_val:
                    model.clip_gradients(opt, clip_val, clip_algorithm or "norm")
                opt.step()
            for c in configs:
                if c.interval == "step" and (model.global_step % c.frequency == 0):
                    c.scheduler.step()
            if not last:  # Lightning calls the last one itself
                batch_end(out, chunk, index)
            losses.append(loss.detach())
        return torch.stack(losses).mean()  # the divergence guard sees every step's loss

    def on_train_epoch_end() -> None:
        epoch_end()
        # Manual optimisation steps no scheduler on its own: the per-epoch ones here,
        # after the module's hook as in Lightning's automatic loop.
        for c in model.trainer.lr_scheduler_configs:
            if c.interval == "epoch" and (model.current_epoch + 1) % c.frequency == 0:
                c.scheduler.step()

    epoch_end = model.on_train_epoch_end
    model.training_step = training_step
    model.on_train_epoch_end = on_train_epoch_end
    log.info(f"inner_steps={k}: {family} takes {k} optimizer steps per Lightning step")
    return True
