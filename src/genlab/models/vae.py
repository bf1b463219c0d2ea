"""Variational auto-encoder (Kingma & Welling 2014); docs/models/vae.md.

All terms are sums over pixels / latent dims, averaged over the batch: nats per image.
    recon = -log p(x|z),  z = mu + sigma * eps        (one sample)
    kl    = KL(q(z|x) || N(0, I))                     (analytic)
    elbo  = -(recon + kl)                             (a bound on log p(x) for any beta)
    loss  = recon + beta * kl                         (the trained objective)
At test time: test/nll_iwae = -log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2015).

``objective`` trains on an importance-weighted bound instead, from log weights
log w = log p(x|z) + log p(z) - log q(z|x) of z ~ q(z|x) (K = ``samples``, M =
``outer_samples``; Rainforth et al. 2018):
    iwae   log mean_K w                                   (Burda et al. 2015)
    miwae  mean_M log mean_K w
    ciwae  beta_c mean_K log w + (1 - beta_c) log mean_K w
    piwae  the decoder on IWAE over all M K samples, the encoder on MIWAE(M, K)
``prior=vamp``: the VampPrior p(z) = (1/P) sum_p q(z | u_p) with P learned pseudo-inputs
u_p (Tomczak & Welling 2018); its KL term is a one-sample estimate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
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
from genlab.data.transforms import eval_generator
from genlab.errors import ConfigError, require_images
from genlab.metrics import (
    LatentMoments,
    active_units,
    gaussian_kl,
    importance_weighted_bound,
    log_normal,
    log_normal_mixture,
    log_standard_normal,
    sample_chunks,
)
from genlab.models.common import GenlabModule, PixelLikelihood, make_optimizer, with_lr_decay
from genlab.nn import build_net

Objective = Literal["elbo", "iwae", "miwae", "ciwae", "piwae"]


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters take no gradient (values unchanged)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(f)


@contextlib.contextmanager
def _frozen_params(model: torch.nn.Module) -> Iterator[None]:
    """The generative side's parameters outside the decoder: a learned sigma and the
    VampPrior's pseudo-inputs."""
    extra = [p for n, p in model.named_parameters() if n in ("log_sigma", "pseudo")]
    flags = [p.requires_grad for p in extra]
    for p in extra:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(extra, flags, strict=True):
            p.requires_grad_(f)


