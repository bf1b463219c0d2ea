"""A model family defined outside genlab: independent Bernoulli pixels.

The simplest likelihood baseline for binarised images: p(x) = prod_i Bern(x_i; sigmoid(l_i))
with one learned logit per pixel. Its test NLL (nats per image) is the floor any model
with latent structure must beat (dynamically binarised MNIST: about 206 nats).

Used by ``conf/model/pixel_bernoulli.yaml`` next to this file; see this folder's README.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.models.common import GenlabModule


class PixelBernoulli(GenlabModule):
    """One Bernoulli per pixel; images are binarised per batch (dynamic binarisation)."""

    def __init__(self, data_shape: Sequence[int], num_classes: int = 0, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # load_from_checkpoint works without Hydra
        self.data_shape = tuple(data_shape)
        self.logits = nn.Parameter(torch.zeros(self.data_shape))  # (C, H, W)

    def nll(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """-log p(x) in nats per image, (B,), of a dynamically binarised uint8 batch."""
        target = torch.bernoulli(x.float() / 255, generator=generator)
        logits = self.logits.expand_as(target)
        return (
            F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)
        )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self.nll(batch[0]).mean()
        self.log_train({"nll": loss})
        return loss

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        nll = self.nll(batch[0], generator=g).mean()
        return {"loss": nll, "nll": nll}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, C, H, W) images in [0, 1]."""
        p = torch.sigmoid(self.logits).expand(n, *self.data_shape)
        return torch.bernoulli(p, generator=generator)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
