"""Variational auto-encoder (Kingma & Welling 2014), MODELS.md §2.

All terms are sums over pixels / latent dims, averaged over the batch: nats per image.
    recon = -log p(x|z),  z = mu + sigma * eps        (one sample)
    kl    = KL(q(z|x) || N(0, I))                     (analytic)
    elbo  = -(recon + kl)                             (a bound on log p(x) for any beta)
    loss  = recon + beta * kl                         (the trained objective)
At test time: test/nll_iwae = -log (1/k) sum_k p(x, z_k) / q(z_k|x) (Burda et al. 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from genlab.data.transforms import eval_generator
from genlab.errors import ConfigError, require_choice, require_images, require_positive
from genlab.metrics import (
    LatentMoments,
    active_units,
    gaussian_kl,
    importance_weighted_bound,
    log_normal,
    log_standard_normal,
)
from genlab.models.common import (
    GenlabModule,
    PixelLikelihood,
    StepMetrics,
    check_optimizer,
    make_optimizer,
)
from genlab.nn import build_net


class VAE(PixelLikelihood, GenlabModule):
    """Gaussian-latent VAE with a Bernoulli (binarised data) or Gaussian ([0, 1] data) decoder."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: int = 16,
        net: dict | None = None,
        likelihood: str = "bernoulli",
        sigma: float = 1.0,
        learn_sigma: bool = False,
        beta: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "Adam",
        iwae_samples: int = 1000,
        iwae_batch_rows: int = 16384,
    ) -> None:
        super().__init__()
        require_positive(
            "model",
            latent_dim=latent_dim,
            sigma=sigma,
            iwae_samples=iwae_samples,
            iwae_batch_rows=iwae_batch_rows,
        )
        require_choice("model", "likelihood", likelihood, ["bernoulli", "gaussian"])
        if beta < 0:
            raise ConfigError(f"model.beta must be >= 0, got {beta!r}")
        check_optimizer(optimizer, lr, weight_decay)
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        if likelihood == "bernoulli":
            require_images("model.likelihood=bernoulli", self.data_shape)
        nets = build_net(net)
        self.encoder = nets.encoder(self.data_shape, 2 * latent_dim)  # -> (mu, log_var)
        self.decoder = nets.decoder(latent_dim, self.data_shape)  # -> logits or mean
        self.init_likelihood(sigma, learn_sigma)
        self.moments = LatentMoments(latent_dim)
        self.step_metrics = StepMetrics()

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
        """log p(z | y) summed over latent dims: (..., d) -> (...)."""
        m = self.prior_mean(y)
        return log_standard_normal(z if m is None else z - m)

    def elbo(self, x: Tensor, generator=None, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example terms (B,) and the posterior parameters."""
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var, generator)
        recon = -self.log_likelihood(x, self.decode(z))
        kl = gaussian_kl(mu, log_var, self.prior_mean(y))
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "mu": mu, "log_var": log_var}

    @torch.no_grad()
    def iwae_log_likelihood(
        self, x: Tensor, k: int, generator=None, y: Tensor | None = None
    ) -> Tensor:
        """Importance-weighted bound log p(x) >= log mean_k p(x, z_k)/q(z_k|x): (B,)."""
        mu, log_var = self.encode(x)
        b = x.shape[0]
        chunk = max(1, self.hparams.iwae_batch_rows // b)
        log_w = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
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
    def _terms(self, batch, batch_idx: int, split: str) -> dict[str, Tensor]:
        x_raw, y = batch
        g = None if split == "train" else eval_generator(x_raw.device, batch_idx)
        x = self.preprocess(x_raw, g)
        t = self.elbo(x, g, y)
        t["x"], t["y"] = x, y
        t["loss"] = (t["recon"] + self.hparams.beta * t["kl"]).mean()
        values = {f"{split}/{k}": t[k].mean() for k in ("loss", "recon", "kl", "elbo")}
        if split == "train":
            self.step_metrics(self, values)
        else:
            self.log_dict(values, batch_size=x.shape[0], sync_dist=True)
        return t

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._terms(batch, batch_idx, "train")["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        self.moments.update(self._terms(batch, batch_idx, "val")["mu"])

    def on_validation_epoch_end(self) -> None:
        _, cov = self.moments.compute()
        self.moments.reset()
        self.log("val/active_units", active_units(cov).float(), sync_dist=False)

    def test_step(self, batch, batch_idx: int) -> None:
        t = self._terms(batch, batch_idx, "test")
        g = eval_generator(t["x"].device, batch_idx, seed=4321)
        ll = self.iwae_log_likelihood(t["x"], self.hparams.iwae_samples, g, t["y"])
        self.log("test/nll_iwae", -ll.mean(), batch_size=ll.shape[0], sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return make_optimizer(self.parameters(), h.optimizer, h.lr, h.weight_decay)
