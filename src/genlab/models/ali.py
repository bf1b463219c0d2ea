"""ALI / BiGAN (Dumoulin et al. 2016; Donahue et al. 2016), MODELS.md §7.

An encoder E: x -> z and a generator G: z -> x are trained against one joint critic
D(x, z) that tells data pairs (x, E(x)) from model pairs (G(z), z). D minimises its GAN
loss with (x, E(x)) as the real side; E and G minimise the generator loss with the
labels swapped on both sides. At the optimum the two joint distributions match, so E
inverts G: ``encode(x)``, ``reconstruct(x) = G(E(x))`` and the latent tools apply.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genlab.models.gan import GAN
from genlab.nn import MLP, Conv


class JointCritic(nn.Module):
    """D(x, z) = head([features(x), z]): (B, *data_shape), (B, d) -> (B, 1)."""

    def __init__(self, features: nn.Module, n_features: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.head = MLP([n_features], activation="LeakyReLU").encoder((n_features + latent_dim,), 1)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.head(torch.cat([self.features(x), z], 1))


class ALI(GAN):
    """Bidirectional GAN: generator, encoder and a joint critic on (x, z)."""

    def build_networks(self, nets: MLP | Conv) -> None:
        super().build_networks(nets)  # generator, and an x-critic we replace
        d, width = self.hparams.latent_dim, 256
        self.encoder = nets.encoder(self.data_shape, d)
        self.discriminator = JointCritic(nets.encoder(self.data_shape, width), width, d)

    def g_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.encoder.parameters()]

    def encode(self, x: Tensor) -> Tensor:
        """E(x): (B, latent_dim)."""
        return self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G(E(x)): (B, *data_shape) in [-1, 1]."""
        return self.generator(self.encoder(x))

    def d_inputs(self, real: Tensor, z: Tensor) -> tuple[tuple, tuple]:
        return (real, self.encoder(real)), (self.generator(z), z)

    def g_objective(self, real: Tensor, d_real, d_fake, z: Tensor) -> dict[str, Tensor]:
        # Swapped labels on both sides: G wants (G(z), z) called real, E wants
        # (x, E(x)) called fake; gradients reach G and E only (frozen critic).
        s_fake = self.score(self.discriminate(d_fake, frozen=True))
        s_real = self.score(self.discriminate(d_real, frozen=True))
        return {"g_loss": self.fool(s_fake, as_real=True) + self.fool(s_real, as_real=False)}

    def eval_extras(self, real: Tensor, z: Tensor, split: str) -> dict[str, Tensor]:
        """``{split}/recon_mse``: mean squared error of G(E(x)) per pixel, in [-1, 1]."""
        err = (self.generator(self.encoder(real)) - real).pow(2).mean()
        return {f"{split}/recon_mse": err}
