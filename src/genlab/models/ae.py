"""Deterministic auto-encoder; docs/models/ae.md.

recon = sum over pixels of the reconstruction error, averaged over the batch:
    mse: ||x - G(E(x))||^2        bce: -sum [x log x' + (1 - x) log(1 - x')]
Inputs are grey values in [0, 1] (not binarised), so bce is a cross-entropy against soft
targets, not the nats of a likelihood (its minimum is the targets' entropy, not 0).
With ``linear=True`` and mse, the optimum spans the top-d principal subspace of the
centred data, so its error converges to (and never beats) the truncated SVD's.
Sampling decodes codes drawn from a Gaussian fitted to the validation codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    NetSpec,
    NonNegativeFloat,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import eval_generator
from genlab.errors import require_images
from genlab.metrics import LatentMoments
from genlab.models.common import GenlabModule, UnitImageCodec, make_optimizer
from genlab.nn import build_net


class AE(UnitImageCodec, GenlabModule):
    """Auto-encoder with MSE or BCE reconstruction; optionally linear (PCA)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 16,
        net: NetSpec | None = None,
        loss: Literal["bce", "mse"] = "bce",
        linear: bool = False,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        if loss == "bce":
            require_images("model.loss=bce", self.data_shape)
        if linear:
            d = math.prod(self.data_shape)
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, latent_dim))
            self.decoder = nn.Sequential(nn.Linear(latent_dim, d), nn.Unflatten(1, self.data_shape))
        else:
            nets = build_net(net)
            self.encoder = nets.encoder(self.data_shape, latent_dim)
            self.decoder = nets.decoder(latent_dim, self.data_shape)
        # Gaussian fitted to the validation codes, for sample(); saved with the weights.
        self.register_buffer("code_mean", torch.zeros(latent_dim))
        self.register_buffer("code_cov", torch.eye(latent_dim))
        self.moments = LatentMoments(latent_dim)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out) if self.hparams.loss == "bce" else out

    def recon_error(self, x: Tensor, out: Tensor) -> Tensor:
        """Per-image reconstruction error summed over pixels: (B,)."""
        if self.hparams.loss == "bce":
            err = F.binary_cross_entropy_with_logits(out, x, reduction="none")
        else:
            err = (out - x).pow(2)
        return err.flatten(1).sum(1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.mean(self.decode(self.encode(x)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decode z ~ N(code_mean, code_cov): (n, *data_shape) in data space."""
        d = self.hparams.latent_dim
        eye = torch.eye(d, device=self.device, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.code_cov.double() + 1e-6 * eye).float()
        eps = torch.randn(n, d, generator=generator, device=self.device)
        return self.mean(self.decode(self.code_mean + eps @ chol.T))

    def prior_quantiles(self, u: Tensor) -> Tensor:
        """Per-dimension quantiles of the fitted code Gaussian at levels u (n,): (n, d)."""
        std = self.code_cov.diagonal().clamp_min(0).sqrt()
        return self.code_mean + std * torch.distributions.Normal(0.0, 1.0).icdf(u)[:, None]

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self.preprocess(batch[0])
        recon = self.recon_error(x, self.decode(self.encode(x))).mean()
        self.log_train({"loss": recon, "recon": recon})
        return recon

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """recon (= loss): the reconstruction error summed over pixels, per image."""
        x = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))
        recon = self.recon_error(x, self.decode(self.encode(x))).mean()
        return {"loss": recon, "recon": recon}

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        # The codes of the validation set, for the Gaussian that sample() draws from.
        self.moments.update(self.encode(self.preprocess(batch[0])))

    def on_validation_epoch_end(self) -> None:
        mean, cov = self.moments.compute()
        self.moments.reset()
        self.code_mean.copy_(mean.float())
        self.code_cov.copy_(cov.float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return make_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)
