"""Math: KL against Monte Carlo, ELBO <= IWAE <= log p(x) on a model with known likelihood,
and the linear AE against the truncated SVD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genlab.metrics import (
    gaussian_kl,
    importance_weighted_bound,
    log_normal,
    log_standard_normal,
)
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


def _tiny_vae(**kw) -> VAE:
    torch.manual_seed(0)
    kw.setdefault("net", {"arch": "genlab.nn.MLP", "hidden_sizes": [16]})
    return VAE((1, 8, 8), latent_dim=3, **kw)


def test_importance_weighted_objectives() -> None:
    """IWAE at K = 1 is the one-sample ELBO (its mean over draws the analytic ELBO);
    on a fixed model the expected bound grows with K; MIWAE(M, K) is the mean of M
    IWAE(K) bounds; CIWAE mixes the two; PIWAE sends each objective to its network."""
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(1))
    model = _tiny_vae(objective="iwae", samples=1)
    g = torch.Generator().manual_seed(0)
    one = model.weighted_objective(x, None, g)
    g = torch.Generator().manual_seed(0)
    log_w, mu, log_var = model.log_weights(x, 1, g)
    assert torch.allclose(one, log_w[0])
    # E[log w] at K = 1 is the ELBO: E_q[log p(x|z)] - KL(q || p), KL analytic here.
    with torch.no_grad():
        draws = torch.stack([model.log_weights(x, 1)[0][0] for _ in range(4000)]).mean(0)
        eps = torch.randn(4000, *mu.shape, generator=torch.Generator().manual_seed(3))
        z = mu + (0.5 * log_var).exp() * eps  # (4000, B, d)
        xs = x.expand(4000, *x.shape).flatten(0, 1)
        rec = model.log_likelihood(xs, model.decode(z.flatten(0, 1))).view(4000, -1).mean(0)
        elbo = rec - gaussian_kl(mu, log_var)
    assert torch.allclose(draws, elbo, atol=0.15), (draws, elbo)
    # E[IWAE_K] grows with K (averaged over 300 draws per K).
    with torch.no_grad():
        means = [
            torch.stack([importance_weighted_bound(model.log_weights(x, k)[0]) for _ in range(300)])
            .mean()
            .item()
            for k in (1, 5, 50)
        ]
    assert means[0] < means[1] < means[2], means
    # MIWAE(M=3, K=4) = mean of the three IWAE(4) bounds of the same 12 draws.
    model = _tiny_vae(objective="miwae", samples=4, outer_samples=3)
    g = torch.Generator().manual_seed(5)
    got = model.weighted_objective(x, None, g)
    log_w = model.log_weights(x, 12, torch.Generator().manual_seed(5))[0]
    want = torch.stack([importance_weighted_bound(log_w[4 * i : 4 * i + 4]) for i in range(3)])
    assert torch.allclose(got, want.mean(0), atol=1e-5)
    # CIWAE(beta) = beta * mean log w + (1 - beta) * IWAE.
    model = _tiny_vae(objective="ciwae", samples=6, ciwae_beta=0.25)
    got = model.weighted_objective(x, None, torch.Generator().manual_seed(7))
    log_w = model.log_weights(x, 6, torch.Generator().manual_seed(7))[0]
    want = 0.25 * log_w.mean(0) + 0.75 * importance_weighted_bound(log_w)
    assert torch.allclose(got, want, atol=1e-5)
    # PIWAE: the decoder's gradient is IWAE(M K)'s, the encoder's MIWAE(M, K)'s.
    model = _tiny_vae(objective="piwae", samples=4, outer_samples=2)

    def grads(objective: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        objective.sum().backward()
        return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                for n, p in model.named_parameters()}  # fmt: skip

    piwae = grads(model.weighted_objective(x, None, torch.Generator().manual_seed(9)))
    eps = torch.randn((8, 6, 3), generator=torch.Generator().manual_seed(9))  # the same draws
    iwae = grads(importance_weighted_bound(model.log_weights(x, 8, eps=eps)[0]))
    log_w = model.log_weights(x, 8, eps=eps)[0]
    miwae = grads(importance_weighted_bound(log_w.view(2, 4, -1).transpose(0, 1)).mean(0))
    for name, g_ in piwae.items():
        want = iwae[name] if name.startswith("decoder") else miwae[name]
        assert torch.allclose(g_, want, atol=1e-5), name


def test_vamp_prior_is_the_mixture_of_the_pseudo_inputs_posteriors() -> None:
    model = _tiny_vae(prior="vamp", pseudo_inputs=7)
    z = torch.randn(5, 3)
    mu, log_var = model.encode(model.pseudo)
    by_hand = torch.stack([
        torch.logsumexp(torch.stack([
            torch.distributions.Normal(mu[p], (0.5 * log_var[p]).exp()).log_prob(z[i]).sum()
            for p in range(7)
        ]), 0) - math.log(7)
        for i in range(5)
    ])  # fmt: skip
    assert torch.allclose(model.log_prior(z), by_hand, atol=1e-5)
    # The expanded quadratic form against the broadcast one where cancellation would
    # show: narrow components (sigma 0.05) and points far out (|z| ~ 10).
    from genlab.metrics import log_normal, log_normal_mixture

    g = torch.Generator().manual_seed(1)
    mu, log_var = 8 * torch.randn(50, 3, generator=g), torch.full((50, 3), -6.0)
    z = mu[:20] + 0.1 * torch.randn(20, 3, generator=g) + 2 * torch.randn(20, 3, generator=g)
    direct = torch.logsumexp(log_normal(z.double()[:, None], mu.double(), log_var.double()), -1)
    assert torch.allclose(
        log_normal_mixture(z, mu, log_var).double(), direct - math.log(50), rtol=1e-6
    )
    # The ELBO's KL is the one-sample log q(z|x) - log p(z); it trains (gradients reach
    # the pseudo-inputs).
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.3))
    terms = model.elbo(x)
    (terms["recon"] + terms["kl"]).mean().backward()
    assert model.pseudo.grad is not None and model.pseudo.grad.abs().sum() > 0


def test_standard_error_metric_matches_numpy_over_batches() -> None:
    import numpy as np

    from genlab.metrics import StandardError

    x = torch.randn(103, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 7
    metric = StandardError()
    for part in x.split(20):  # batches of an epoch
        metric.update(part)
    want = np.std(x.numpy(), ddof=1) / math.sqrt(103)
    assert float(metric.compute()) == pytest.approx(want, rel=1e-5)
    one = StandardError()
    one.update(torch.tensor([5.0]))
    assert float(one.compute()) == 0.0


def test_parzen_window_matches_a_direct_computation_and_picks_the_true_bandwidth() -> None:
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from genlab.metrics import parzen_log_likelihood, parzen_sigma

    g = torch.Generator().manual_seed(0)
    samples, x = torch.rand(300, 5, generator=g), torch.rand(40, 5, generator=g)
    sigma = 0.2
    ours = parzen_log_likelihood(samples, x, sigma, chunk=7).double().numpy()
    dens = np.stack([
        multivariate_normal(mean=s, cov=sigma**2 * np.eye(5)).logpdf(x.numpy())
        for s in samples.numpy()
    ])  # (S, N): every kernel's log-density at every point, written out  # fmt: skip
    assert np.allclose(ours, logsumexp(dens, axis=0) - np.log(300), atol=1e-6)
    # Data drawn from a Parzen density with bandwidth 0.1: validation picks about 0.1.
    centres = torch.rand(2000, 3, generator=g)
    pick = torch.randint(0, 2000, (3000,), generator=g)
    val = centres[pick] + 0.1 * torch.randn(3000, 3, generator=g)
    grid = torch.tensor([0.02, 0.05, 0.1, 0.2, 0.4])
    assert parzen_sigma(centres, val, grid) == pytest.approx(0.1)


def test_a_fast_dev_run_caps_the_test_importance_samples() -> None:
    """k = 5000 at test takes minutes per batch: under fast_dev_run the bound uses 64."""
    from types import SimpleNamespace

    model = _tiny_vae(iwae_samples=5000).eval()
    used = []
    model.iwae_log_likelihood = lambda x, k, g, y: used.append(k) or torch.zeros(x.shape[0])
    batch = (torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), torch.zeros(4).long())
    model.batch_metrics(batch, 0, full=True)
    model._trainer = SimpleNamespace(fast_dev_run=True)
    model.batch_metrics(batch, 0, full=True)
    assert used == [5000, 64]


def test_kl_warmup_rises_linearly_to_beta_by_step() -> None:
    from types import SimpleNamespace

    model = _tiny_vae(beta=0.5, kl_warmup_epochs=4)
    assert model.kl_weight() == 0.5  # outside a fit: beta
    for step, want in ((0, 0.0), (10, 0.125), (40, 0.5), (400, 0.5)):
        model._trainer = SimpleNamespace(num_training_batches=10, global_step=step)
        assert model.kl_weight() == pytest.approx(want)
    model = _tiny_vae(beta=0.5)
    model._trainer = SimpleNamespace(num_training_batches=10, global_step=0)
    assert model.kl_weight() == 0.5  # no warm-up: beta from the first step


def test_vae_lr_final_decays_exponentially_to_it_by_the_last_epoch() -> None:
    from types import SimpleNamespace

    model = _tiny_vae(lr=1e-2, lr_final=1e-4)
    model._trainer = SimpleNamespace(max_epochs=3)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(3):  # the lr each epoch trains with; the scheduler steps per epoch
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([1e-2, 1e-3, 1e-4])
    assert isinstance(_tiny_vae().configure_optimizers(), torch.optim.Adam)  # default: constant


def test_vae_lr_milestones_step_the_rate_and_exclude_lr_final() -> None:
    from types import SimpleNamespace

    from genlab.errors import ConfigError

    model = _tiny_vae(lr=1e-3, lr_milestones=[1, 3], lr_gamma=0.5)
    model._trainer = SimpleNamespace(max_epochs=5)
    conf = model.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])
    with pytest.raises(ConfigError, match="two schedules"):
        _tiny_vae(lr_final=1e-4, lr_milestones=[2])


def test_gated_mlp_layers_compute_a_gated_linear_unit_and_reload() -> None:
    """model.net.gated: every hidden layer is act(W_h x + b_h) * sigmoid(W_g x + b_g), the
    output layers stay linear, and a VAE with it reloads from its state dict."""
    from genlab.nn.nets import MLP, GatedDense

    net = {"arch": "genlab.nn.MLP", "hidden_sizes": [16, 12], "gated": True}
    model = _tiny_vae(net={**net, "activation": "Identity"})
    gates = [m for m in model.encoder.modules() if isinstance(m, GatedDense)]
    assert [(g.h.in_features, g.h.out_features) for g in gates] == [(64, 16), (16, 12)]
    assert isinstance(model.encoder[-1], torch.nn.Linear)  # to (mu, log var): linear
    x = torch.randn(5, 64)
    layer = gates[0]
    want = (x @ layer.h.weight.T + layer.h.bias) * torch.sigmoid(
        x @ layer.g.weight.T + layer.g.bias
    )
    assert torch.allclose(layer(x), want, atol=1e-6)
    relu = MLP([8], "ReLU", gated=True).encoder((4,), 2)[1]  # the activation acts on h
    out, h = relu(x[:, :4]), relu.h(x[:, :4])
    assert torch.equal(out == 0, h <= 0) and bool((h <= 0).any() and (h > 0).any())
    # Twice the hidden weights of the plain net; the same state-dict round trip.
    plain = _tiny_vae(net={**net, "gated": False})
    n = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert n(model) - n(plain) == 64 * 16 + 16 + 16 * 12 + 12
    again = _tiny_vae(net={**net, "activation": "Identity"})
    again.load_state_dict(model.state_dict())
    xb = torch.bernoulli(torch.full((3, 1, 8, 8), 0.4))
    assert torch.allclose(again.reconstruct(xb), model.reconstruct(xb))
