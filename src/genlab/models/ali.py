"""ALI / BiGAN (Dumoulin et al. 2016; Donahue et al. 2016); docs/models/ali.md.

An encoder E: x -> z and a generator G: z -> x are trained against one joint critic
D(x, z) that tells data pairs (x, z ~ q(z|x)) from model pairs (G(z), z ~ N(0, I)). D
minimises its GAN loss with the data pairs as the real side; E and G minimise the
generator loss with the labels swapped on both sides. At the optimum the two joint
distributions match, so E inverts G: ``encode(x)``, ``reconstruct(x) = G(E(x))`` and the
latent tools apply.

The critic has separate x and z paths and a joint one (as in ALI), optionally with
dropout on every hidden layer; the encoder is deterministic (BiGAN) or, with
``stochastic_encoder``, q(z|x) = N(mu(x), sigma(x)^2) reparameterised as in ALI
(``encode`` returns mu). Measured on MNIST (experiments/ali_mnist): the non-saturating
loss mode-collapsed with these unnormalised conv nets, and with WGAN-GP the stochastic
encoder collapsed to the prior (mu constant, sigma 1: pairs independent, reconstructions
one mean image) while the deterministic one learned to invert G; hence the defaults.

Matching the joint distributions does not make G(E(x)) close to x in practice (ALI's
reconstructions often change the digit; Li et al. 2017, "ALICE", trace this to the
non-identifiability of the joint and bound the conditional entropy H(x|z) with a
cycle-consistency term). ``cycle_weight`` > 0 adds ALICE's explicit version to the
G/E loss: cycle_weight * mean over pixels and batch of (G(E(x)) - x)^2, logged as
``train/cycle``; 0 gives plain ALI / BiGAN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
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
    Range,
    check_args,
)
from genlab.errors import ConfigError
from genlab.models.gan import GAN, Loss, UpdateRule
from genlab.nn import MLP, Conv


class JointCritic(nn.Module):
    """D(x, z) = joint([D_x(x), D_z(z)]): (B, *data_shape), (B, d) -> (B, 1); dropout after
    every hidden layer (ALI's critic: separate x and z paths, then a joint one)."""

    def __init__(self, x_net: nn.Module, width: int, latent_dim: int, dropout: float) -> None:
        super().__init__()
        act, drop = nn.LeakyReLU(0.2), nn.Dropout(dropout)
        self.x_path = nn.Sequential(x_net, act, drop)  # x_net: (B, *data_shape) -> (B, width)
        self.z_path = nn.Sequential(
            nn.Linear(latent_dim, width), act, drop, nn.Linear(width, width), act, drop
        )
        self.joint = nn.Sequential(
            nn.Linear(2 * width, 2 * width), act, drop, nn.Linear(2 * width, 1)
        )

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.joint(torch.cat([self.x_path(x), self.z_path(z)], 1))


class ALI(GAN):
    """Bidirectional GAN: generator, stochastic encoder and a joint critic on (x, z)."""

    ema_of = ("generator", "encoder")  # both sides of the pairs are averaged

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 64,
        net: NetSpec | None = None,
        loss: Loss = "wgan_gp",
        update_rule: UpdateRule = "alternating",
        n_critic: PositiveInt = 5,
        gp_weight: NonNegativeFloat = 10.0,
        lr_g: PositiveFloat = 1e-4,
        lr_d: PositiveFloat = 1e-4,
        betas: Betas = (0.0, 0.9),
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
        critic_width: PositiveInt = 512,
        dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
        stochastic_encoder: bool = False,
        cycle_weight: NonNegativeFloat = 10.0,
        conditional: bool = False,
        ema_decay: Decay = 0.999,
        ema_start: NonNegativeInt = 500,
        langevin_steps: NonNegativeInt = 0,
        langevin_step_size: PositiveFloat = 0.01,
    ) -> None:
        check_args(type(self), locals(), "model")
        if conditional:
            raise ConfigError("model=ali has no conditional form: use model=gan")
        super().__init__(
            data_shape, num_classes, latent_dim, net, loss, update_rule, n_critic, gp_weight,
            lr_g, lr_d, betas, optimizer, weight_decay, conditional=False, ema_decay=ema_decay,
            ema_start=ema_start, langevin_steps=langevin_steps,
            langevin_step_size=langevin_step_size,
        )  # fmt: skip

    def build_networks(self, nets: MLP | Conv) -> None:
        super().build_networks(nets)  # generator, and an x-critic we replace
        h, d = self.hparams, self.hparams.latent_dim
        self.encoder = nets.encoder(self.data_shape, 2 * d if h.stochastic_encoder else d)
        x_net = nets.encoder(self.data_shape, h.critic_width)
        self.discriminator = JointCritic(x_net, h.critic_width, d, h.dropout)

    def g_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.encoder.parameters()]

    def encode(self, x: Tensor) -> Tensor:
        """The mean of q(z|x) (E(x) for a deterministic encoder): (B, latent_dim)."""
        return self.active_net("encoder")(x)[:, : self.hparams.latent_dim]

    def encode_sample(self, x: Tensor) -> Tensor:
        """z ~ q(z|x) = N(mu, sigma^2), reparameterised: (B, latent_dim)."""
        out = self.active_net("encoder")(x)
        if not self.hparams.stochastic_encoder:
            return out
        mu, log_sigma = out.chunk(2, dim=1)
        return mu + log_sigma.exp() * torch.randn_like(mu)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G(E(x)) with E's mean: (B, *data_shape) in [-1, 1]."""
        return self.decode(self.encode(x))

    def fake_side(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.decode(z), z

    def d_inputs(self, real: Tensor, z: Tensor) -> tuple[tuple, tuple]:
        return (real, self.encode_sample(real)), self.fake_side(z)

    def g_objective(self, real: Tensor, d_real, d_fake, z: Tensor) -> dict[str, Tensor]:
        # Swapped labels on both sides: G wants (G(z), z) called real, E wants
        # (x, E(x)) called fake; gradients reach G and E only (frozen critic).
        s_fake = self.score(self.discriminate(d_fake, frozen=True))
        s_real = self.score(self.discriminate(d_real, frozen=True))
        g_loss = self.generator_loss(s_fake, as_real=True)
        out = {"g_loss": g_loss + self.generator_loss(s_real, as_real=False)}
        if self.hparams.cycle_weight > 0:
            # ALICE's cycle term on the encoder's pair: d_real = (x, z ~ q(z|x)), so this
            # is ||G(z) - x||^2 with z from the same draw the critic saw; (B, C, H, W).
            cycle = (self.decode(d_real[1]) - real).pow(2).mean()
            out["cycle"] = cycle.detach()
            out["g_loss"] = out["g_loss"] + self.hparams.cycle_weight * cycle
        return out

    def train_values(self, terms: dict[str, Tensor], with_g: bool) -> dict[str, Tensor]:
        values = super().train_values(terms, with_g)
        if self.hparams.cycle_weight > 0:  # repeats its last value on critic-only batches
            if with_g:
                self._last_cycle = terms["cycle"]
            values["cycle"] = getattr(self, "_last_cycle", torch.zeros((), device=self.device))
        return values

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """The joint critic's critic_gap, and recon_mse: the mean squared error of G(E(x))
        per pixel, images in [-1, 1]."""
        out = super().batch_metrics(batch, batch_idx, full)
        real, _ = self.eval_inputs(batch, batch_idx)
        out["recon_mse"] = (self.reconstruct(real) - real).pow(2).mean()
        return out
