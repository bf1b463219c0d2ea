"""Categorical latents: Gumbel-Softmax relaxation, straight-through and exact samples.

Shapes: logits (..., K) over K categories; every function returns (..., K) codes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard Gumbel noise g = -log(-log u), u ~ U(0, 1), shaped like ``like``.

    Drawn as -log(e) with e ~ Exp(1) (e = -log u): no log(0) at u = 0 or 1.
    """
    e = torch.empty_like(like).exponential_(generator=generator)
    return -e.log()


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact one-hot argmax of the soft sample; backward: the identity,
    so the gradient is the soft sample's (Bengio et al. 2013; Jang et al. 2016, ST)."""

    @staticmethod
    def forward(ctx, soft: Tensor) -> Tensor:  # noqa: D102
        return F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return grad


def straight_through(soft: Tensor) -> Tensor:
    """One-hot of argmax(soft) in the forward pass, gradient of ``soft`` backward."""
    return _StraightThrough.apply(soft)


def gumbel_softmax(
    logits: Tensor, tau: float | Tensor, hard: bool = False, generator=None
) -> Tensor:
    """y = softmax((logits + g) / tau): a point on the simplex (Jang et al. 2016).

    With ``hard``, the forward value is the one-hot argmax of y (an exact sample of
    Categorical(softmax(logits)), by the Gumbel-max trick) and the gradient is y's.
    """
    soft = torch.softmax((logits + gumbel_noise(logits, generator)) / tau, dim=-1)
    return straight_through(soft) if hard else soft


def sample_one_hot(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Exact one-hot samples of Categorical(softmax(logits)) (Gumbel-max), no gradient."""
    with torch.no_grad():
        i = (logits + gumbel_noise(logits, generator)).argmax(-1)
        return F.one_hot(i, logits.shape[-1]).to(logits.dtype)


def temperature(step: int, tau0: float, tau_min: float, rate: float) -> float:
    """Annealed temperature max(tau_min, tau0 * exp(-rate * step)) (Jang et al. 2016)."""
    return max(tau_min, tau0 * math.exp(-rate * step))


def steps_to_floor(tau0: float, tau_min: float, rate: float) -> float:
    """The first step at which ``temperature`` reaches ``tau_min`` (inf when rate is 0)."""
    if tau0 <= tau_min:
        return 0.0
    return math.log(tau0 / tau_min) / rate if rate > 0 else math.inf
