"""Fault injection for tests: ``+callbacks.kill._target_=genlab.testing.KillAtStep
+callbacks.kill.step=N`` SIGKILLs the training process when it reaches global step N,
the way a preempted or OOM-killed job dies (no cleanup, no final checkpoint). Inert in
a run resumed from a checkpoint, so the restart can be the same command."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        if trainer.ckpt_path is None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


# Tensor methods that read a value back to the host: each is a device synchronisation
# on a GPU (on the CPU they are free, which is why CPU runs cannot show the hazard).
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class SyncCounter:
    """Counts host read-backs of tensors (``SYNC_METHODS``) while ``active``, with the
    first few call sites, by wrapping those methods of ``torch.Tensor``: the CPU stand-in
    for ``torch.cuda.set_sync_debug_mode``. Use as a context manager."""

    def __init__(self, sites: int = 5) -> None:
        self.active = False
        self.count = 0
        self.sites: list[str] = []
        self._max_sites = sites
        self._saved: dict[str, object] = {}

    def __enter__(self) -> SyncCounter:
        import traceback

        import torch

        def wrap(name: str, original):
            def counted(tensor, *args, **kwargs):
                if self.active:
                    frame = traceback.extract_stack(limit=2)[0]
                    # torch.optim reads its step counters, which stay on the CPU on GPUs
                    # (foreach / fused Adam): not a device sync.
                    if f"torch{os.sep}optim{os.sep}" not in frame.filename:
                        self.count += 1
                        if len(self.sites) < self._max_sites:
                            self.sites.append(f"{name} at {frame.filename}:{frame.lineno}")
                return original(tensor, *args, **kwargs)

            return counted

        for name in SYNC_METHODS:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, wrap(name, self._saved[name]))
        return self

    def __exit__(self, *exc) -> None:
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


class CountSyncs(pl.Callback):
    """Counts host read-backs (a :class:`SyncCounter`, patched in for the fit) from the
    training step ``start`` of each epoch to the epoch's end or validation: every training
    step's work (callbacks, the module's hooks, logging, fetching the next batch) but not
    epoch-end work. ``python train.py +callbacks.count_syncs._target_=genlab.testing.CountSyncs``
    prints the count and the first call sites at the end of the fit."""

    def __init__(self, start: int = 2) -> None:
        self.counter, self.start = SyncCounter(), start

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.counter.__enter__()

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.counter.active = False
        self.counter.__exit__(None, None, None)
        print(f"host read-backs in training steps: {self.counter.count} {self.counter.sites}")

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        self.counter.active = False
        self.counter.__exit__(None, None, None)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        self.counter.active = batch_idx >= self.start

    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.counter.active = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.counter.active = False
