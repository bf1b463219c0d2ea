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