class VAE(PixelLikelihood, GenlabModule):
    """Gaussian-latent VAE with a Bernoulli (binarised data) or Gaussian ([0, 1] data) decoder."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 16,
        net: NetSpec | None = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        sigma: PositiveFloat = 1.0,
        learn_sigma: bool = False,
        beta: NonNegativeFloat = 1.0,
        lr: PositiveFloat = 1e-3,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        iwae_samples: PositiveInt = 1000,
        iwae_batch_rows: PositiveInt | None = None,
        objective: Objective = "elbo",
        samples: PositiveInt = 1,
        outer_samples: PositiveInt = 1,
        ciwae_beta: UnitInterval = 0.5,
        prior: Literal["normal", "vamp"] = "normal",
        pseudo_inputs: PositiveInt = 500,
        kl_warmup_epochs: NonNegativeInt = 0,
        lr_final: PositiveFloat | None = None,
        lr_milestones: Sequence[PositiveInt] = (),
        lr_gamma: PositiveFloat = 0.1,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        if likelihood == "bernoulli":
            require_images("model.likelihood=bernoulli", self.data_shape)
        if objective in ("miwae", "piwae") and outer_samples < 2:
            raise ConfigError(
                f"model.objective={objective} averages model.outer_samples >= 2 bounds: "
                "set e.g. model.outer_samples=8 model.samples=8"
            )
        if lr_milestones and lr_final is not None:
            raise ConfigError(
                "model.lr_final (exponential decay) and model.lr_milestones (step decays) "
                "are two schedules: set one of them"
            )
        nets = build_net(net)
        self.encoder = nets.encoder(self.data_shape, 2 * latent_dim)  # -> (mu, log_var)
        self.decoder = nets.decoder(latent_dim, self.data_shape)  # -> logits or mean
        self.init_likelihood(sigma, learn_sigma)
        self.moments = LatentMoments(latent_dim)
        if prior == "vamp":
            if type(self).prior_mean is not VAE.prior_mean:
                raise ConfigError(f"model.prior=vamp: {type(self).__name__} has its own prior")
            # Pseudo-inputs in data space, started near mid-grey (Tomczak & Welling use
            # N(0, 0.01) around the data's scale); learned with the networks.
            self.pseudo = torch.nn.Parameter(
                0.5 + 0.01 * torch.randn(pseudo_inputs, *self.data_shape)
            )

    # ---- the model, as named stages ---------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, *data_shape) -> mu, log_var: (B, d)."""
        return self.encoder(x).chunk(2, dim=-1)

    def reparameterize(self, mu: Tensor, log_var: Tensor, generator=None) -> Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + (0.5 * log_var).exp() * eps

    def prior_mean(self, y: Tensor | None) -> Tensor | None:
        """The prior's mean for labels y: None is N(0, I) (the CVAE learns one per class)."""
        return None

    def log_prior(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(z | y) summed over latent dims: (..., d) -> (...). The VampPrior:
        log (1/P) sum_p q(z | u_p), a mixture over the pseudo-inputs' posteriors."""
        if self.hparams.get("prior", "normal") == "vamp":
            mu, log_var = self.encode(self.pseudo)  # (P, d) each
            return log_normal_mixture(z, mu, log_var)
        m = self.prior_mean(y)
        return log_standard_normal(z if m is None else z - m)

    def elbo(self, x: Tensor, generator=None, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example terms (B,) and the posterior parameters (KL analytic for Gaussian
        priors, a one-sample estimate log q(z|x) - log p(z) for the VampPrior)."""
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var, generator)
        recon = -self.log_likelihood(x, self.decode(z))
        if self.hparams.get("prior", "normal") == "vamp":
            kl = log_normal(z, mu, log_var) - self.log_prior(z, y)
        else:
            kl = gaussian_kl(mu, log_var, self.prior_mean(y))
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "mu": mu, "log_var": log_var}

    def log_weights(
        self, x: Tensor, n: int, generator=None, y: Tensor | None = None, eps=None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log w = log p(x|z) + log p(z) - log q(z|x) of n reparameterised draws
        z = mu + sigma eps ~ q(z|x): (n, B), with mu, log_var (B, d); ``eps`` (n, B, d)
        given, or drawn from ``generator``."""
        mu, log_var = self.encode(x)
        if eps is None:
            eps = torch.randn((n, *mu.shape), generator=generator, device=mu.device)
        z = mu + (0.5 * log_var).exp() * eps.to(mu.dtype)  # (n, B, d)
        out = self.decode(z.flatten(0, 1))  # (n*B, *data_shape)
        xs = x.unsqueeze(0).expand(n, *x.shape).flatten(0, 1)
        log_px = self.log_likelihood(xs, out).view(n, x.shape[0])
        return log_px + self.log_prior(z, y) - log_normal(z, mu, log_var), mu, log_var

    def weighted_objective(self, x: Tensor, y: Tensor | None = None, generator=None) -> Tensor:
        """The per-example importance-weighted objective (B,) that ``model.objective``
        names (a lower bound on log p(x) to maximise; see the module docstring)."""
        hp = self.hparams
        k, m = hp.samples, hp.outer_samples if hp.objective in ("miwae", "piwae") else 1
        if hp.objective == "piwae":
            # One set of M K draws; two graphs over it.
            d = hp.latent_dim
            eps = torch.randn((m * k, x.shape[0], d), generator=generator, device=x.device)
            # Decoder (and prior): IWAE over all M K draws, the encoder held fixed.
            with _frozen(self.encoder):
                log_w, _, _ = self.log_weights(x, m * k, y=y, eps=eps)
            theta = importance_weighted_bound(log_w)
            # Encoder: MIWAE(M, K) through a decoder (and prior) held fixed.
            with _frozen(self.decoder), _frozen_params(self):
                log_w, _, _ = self.log_weights(x, m * k, y=y, eps=eps)
            phi = importance_weighted_bound(log_w.view(m, k, -1).transpose(0, 1)).mean(0)
            # Each network receives only its own objective's gradient; the value is phi's.
            return phi + (theta - theta.detach())
        log_w, _, _ = self.log_weights(x, m * k, generator, y)
        if hp.objective == "miwae":
            return importance_weighted_bound(log_w.view(m, k, -1).transpose(0, 1)).mean(0)
        iwae = importance_weighted_bound(log_w)
        if hp.objective == "ciwae":
            return hp.ciwae_beta * log_w.mean(0) + (1 - hp.ciwae_beta) * iwae
        return iwae

    @torch.no_grad()
    def iwae_log_likelihood(
        self, x: Tensor, k: int, generator=None, y: Tensor | None = None
    ) -> Tensor:
        """Importance-weighted bound log p(x) >= log mean_k p(x, z_k)/q(z_k|x): (B,)."""
        mu, log_var = self.encode(x)
        b = x.shape[0]
        log_w = []
        for c in sample_chunks(k, b, x.device, self.hparams.iwae_batch_rows):
            eps = torch.randn((c, *mu.shape), generator=generator, device=mu.device)
            z = mu + (0.5 * log_var).exp() * eps  # (c, B, d)
            out = self.decode(z.flatten(0, 1))  # (c*B, *data_shape)
            xs = x.unsqueeze(0).expand(c, *x.shape).flatten(0, 1)
            log_px = self.log_likelihood(xs, out).view(c, b)
            log_w.append(log_px + self.log_prior(z, y) - log_normal(z, mu, log_var))
        return importance_weighted_bound(torch.cat(log_w))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of E[x|z], z ~ N(0, I): (n, *data_shape) in [0, 1]."""
        z = torch.randn(n, self.hparams.latent_dim, generator=generator, device=self.device)
        return self.mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z = mu(x)]: (B, *data_shape)."""
        return self.mean(self.decode(self.encode(x)[0]))

    # ---- Lightning --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        x_raw, y = batch[0], batch[1]
        x = self.preprocess(x_raw)
        if self.hparams.get("objective", "elbo") != "elbo":
            bound = self.weighted_objective(x, y)  # (B,): a tighter bound, not the ELBO
            loss = -bound.mean()
            self.log_train({"loss": loss, self.hparams.objective: bound.detach().mean()})
            return loss
        terms = self.elbo(x, None, y)
        loss = (terms["recon"] + self.kl_weight() * terms["kl"]).mean()
        self.log_train({"loss": loss, **{k: terms[k].mean() for k in ("recon", "kl", "elbo")}})
        return loss

    def kl_weight(self) -> float:
        """The KL term's weight in training: ``beta``, or during the first
        ``kl_warmup_epochs`` a linear rise from 0 to beta by step (the warm-up of
        Bowman et al. 2016 and Tomczak & Welling 2018; the loss is then not the ELBO,
        which ``train/elbo`` keeps logging)."""
        hp = self.hparams
        warm = hp.kl_warmup_epochs
        if not warm or self._trainer is None:
            return hp.beta
        per_epoch = max(int(self.trainer.num_training_batches or 1), 1)
        return hp.beta * min(1.0, self.trainer.global_step / (warm * per_epoch))

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss (= recon + beta kl), recon, kl, elbo; with ``full`` also nll_iwae, the
        importance-weighted bound with ``iwae_samples`` samples. Nats per image."""
        x_raw, y = batch[0], batch[1]
        g = eval_generator(x_raw.device, batch_idx)
        x = self.preprocess(x_raw, g)
        terms = self.elbo(x, g, y)
        out = {k: terms[k].mean() for k in ("recon", "kl", "elbo")}
        out["loss"] = (terms["recon"] + self.hparams.beta * terms["kl"]).mean()
        if self.hparams.get("objective", "elbo") != "elbo":  # the trained bound, seeded
            bound = self.weighted_objective(x, y, eval_generator(x.device, batch_idx, seed=99))
            out[self.hparams.objective] = bound.mean()
            out["loss"] = -out[self.hparams.objective]
        if full:
            g = eval_generator(x.device, batch_idx, seed=4321)
            k = self.hparams.iwae_samples
            if getattr(self._trainer, "fast_dev_run", False):
                k = min(k, 64)  # a smoke run stays a smoke run (k = 5000 takes minutes)
            nll = -self.iwae_log_likelihood(x, k, g, y)
            out["nll_iwae"] = nll.mean()
            out["per_image"] = {"nll_iwae": nll, "elbo": terms["elbo"]}  # both sampled
        return out

    def validation_step(self, batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        # Posterior means of the same (identically binarised) batch, for val/active_units.
        x = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))
        self.moments.update(self.encode(x)[0])

    def on_validation_epoch_end(self) -> None:
        _, cov = self.moments.compute()
        self.moments.reset()
        self.log("val/active_units", active_units(cov).float(), sync_dist=False)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        hp = self.hparams
        opt = make_optimizer(self.parameters(), hp.optimizer, hp.lr, hp.weight_decay)
        if hp.get("lr_milestones"):  # step decays (pythae's VAE scripts), per epoch
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(hp.lr_milestones), hp.lr_gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.get("lr_final") is None:  # constant (and checkpoints from before lr_final)
            return opt
        return with_lr_decay(opt, hp.lr, hp.lr_final, self.trainer.max_epochs)
