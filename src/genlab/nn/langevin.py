"""Unadjusted Langevin dynamics in a latent space (plain tensor code): the sampler of the
GANs' latent-space energy (Che et al. 2020's discriminator-driven latent sampling)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def langevin(
    energy: Callable[[Tensor], Tensor],
    z: Tensor,
    steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unadjusted Langevin dynamics on ``energy`` (z (B, d) -> (B,)):
    z <- z - (eps / 2) grad E(z) + sqrt(eps) * N(0, I), ``steps`` times; samples approach
    p(z) ~ exp(-E(z)) as eps -> 0 and steps grow. Runs with gradients even when called
    under ``no_grad`` / inference mode; returns a detached (B, d) tensor."""
    with torch.inference_mode(False), torch.enable_grad():
        z = z.detach().clone()
        for _ in range(steps):
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(z).sum(), z)
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = (z - 0.5 * step_size * grad + step_size**0.5 * noise).detach()
    return z
