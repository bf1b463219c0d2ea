"""Categorical VAE (docs/models/gumbel_vae.md): Gumbel-Softmax on the simplex, straight-through
one-hot forward, REINFORCE unbiasedness against an enumerated exact gradient, the KL's
log K constant, the IWAE bound against the exact likelihood, and the tau schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import csv_rows

from genlab.metrics import categorical_kl_uniform
from genlab.models import GumbelVAE
from genlab.nn.categorical import (
    gumbel_softmax,
    sample_one_hot,
    steps_to_floor,
    straight_through,
    temperature,
)
from genlab.train import train


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0, 5.0])
def test_gumbel_softmax_samples_lie_on_the_simplex(tau: float) -> None:
    logits = torch.randn(512, 20, 10, generator=torch.Generator().manual_seed(0)) * 3
    y = gumbel_softmax(logits, tau, generator=torch.Generator().manual_seed(1))
    assert y.shape == logits.shape
    assert (y >= 0).all() and torch.allclose(y.sum(-1), torch.ones(512, 20), atol=1e-5)
    assert (y < 1).any()  # relaxed: not every sample is a vertex
    # Gumbel-max: the argmax of a relaxed sample is distributed as softmax(logits), at any
    # temperature (wrong noise, e.g. log(-log u), breaks it).
    one = logits[:1, :1].expand(20000, 1, 10)
    pick = gumbel_softmax(one, tau, generator=torch.Generator().manual_seed(2)).argmax(-1)
    freq = torch.bincount(pick.flatten(), minlength=10).double() / pick.numel()
    p = torch.softmax(logits[0, 0].double(), -1)
    assert torch.all((freq - p).abs() < 4 * (p * (1 - p) / pick.numel()).sqrt() + 1e-3), (freq, p)


def test_straight_through_is_one_hot_forward_and_soft_backward() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, 7, generator=g, requires_grad=True)
    y = gumbel_softmax(logits, 0.7, hard=True, generator=torch.Generator().manual_seed(3))
    # The forward value is exactly one-hot (not merely close to it).
    assert set(y.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(y.sum(-1), torch.ones(64, 5))
    # Same noise without hard: the hot index is the soft sample's argmax, and the
    # gradient of any function of y equals the soft sample's gradient.
    soft = gumbel_softmax(logits, 0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y.argmax(-1), soft.argmax(-1))
    w = torch.randn(64, 5, 7, generator=g)
    (g_hard,) = torch.autograd.grad((w * y).sum(), logits)
    (g_soft,) = torch.autograd.grad((w * soft).sum(), logits)
    assert torch.allclose(g_hard, g_soft, atol=1e-6) and g_hard.abs().sum() > 0
    s = torch.rand(3, 4, requires_grad=True)
    assert torch.equal(straight_through(s), F.one_hot(s.argmax(-1), 4).float())


def test_gumbel_max_samples_follow_the_softmax() -> None:
    """The hard samples are exact draws of Categorical(softmax(logits))."""
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5])
    n = 200_000
    z = sample_one_hot(logits.expand(n, 4), torch.Generator().manual_seed(0))
    freq = z.mean(0)
    p = torch.softmax(logits, 0)
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() < 4 * se).all(), (freq, p)


def test_kl_to_uniform_has_the_log_k_constant() -> None:
    n, k = 20, 10
    logits = torch.randn(8, n, k, generator=torch.Generator().manual_seed(0))
    q = torch.distributions.Categorical(logits=logits)
    u = torch.distributions.Categorical(logits=torch.zeros(8, n, k))
    want = torch.distributions.kl_divergence(q, u).sum(-1)
    assert torch.allclose(categorical_kl_uniform(logits), want, atol=1e-5)
    assert categorical_kl_uniform(torch.zeros(1, n, k)).abs().item() < 1e-6
    # A (near) deterministic posterior costs log K nats per variable.
    peaked = F.one_hot(torch.zeros(1, n, dtype=torch.long), k).float() * 60
    assert abs(categorical_kl_uniform(peaked).item() - n * math.log(k)) < 1e-4


def test_temperature_schedule_reaches_its_floor() -> None:
    tau0, tau_min, rate = 1.0, 0.5, 3e-5
    floor_step = steps_to_floor(tau0, tau_min, rate)
    assert abs(floor_step - math.log(2) / 3e-5) < 1e-6
    assert temperature(0, tau0, tau_min, rate) == 1.0
    assert temperature(int(floor_step) - 1000, tau0, tau_min, rate) > tau_min
    assert temperature(math.ceil(floor_step), tau0, tau_min, rate) == tau_min
    assert temperature(10**9, tau0, tau_min, rate) == tau_min
    taus = [temperature(s, tau0, tau_min, rate) for s in range(0, 40_000, 100)]
    assert all(a >= b for a, b in itertools.pairwise(taus))  # never rises


def _tiny(estimator: str, n_latents: int = 2, n_categories: int = 3) -> GumbelVAE:
    torch.manual_seed(0)
    return GumbelVAE(
        (1, 4, 4),
        n_latents=n_latents,
        n_categories=n_categories,
        net={"hidden_sizes": [12]},
        estimator=estimator,
    )


def _all_codes(n: int, k: int) -> torch.Tensor:
    """Every one-hot code of n variables with k categories: (k**n, n, k)."""
    idx = torch.tensor(list(itertools.product(range(k), repeat=n)))
    return F.one_hot(idx, k).float()


def _exact_elbo(model: GumbelVAE, x: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x|z)] - KL by enumerating every code: (B,), differentiable."""
    h = model.hparams
    codes = _all_codes(h.n_latents, h.n_categories)  # (C, N, K)
    logits = model.posterior_logits(x)  # (B, N, K)
    log_q = (codes[:, None] * torch.log_softmax(logits, -1)).sum((-2, -1))  # (C, B)
    out = model.decode_codes(codes)  # (C, 1, 4, 4)
    c, b = codes.shape[0], x.shape[0]
    xs = x[None].expand(c, *x.shape).flatten(0, 1)
    log_px = model.log_likelihood(xs, out.repeat_interleave(b, 0)).view(c, b)
    return (log_q.exp() * log_px).sum(0) - categorical_kl_uniform(logits)


