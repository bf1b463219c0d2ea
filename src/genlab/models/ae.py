"""Deterministic auto-encoder, MODELS.md §1.

recon = sum over pixels of the reconstruction error, averaged over the batch:
    mse: ||x - G(E(x))||^2        bce: -sum [x log x' + (1 - x) log(1 - x')]
With ``linear=True`` and mse, the optimum spans the top-d principal subspace of the
centred data, so its error converges to (and never beats) the truncated SVD's.
Sampling decodes codes drawn from a Gaussian fitted to the validation codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import require_choice, require_images, require_positive
from genlab.metrics import LatentMoments
from genlab.models.common import (
    GenlabModule,
    StepMetrics,
    UnitImageCodec,
    check_optimizer,
    make_optimizer,
)
from genlab.nn import build_net


class AE(UnitImageCodec, GenlabModule):
    """Auto-encoder with MSE or BCE reconstruction; optionally linear (PCA)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: int = 16,
        net: dict | None = None,
        loss: str = "bce",
        linear: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "Adam",
    ) -> None:
        super().__init__()
        require_positive("model", latent_dim=latent_dim)
        require_choice("model", "loss", loss, ["bce", "mse"])
        check_optimizer(optimizer, lr, weight_decay)
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
        self.step_metrics = StepMetrics()

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

    def _step(self, batch, split: str) -> tuple[Tensor, Tensor]:
        x = self.preprocess(batch[0])
        z = self.encode(x)
        recon = self.recon_error(x, self.decode(z)).mean()
        values = {f"{split}/loss": recon, f"{split}/recon": recon}
        if split == "train":
            self.step_metrics(self, values)
        else:
            self.log_dict(values, batch_size=x.shape[0], sync_dist=True)
        return recon, z

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx: int) -> None:
        self.moments.update(self._step(batch, "val")[1])

    def on_validation_epoch_end(self) -> None:
        mean, cov = self.moments.compute()
        self.moments.reset()
        self.code_mean.copy_(mean.float())
        self.code_cov.copy_(cov.float())

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return make_optimizer(self.parameters(), h.optimizer, h.lr, h.weight_decay)
