"""Class-conditional GAN players: a generator that reads an embedded label beside z, and
the projection critic of Miyato & Koyama 2018."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConditionalGenerator(nn.Module):
    """G(z, y) = net([z, embed(y)]): (B, d), (B,) labels -> (B, *data_shape)."""

    def __init__(self, net: nn.Module, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.net = net

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1))


class ProjectionCritic(nn.Module):
    """D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018), phi(x) =
    act(features(x)): (B, *data_shape), (B,) labels -> (B, 1)."""

    def __init__(self, features: nn.Module, width: int, num_classes: int, sn: bool) -> None:
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if sn else (lambda m: m)
        self.features = nn.Sequential(features, nn.LeakyReLU(0.2))
        self.psi = wrap(nn.Linear(width, 1))
        self.embed = wrap(nn.Embedding(num_classes, width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        phi = self.features(x)  # (B, width)
        return self.psi(phi) + (self.embed(y) * phi).sum(1, keepdim=True)
