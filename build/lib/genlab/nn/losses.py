"""Image losses shared by model families: the Laplacian-pyramid L1 loss (GLO's Lap1).

Laplacian pyramid of an image batch x (B, C, H, W), ``levels`` = J + 1 levels, level 0
the finest:

    G^0 = x,   G^{j+1} = down(blur(G^j)),   L^j = G^j - up(G^{j+1})  (j < J),   L^J = G^J

``blur`` is the separable binomial filter [1, 2, 1] / 4 (reflect padding), ``down``
keeps every second row and column, ``up`` is bilinear interpolation back to G^j's size.
The pyramid is linear and exactly invertible (x = L^0 + up(L^1 + up(...))), so
Lap1(x, x') = 0 only when x = x'. The loss weights level j by 4^j = 2^{2j}:

    Lap1(x, x') = sum_j 4^j * sum over pixels |L^j(x) - L^j(x')|

Level j has about 4^-j as many pixels as the image, so every level weighs the same per
unit of image area (counted from the coarsest level, the same weights read 2^{-2j} up to
a constant factor). An error that is constant over the image, or a pixel-scale
checkerboard, costs exactly its L1 norm summed over pixels, as a plain L1 loss would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _blur_down(g: Tensor) -> Tensor:
    """down(blur(g)) for g (N, 1, H, W): the 3x3 binomial filter (outer product of
    [1, 2, 1] / 4) with reflect padding, evaluated at every second pixel only."""
    k = torch.tensor([0.25, 0.5, 0.25], dtype=g.dtype, device=g.device)
    kernel = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
    return F.conv2d(F.pad(g, (1, 1, 1, 1), mode="reflect"), kernel, stride=2)


def pyramid_depth(shape: tuple[int, ...], levels: int) -> int:
    """How many of ``levels`` an image of ``shape`` (..., H, W) supports: each coarser
    level halves the side (rounding up) and the coarsest keeps at least 2 pixels a side."""
    h, w = shape[-2:]
    n = 1
    while n < levels and min(h, w) >= 4:
        h, w = (h + 1) // 2, (w + 1) // 2
        n += 1
    return n


def laplacian_pyramid(x: Tensor, levels: int = 3) -> list[Tensor]:
    """[L^0, ..., L^J] of images x (B, C, H, W), finest first (J + 1 = pyramid_depth)."""
    if x.dim() != 4:
        raise ValueError(f"laplacian_pyramid needs images (B, C, H, W), got {tuple(x.shape)}")
    b, c = x.shape[:2]
    g = x.reshape(b * c, 1, *x.shape[2:])  # channels as images: one plain convolution
    out = []
    for _ in range(pyramid_depth(tuple(x.shape), levels) - 1):
        low = _blur_down(g)
        up = F.interpolate(low, size=g.shape[-2:], mode="bilinear", align_corners=False)
        out.append((g - up).view(b, c, *g.shape[-2:]))
        g = low
    out.append(g.view(b, c, *g.shape[-2:]))
    return out


def lap1_loss(x: Tensor, target: Tensor, levels: int = 3) -> Tensor:
    """Lap1(x, target) per image: sum_j 4^j |L^j(x) - L^j(target)|_1 summed over pixels
    and channels, (B,). One pyramid of the difference (the pyramid is linear)."""
    pyr = laplacian_pyramid(x - target, levels)
    return sum((4.0**j) * lev.abs().flatten(1).sum(1) for j, lev in enumerate(pyr))
