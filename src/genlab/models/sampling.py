"""What the sampling families with an averaged sampler and optional class conditioning (the
GANs, DDPM, flow matching) share: the labels a sample is drawn for, ``sample_conditional``
and the trained-weights variant the scores report beside the average."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class ClassConditionalSampling:
    """Mixin for a LightningModule with ``hparams.conditional``, ``hparams.num_classes``,
    ``sample(n, generator, y=...)`` and ``use_ema`` (``AveragedNets``)."""

    def sample_labels(self, y: Tensor | int | None, n: int) -> Tensor | None:
        """(n,) labels to sample: ``y`` broadcast, or classes 0, 1, ..., K-1, 0, ... when
        None; None for an unconditional model (which refuses a ``y``)."""
        if not self.hparams.get("conditional", False):
            if y is not None:
                raise ValueError(
                    f"sample(n, y=...) needs a conditional model: {type(self).__name__} "
                    "was built with model.conditional=false"
                )
            return None
        if y is None:
            return torch.arange(n, device=self.device) % self.hparams.num_classes
        return torch.as_tensor(y, device=self.device).expand(n)

    @property
    def sample_conditional(self) -> Callable[..., Tensor]:
        """Conditional models: ``sample_conditional(labels, generator)`` -> (len(labels), ...)."""
        if not self.hparams.get("conditional", False):
            raise AttributeError("an unconditional model has no sample_conditional")
        return lambda labels, generator=None: self.sample(labels.shape[0], generator, y=labels)

    def sample_variants(self, split: str) -> dict[str, dict[str, Any]]:
        """Scored next to the default sampler as ``{split}/fid_raw``: the trained weights,
        when sampling uses their average."""
        return {"raw": {"ema": False}} if self.use_ema else {}
