"""Small helpers every family uses: optimiser construction and hyper-parameter checks."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from genlab.errors import ConfigError, require_positive


def check_optimizer(name: str, lr: float, weight_decay: float) -> None:
    """Fail before training on an unknown optimiser or non-positive learning rate."""
    require_positive("model", lr=lr)
    if weight_decay < 0:
        raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay!r}")
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"model.optimizer={name!r} is not a torch.optim optimiser: "
            "use e.g. Adam, AdamW, SGD, RMSprop"
        )


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float,
    **kwargs: object,
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr, weight_decay=weight_decay, **kwargs)``;
    kwargs are e.g. ``betas``, ``momentum``, ``eps`` (``model.optimizer_kwargs``)."""
    try:
        return getattr(torch.optim, name)(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.optimizer_kwargs={kwargs!r} do not fit {name}: {e}") from None


class StepMetrics:
    """Training-step metrics averaged on the device over each logging window.

    Lightning's ``self.log`` costs about half a millisecond per call on a CPU, which is
    a tenth of a small model's step. Step metrics only reach the loggers every
    ``log_every_n_steps`` steps anyway, so this keeps one running sum (two small ops a
    step, no host sync) and calls ``log`` once per window with the window means: less
    noise, same cost as a hand-written loop. (Nothing is logged with ``prog_bar=True``:
    Lightning reads those back after every step; genlab's ProgressBar reads them itself.)
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.total: torch.Tensor | None = None  # (len(keys),) sums over the window
        self.count = 0

    def __call__(self, module, values: dict[str, torch.Tensor]) -> None:
        v = torch.stack([t.detach().float() for t in values.values()])
        if self.total is None or list(values) != self.keys:
            self.keys, self.total, self.count = list(values), torch.zeros_like(v), 0
        self.total.add_(v)
        self.count += 1
        trainer = module.trainer
        # Lightning's own test for "step metrics go to the loggers after this step".
        if trainer.fast_dev_run or trainer._logger_connector.should_update_logs:
            means = self.total / self.count
            for i, k in enumerate(self.keys):
                module.log(k, means[i], on_step=True, on_epoch=False, batch_size=1)
            self.total, self.count = None, 0
