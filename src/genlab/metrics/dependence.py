"""HSIC, the Hilbert-Schmidt independence criterion (Gretton et al. 2005), as a
dependence score between two sets of paired observations.

HSIC = tr(K H L H) / (n - 1)^2 with Gaussian kernels K (on x) and L (on y), each with
the median heuristic for its bandwidth (the median distance between distinct points),
and H = I - 11'/n the centring matrix; with characteristic kernels it is zero exactly
when x and y are independent (in the population). The normalised score
HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)) lies in [0, 1] (centred kernel alignment).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _features(v: Tensor) -> Tensor:
    """(n,) labels -> one-hot (n, classes); (n, ...) -> (n, d) floats, in float64."""
    if v.dim() == 1 and not v.is_floating_point():
        return torch.nn.functional.one_hot(v.long() - v.min().long()).double()
    return v.reshape(v.shape[0], -1).double()


def median_bandwidth(x: Tensor) -> float:
    """Median Euclidean distance between distinct points of x (n, d); 1 if all coincide."""
    d = torch.cdist(x, x)
    upper = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
    upper = upper[upper > 0]
    return float(upper.median()) if upper.numel() else 1.0


def gaussian_gram(x: Tensor, sigma: float | None = None) -> Tensor:
    """exp(-|x_i - x_j|^2 / (2 sigma^2)), (n, n); sigma: the median heuristic if None."""
    x = _features(x)
    sigma = median_bandwidth(x) if sigma is None else sigma
    return torch.exp(-torch.cdist(x, x).square() / (2 * sigma**2))


def _centre(k: Tensor) -> Tensor:  # H K H without forming H
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def hsic(x: Tensor, y: Tensor, normalized: bool = True) -> float:
    """HSIC of paired samples x (n, ...) and y (n, ...) or labels y (n,) (one-hot);
    ``normalized``: divided by sqrt(HSIC(x, x) HSIC(y, y)), 0 when either is constant.
    NaN when x or y holds a non-finite value (a diverged encoder is not independent)."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"hsic needs n >= 2 pairs, got {x.shape[0]} and {y.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return float("nan")
    n = x.shape[0]
    kc, lc = _centre(gaussian_gram(x)), _centre(gaussian_gram(y))
    value = (kc * lc).sum() / (n - 1) ** 2  # tr(K H L H) = sum((HKH) * (HLH))
    if not normalized:
        return float(value)
    scale = ((kc * kc).sum() * (lc * lc).sum()).sqrt() / (n - 1) ** 2
    return float(value / scale) if scale > 0 else 0.0
