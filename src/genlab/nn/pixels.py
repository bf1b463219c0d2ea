"""Discrete pixel distributions of the autoregressive families (MADE, PixelCNN, the VQ-VAE
prior): what the network outputs per pixel, the exact log-probability of integer pixel
values, and sampling.

Pixels are integer-valued float tensors: {0, 1} (``bernoulli``), {0, ..., levels - 1}
(``categorical``, ``logistic_mixture``). Network outputs carry the distribution's
parameters in a channel axis: (B, params, *pixel_shape).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class PixelDist:
    """A distribution over each pixel's integer value, given the net's outputs."""

    levels: int = 2

    @property
    def params(self) -> int:
        """Network outputs per pixel."""
        raise NotImplementedError

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x) per pixel: out (B, params, *S), x (B, *S) integers -> (B, *S)."""
        raise NotImplementedError

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per pixel: out (B, params, *S) -> (B, *S) integer-valued floats."""
        raise NotImplementedError

    def to_input(self, x: Tensor) -> Tensor:
        """Integer pixel values -> the network's input in [-1, 1]."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def to_unit(self, x: Tensor) -> Tensor:
        """Integer pixel values -> images in [0, 1]."""
        return x / (self.levels - 1)


class Bernoulli(PixelDist):
    """Binary pixels; one logit each."""

    levels = 2

    @property
    def params(self) -> int:
        return 1

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(out[:, 0], x, reduction="none")

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(out[:, 0].shape, generator=generator, device=out.device)
        return (u < torch.sigmoid(out[:, 0].float())).float()


class Categorical(PixelDist):
    """A softmax over the ``levels`` values of each pixel (PixelRNN / PixelCNN's 256-way)."""

    def __init__(self, levels: int = 256) -> None:
        self.levels = levels

    @property
    def params(self) -> int:
        return self.levels

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        return -F.cross_entropy(out.float(), x.long(), reduction="none")

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Gumbel-max: argmax(logits + g), g ~ Gumbel(0, 1) -- one draw per pixel.
        u = torch.rand(out.shape, generator=generator, device=out.device).clamp_(1e-12, 1.0)
        return (out.float() - torch.log(-torch.log(u))).argmax(1).float()


class LogisticMixture(PixelDist):
    """The discretised logistic mixture of PixelCNN++ (Salimans et al. 2017), one channel:
    K mixture logits, K means and K log-scales per pixel; the edge bins take the tails,
    so the probabilities of the ``levels`` values sum to 1."""

    def __init__(self, components: int = 5, levels: int = 256) -> None:
        self.k, self.levels = components, levels

    @property
    def params(self) -> int:
        return 3 * self.k

    def _split(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, means, log_scales = out.float().split(self.k, dim=1)  # (B, K, *S) each
        return logits, means, log_scales.clamp(min=-7.0)

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        logits, means, log_scales = self._split(out)
        half = 1.0 / (self.levels - 1)  # half a bin in [-1, 1]
        xc = self.to_input(x).unsqueeze(1)  # (B, 1, *S), bin centres in [-1, 1]
        inv = torch.exp(-log_scales)
        plus, minus = inv * (xc - means + half), inv * (xc - means - half)
        cdf_plus, cdf_minus = torch.sigmoid(plus), torch.sigmoid(minus)
        log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the lowest bin
        log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - sigmoid(minus)): the highest
        mid = inv * (xc - means)
        # log of the density at the centre times the bin width: where the bin's mass
        # underflows in float32 (cdf_plus - cdf_minus < 1e-5), as PixelCNN++ does.
        log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid) + math.log(2 * half)
        delta = cdf_plus - cdf_minus
        log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
        low = xc < -1 + half  # value 0
        high = xc > 1 - half  # value levels - 1
        log_bin = torch.where(high, log_one_minus_cdf_minus, log_mid)
        log_bin = torch.where(low, log_cdf_plus, log_bin)
        return torch.logsumexp(log_bin + F.log_softmax(logits, dim=1), dim=1)

    def sample(self, out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits, means, log_scales = self._split(out)
        u = torch.rand(logits.shape, generator=generator, device=out.device).clamp_(1e-12, 1.0)
        pick = F.one_hot((logits - torch.log(-torch.log(u))).argmax(1), self.k)  # (B, *S, K)
        pick = pick.movedim(-1, 1).to(means.dtype)
        mu, s = (means * pick).sum(1), (log_scales * pick).sum(1).exp()
        v = torch.rand(mu.shape, generator=generator, device=out.device).clamp_(1e-5, 1 - 1e-5)
        x = mu + s * (torch.log(v) - torch.log1p(-v))  # a logistic draw in [-1, 1] units
        return ((x.clamp(-1, 1) + 1) * (self.levels - 1) / 2).round()


def pixel_dist(name: str, levels: int = 256, components: int = 5) -> PixelDist:
    """``bernoulli`` | ``categorical`` | ``logistic_mixture``."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "categorical":
        return Categorical(levels)
    if name == "logistic_mixture":
        return LogisticMixture(components, levels)
    raise ValueError(f"unknown pixel distribution {name!r}")
