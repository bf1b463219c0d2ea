"""Denoising diffusion probabilistic models (docs/models/ddpm.md; Ho et al. 2020).

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
from typing import Any, Literal

import torch
from torch import Tensor

from genlab.checks import (
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import eval_generator, to_symmetric
from genlab.models.denoising import TIME_SCALE, DenoiserFamily, frame_steps
from genlab.nn.diffusion import EpsModel, GaussianDiffusion, Sampler, Schedule, Variance


class DDPM(DenoiserFamily):
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
        **kwargs: Any,
    ) -> None:
        """DDPM's own settings; the shared ones (conditioning, optimiser, EMA) are
        ``DenoiserFamily``'s."""
        own = {k: v for k, v in locals().items() if k not in ("self", "kwargs")}
        check_args(type(self), {**own, **kwargs}, "model")
        super().__init__(data_shape, num_classes, net, **kwargs)
        # The process's maths (nn/diffusion.py); its schedule buffers are not saved.
        self.diffusion = GaussianDiffusion(
            timesteps, schedule, variance, clip_x0=self.images and clip_denoised,
            discrete=self.images,
        )  # fmt: skip

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> the 256 bin centres of [-1, 1]; float data pass as they are."""
        return to_symmetric(x) if x.dtype == torch.uint8 else x.float()

    # ---- the noise model ----------------------------------------------------------------
    def eps_of(self, x: Tensor, i: Tensor, y: Tensor | None = None, **kw) -> Tensor:
        """eps_theta(x_i, i) (guided when conditional)."""
        return self.predict(x, i.float() * (TIME_SCALE / self.hparams.timesteps), y, **kw)

    def eps_model(self, y: Tensor | None, **kw) -> EpsModel:
        """eps_theta(., .) with the labels bound: what the diffusion maths calls."""
        return lambda x, i: self.eps_of(x, i, y, **kw)

    # ---- objectives ----------------------------------------------------------------------
    def train_terms(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """The simple loss at uniform timesteps: mean over pixels of |eps - eps_theta|^2."""
        i = torch.randint(0, self.hparams.timesteps, (x.shape[0],), device=x.device)
        eps = torch.randn_like(x)
        return {"loss": self.diffusion.simple_loss(self.eps_model(y, guidance=0.0), x, i, eps)}

    def nll_bound(
        self,
        x0: Tensor,
        y: Tensor | None,
        strata: int,
        g: torch.Generator | None = None,
        spacing: Literal["log", "uniform"] = "log",
    ) -> dict[str, Tensor]:
        """The variational bound per image (B,) and its parts (``GaussianDiffusion.nll_bound``
        with the unguided noise model)."""
        eps_model = self.eps_model(y, guidance=0.0)
        return self.diffusion.nll_bound(eps_model, x0, strata, g, spacing)

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
        loss = self.diffusion.simple_loss(self.eps_model(y, guidance=0.0), x0, i, eps)
        parts = self.nll_bound(x0, y, self.hparams.bound_timesteps if full else 1, g)
        out = {"loss": loss, "elbo": -parts["bound"].mean()}
        out.update({k: parts[k].mean() for k in ("prior_kl", "decoder_nll", "diffusion_kl")})
        per_image = {"elbo": -parts["bound"]}  # (B,) each
        if batch[0].dtype == torch.uint8:
            per_image["bpd"] = parts["bound"] / (self.dim * math.log(2))
            out["bpd"] = per_image["bpd"].mean()
        if full:  # the stratified estimate is noisy: its standard errors beside it
            out["per_image"] = per_image
        return out

    @torch.no_grad()
    def log_prob(self, x: Tensor, draws: int = 16) -> Tensor:
        """The bound's estimate of log p(x) (B,), nats, for toy2d density maps: the mean
        of ``draws`` estimates of ``bound_timesteps`` strata with shared timesteps and
        noise (``GaussianDiffusion.log_prob_map``)."""
        eps_model = self.eps_model(None, guidance=0.0)
        return self.diffusion.log_prob_map(eps_model, x, self.hparams.bound_timesteps, draws)

    # ---- sampling -------------------------------------------------------------------------
    def _sample(
        self, z, labels, steps, generator, record, sampler: Sampler | None = None, eta=None
    ):
        """DDIM or ancestral sampling (``GaussianDiffusion.sample``) over ``steps``
        timesteps (default ``model.sample_steps``); ``record`` frames of the path."""
        hp = self.hparams
        steps = hp.sample_steps if steps is None else steps
        marks = frame_steps(len(self.diffusion.timestep_sequence(steps)), record)
        path = [z] if record else []

        def keep(k: int, x: Tensor) -> None:
            if k in marks:
                path.append(x)

        x = self.diffusion.sample(
            self.eps_model(labels), z, steps, sampler or hp.sampler, hp.eta if eta is None else eta,
            generator, keep if record else None,
        )  # fmt: skip
        return (x.clamp(-1, 1) if self.images else x), path