def test_reinforce_gradient_is_unbiased() -> None:
    """The model's score-function gradient (with its moving-average baseline) averages
    to the exact gradient of the ELBO, computed by enumerating all 9 codes."""
    model = _tiny("reinforce")
    x = (torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    params = list(model.encoder.parameters())
    exact = torch.autograd.grad(-_exact_elbo(model, x).mean(), params)
    exact = torch.cat([g.flatten() for g in exact])
    # A non-zero baseline (as during training) must not bias the estimate.
    model.baseline_sum.fill_(-5.0)
    model.baseline_weight.fill_(1.0)
    # Each group: the mean gradient over 2000 replicas of x (one backward pass).
    reps, groups, g = 2000, 25, torch.Generator().manual_seed(2)
    xr = x.repeat(reps, 1, 1, 1)
    est = []
    for _ in range(groups):
        loss = model.objective(xr, generator=g)["surrogate"].mean()
        est.append(torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)]))
    est = torch.stack(est)  # (groups, P)
    mean, se = est.mean(0), est.std(0) / math.sqrt(groups)
    live = se > 0  # dead ReLU units: zero gradient in every draw and exactly
    z = (mean - exact)[live] / se[live]
    assert torch.equal(mean[~live], exact[~live])
    # Unbiased: z-scores are ~N(0, 1) (mean square ~1 over ~100 parameters).
    assert z.abs().max() < 5 and z.pow(2).mean() < 2, (z.abs().max(), z.pow(2).mean())
    # ...and the test has power: the error is a small fraction of the gradient.
    assert (mean - exact).norm() < 0.1 * exact.norm()


def test_elbo_and_iwae_bracket_the_exact_likelihood() -> None:
    """log p(x) = logsumexp_z log p(x|z) - N log K (9 codes): the one-sample ELBO is
    below it on average, and the IWAE bound approaches it as k grows."""
    model = _tiny("gumbel")
    x = (torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    codes = _all_codes(2, 3)
    with torch.no_grad():
        out = model.decode_codes(codes)  # (9, 1, 4, 4)
        log_px = torch.stack([model.log_likelihood(x, o.expand_as(x)) for o in out])  # (9, B)
        exact = torch.logsumexp(log_px, 0) - 2 * math.log(3)
        elbo = _exact_elbo(model, x)
        assert (elbo < exact).all()
        g = torch.Generator().manual_seed(0)
        iwae = model.iwae_log_likelihood(x, 20_000, g)
        assert torch.allclose(iwae, exact, atol=0.01), (iwae, exact)
        assert (exact - elbo).min() > 5 * (iwae - exact).abs().max(), exact - elbo
        one = torch.stack([model.elbo(x, g)["elbo"] for _ in range(4000)]).mean(0)
        assert torch.allclose(one, elbo, atol=0.05)


def test_gumbel_vae_trains_logs_tau_and_grad_var(make_cfg, tmp_path) -> None:
    """A short digits run: train/tau reaches tau_min, train/grad_var is logged every
    grad_var_every steps, the ELBO improves, and the checkpoint reloads without Hydra."""
    cfg = make_cfg(
        "model=gumbel_vae",
        "model.estimator=st_gumbel",
        "model.n_latents=8",
        "model.tau_rate=0.01",  # floor (0.5) after 70 of the 120 steps
        "model.grad_var_every=20",
        "model.grad_var_samples=4",
        "trainer.max_epochs=10",
        "trainer.log_every_n_steps=10",
        "callbacks.sample_scores.probes=false",
        "metrics.every_n_epochs=0",
    )
    metrics, objs = train(cfg)
    rows = csv_rows(tmp_path)
    taus = [float(r["train/tau"]) for r in rows if r.get("train/tau")]
    assert taus[0] > 0.9 and taus[-1] == pytest.approx(0.5, abs=1e-6)
    var_steps = [int(r["step"]) for r in rows if r.get("train/grad_var")]
    steps = objs["trainer"].global_step
    assert var_steps == list(range(0, steps, 20))
    assert all(float(r["train/grad_var"]) > 0 for r in rows if r.get("train/grad_var"))
    first_val = next(float(r["val/elbo"]) for r in rows if r.get("val/elbo"))
    assert metrics["val/elbo"] > first_val
    assert metrics["test/nll_iwae"] <= -metrics["test/elbo"] + 0.5
    assert 0 < metrics["test/elbo_se"] < 0.1 * -metrics["test/elbo"]  # the sampled ELBO's
    loaded = GumbelVAE.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert loaded.hparams.estimator == "st_gumbel" and loaded.hparams.n_latents == 8
    assert loaded.sample(4).shape == (4, 1, 8, 8)
