"""Log-densities, KL terms and importance-weighted bounds.

Conventions: every function sums over the event dimensions (pixels, latent dims) and
keeps the batch dimension(s), so results are in nats per example; callers average
over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, log_var: Tensor, prior_mu: Tensor | None = None) -> Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(prior_mu, I)) for (..., d) inputs -> (...);
    ``prior_mu`` None is the standard normal prior (docs/models/vae.md)."""
    diff = mu if prior_mu is None else mu - prior_mu
    return 0.5 * (diff.pow(2) + log_var.exp() - log_var - 1.0).sum(-1)


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """KL(q || Uniform(K)) = sum q log(q K) for N categoricals: logits (..., N, K) -> (...)
    (docs/models/gumbel_vae.md; log K per variable is the KL of a one-hot posterior)."""
    log_q = torch.log_softmax(logits, dim=-1)
    k = logits.shape[-1]
    return (log_q.exp() * (log_q + math.log(k))).sum((-2, -1))


def log_categorical(z: Tensor, logits: Tensor) -> Tensor:
    """log q(z) of one-hot codes z (..., N, K) under softmax(logits), summed over N: (...)."""
    return (z * torch.log_softmax(logits, dim=-1)).sum((-2, -1))


def log_normal(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(log_var))) summed over the last dim."""
    return -0.5 * ((z - mu).pow(2) * (-log_var).exp() + log_var + LOG_2PI).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) for (B, *shape) -> (B,), summed over pixels."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_log_likelihood(mean: Tensor, x: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(x; mean, sigma^2 I) for (B, *shape) -> (B,), constant included."""
    err = ((x - mean) * torch.exp(-log_sigma)).pow(2)
    return -0.5 * (err + 2 * log_sigma + LOG_2PI).flatten(1).sum(1)


def importance_weighted_bound(log_w: Tensor) -> Tensor:
    """log (1/k) sum_k exp(log_w) for log weights (k, B) -> (B,) (Burda et al. 2015)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


# Rows (importance samples x images) of the first chunk, and of every chunk on the CPU.
DEFAULT_ROWS = 16384


def sample_chunks(
    k: int, b: int, device: torch.device, rows: int | None = None, fraction: float = 0.5
) -> Iterator[int]:
    """Chunk sizes c (summing to k) for evaluating k samples of a batch of b images, c * b
    rows at a time: ``rows`` per chunk when given; else ``DEFAULT_ROWS``, and on a GPU,
    after the first chunk, as many as fit in ``fraction`` of the free memory at the peak
    bytes per row that chunk measured (it resets the device's peak-memory statistics)."""
    measure = rows is None and device.type == "cuda"
    rows = rows or DEFAULT_ROWS
    done = 0
    while done < k:
        c = min(max(1, rows // b), k - done)
        if measure:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        yield c  # the caller evaluates c * b rows here
        if measure:
            per_row = max(1.0, (torch.cuda.max_memory_allocated(device) - base) / (c * b))
            free, _ = torch.cuda.mem_get_info(device)
            rows, measure = max(rows, int(fraction * free / per_row)), False
        done += c


def parzen_log_likelihood(samples: Tensor, x: Tensor, sigma: float, chunk: int = 500) -> Tensor:
    """log p(x) (N,) under the Parzen window (isotropic Gaussian kernel density) of
    ``samples`` (S, D) with bandwidth ``sigma``: log (1/S) sum_s N(x; s, sigma^2 I).

    The protocol of Goodfellow et al. (2014) and the AAE paper (Makhzani et al. 2015):
    a weak estimator in high dimension (Theis, van den Oord & Bethge 2016), kept to set
    numbers beside those papers'. ``x`` rows are processed ``chunk`` at a time.
    """
    s = samples.flatten(1).double()
    d = s.shape[1]
    s_sq = s.pow(2).sum(1)  # (S,)
    const = -math.log(s.shape[0]) - 0.5 * d * math.log(2 * math.pi * sigma**2)
    out = []
    for xb in x.flatten(1).double().split(chunk):
        # squared distances (n, S) = |x|^2 + |s|^2 - 2 x.s, clamped at 0 against round-off
        d2 = (xb.pow(2).sum(1, keepdim=True) + s_sq - 2.0 * xb @ s.T).clamp_min(0)
        out.append(torch.logsumexp(-d2 / (2 * sigma**2), dim=1) + const)
    return torch.cat(out).to(x.dtype if x.is_floating_point() else torch.float32)


def parzen_sigma(samples: Tensor, val: Tensor, sigmas: Tensor | None = None) -> float:
    """The bandwidth of ``sigmas`` (default: 20 values log-spaced on [0.05, 1]) with the
    highest mean Parzen log-likelihood of the validation images ``val``."""
    grid = torch.logspace(math.log10(0.05), 0.0, 20) if sigmas is None else sigmas
    scores = [float(parzen_log_likelihood(samples, val, float(g)).mean()) for g in grid]
    return float(grid[max(range(len(scores)), key=scores.__getitem__)])


def log_normal_mixture(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log (1/P) sum_p N(z; mu_p, diag(exp(log_var_p))) for z (..., d) and P components
    mu, log_var (P, d) -> (...): the VampPrior's density.

    The squared distances are expanded into matrix products, (z^2) (1/var)^T -
    2 z (mu/var)^T + sum(mu^2/var), instead of a (..., P, d) broadcast: ten times faster
    on a CPU and without the (rows x P x d) temporary. Float64 keeps the expansion's
    cancellation below 1e-6 nats."""
    dt = torch.float64
    zz, m, lv = z.to(dt), mu.to(dt), log_var.to(dt)
    inv = (-lv).exp()  # (P, d)
    quad = (zz * zz) @ inv.T - 2.0 * zz @ (m * inv).T + ((m * m) * inv + lv).sum(-1)
    comp = -0.5 * (quad + z.shape[-1] * LOG_2PI)  # (..., P)
    return (torch.logsumexp(comp, -1) - math.log(mu.shape[0])).to(z.dtype)
