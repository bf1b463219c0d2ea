"""Discrete-latent VAE: N categorical variables with K categories each
(docs/models/gumbel_vae.md).

q(z|x) = prod_n Cat(z_n; softmax(logits_n)), p(z) uniform, one-hot codes z: (B, N, K).
All terms are nats per image (sums over pixels and latents, means over the batch):

    kl    = sum_n sum_k q log(q K)                       (analytic, exact)
    recon = -log p(x | z)                                (one sample z)
    elbo  = -(recon + kl), with z an exact one-hot sample ~ q(z|x)

The encoder gradient of E_q[log p(x|z)] is estimated three ways (``estimator``):

- ``gumbel``: z = softmax((logits + g) / tau), decoded as it is (Jang et al. 2016): a
  biased, low-variance gradient of a relaxed objective; tau is annealed per step as
  max(tau_min, tau0 exp(-tau_rate * step)).
- ``st_gumbel``: forward the one-hot argmax of that soft sample, backward its gradient.
- ``reinforce``: z ~ q exactly; score-function gradient (f - b) grad log q(z|x) with
  f = log p(x|z) and b a moving average of f (Williams 1992): unbiased, high variance.

Validation and test always use exact one-hot samples, so ``val/elbo`` and ``test/elbo``
are true bounds on log p(x) whatever the estimator, and comparable across estimators.
``train/elbo`` is logged only where the training forward pass is discrete (st_gumbel,
reinforce); the relaxed gumbel objective is ``train/loss`` (and ``{val,test}/relaxed_loss``
for the gumbel estimators) and is not a bound.
Every ``grad_var_every`` steps ``train/grad_var`` is the variance of the encoder-gradient
estimate over ``grad_var_samples`` repeated draws on one fixed training batch (mean over
encoder parameters), so the estimators can be compared.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Annotated, Literal

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
    Range,
    check_args,
)
from genlab.data.transforms import eval_generator
from genlab.errors import ConfigError, require_images
from genlab.metrics import (
    categorical_kl_uniform,
    importance_weighted_bound,
    log_categorical,
    sample_chunks,
)
from genlab.models.common import GenlabModule, PixelLikelihood, make_optimizer
from genlab.nn import build_net
from genlab.nn.categorical import gumbel_softmax, sample_one_hot, steps_to_floor, temperature

log = logging.getLogger(__name__)


class GumbelVAE(PixelLikelihood, GenlabModule):
    """VAE with ``n_latents`` categorical latents of ``n_categories`` classes each."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        n_latents: PositiveInt = 20,
        n_categories: Annotated[int, Range(ge=2)] = 10,
        net: NetSpec | None = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        sigma: PositiveFloat = 1.0,
        learn_sigma: bool = False,
        estimator: Literal["gumbel", "st_gumbel", "reinforce"] = "gumbel",
        tau0: PositiveFloat = 1.0,
        tau_min: PositiveFloat = 0.5,
        tau_rate: NonNegativeFloat = 3e-5,
        baseline_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99,
        grad_var_every: NonNegativeInt = 500,
        grad_var_samples: Annotated[int, Range(ge=2)] = 16,
        grad_var_batch: PositiveInt = 100,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        iwae_samples: PositiveInt = 1000,
        iwae_batch_rows: PositiveInt | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        if tau_min > tau0:
            raise ConfigError(
                f"model.tau_min={tau_min} is above model.tau0={tau0}: the temperature anneals "
                "from tau0 down to tau_min"
            )
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        if likelihood == "bernoulli":
            require_images("model.likelihood=bernoulli", self.data_shape)
        code_dim = n_latents * n_categories
        nets = build_net(net)
        self.encoder = nets.encoder(self.data_shape, code_dim)  # -> logits (B, N*K)
        self.decoder = nets.decoder(code_dim, self.data_shape)  # one-hot codes (B, N*K) ->
        self.init_likelihood(sigma, learn_sigma)
        # REINFORCE baseline: a bias-corrected moving average of f = log p(x|z) (as Adam's
        # moments), kept on the device and saved in checkpoints, so resuming keeps it.
        self.register_buffer("baseline_sum", torch.zeros(()))
        self.register_buffer("baseline_weight", torch.zeros(()))
        self.grad_var_batch: Tensor | None = None  # the fixed batch for train/grad_var

    # ---- the model, as named stages ---------------------------------------------------
    def posterior_logits(self, x: Tensor) -> Tensor:
        """(B, *data_shape) -> logits of q(z|x): (B, N, K)."""
        hp = self.hparams
        return self.encoder(x).view(x.shape[0], hp.n_latents, hp.n_categories)

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean of the one-hot code, q(z|x) flattened: (B, N*K)."""
        return torch.softmax(self.posterior_logits(x), -1).flatten(1)

    def decode_codes(self, z: Tensor) -> Tensor:
        """Codes (B, N, K) (one-hot or relaxed) -> decoder output (B, *data_shape)."""
        return self.decode(z.flatten(-2))

    @property
    def tau(self) -> float:
        """The Gumbel-Softmax temperature at the current step (a pure function of it,
        so a resumed run continues the schedule)."""
        hp = self.hparams
        return temperature(self.global_step, hp.tau0, hp.tau_min, hp.tau_rate)

    @property
    def baseline(self) -> Tensor:
        """The REINFORCE baseline b (0 before the first update)."""
        return self.baseline_sum / self.baseline_weight.clamp_min(1e-12)

    def log_prior(self) -> float:
        """log p(z) of any one-hot code under the uniform prior: -N log K."""
        return -self.hparams.n_latents * math.log(self.hparams.n_categories)

    def objective(
        self,
        x: Tensor,
        estimator: str | None = None,
        generator: torch.Generator | None = None,
        update_baseline: bool = False,
        tau: float | None = None,
    ) -> dict[str, Tensor]:
        """One-sample training terms (B,): ``recon``, ``kl`` and ``surrogate``, whose
        gradient is the chosen estimator's gradient of recon + kl (at temperature
        ``tau``, default the schedule's current one)."""
        estimator = estimator or self.hparams.estimator
        logits = self.posterior_logits(x)
        kl = categorical_kl_uniform(logits)
        if estimator == "reinforce":
            z = sample_one_hot(logits, generator)  # exact sample, no gradient path
            log_px = self.log_likelihood(x, self.decode_codes(z))  # f: (B,)
            b = self.baseline
            signal = (log_px - b).detach()
            # d/dphi of -signal * log q(z|x) is -(f - b) grad log q: the score function.
            surrogate = -log_px + kl - signal * log_categorical(z, logits)
            if update_baseline:
                d = self.hparams.baseline_decay
                self.baseline_sum.mul_(d).add_((1 - d) * log_px.detach().mean())
                self.baseline_weight.mul_(d).add_(1 - d)
        else:
            tau = self.tau if tau is None else tau
            z = gumbel_softmax(logits, tau, estimator == "st_gumbel", generator)
            log_px = self.log_likelihood(x, self.decode_codes(z))
            surrogate = -log_px + kl
        return {"recon": -log_px, "kl": kl, "surrogate": surrogate, "logits": logits}

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The discrete model's ELBO terms (B,) with one exact sample z ~ q(z|x)."""
        logits = self.posterior_logits(x)
        z = sample_one_hot(logits, generator)
        recon = -self.log_likelihood(x, self.decode_codes(z))
        kl = categorical_kl_uniform(logits)
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "logits": logits}

    @torch.no_grad()
    def iwae_log_likelihood(self, x: Tensor, k: int, generator=None) -> Tensor:
        """log p(x) >= log mean_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q exactly: (B,)."""
        logits = self.posterior_logits(x)
        b = x.shape[0]
        log_w = []
        for c in sample_chunks(k, b, x.device, self.hparams.iwae_batch_rows):
            z = sample_one_hot(logits.expand(c, *logits.shape), generator)  # (c, B, N, K)
            out = self.decode_codes(z.flatten(0, 1))
            xs = x.unsqueeze(0).expand(c, *x.shape).flatten(0, 1)
            log_px = self.log_likelihood(xs, out).view(c, b)
            log_w.append(log_px + self.log_prior() - log_categorical(z, logits))
        return importance_weighted_bound(torch.cat(log_w))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of E[x|z], z uniform one-hot codes: (n, *data_shape)."""
        hp = self.hparams
        flat = torch.zeros(n, hp.n_latents, hp.n_categories, device=self.device)
        return self.mean(self.decode_codes(sample_one_hot(flat, generator)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the posterior mode z = one-hot argmax q(z|x): (B, *data_shape)."""
        logits = self.posterior_logits(x)
        z = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        return self.mean(self.decode_codes(z))

    def encoder_grad_variance(
        self,
        x: Tensor,
        n_samples: int,
        estimator: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Variance of the encoder-gradient estimate over ``n_samples`` draws of the
        latent noise on the fixed batch x, averaged over encoder parameters: a scalar.

        Only the latent noise varies (x is fixed), so this is the estimator's own
        variance at the current parameters; the baseline is held fixed.
        """
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        grads = []
        with torch.enable_grad():
            for _ in range(n_samples):
                loss = self.objective(x, estimator, generator)["surrogate"].mean()
                g = torch.autograd.grad(loss, params)
                grads.append(torch.cat([t.flatten() for t in g]))
        return torch.stack(grads).var(0).mean()

    # ---- Lightning --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches
        if hp.estimator == "reinforce" or not math.isfinite(total):
            return
        need = steps_to_floor(hp.tau0, hp.tau_min, hp.tau_rate)
        if need > total:
            end = temperature(int(total), hp.tau0, hp.tau_min, hp.tau_rate)
            log.warning(
                "model.tau_rate=%g reaches tau_min=%g only after %d steps; this run has %d, "
                "so train/tau ends at %.3f: set model.tau_rate>=%.3g to reach the floor",
                hp.tau_rate,
                hp.tau_min,
                math.ceil(need),
                int(total),
                end,
                math.log(hp.tau0 / hp.tau_min) / total,
            )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self.preprocess(batch[0])
        hp = self.hparams
        if self.grad_var_batch is None:
            # The first batch's first images, kept (binarised once) for train/grad_var.
            self.grad_var_batch = x[: hp.grad_var_batch].detach().clone()
        terms = self.objective(x, update_baseline=True)
        loss = (terms["recon"] + terms["kl"]).mean()
        values = {"loss": loss, "recon": terms["recon"].mean(), "kl": terms["kl"].mean()}
        if hp.estimator != "gumbel":  # a discrete forward pass: an unbiased ELBO estimate
            values["elbo"] = -loss
        if hp.estimator != "reinforce":
            values["tau"] = torch.full((), self.tau, device=loss.device)
        self.log_train(values)
        if hp.grad_var_every > 0 and self.global_step % hp.grad_var_every == 0:
            self._log_grad_var()
        return terms["surrogate"].mean()

    def _log_grad_var(self) -> None:
        # Logged straight to the loggers: this step need not be a logging step.
        n = self.hparams.grad_var_samples
        value = float(self.encoder_grad_variance(self.grad_var_batch, n))
        for logger in self.loggers:
            logger.log_metrics({"train/grad_var": value}, step=self.global_step)

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss (= -elbo), recon, kl, elbo with an exact one-hot sample; relaxed_loss (the
        gumbel estimators' objective at the current tau, not a bound); with ``full`` also
        nll_iwae (``iwae_samples`` exact samples). Nats per image."""
        g = eval_generator(batch[0].device, batch_idx)
        x = self.preprocess(batch[0], g)
        terms = self.elbo(x, g)
        out = {k: terms[k].mean() for k in ("recon", "kl", "elbo")}
        out["loss"] = -out["elbo"]
        if self.hparams.estimator != "reinforce":
            r = self.objective(x, "gumbel", g)
            out["relaxed_loss"] = (r["recon"] + r["kl"]).mean()
        if full:
            g = eval_generator(x.device, batch_idx, seed=4321)
            nll = -self.iwae_log_likelihood(x, self.hparams.iwae_samples, g)
            out["nll_iwae"] = nll.mean()
            out["per_image"] = {"nll_iwae": nll, "elbo": terms["elbo"]}  # both sampled
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return make_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)
