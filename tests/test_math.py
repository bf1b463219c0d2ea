"""Math: KL against Monte Carlo, ELBO <= IWAE <= log p(x) on a model with known likelihood,
and the linear AE against the truncated SVD."""

from __future__ import annotations

import math

import torch

from genlab.metrics import gaussian_kl, log_normal, log_standard_normal
from genlab.models import VAE
from genlab.train import train


def test_analytic_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    log_var = torch.randn(4, 6, generator=g, dtype=torch.float64)
    n = 200_000
    z = mu + (0.5 * log_var).exp() * torch.randn(n, 4, 6, generator=g, dtype=torch.float64)
    samples = log_normal(z, mu, log_var) - log_standard_normal(z)  # (n, 4)
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    kl = gaussian_kl(mu, log_var)
    assert torch.all((mc - kl).abs() < 5 * se), (mc, kl, se)
    assert torch.allclose(gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(3))


def _linear_gaussian_vae(exact_posterior: bool) -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I) with orthogonal columns of W, so the exact
    posterior is N(A(x - b), diag(v)) with A = W^T / (c + s^2), v = s^2 / (c + s^2), c = |w_j|^2,
    and log p(x) = log N(x; b, W W^T + s^2 I). Returns the model, data x and log p(x)."""
    torch.manual_seed(0)
    d_x, d_z, s, c = 6, 3, 0.5, 4.0
    q, _ = torch.linalg.qr(torch.randn(d_x, d_z, dtype=torch.float64))
    w = q * math.sqrt(c)  # orthogonal columns, |w_j|^2 = c
    b = torch.randn(d_x, dtype=torch.float64)
    vae = VAE(
        data_shape=(d_x,),
        latent_dim=d_z,
        likelihood="gaussian",
        sigma=s,
        net={"arch": "genlab.nn.MLP", "hidden_sizes": []},
    ).double()
    a = w.T / (c + s**2)
    enc, dec = vae.encoder[1], vae.decoder[0]  # Flatten, Linear | Linear, Unflatten
    with torch.no_grad():
        dec.weight.copy_(w), dec.bias.copy_(b)
        enc.weight.zero_(), enc.bias.zero_()
        enc.weight[:d_z] = a
        enc.bias[:d_z] = -a @ b
        enc.bias[d_z:] = math.log(s**2 / (c + s**2))
        if not exact_posterior:  # a worse encoder: shifted mean, too narrow
            enc.bias[:d_z] += 0.7
            enc.bias[d_z:] -= 1.5
    cov = w @ w.T + s**2 * torch.eye(d_x, dtype=torch.float64)
    p = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
    x = p.sample((512,))
    return vae, x, p.log_prob(x)


def test_iwae_is_exact_with_the_true_posterior() -> None:
    vae, x, log_px = _linear_gaussian_vae(exact_posterior=True)
    for k in (1, 7):
        assert torch.allclose(vae.iwae_log_likelihood(x, k), log_px, atol=1e-8)


def test_elbo_below_iwae_below_log_px_and_tightening() -> None:
    vae, x, log_px = _linear_gaussian_vae(exact_posterior=False)
    torch.manual_seed(1)
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x)["elbo"] for _ in range(200)]).mean(0)  # (512,) E_q[.]
    bounds = [vae.iwae_log_likelihood(x, k).mean().item() for k in (1, 10, 100, 1000)]
    truth = log_px.mean().item()
    # IWAE with k=1 estimates the ELBO (sampled KL instead of analytic, same expectation)
    iwae1 = torch.stack([vae.iwae_log_likelihood(x, 1) for _ in range(200)]).mean(0)  # (512,)
    diff = iwae1 - elbo  # paired per x: zero in expectation
    assert diff.mean().abs() < 5 * diff.std() / math.sqrt(len(diff))
    assert bounds[0] < bounds[1] < bounds[2] < bounds[3] < truth, (bounds, truth)
    assert truth - bounds[0] > 1.0  # the looser encoder leaves a real gap to close


def test_linear_ae_matches_truncated_svd(make_cfg) -> None:
    d = 8
    cfg = make_cfg(
        "model=ae",
        "model.linear=true",
        "model.loss=mse",
        f"model.latent_dim={d}",
        "model.lr=1e-2",
        "trainer.max_epochs=100",
        "callbacks=none",
        "logger=none",
        "trainer.limit_val_batches=0",
        "test=false",
        "trainer.enable_progress_bar=false",
    )
    _, objs = train(cfg)
    model, dm = objs["model"], objs["datamodule"]
    x = model.preprocess(dm.splits["train"][0])
    with torch.no_grad():
        ae = model.recon_error(x, model.decode(model.encode(x))).mean().item()
    flat = x.flatten(1).double()
    s = torch.linalg.svdvals(flat - flat.mean(0))
    svd = (s[d:] ** 2).sum().item() / flat.shape[0]  # rank-d truncated SVD of centred data
    assert svd * (1 - 1e-6) <= ae <= 1.02 * svd, (ae, svd)
