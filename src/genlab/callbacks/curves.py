"""Learning curves on another split: the model's full held-out metrics on the test (or
validation) split every few epochs, logged as ``curve/<split>_<name>``."""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from genlab.checks import PositiveInt, check_args
from genlab.errors import ConfigError


class SplitCurve(pl.Callback):
    """Evaluates another split (default: test) after validation every ``every_n_epochs``
    epochs and logs ``curve/<split>_<metric>``: learning curves on the test set, as papers
    plot them. Calls the model's ``batch_metrics(batch, batch_idx, full=full)``, the
    method its validation and test steps use; ``full=True`` adds the test-time estimates
    (the IWAE bound of VAEs), which cost much more.

    One extra pass over the split per evaluation; off in the default callbacks.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "test",
        every_n_epochs: PositiveInt = 1,
        full: bool = False,
    ) -> None:
        check_args(type(self), locals(), "callbacks.split_curve")
        self.split = split
        self.every_n_epochs = every_n_epochs
        self.full = full

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "batch_metrics"):
            raise ConfigError(
                f"callbacks.split_curve needs the model's batch_metrics(batch, batch_idx); "
                f"{type(pl_module).__name__} has none: remove it (callbacks.split_curve=null)"
            )

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        if dm is None:
            return
        loader = getattr(dm, f"{self.split}_dataloader")()
        sums: dict[str, Tensor] = {}
        n = 0
        weight = getattr(pl_module, "eval_weight", lambda b: b[0].shape[0])
        index = getattr(pl_module, "eval_batch_idx", lambda i: i)
        for i, batch in enumerate(loader):
            batch = [t.to(pl_module.device) for t in batch]
            b = weight(batch)  # 0 for a DDP rank's padding batch
            j = index(i)  # one process's batch index: its evaluation noise
            metrics = pl_module.batch_metrics(batch, j, full=self.full)
            metrics.pop("per_image", None)  # (the test pass logs their standard errors)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0) + v * b  # on the device: one read-back at the end
            n += b
        for k, v in sums.items():
            pl_module.log(
                f"curve/{self.split}_{k}", v / max(n, 1), batch_size=float(n), sync_dist=True
            )
