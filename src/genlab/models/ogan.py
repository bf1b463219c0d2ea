"""O-GAN (Su 2019; docs/models/gan.md#o-gan): the critic doubles as an encoder.

D outputs a code e = E(x) (B, latent_dim); the critic score is mean(e) over its entries.
Both players also maximise rho(z, E(G(z))), the Pearson correlation between the entries
of the noise z and of the code of G(z) (per sample, averaged over the batch):

    L_D = <GAN critic loss on mean(e)> - corr_weight * rho
    L_G = <GAN generator loss>         - corr_weight * rho

rho ignores e's mean and scale, so it does not fight the score (hence "orthogonal"), and
E learns to invert G at almost no cost: ``encode(x)`` is e standardised per sample (the
statistics of z), ``reconstruct(x) = G(encode(x))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.checks import NonNegativeFloat, check_args
from genlab.errors import ConfigError
from genlab.metrics import pearson
from genlab.models.gan import GAN


class OGAN(GAN):
    """A GAN whose critic is an encoder; logs ``{train,val}/z_corr``."""

    def __init__(self, *args, corr_weight: NonNegativeFloat = 1.0, **kwargs) -> None:
        check_args(type(self), {"corr_weight": corr_weight}, "model")
        if kwargs.get("conditional"):
            raise ConfigError("model=ogan has no conditional form: use model=gan")
        super().__init__(*args, **kwargs)
        self.hparams["corr_weight"] = corr_weight  # saved: reloads without Hydra

    def critic_dim(self) -> int:
        return self.hparams.latent_dim

    def score(self, out: Tensor) -> Tensor:
        return out.mean(-1)

    def extra_loss(self, out_fake: Tensor, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        rho = pearson(z, out_fake).mean()
        return -self.hparams.corr_weight * rho, {"z_corr": rho.detach()}

    def encode(self, x: Tensor) -> Tensor:
        """E(x) standardised per sample (zero mean, unit variance over entries): (B, d). E is
        the critic: never averaged, so G(E(x)) pairs the EMA generator with it."""
        e = self.discriminator(x)
        return (e - e.mean(-1, keepdim=True)) / e.std(-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G(E(x)): (B, *data_shape) in [-1, 1]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """The GAN's critic_gap and z_corr = corr(z, E(G(z))) with fixed noise."""
        out = super().batch_metrics(batch, batch_idx, full)
        _, z = self.eval_inputs(batch, batch_idx)
        out["z_corr"] = pearson(z, self.discriminator(self.decode(z))).mean()
        return out
