"""Denoising diffusion probabilistic models (docs/models.md#ddpm; Ho et al. 2020).

Forward process over T steps (index i = 0..T-1 is the paper's t = i + 1):

    q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I),   abar_i = prod_{j <= i} (1 - beta_j)

The net predicts the noise eps of x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps and is
trained on the simple loss |eps - eps_theta(x_i, i)|^2 (mean over pixels: a reweighted
bound, logged as ``loss``, never as the ELBO). The true variational bound in nats per
image, on the 8-bit data at the centres of their bins in [-1, 1]:

    -log p(x_0) <= KL(q(x_T|x_0) || N(0, I))                    prior_kl
                 + sum_{i=1}^{T-1} KL(q(x_{i-1}|x_i, x_0) || p(x_{i-1}|x_i))   diffusion_kl
                 - log p(x_0 | x_1)                             decoder_nll

with the discretised Gaussian decoder (bins of width 2/255, the edge bins open), so
``elbo`` (= minus the bound) bounds the log-probability of the discrete image and
``bpd = -elbo / (D ln 2)`` sits in the same table as the flows' bits/dim. The sum over
timesteps is estimated without bias by stratified sampling: ``bound_timesteps`` strata
at test time (0: every timestep, exact), one stratum during validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import (
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import eval_generator, to_symmetric
from genlab.errors import ConfigError
from genlab.models.denoising import TIME_SCALE, IterativeSampler, frame_steps
from genlab.models.gan import Betas, Decay

Schedule = Literal["linear", "cosine"]
Variance = Literal["large", "small"]
Sampler = Literal["ddim", "ancestral"]


def beta_schedule(name: str, timesteps: int) -> Tensor:
    """(T,) float64 betas. linear: 1e-4 -> 0.02 (Ho et al.), scaled by 1000 / T so any T
    spans the same noise levels (clipped at 0.999 for T < 21); cosine:
    abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2), s = 0.008, betas clipped at 0.999
    (Nichol & Dhariwal 2021)."""
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


def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1
    )


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise for x on the 256 bin centres of [-1, 1] (x = k / 127.5 - 1)
    under N(mean, e^{2 log_scale}) integrated over the bin [x - 1/255, x + 1/255], the
    first and last bins extended to -inf and +inf (Ho et al. 2020, eq. 13): the masses
    of the 256 values sum to 1."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1 / 255))
    cdf_minus = _std_normal_cdf(inv_std * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_minus).clamp(min=1e-12))
    delta = cdf_plus - cdf_minus
    # Far in the tails the difference of CDFs underflows: use the density times the bin
    # width there (the log of a tiny but positive mass).
    mid = inv_std * centered
    log_pdf_mid = -0.5 * mid**2 - log_scale - 0.5 * math.log(2 * math.pi) + math.log(2 / 255)
    log_delta = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_pdf_mid)
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


class DDPM(IterativeSampler):
    """Epsilon-prediction diffusion with DDIM / ancestral sampling and the exact-unit bound."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        net: NetSpec | None = None,
        timesteps: PositiveInt = 1000,
        schedule: Schedule = "linear",
        variance: Variance = "large",
        sampler: Sampler = "ddim",
        sample_steps: PositiveInt = 100,
        eta: NonNegativeFloat = 0.0,
        clip_denoised: bool = True,
        bound_timesteps: NonNegativeInt = 20,
        conditional: bool = False,
        label_dropout: UnitInterval = 0.1,
        guidance: NonNegativeFloat = 0.0,
        lr: PositiveFloat = 2e-4,
        warmup_steps: NonNegativeInt = 500,
        betas: Betas = (0.9, 0.999),
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        ema_decay: Decay = 0.999,
        ema_start: NonNegativeInt = 0,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        if timesteps < 2:
            raise ConfigError(f"model.timesteps={timesteps}: a diffusion needs at least 2 steps")
        self.save_hyperparameters(logger=False)
        self.setup_denoiser(data_shape, num_classes, net, conditional)
        b = beta_schedule(schedule, timesteps)  # float64 constants, stored as float32
        abar = torch.cumprod(1 - b, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=b.dtype), abar[:-1]])
        post_var = b * (1 - abar_prev) / (1 - abar)  # posterior q(x_{i-1}|x_i, x_0)
        # log variances: the posterior's clipped at i = 0 (where it is 0), as in Ho's code
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        large = torch.log(torch.cat([post_var[1:2], b[1:]]))
        consts = {
            "betas": b,
            "abar": abar,
            "abar_prev": abar_prev,
            "post_logvar": post_logvar,
            "model_logvar": large if variance == "large" else post_logvar,
            "post_coef_x0": b * abar_prev.sqrt() / (1 - abar),
            "post_coef_xt": (1 - abar_prev) * (1 - b).sqrt() / (1 - abar),
        }
        for k, v in consts.items():
            self.register_buffer(k, v.float(), persistent=False)

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> the 256 bin centres of [-1, 1]; float data pass as they are."""
        return to_symmetric(x) if x.dtype == torch.uint8 else x.float()

    # ---- the forward process ----------------------------------------------------------
    def _at(self, v: Tensor, i: Tensor, like: Tensor) -> Tensor:
        """v[i] (B,) shaped to broadcast against like (B, ...)."""
        return v[i].view(-1, *[1] * (like.dim() - 1))

    def q_sample(self, x0: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps: a draw of q(x_i | x_0)."""
        a = self._at(self.abar, i, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def eps_of(self, x: Tensor, i: Tensor, y: Tensor | None = None, **kw) -> Tensor:
        """eps_theta(x_i, i) (guided when conditional)."""
        return self.predict(x, i.float() * (TIME_SCALE / self.hparams.timesteps), y, **kw)

    def x0_of(self, x: Tensor, i: Tensor, eps: Tensor) -> Tensor:
        """x_0 implied by x_i and a noise prediction, clipped to [-1, 1] for images."""
        a = self._at(self.abar, i, x)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return x0.clamp(-1, 1) if self.images and self.hparams.clip_denoised else x0

    def posterior_mean(self, x0: Tensor, x: Tensor, i: Tensor) -> Tensor:
        """Mean of q(x_{i-1} | x_i, x_0)."""
        return self._at(self.post_coef_x0, i, x) * x0 + self._at(self.post_coef_xt, i, x) * x

    # ---- objectives ----------------------------------------------------------------------
    def train_terms(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """The simple loss at uniform timesteps: mean over pixels of |eps - eps_theta|^2."""
        i = torch.randint(0, self.hparams.timesteps, (x.shape[0],), device=x.device)
        eps = torch.randn_like(x)
        loss = F.mse_loss(self.eps_of(self.q_sample(x, i, eps), i, y, guidance=0.0), eps)
        return {"loss": loss}

    def _sum(self, v: Tensor) -> Tensor:
        return v.flatten(1).sum(1)

    def term(
        self,
        x0: Tensor,
        i: Tensor,
        y: Tensor | None,
        g: torch.Generator | None,
        eps: Tensor | None = None,
    ) -> Tensor:
        """The bound's term at timesteps i (B,), nats per image: the decoder NLL where
        i = 0, KL(q(x_{i-1}|x_i, x_0) || p(x_{i-1}|x_i)) elsewhere; x_i drawn with noise
        ``eps`` (default: a fresh draw from g)."""
        if eps is None:
            eps = torch.randn(x0.shape, generator=g, device=x0.device)
        x = self.q_sample(x0, i, eps)
        mean = self.posterior_mean(self.x0_of(x, i, self.eps_of(x, i, y, guidance=0.0)), x, i)
        logvar = self._at(self.model_logvar, i, x0)
        kl = gaussian_kl(
            self.posterior_mean(x0, x, i), self._at(self.post_logvar, i, x0), mean, logvar
        )
        if self.images:
            nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar)
        else:  # continuous data: the Gaussian decoder's density
            nll = 0.5 * ((x0 - mean) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))
        return torch.where(i == 0, self._sum(nll), self._sum(kl))

    def prior_kl(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x_0) || N(0, I)) per image (B,): no parameters, tiny for T = 1000."""
        a = self.abar[-1]
        return self._sum(
            gaussian_kl(a.sqrt() * x0, torch.log(1 - a).expand_as(x0), 0, torch.zeros(()))
        )

    def nll_bound(
        self, x0: Tensor, y: Tensor | None, strata: int, g: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The variational bound per image (B,) and its parts: prior_kl + decoder_nll
        (exact) + diffusion_kl, the sum over i = 1..T-1 estimated from ``strata``
        contiguous strata, one uniform timestep in each, weighted by its size (unbiased;
        0 or >= T - 1 strata: every timestep, exact)."""
        T, b, dev = self.hparams.timesteps, x0.shape[0], x0.device
        zero = torch.zeros(b, dtype=torch.long, device=dev)
        out = {"prior_kl": self.prior_kl(x0), "decoder_nll": self.term(x0, zero, y, g)}
        if strata <= 0 or strata >= T - 1:
            kl = sum(self.term(x0, zero + i, y, g) for i in range(1, T))
        else:
            edges = torch.linspace(1, T, strata + 1).round().long().tolist()  # [1 .. T]
            kl = 0
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                i = torch.randint(lo, hi, (b,), generator=g, device=dev)
                kl = kl + (hi - lo) * self.term(x0, i, y, g)
        out["diffusion_kl"] = kl
        out["bound"] = out["prior_kl"] + out["decoder_nll"] + kl
        return out

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss (the simple loss at seeded timesteps), elbo (nats per image, minus the
        bound), its parts, and bpd for 8-bit images; the timestep sum is estimated from
        one stratum (validation) or ``bound_timesteps`` strata (test)."""
        g = eval_generator(batch[0].device, batch_idx)
        x0 = self.preprocess(batch[0])
        y = batch[1] if self.hparams.conditional else None
        i = torch.randint(0, self.hparams.timesteps, (x0.shape[0],), generator=g, device=x0.device)
        eps = torch.randn(x0.shape, generator=g, device=x0.device)
        loss = F.mse_loss(self.eps_of(self.q_sample(x0, i, eps), i, y, guidance=0.0), eps)
        parts = self.nll_bound(x0, y, self.hparams.bound_timesteps if full else 1, g)
        out = {"loss": loss, "elbo": -parts["bound"].mean()}
        out.update({k: parts[k].mean() for k in ("prior_kl", "decoder_nll", "diffusion_kl")})
        if batch[0].dtype == torch.uint8:
            out["bpd"] = parts["bound"].mean() / (self.dim * math.log(2))
        return out

    @torch.no_grad()
    def log_prob(self, x: Tensor, draws: int = 16) -> Tensor:
        """The bound's estimate of log p(x) (B,), nats, for toy2d density maps: the mean
        of ``draws`` estimates (``bound_timesteps`` strata each) in which every point
        shares the timesteps and the noise (common random numbers: a smooth map whose
        per-draw bias averages out over the draws)."""
        g = torch.Generator(device=x.device).manual_seed(0)
        T, zero = self.hparams.timesteps, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        strata = min(max(self.hparams.bound_timesteps, 1), T - 1)
        edges = torch.linspace(1, T, strata + 1).round().long().tolist()
        spans = [(0, 1, 1)] + [(a, b, b - a) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        total = torch.zeros_like(zero, dtype=x.dtype)
        for _ in range(draws):
            for lo, hi, w in spans:
                i = zero + int(torch.randint(lo, hi, (1,), generator=g, device=x.device))
                eps = torch.randn(1, *self.data_shape, generator=g, device=x.device).expand_as(x)
                total = total + w * self.term(x, i, None, None, eps)
        return -(self.prior_kl(x) + total / draws)

    # ---- sampling -------------------------------------------------------------------------
    def _sample(
        self, z, labels, steps, generator, record, sampler: Sampler | None = None, eta=None
    ):
        """DDIM (eta = 0: deterministic; Song et al. 2021) or ancestral sampling over an
        evenly spaced subsequence of ``steps`` timesteps (default ``model.sample_steps``;
        ancestral over all T steps is Ho et al.'s sampler, fewer steps use the respaced
        betas of Nichol & Dhariwal)."""
        h = self.hparams
        sampler = sampler or h.sampler
        eta = h.eta if eta is None else eta
        if sampler not in ("ddim", "ancestral"):
            raise ValueError(f"sampler={sampler!r} is not one of ddim, ancestral")
        if steps is None:
            steps = h.sample_steps
        steps = min(int(steps), h.timesteps)
        seq = torch.linspace(0, h.timesteps - 1, steps).round().long().tolist()
        marks, path = frame_steps(len(seq), record), ([z] if record else [])
        x, n = z, z.shape[0]
        for k, i in enumerate(reversed(seq)):
            prev = seq[len(seq) - k - 2] if k < len(seq) - 1 else -1
            it = torch.full((n,), i, dtype=torch.long, device=x.device)
            eps = self.eps_of(x, it, labels)
            x0 = self.x0_of(x, it, eps)
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
                mean = (beta * a_prev.sqrt() * x0 + (1 - a_prev) * (1 - beta).sqrt() * x) / (
                    1 - a_t
                )
                small = beta * (1 - a_prev) / (1 - a_t)
                sigma = (small if h.variance == "small" else beta).sqrt()
                x = mean
            if prev >= 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
            if k in marks:
                path.append(x)
        return (x.clamp(-1, 1) if self.images else x), path
