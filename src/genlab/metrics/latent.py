"""Latent-space statistics accumulated over an evaluation epoch (DDP-safe via torchmetrics)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class LatentMoments(Metric):
    """Mean (d,) and covariance (d, d) of codes over an epoch, summed across processes."""

    full_state_update = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        # float64 sums: the covariance is a small difference of large moments.
        d = latent_dim
        self.add_state("total", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        """codes: (B, d)."""
        c = codes.detach().double()
        self.total += c.sum(0)
        self.outer += c.T @ c
        self.count += c.shape[0]

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        cov = self.outer / self.count - torch.outer(mean, mean)
        return mean, cov


def active_units(cov: Tensor, threshold: float = 1e-2) -> Tensor:
    """Count units u with Cov_x(E_q[z_u | x]) > threshold (Burda et al. 2015).

    cov: (d, d) covariance of the posterior means over a data set.
    """
    return (torch.diagonal(cov) > threshold).sum()


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation between the entries of each row of a and b: (B, d) -> (B,)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


class StandardError(Metric):
    """The standard error of the mean of per-image values over an epoch, summed across
    processes: sqrt(var / n) with the unbiased variance (0 for a single value)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("squares", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        """values: (B,) per-image estimates (already without padding rows)."""
        v = values.detach().double().flatten()
        self.count += v.numel()
        self.total += v.sum()
        self.squares += (v * v).sum()

    def compute(self) -> Tensor:
        n = self.count
        mean = self.total / n.clamp(min=1)
        var = (self.squares - n * mean**2).clamp(min=0) / (n - 1).clamp(min=1)
        return torch.where(n > 1, (var / n).sqrt(), torch.zeros_like(var)).float()
