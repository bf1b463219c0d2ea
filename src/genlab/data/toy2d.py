"""Generated 2-D densities for the families that take vectors (flows, GANs with MLP nets,
DDPM and flow matching with time_mlp, ...): moons, eight Gaussians, checkerboard, rings."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from genlab.checks import PositiveInt, Seed, check_args
from genlab.data.base import InMemoryDataModule
from genlab.errors import ConfigError


def _moons(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.rand(n, generator=g) * math.pi
    upper = torch.stack([t.cos(), t.sin()], 1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], 1)
    x = torch.where(y[:, None] == 0, upper, lower) + 0.05 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 2, y


def _eight_gaussians(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    y = torch.randint(0, 8, (n,), generator=g)
    angle = y.float() * math.pi / 4
    centers = 2.5 * torch.stack([angle.cos(), angle.sin()], 1)
    return centers + 0.2 * torch.randn(n, 2, generator=g), y


def _checkerboard(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    # 8 of the 16 unit squares of [-4, 4]^2 (FFJORD's checkerboard, label = square index)
    y = torch.randint(0, 8, (n,), generator=g)
    col, row = y % 4, y // 4 * 2 + y % 2
    x = torch.stack([col, row], 1).float() + torch.rand(n, 2, generator=g)
    return 2 * x - 4, y


def _rings(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    # 4 concentric rings, radii 0.75 .. 3; points in proportion to circumference
    radii = torch.tensor([0.75, 1.5, 2.25, 3.0])
    y = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=g)
    t = torch.rand(n, generator=g) * 2 * math.pi
    r = radii[y] + 0.08 * torch.randn(n, generator=g)
    return torch.stack([r * t.cos(), r * t.sin()], 1), y


SHAPES = {
    "moons": (_moons, 2),
    "eight_gaussians": (_eight_gaussians, 8),
    "checkerboard": (_checkerboard, 8),
    "rings": (_rings, 4),
}


class Toy2D(InMemoryDataModule):
    """Seeded samples of a 2-D density: float (N, 2) points, labels = mixture component.

    Data lie within about [-4, 4]^2; flows model them as they are (no dequantisation).
    """

    data_shape = (2,)

    def __init__(
        self,
        name: Literal["moons", "eight_gaussians", "checkerboard", "rings"] = "moons",
        n_train: PositiveInt = 20000,
        n_val: PositiveInt = 2000,
        n_test: PositiveInt = 2000,
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt = 2000,
        binarize: str | None = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "data")
        if binarize is not None:
            raise ConfigError(f"data=toy2d is continuous: set data.binarize=null, not {binarize!r}")
        super().__init__(batch_size, eval_batch_size, None, split_seed, shuffle_seed)
        self.name = name
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.num_classes = SHAPES[name][1]

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        make = SHAPES[self.name][0]
        out = {}
        for i, (split, n) in enumerate(self.sizes.items()):
            g = torch.Generator().manual_seed(self.split_seed * 10 + i)  # independent splits
            x, y = make(n, g)
            out[split] = (x.float(), y.long())
        return out
