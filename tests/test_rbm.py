"""Boltzmann machines: free energy, Gibbs sampling, CD gradients and AIS against exact
enumeration on tiny RBMs; RBM / DBN runs, persistent chains and reloads."""

from __future__ import annotations

import math

import pytest
import torch

from genlab.nn.rbm import (
    RBM,
    ais_betas,
    ais_log_partition,
    exact_log_partition,
    log_mean_exp_bounds,
    scaled_betas,
)


def _states(n: int) -> torch.Tensor:
    """All 2^n binary vectors (2^n, n)."""
    codes = torch.arange(2**n)
    return ((codes[:, None] >> torch.arange(n)) & 1).double()


def _tiny(V: int = 6, H: int = 4, seed: int = 0, scale: float = 1.0) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(V, H).double()
    with torch.no_grad():
        rbm.W.normal_(0, scale)
        rbm.b.normal_(0, scale)
        rbm.c.normal_(0, scale)
    return rbm


def _exact_joint(rbm: RBM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (v, h) pairs and their exact probabilities."""
    vs, hs = _states(rbm.visible), _states(rbm.hidden)
    v = vs.repeat_interleave(hs.shape[0], 0)
    h = hs.repeat(vs.shape[0], 1)
    logp = -rbm.energy(v, h)
    return v, h, torch.softmax(logp, 0)


def test_free_energy_is_minus_log_sum_over_hidden_states() -> None:
    rbm = _tiny()
    vs, hs = _states(6), _states(4)
    for v in vs[::7]:
        brute = -torch.logsumexp(-rbm.energy(v.expand(16, -1), hs), 0)
        assert torch.allclose(rbm.free_energy(v[None])[0], brute, atol=1e-10)


def test_gaussian_hidden_free_energy_matches_numerical_integral() -> None:
    torch.manual_seed(1)
    rbm = RBM(3, 1, gaussian_hidden=True).double()
    with torch.no_grad():
        rbm.W.normal_(0, 1.0), rbm.b.normal_(0, 1.0), rbm.c.normal_(0, 1.0)
    v = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    h = torch.linspace(-30, 30, 200001, dtype=torch.float64)[:, None]
    integral = torch.trapezoid(torch.exp(-rbm.energy(v.expand(h.shape[0], -1), h)), h[:, 0])
    assert torch.allclose(rbm.free_energy(v)[0], -torch.log(integral), atol=1e-6)


def test_exact_log_partition_matches_enumerating_both_layers() -> None:
    rbm = _tiny()
    _, _, _ = _exact_joint(rbm)
    vs, hs = _states(6), _states(4)
    v = vs.repeat_interleave(16, 0)
    h = hs.repeat(64, 1)
    assert torch.allclose(exact_log_partition(rbm), torch.logsumexp(-rbm.energy(v, h), 0))


def test_gibbs_chains_converge_to_the_enumerated_distribution() -> None:
    rbm = _tiny(scale=0.7).float()
    exact = torch.softmax(-rbm.free_energy(_states(6).float()).double(), 0)  # p(v)
    g = torch.Generator().manual_seed(0)
    v = torch.bernoulli(torch.full((20000, 6), 0.5), generator=g)
    v = rbm.gibbs(v, 50, g)  # 20k independent chains, 50 sweeps each
    idx = (v.long() << torch.arange(6)).sum(1)
    empirical = torch.bincount(idx, minlength=64).double() / v.shape[0]
    tv = 0.5 * (empirical - exact).abs().sum()
    assert tv < 0.03, f"total variation {tv:.3f}"


def test_cd_gradient_with_long_chains_equals_the_exact_gradient() -> None:
    rbm = _tiny(scale=0.5).float()
    g = torch.Generator().manual_seed(0)
    data = torch.bernoulli(torch.full((50, 6), 0.3), generator=g)
    # Exact: -mean log p(data) = mean F(data) + log Z, log Z = logsumexp_v -F(v); its
    # gradient is mean dF(data)/dtheta - E_model[dF/dtheta].
    vs = _states(6).float()
    exact_loss = rbm.free_energy(data).mean() + torch.logsumexp(-rbm.free_energy(vs), 0)
    exact = torch.autograd.grad(exact_loss, [rbm.W, rbm.b, rbm.c])
    # CD-k surrogate with k = 200 from the data, many chains per data point.
    neg = rbm.gibbs(data.repeat(400, 1), 200, g).detach()
    cd_loss = rbm.free_energy(data).mean() - rbm.free_energy(neg).mean()
    cd = torch.autograd.grad(cd_loss, [rbm.W, rbm.b, rbm.c])
    for e, c in zip(exact, cd, strict=True):
        assert (e - c).abs().max() < 0.02, (e - c).abs().max()
    # CD-1 from the data is biased: visibly further from the exact gradient.
    neg1 = rbm.gibbs(data.repeat(400, 1), 1, g).detach()
    cd1 = torch.autograd.grad(
        rbm.free_energy(data).mean() - rbm.free_energy(neg1).mean(), [rbm.W]
    )[0]
    assert (cd1 - exact[0]).abs().max() > 2 * (cd[0] - exact[0]).abs().max()


def test_ais_matches_exact_log_partition() -> None:
    torch.manual_seed(0)
    rbm = RBM(64, 12)  # digits-sized visible layer, 2^12 hidden states to enumerate
    with torch.no_grad():
        rbm.W.normal_(0, 0.3)
        rbm.b.normal_(-1, 0.5)
        rbm.c.normal_(-0.5, 0.5)
    exact = float(exact_log_partition(rbm))
    base = torch.sigmoid(rbm.b.detach())  # any base rates work; these are close
    g = torch.Generator().manual_seed(0)
    est = ais_log_partition(rbm, torch.log(base) - torch.log1p(-base), scaled_betas(3000), 200, g)
    log_z = float(est.log_z)
    assert abs(log_z - exact) < 0.1, (log_z, exact)
    assert est.lo <= log_z <= est.hi and est.hi - log_z < 0.2  # the reported spread
    assert est.log_w.shape == (200,)
    lo, hi = log_mean_exp_bounds(torch.zeros(5))  # equal weights: no spread
    assert lo == hi == 0.0
    # A one-step "schedule" (plain importance sampling from the base model) is worse.
    one = ais_log_partition(rbm, torch.log(base) - torch.log1p(-base), scaled_betas(3), 200, g)
    assert abs(float(one.log_z) - exact) > abs(log_z - exact)


def test_default_schedule_is_salakhutdinov_murray() -> None:
    b = ais_betas()
    assert b.numel() == 14501 and b[0] == 0 and b[-1] == 1
    steps = b.diff()
    assert math.isclose(float(steps[0]), 1e-3) and math.isclose(float(steps[-1]), 1e-5)
    assert math.isclose(float(steps[600]), 1e-4, rel_tol=1e-6)
    assert torch.equal(scaled_betas(14500), b)
