"""Adversarial auto-encoder (Makhzani et al. 2015); docs/models/aae.md.

An auto-encoder x -> z = E(x) -> logits G(z) whose aggregate posterior is matched to the
prior N(0, I) by a GAN on the latent space: D tells prior draws z ~ N(0, I) (the "real"
side) from codes E(x) (the "fake" side). The encoder and decoder minimise

    recon + adv_weight * L_G(D(E(x))),   recon = sum over pixels BCE(G(E(x)), x)

(a cross-entropy summed over pixels, against grey targets in [0, 1]), D minimises its
GAN loss; any ``model.loss`` and either ``model.update_rule`` work as for the GAN.
``{split}/recon`` is also ``{split}/loss``; checkpoints are chosen by ``val/fid`` (the
model is a sampler: recon ignores how well the codes match the prior).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    Betas,
    Decay,
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.errors import ConfigError, require_images
from genlab.models.common import UnitImageCodec
from genlab.models.gan import GAN, Loss, UpdateRule
from genlab.nn import MLP, Conv


class AAE(UnitImageCodec, GAN):
    """Auto-encoder with an adversarial prior on its codes."""

    ema_of = ("decoder",)  # the sampler: evaluation decodes with its average

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 8,
        net: NetSpec | None = None,
        loss: Loss = "nonsaturating",
        update_rule: UpdateRule = "alternating",
        n_critic: PositiveInt = 1,
        gp_weight: NonNegativeFloat = 10.0,
        lr_g: PositiveFloat = 1e-3,
        lr_d: PositiveFloat = 1e-3,
        betas: Betas = (0.5, 0.999),
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
        critic_hidden_sizes: Sequence[PositiveInt] = (512, 512),
        adv_weight: PositiveFloat = 1.0,
        ema_decay: Decay = 0.999,
        ema_start: NonNegativeInt = 500,
    ) -> None:
        check_args(type(self), locals(), "model")
        require_images("model=aae", tuple(data_shape))
        super().__init__(
            data_shape, num_classes, latent_dim, net, loss, update_rule, n_critic, gp_weight,
            lr_g, lr_d, betas, optimizer, weight_decay, ema_decay=ema_decay, ema_start=ema_start,
        )  # fmt: skip

    def build_networks(self, nets: MLP | Conv) -> None:
        d = self.hparams.latent_dim
        self.encoder = nets.encoder(self.data_shape, d)
        self.decoder = nets.decoder(d, self.data_shape)  # -> logits
        latent_mlp = MLP(self.hparams.critic_hidden_sizes, activation="LeakyReLU")
        self.discriminator = latent_mlp.encoder((d,), 1)

    def g_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    # ---- data space: [0, 1] images (UnitImageCodec), a Bernoulli-logit decoder ------
    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, ema: bool = True) -> Tensor:
        """sigmoid(G(z)), z ~ N(0, I): (n, *data_shape) in [0, 1] (in evaluation mode with
        the averaged decoder; ``ema=False``: the trained one)."""
        with self.weights(ema):
            return self.mean(self.decode(self.noise(n, generator)))

    def decode(self, z: Tensor) -> Tensor:
        """(B, d) -> logits (B, *data_shape)."""
        return self.active_net("decoder")(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.mean(self.decode(self.encoder(x)))

    def energy(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        raise ConfigError("model=aae's critic judges codes, not images: no Langevin sampling")

    def recon(self, x: Tensor, z: Tensor) -> Tensor:
        """Per-image BCE summed over pixels: (B,)."""
        err = F.binary_cross_entropy_with_logits(self.decode(z), x, reduction="none")
        return err.flatten(1).sum(1)

    # ---- the latent GAN -----------------------------------------------------------------
    def d_inputs(self, real: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return z, self.encoder(real)  # prior draws vs codes

    def g_objective(self, real: Tensor, d_real, d_fake: Tensor, z: Tensor) -> dict[str, Tensor]:
        adv = self.generator_loss(self.score(self.discriminate(d_fake, frozen=True)))
        recon = self.recon(real, d_fake).mean()
        return {"g_loss": recon + self.hparams.adv_weight * adv, "recon": recon.detach()}

    def train_values(self, terms: dict[str, Tensor], with_g: bool) -> dict[str, Tensor]:
        values = super().train_values(terms, with_g)
        if with_g:
            self._last_recon = terms["recon"]
        values["recon"] = getattr(self, "_last_recon", torch.zeros((), device=self.device))
        return values

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """The latent GAN's critic_gap, and recon (also ``loss``): BCE summed over pixels."""
        out = super().batch_metrics(batch, batch_idx, full)
        real, _ = self.eval_inputs(batch, batch_idx)
        out["recon"] = out["loss"] = self.recon(real, self.encoder(real)).mean()
        return out
