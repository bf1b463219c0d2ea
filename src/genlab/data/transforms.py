"""Per-batch transforms, run on the device: uint8 (B, C, H, W) in, float tensors out.

Models call these in ``preprocess`` so data sets stay uint8 (4x less memory, one decode)
and every random draw (binarisation, dequantisation noise) happens on the device.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Largest uniform noise with x + u < x + 1 in float32 for x <= 255 (spacing there is
# 2**-16); without the cap, 255 + u can round up to 256 and leave its bin.
_MAX_NOISE = 1.0 - 2.0**-15


def to_unit(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return x.float() / 255.0


def to_symmetric(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1] (GANs with tanh outputs)."""
    return x.float() / 127.5 - 1.0


def unit_image(x: Tensor) -> Tensor:
    """A [0, 1] model's output -> image in [0, 1] (clamped), the inverse of to_unit."""
    return x.clamp(0, 1)


def symmetric_image(x: Tensor) -> Tensor:
    """A [-1, 1] model's output -> image in [0, 1] (clamped), the inverse of to_symmetric."""
    return ((x + 1) / 2).clamp(0, 1)


def model_images(model: object, x: Tensor) -> Tensor:
    """A model's output -> float images in [0, 1]: its ``to_image`` (GANs and diffusion
    map [-1, 1]), else ``unit_image``. What grids, FID and cond_acc all see."""
    to_image = getattr(model, "to_image", None)
    return (to_image(x) if to_image is not None else unit_image(x)).float()


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Dynamic binarisation: each pixel ~ Bernoulli(x / 255), a fresh draw per call.

    Returns floats in {0, 1}; already binary data (0 / 255) passes through unchanged.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device)
    return (u < to_unit(x)).float()


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation: (x + u) / 256 with u ~ U[0, 1), so each value stays in its bin.

    A density on these continuous values gives a lower bound on the discrete data's
    log-likelihood; bits/dim are computed against this 1/256 scaling.
    """
    u = torch.rand(x.shape, generator=generator, device=x.device).clamp_(max=_MAX_NOISE)
    return (x.float() + u) / 256.0


def eval_generator(device: torch.device, batch_idx: int, seed: int = 1234) -> torch.Generator:
    """A generator seeded by (seed, batch index): evaluation draws repeat run to run."""
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + batch_idx)
    return g
