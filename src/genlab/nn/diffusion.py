"""Gaussian diffusion as plain tensor code (no Lightning): the noise schedule, the
forward process, its posterior, the terms of the variational bound in nats and the DDIM /
ancestral samplers (Ho et al. 2020; Nichol & Dhariwal 2021; Song et al. 2021), in the
manner of improved-diffusion's ``gaussian_diffusion.py``.

Timestep index i = 0..T-1 is the paper's t = i + 1:

    q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I),   abar_i = prod_{j <= i} (1 - beta_j)

The noise model is any callable ``eps_model(x_i, i) -> eps`` ((B, ...), (B,) long ->
(B, ...)); ``genlab.models.DDPM`` passes its (guided, averaged) denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import ConfigError

Schedule = Literal["linear", "cosine"]
Variance = Literal["large", "small"]
Sampler = Literal["ddim", "ancestral"]
EpsModel = Callable[[Tensor, Tensor], Tensor]


def beta_schedule(name: str, timesteps: int) -> Tensor:
    """(T,) float64 noise variances beta_i. linear: 1e-4 -> 0.02 (Ho et al.), scaled by
    1000 / T so any T spans the same noise levels (clipped at 0.999 for T < 21); cosine:
    abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2), s = 0.008, clipped at 0.999 (Nichol &
    Dhariwal 2021)."""
    if name == "linear":
        scale = 1000.0 / timesteps
        b = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return b.clamp(max=0.999)
    if name == "cosine":
        s = 0.008
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ConfigError(f"model.schedule={name!r} is not one of linear, cosine")


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (two diagonal
    Gaussians; ``genlab.metrics.gaussian_kl`` is the KL to a unit-variance prior, summed)."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1
    )


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi (standard-normal units), accurate in both tails:
    in log space from log Phi (``log_ndtr``), on the side of the mean where the smaller
    CDF values keep their precision (the upper tail as log(Phi(-lo) - Phi(-hi)))."""
    upper = (lo + hi) > 0  # the bin lies mostly above the mean: use the survival side
    a = torch.where(upper, -hi, lo)  # log(Phi(b) - Phi(a)) with a < b, both on the short side
    b = torch.where(upper, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))  # log(1 - Phi(a) / Phi(b))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise for x on the 256 bin centres of [-1, 1] (x = k / 127.5 - 1)
    under N(mean, e^{2 log_scale}) integrated over the bin [x - 1/255, x + 1/255], the
    first and last bins extended to -inf and +inf (Ho et al. 2020, eq. 13): the masses
    of the 256 values sum to 1. Computed from log Phi, so pixels far in the tails get
    their exact log-mass (no density-times-width fallback)."""
    inv_std = torch.exp(-log_scale)
    lo = inv_std * (x - mean - 1 / 255)
    hi = inv_std * (x - mean + 1 / 255)
    first = torch.special.log_ndtr(hi)  # (-inf, x + 1/255]
    last = torch.special.log_ndtr(-lo)  # [x - 1/255, inf)
    inner = _log_normal_mass(lo, hi)
    return torch.where(x < -0.999, first, torch.where(x > 0.999, last, inner))


def _per_image(v: Tensor) -> Tensor:
    """(B, ...) -> (B,): the sum over every dimension but the batch."""
    return v.flatten(1).sum(1)


class GaussianDiffusion(nn.Module):
    """A T-step Gaussian diffusion: schedule constants as (T,) float32 buffers (not saved:
    rebuilt from the hyper-parameters), and the process's maths.

    ``variance``: the reverse process's fixed variance, ``large`` (beta_i) or ``small``
    (the posterior's). ``clip_x0``: predicted x_0 clipped to [-1, 1] (images).
    ``discrete``: the decoder term is the discretised Gaussian of 8-bit images (else the
    Gaussian density of continuous data).
    """

    def __init__(
        self,
        timesteps: int,
        schedule: Schedule = "linear",
        variance: Variance = "large",
        clip_x0: bool = True,
        discrete: bool = True,
    ) -> None:
        super().__init__()
        if timesteps < 2:
            raise ConfigError(f"model.timesteps={timesteps}: a diffusion needs at least 2 steps")
        self.timesteps, self.variance = timesteps, variance
        self.clip_x0, self.discrete = clip_x0, discrete
        b = beta_schedule(schedule, timesteps)  # float64 constants, stored as float32
        abar = torch.cumprod(1 - b, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=b.dtype), abar[:-1]])
        post_var = b * (1 - abar_prev) / (1 - abar)  # posterior q(x_{i-1}|x_i, x_0)
        # log variances: the posterior's clipped at i = 0 (where it is 0), as in Ho's code
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        large = torch.log(torch.cat([post_var[1:2], b[1:]]))
        consts = {
            "noise_betas": b,  # beta_i of the schedule (not the optimiser's Adam betas)
            "abar": abar,
            "abar_prev": abar_prev,
            "post_logvar": post_logvar,
            "model_logvar": large if variance == "large" else post_logvar,
            "post_coef_x0": b * abar_prev.sqrt() / (1 - abar),
            "post_coef_xt": (1 - abar_prev) * (1 - b).sqrt() / (1 - abar),
        }
        for k, v in consts.items():
            self.register_buffer(k, v.float(), persistent=False)

    # ---- the forward process and its posterior -----------------------------------------
    @staticmethod
    def _at(v: Tensor, i: Tensor, like: Tensor) -> Tensor:
        """v[i] (B,) shaped to broadcast against like (B, ...)."""
        return v[i].view(-1, *[1] * (like.dim() - 1))

    def q_sample(self, x0: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps: a draw of q(x_i | x_0)."""
        a = self._at(self.abar, i, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def x0_from_eps(self, x: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_0 implied by x_i and a noise prediction (clipped to [-1, 1] with clip_x0)."""
        a = self._at(self.abar, i, x)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return x0.clamp(-1, 1) if self.clip_x0 else x0

    def posterior_mean(self, x0: Tensor, x: Tensor, i: Tensor) -> Tensor:
        """Mean of q(x_{i-1} | x_i, x_0)."""
        return self._at(self.post_coef_x0, i, x) * x0 + self._at(self.post_coef_xt, i, x) * x

    def simple_loss(self, eps_model: EpsModel, x0: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """Ho et al.'s simple loss: mean over pixels and batch of |eps - eps(x_i, i)|^2 (a
        reweighted bound, never the ELBO)."""
        return F.mse_loss(eps_model(self.q_sample(x0, i, eps), i), eps)

    # ---- the variational bound, nats per image ------------------------------------------
    def bound_term(
        self,
        eps_model: EpsModel,
        x0: Tensor,
        i: Tensor,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """The bound's term at timesteps i (B,), nats per image (B,): the decoder NLL
        -log p(x_0 | x_1) where i = 0, KL(q(x_{i-1}|x_i, x_0) || p(x_{i-1}|x_i))
        elsewhere; x_i drawn with noise ``eps`` (default: a fresh draw from generator)."""
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device)
        x = self.q_sample(x0, i, eps)
        mean = self.posterior_mean(self.x0_from_eps(x, i, eps_model(x, i)), x, i)
        logvar = self._at(self.model_logvar, i, x0)
        true_mean = self.posterior_mean(x0, x, i)
        kl = normal_kl(true_mean, self._at(self.post_logvar, i, x0), mean, logvar)
        if self.discrete:
            nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
        else:  # continuous data: the Gaussian decoder's density
            nll = 0.5 * ((x0 - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
        return torch.where(i == 0, _per_image(nll), _per_image(kl))

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || N(0, I)) per image (B,): no parameters, tiny for T = 1000."""
        a = self.abar[-1]
        logvar = torch.log(1 - a).expand_as(x0)
        return _per_image(normal_kl(a.sqrt() * x0, logvar, torch.zeros(()), torch.zeros(())))

    def strata(
        self, count: int, spacing: Literal["log", "uniform"] = "log"
    ) -> list[tuple[int, int]]:
        """``count`` contiguous [lo, hi) spans covering timesteps 1..T-1 (count <= T - 1).

        ``log``: edges near T^(k / count), so the spans grow geometrically with the
        timestep. The terms of the bound fall steeply with the noise level (their weight is
        about 1 / (2 i) for small i under the linear schedule), and one draw weighted by the
        size of a wide first stratum makes the estimate's spread; log spacing scores the
        smallest timesteps one by one. ``uniform``: equal spans (Ho et al.'s uniform t)."""
        T = self.timesteps
        count = max(1, min(int(count), T - 1))
        if spacing == "uniform":
            edges = torch.linspace(1, T, count + 1).round().long().tolist()
        else:
            edges = [1]
            for k in range(1, count + 1):
                target = round(T ** (k / count))
                # strictly increasing, and room left for the strata still to come
                edges.append(min(max(edges[-1] + 1, target), T - (count - k)))
        return list(zip(edges[:-1], edges[1:], strict=True))

    def nll_bound(
        self,
        eps_model: EpsModel,
        x0: Tensor,
        strata: int,
        generator: torch.Generator | None = None,
        spacing: Literal["log", "uniform"] = "log",
    ) -> dict[str, Tensor]:
        """The variational bound per image (B,) and its parts: prior_kl + decoder_nll
        (exact) + diffusion_kl, the sum over i = 1..T-1 estimated from ``strata``
        contiguous spans (``spacing``: see ``strata``), one uniform timestep in each, weighted
        by its size (unbiased; 0 or >= T - 1 strata: every timestep, exact)."""
        T, b, dev = self.timesteps, x0.shape[0], x0.device
        zero = torch.zeros(b, dtype=torch.long, device=dev)
        out = {
            "prior_kl": self.prior_kl(x0),
            "decoder_nll": self.bound_term(eps_model, x0, zero, generator),
        }
        if strata <= 0 or strata >= T - 1:
            kl = sum(self.bound_term(eps_model, x0, zero + i, generator) for i in range(1, T))
        else:
            kl = 0
            for lo, hi in self.strata(strata, spacing):
                i = torch.randint(lo, hi, (b,), generator=generator, device=dev)
                kl = kl + (hi - lo) * self.bound_term(eps_model, x0, i, generator)
        out["diffusion_kl"] = kl
        out["bound"] = out["prior_kl"] + out["decoder_nll"] + kl
        return out

    def log_prob_map(self, eps_model: EpsModel, x: Tensor, strata: int, draws: int) -> Tensor:
        """The bound's estimate of log p(x) (B,) for density maps: the mean of ``draws``
        estimates in which every point shares the timesteps and the noise (common random
        numbers: a smooth map whose per-draw bias averages out over the draws)."""
        g = torch.Generator(device=x.device).manual_seed(0)
        zero = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        spans = [(0, 1)] + self.strata(min(max(strata, 1), self.timesteps - 1))
        total = torch.zeros_like(zero, dtype=x.dtype)
        for _ in range(draws):
            for lo, hi in spans:
                i = zero + int(torch.randint(lo, hi, (1,), generator=g, device=x.device))
                eps = torch.randn(1, *x.shape[1:], generator=g, device=x.device).expand_as(x)
                total = total + (hi - lo) * self.bound_term(eps_model, x, i, None, eps)
        return -(self.prior_kl(x) + total / draws)

    # ---- sampling -------------------------------------------------------------------------
    def timestep_sequence(self, steps: int) -> list[int]:
        """``steps`` evenly spaced timesteps of 0..T-1 (all T when steps >= T)."""
        steps = min(int(steps), self.timesteps)
        return torch.linspace(0, self.timesteps - 1, steps).round().long().tolist()

    def sample(
        self,
        eps_model: EpsModel,
        z: Tensor,
        steps: int,
        sampler: Sampler = "ddim",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        on_step: Callable[[int, Tensor], None] | None = None,
    ) -> Tensor:
        """x_0 from x_T = z (B, ...) over an evenly spaced subsequence of ``steps``
        timesteps: DDIM (eta = 0 deterministic, Song et al. 2021) or ancestral sampling
        (over all T steps Ho et al.'s sampler; fewer steps use the respaced betas of
        Nichol & Dhariwal). ``on_step(k, x)`` sees the state after the k-th step."""
        if sampler not in ("ddim", "ancestral"):
            raise ValueError(f"sampler={sampler!r} is not one of ddim, ancestral")
        seq = self.timestep_sequence(steps)
        x, n = z, z.shape[0]
        for k, i in enumerate(reversed(seq)):
            prev = seq[len(seq) - k - 2] if k < len(seq) - 1 else -1
            it = torch.full((n,), i, dtype=torch.long, device=x.device)
            x0 = self.x0_from_eps(x, it, eps_model(x, it))
            a_t = self.abar[i]
            a_prev = self.abar[prev] if prev >= 0 else torch.ones((), device=x.device)
            if sampler == "ddim":
                # the noise the (clipped) x_0 implies: DDIM with eta = 1 is then exactly
                # the ancestral step with the posterior variance
                eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            else:  # the posterior of the respaced process
                beta = 1 - a_t / a_prev
                x = (beta * a_prev.sqrt() * x0 + (1 - a_prev) * (1 - beta).sqrt() * x) / (1 - a_t)
                small = beta * (1 - a_prev) / (1 - a_t)
                sigma = (small if self.variance == "small" else beta).sqrt()
            if prev >= 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
            if on_step is not None:
                on_step(k, x)
        return x
