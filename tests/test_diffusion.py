"""DDPM and flow matching: the forward process, the variational bound against brute force,
the flow-matching path, ODE likelihoods against closed forms, Hutchinson's estimator,
samplers, EMA, and short runs on digits and toy2d."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from genlab.errors import ConfigError
from genlab.models import DDPM, FlowMatching
from genlab.nn.diffusion import (
    GaussianDiffusion,
    beta_schedule,
    discretized_gaussian_log_likelihood,
)
from genlab.nn.flow_matching import divergence
from genlab.nn.ode import odeint
from genlab.nn.unet import UNet
from genlab.train import train

MLP_NET = {"arch": "genlab.nn.TimeMLP", "width": 16, "depth": 1}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_marginal_matches_its_closed_form(schedule: str) -> None:
    """Running the Markov chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) eps step by
    step gives q(x_i | x_0) = N(sqrt(abar_i) x_0, 1 - abar_i)."""
    torch.manual_seed(0)
    m = GaussianDiffusion(50, schedule)  # plain tensor code: no LightningModule needed
    x0 = torch.tensor([0.7, -0.3, 0.0]).expand(20000, 3)
    x = x0.clone()
    for i in range(50):
        b = m.noise_betas[i]
        x = (1 - b).sqrt() * x + b.sqrt() * torch.randn_like(x)
        if i in (0, 9, 49):
            a = m.abar[i]
            assert torch.allclose(x.mean(0), a.sqrt() * x0[0], atol=0.03)
            assert torch.allclose(x.var(0), (1 - a).expand(3), rtol=0.05, atol=2e-4)
            closed = m.q_sample(x0, torch.full((20000,), i), torch.randn_like(x0))
            assert torch.allclose(closed.var(0), x.var(0), rtol=0.06, atol=2e-4)
    # cosine: abar follows cos^2; linear: Ho et al.'s endpoints for T = 1000
    if schedule == "linear":
        b = beta_schedule("linear", 1000)
        assert math.isclose(b[0], 1e-4) and math.isclose(b[-1], 0.02)


class _LinearEps(nn.Module):
    """eps(x, t) = a_t * x + c_t with per-timestep scalars: the reverse process is then
    linear-Gaussian."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, timesteps: int) -> None:
        super().__init__()
        self.a, self.c, self.T = a, c, timesteps

    def forward(self, x, t, y=None):
        i = (t * self.T / 1000).round().long()
        return self.a[i].view(-1, 1) * x + self.c[i].view(-1, 1)


def test_ddpm_bound_matches_brute_force_on_a_linear_gaussian_model() -> None:
    """With a linear noise predictor, -ELBO = E_q[log q(x_{1:T}|x_0) - log p(x_{0:T})]
    by Monte Carlo over forward trajectories equals the analytic bound (prior KL +
    decoder NLL + every KL term), and the stratified estimate is unbiased."""
    torch.manual_seed(0)
    T = 6
    m = DDPM((1,), net=MLP_NET, timesteps=T, schedule="cosine", ema_decay=0.0).double()
    d = m.diffusion  # the schedule constants follow the module's dtype
    assert d.abar.dtype == d.post_coef_xt.dtype == torch.float64
    a, c = torch.linspace(0.3, 0.9, T).double(), torch.linspace(-0.1, 0.2, T).double()
    m.denoiser = _LinearEps(a, c, T)
    m.eval()
    x0 = torch.full((1, 1), 0.4, dtype=torch.float64)
    n = 400000
    # Every timestep's term (strata=0), each an expectation over x_t ~ q(x_t | x_0).
    full = m.nll_bound(x0.expand(n, 1), None, strata=0)["bound"]
    exact, se_exact = full.mean().item(), full.std().item() / math.sqrt(n)

    x0s = x0.expand(n, 1)
    b = d.noise_betas
    xs = [x0s]
    for i in range(T):  # the forward chain
        xs.append((1 - b[i]).sqrt() * xs[-1] + b[i].sqrt() * torch.randn(n, 1, dtype=torch.float64))

    def log_normal(x, mean, var):
        return (-0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)

    log_q = sum(log_normal(xs[i + 1], (1 - b[i]).sqrt() * xs[i], b[i]) for i in range(T))
    log_p = log_normal(xs[T], 0.0, torch.tensor(1.0, dtype=torch.float64))
    for i in range(T):  # p(x_i | x_{i+1}) with timestep index i: x_{i+1} is the paper's x_{t}
        it = torch.full((n,), i)
        xt = xs[i + 1]
        mean = d.posterior_mean(d.x0_from_eps(xt, it, m.eps_of(xt, it)), xt, it)
        log_p = log_p + log_normal(xs[i], mean, d.model_logvar[i].exp())
    brute = (log_q - log_p).mean().item()
    se = (log_q - log_p).std().item() / math.sqrt(n)
    assert abs(brute - exact) < 4 * math.hypot(se, se_exact), (brute, exact, se)
    # The stratified estimate of the timestep sum is unbiased, with either spacing.
    for spacing in ("log", "uniform"):
        est = m.nll_bound(x0.expand(n, 1), None, 2, _gen(1), spacing)["bound"]
        assert abs(est.mean().item() - exact) < 4 * math.hypot(
            est.std().item() / math.sqrt(n), se_exact
        ), spacing


@pytest.mark.parametrize("T", [6, 50, 1000])
def test_bound_strata_partition_the_timesteps_and_log_spacing_cuts_the_variance(T) -> None:
    """Every spacing cuts 1..T-1 into exactly `count` contiguous non-empty spans; with terms
    falling as 1 / i (the bound's weight at small i), the stratified estimator's exact
    variance, sum over spans of size^2 Var(term | span), is far smaller log-spaced."""
    d = GaussianDiffusion(T, "linear")
    for count in {1, 2, 3, min(20, T - 1), T - 2, T - 1}:
        for spacing in ("log", "uniform"):
            spans = d.strata(count, spacing)
            assert len(spans) == count, (count, spacing)
            assert spans[0][0] == 1 and spans[-1][1] == T
            assert all(lo < hi for lo, hi in spans)
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    if T == 1000:
        terms = 1.0 / torch.arange(1, T, dtype=torch.float64)  # term i at index i - 1

        def variance(spans):
            return sum(
                (hi - lo) ** 2 * terms[lo - 1 : hi - 1].var(unbiased=False) for lo, hi in spans
            )

        log, uniform = variance(d.strata(20, "log")), variance(d.strata(20, "uniform"))
        assert d.strata(20)[:5] == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]  # one by one
        assert log < 0.01 * uniform, (log, uniform)


def test_discretized_decoder_masses_sum_to_one() -> None:
    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, -3.0), (0.93, -5.0), (-1.2, -1.0), (0.2, -7.0)]:
        lp = discretized_gaussian_log_likelihood(
            values,
            torch.tensor(mean, dtype=torch.float64),
            torch.tensor(log_scale, dtype=torch.float64),
        )
        assert abs(lp.exp().sum().item() - 1) < 1e-4, (mean, log_scale)


def test_discretized_decoder_is_exact_in_the_tails() -> None:
    """Every bin's log-mass against scipy's log-space normal CDF, out to pixels many
    standard deviations from the mean (where a density-times-width shortcut is off by
    over a nat: a bin 5.3-6.1 sd out has log-mass -16.7176, not -17.41)."""
    from scipy.stats import norm

    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, -4.6), (0.93, -6.0), (-0.4, -2.0), (1.3, -1.0)]:
        got = discretized_gaussian_log_likelihood(
            values,
            torch.tensor(mean, dtype=torch.float64),
            torch.tensor(log_scale, dtype=torch.float64),
        ).numpy()
        sd = math.exp(log_scale)
        lo, hi = (values.numpy() - 1 / 255 - mean) / sd, (values.numpy() + 1 / 255 - mean) / sd
        want = np.log(np.clip(norm.cdf(hi) - norm.cdf(lo), 1e-300, None))
        tail = lo + hi > 0  # the upper tail from the survival function, in log space
        la, lb = norm.logsf(hi[tail]), norm.logsf(lo[tail])
        want[tail] = lb + np.log(-np.expm1(la - lb))
        la, lb = norm.logcdf(lo[~tail]), norm.logcdf(hi[~tail])
        want[~tail] = lb + np.log(-np.expm1(la - lb))
        want[0], want[-1] = norm.logcdf(hi[0]), norm.logsf(lo[-1])
        ok = np.isfinite(want) & (want > -700)
        assert np.abs(got[ok] - want[ok]).max() < 1e-6, (mean, log_scale)
    x = torch.zeros(1, dtype=torch.float64)
    log_s = torch.tensor(math.log(0.01), dtype=torch.float64)
    far = discretized_gaussian_log_likelihood(x, x - 0.057, log_s)
    assert float(far) == pytest.approx(-16.7176063, abs=1e-6)


def test_flow_matching_path_interpolates_and_its_velocity_is_the_derivative() -> None:
    m = FlowMatching((2, 3), net=MLP_NET, sigma_min=0.01, ema_decay=0.0)
    x0, x1 = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    zero, one = torch.zeros(5), torch.ones(5)
    assert torch.allclose(m.path.point(x0, x1, zero), x0)
    assert torch.allclose(m.path.point(x0, x1, one), x1 + 0.01 * x0)
    t, h = torch.rand(5).double(), 1e-6
    x0, x1 = x0.double(), x1.double()
    fd = (m.path.point(x0, x1, t + h) - m.path.point(x0, x1, t - h)) / (2 * h)
    assert torch.allclose(fd, m.path.velocity(x0, x1), atol=1e-6)
    rect = FlowMatching((2, 3), net=MLP_NET, path="rectified", ema_decay=0.0)
    assert torch.allclose(rect.path.point(x0, x1, one.double()), x1)


class _LinearField(nn.Module):
    """v(x, t) = A x on flattened x (any data shape)."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = A

    def forward(self, x, t, y=None):
        return (x.flatten(1) @ self.A.T).view(x.shape)


@pytest.mark.parametrize("solver", ["dopri5", "heun"])
def test_ode_loglik_of_a_linear_field_is_the_gaussian_density(solver: str) -> None:
    """dx/dt = A x from x(0) ~ N(0, I) gives x(1) ~ N(0, e^A e^A^T): the ODE's
    log-likelihood (exact divergence) equals that density."""
    torch.manual_seed(0)
    A = 0.4 * torch.randn(3, 3).double()
    m = FlowMatching((3,), net=MLP_NET, likelihood_solver=solver, likelihood_steps=200,
                     ode_tolerance=1e-8, ema_decay=0.0).double()  # fmt: skip
    m.denoiser = _LinearField(A)
    x = torch.randn(6, 3).double()
    E = torch.linalg.matrix_exp(A)
    truth = torch.distributions.MultivariateNormal(torch.zeros(3).double(), E @ E.T).log_prob(x)
    assert torch.allclose(m.log_prob(x), truth, atol=1e-5), (m.log_prob(x), truth)


def test_hutchinson_divergence_is_unbiased() -> None:
    torch.manual_seed(0)
    A = torch.randn(16, 16).double()
    m = FlowMatching((1, 4, 4), net=MLP_NET, ema_decay=0.0).double()
    m.denoiser = _LinearField(A)
    field = lambda u, t: m.velocity(u, t)  # noqa: E731
    x = torch.randn(20000, 1, 4, 4).double()
    probe = torch.randint(0, 2, x.shape).double() * 2 - 1
    _, est = divergence(field, x, torch.zeros(()).double(), probe)
    _, exact = divergence(field, x[:3], torch.zeros(()).double(), None)
    assert torch.allclose(exact, torch.trace(A).expand(3))
    assert est.std() > 1  # a noisy estimate ...
    assert abs(est.mean() - torch.trace(A)) < 4 * est.std() / math.sqrt(len(est))  # ... unbiased
    # The ODE likelihood with Hutchinson probes averages to the exact one.
    m.hparams.likelihood_solver, m.hparams.ode_tolerance = "dopri5", 1e-6
    xs = torch.randn(1, 1, 4, 4).double().expand(400, 1, 4, 4)
    hutch = m.log_prob(xs, generator=_gen(0), exact=False)
    exact_ll = m.log_prob(xs[:1], exact=True)
    assert abs(hutch.mean() - exact_ll) < 4 * hutch.std() / 20, (hutch.mean(), exact_ll)


def test_odeint_solvers_converge_at_their_order() -> None:
    f = lambda t, y: -y * (1 + t)  # noqa: E731  y(t) = y0 exp(-(t + t^2/2))
    y0 = torch.ones(4).double()
    truth = math.exp(-1.5)
    err = {}
    for solver in ("euler", "heun"):
        for steps in (20, 40):
            y, nfe = odeint(f, y0, 0.0, 1.0, solver, steps)
            err[solver, steps] = abs(y[0].item() - truth)
        assert nfe == steps * (1 if solver == "euler" else 2)
    assert 1.8 < err["euler", 20] / err["euler", 40] < 2.2  # first order
    assert 3.6 < err["heun", 20] / err["heun", 40] < 4.4  # second order
    y, nfe = odeint(f, y0, 0.0, 1.0, "dopri5", rtol=1e-9, atol=1e-9)
    assert abs(y[0].item() - truth) < 1e-7 and nfe < 400
    back, _ = odeint(f, y, 1.0, 0.0, "dopri5", rtol=1e-9, atol=1e-9)  # and backwards
    assert torch.allclose(back, y0, atol=1e-7)
    with pytest.raises(ConfigError):
        odeint(f, y0, 0.0, 1.0, "rk4")


def test_ddim_with_eta_one_is_ancestral_sampling_with_the_small_variance() -> None:
    torch.manual_seed(0)
    m = DDPM((1, 8, 8), net={"arch": "genlab.nn.UNet", "channels": 8, "channel_mults": [1, 2]},
             timesteps=40, variance="small", ema_decay=0.0).eval()  # fmt: skip
    for p in m.denoiser.parameters():  # a non-trivial net (the output layer starts at zero)
        nn.init.normal_(p, std=0.05)
    for steps in (40, 10):
        a = m.sample(3, _gen(7), steps=steps, sampler="ddim", eta=1.0)
        b = m.sample(3, _gen(7), steps=steps, sampler="ancestral")
        assert torch.allclose(a, b, atol=1e-5), steps
    det = [m.sample(3, _gen(s), steps=10, sampler="ddim", eta=0.0) for s in (1, 1, 2)]
    assert torch.equal(det[0], det[1]) and not torch.allclose(det[0], det[2])
    traj = m.trajectory(2, frames=5, generator=_gen(3))
    assert traj.shape == (5, 2, 1, 8, 8)
    assert torch.allclose(traj[-1], m.sample(2, _gen(3)))


@pytest.mark.parametrize("cls", [DDPM, FlowMatching])
def test_sampling_uses_the_ema_net(cls) -> None:
    m = cls((2,), net=MLP_NET, ema_decay=0.9).eval()
    before = m.sample(5, _gen(0), steps=4)
    with torch.no_grad():
        for p in m.denoiser.parameters():
            p.add_(0.5)
    assert torch.allclose(m.sample(5, _gen(0), steps=4), before)  # the average is unchanged
    assert not torch.allclose(m.sample(5, _gen(0), steps=4, ema=False), before)
    m.update_ema()  # a copy phase of none: the first update averages with weight 1 - 1/10
    assert not torch.allclose(m.sample(5, _gen(0), steps=4), before)


def test_classifier_free_guidance_combines_the_two_predictions() -> None:
    m = FlowMatching((4,), num_classes=3, net=MLP_NET, conditional=True, ema_decay=0.0)
    for p in m.denoiser.parameters():
        nn.init.normal_(p, std=0.3)
    x, t, y = torch.randn(5, 4), torch.rand(5) * 1000, torch.tensor([0, 1, 2, 0, 1])
    c = m.denoiser(x, t, y)
    u = m.denoiser(x, t, torch.full_like(y, 3))
    assert torch.allclose(m.predict(x, t, y, guidance=2.0), 3 * c - 2 * u, atol=1e-6)
    assert torch.allclose(m.predict(x, t, y, guidance=0.0), c)
    assert m.sample(4, y=2, steps=3).shape == (4, 4)
    with pytest.raises(ConfigError, match="labelled data"):
        FlowMatching((4,), num_classes=0, net=MLP_NET, conditional=True)


@pytest.mark.parametrize("size", [28, 32, 8])
def test_unet_keeps_the_image_shape(size: int) -> None:
    net = UNet(channels=8, channel_mults=(1, 2, 2), heads=2).denoiser((3, size, size), 10)
    x = torch.randn(2, 3, size, size)
    out = net(x, torch.tensor([0.0, 999.0]), torch.tensor([3, 10]))
    assert out.shape == x.shape
    with pytest.raises(ConfigError, match="heads"):
        UNet(channels=6, channel_mults=(1,), heads=4).denoiser((1, 28, 28))
    with pytest.raises(ConfigError, match="time_mlp"):
        UNet().denoiser((2,))


@pytest.mark.parametrize("family", ["ddpm", "flow_matching"])
def test_runs_on_digits_log_bpd_and_reload_without_hydra(make_cfg, tmp_path, family) -> None:
    cls = {"ddpm": DDPM, "flow_matching": FlowMatching}[family]
    overrides = [
        f"model={family}",
        "data=digits",
        "model.net.channels=8",
        "model.net.channel_mults=[1,2]",
        "model.sample_steps=5",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "metrics.every_n_epochs=1",
        "callbacks.image_grids.n_samples=8",
        *(
            ["model.bound_timesteps=5"]
            if family == "ddpm"
            else ["model.likelihood_solver=heun", "model.likelihood_steps=4"]
        ),
    ]
    cfg = make_cfg(*overrides)
    metrics, objs = train(cfg)
    assert metrics["val/loss"] < 5 and np.isfinite(metrics["test/bpd"])
    assert 0 < metrics["test/bpd"] < 16  # bits/dim of 8-bit data, untrained
    assert {"val/fid", "val/fid_raw", "test/fid"} <= set(metrics)
    if family == "ddpm":
        # KL(q(x_T | x_0) || N(0, I)) in closed form on the test images (its part of the
        # bound needs no network): 0.5 sum(abar x^2 + (1 - abar) - log(1 - abar) - 1).
        x0 = objs["datamodule"].splits["test"][0].double() / 127.5 - 1
        abar = float(objs["model"].diffusion.abar[-1])
        closed = 0.5 * (abar * x0**2 + (1 - abar) - math.log(1 - abar) - 1).flatten(1).sum(1)
        # (tiny for T = 1000: float32 cancellation in the model's KL costs ~1%)
        want = float(closed.mean())
        assert math.isclose(metrics["test/prior_kl"], want, rel_tol=0.05), (metrics, want)
        assert math.isclose(
            metrics["test/bpd"], -metrics["test/elbo"] / (64 * math.log(2)), rel_tol=1e-4
        )
    else:
        bits = (-metrics["test/loglik"] - 64 * math.log(2)) / (64 * math.log(2)) + 8
        assert math.isclose(metrics["test/bpd"], bits, rel_tol=1e-4)
    assert (tmp_path / "images" / "reverse_process_epoch0000.png").is_file()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    model = cls.load_from_checkpoint(ckpt).eval()
    assert torch.allclose(model.ema_count, objs["model"].ema_count)
    # The reloaded model samples as the trained one (its EMA weights): the same images.
    s = model.sample(3, _gen(0), steps=3)
    assert torch.allclose(s, objs["model"].eval().sample(3, _gen(0), steps=3), atol=1e-5)
    # eval.py on the checkpoint: the same test metrics, from the EMA weights
    from omegaconf import OmegaConf

    from genlab.evaluate import evaluate

    (tmp_path / ".hydra").mkdir(exist_ok=True)  # what python train.py writes
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    out = evaluate(ckpt, ["metrics.n_test=64", "metrics.probes=false"])
    assert np.isfinite(out["metrics"]["test/bpd"]) and np.isfinite(out["metrics"]["test/fid"])
    assert (tmp_path / "checkpoints" / "eval_last" / "metrics.json").is_file()
    if family == "ddpm":  # resumed: the EMA's count (its warm-up) continues
        resumed = [o for o in overrides if not o.startswith("trainer.max_epochs")]
        resumed += ["trainer.max_epochs=2", f"ckpt_path={ckpt}"]
        _, again = train(make_cfg(*resumed))
        assert int(again["model"].ema_count) == 2 * int(objs["model"].ema_count)


@pytest.mark.parametrize("family", ["ddpm", "flow_matching"])
def test_toy2d_runs_draw_a_density_map(make_cfg, tmp_path, family) -> None:
    cfg = make_cfg(
        f"model={family}",
        "model/net=time_mlp",
        "model.net.width=32",
        "model.net.depth=2",
        "model.sample_steps=8",
        "model.monitor=null",
        "data=toy2d",
        "trainer.max_epochs=1",
        "callbacks.image_grids.plane_resolution=40",
        "callbacks.image_grids.n_plane_samples=500",
        *(["model.timesteps=100", "model.bound_timesteps=4"] if family == "ddpm" else
          ["model.bpd_max_images=64", "model.likelihood_solver=heun", "model.likelihood_steps=8"]),
    )  # fmt: skip
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["val/loss"])
    key = "test/elbo" if family == "ddpm" else "test/loglik"
    assert np.isfinite(metrics[key])
    assert (tmp_path / "images" / "density_epoch0000.png").is_file()
    assert objs["model"].sample(5).shape == (5, 2)


def test_a_denoiser_family_refuses_an_encoder_net(make_cfg) -> None:
    cfg = make_cfg("model=ddpm", "model/net=mlp", "data=digits")
    with pytest.raises(ConfigError, match="denoiser"):
        train(cfg)


def test_ddpm_under_ddp_on_two_processes_keeps_one_average(tmp_path) -> None:
    """Two CPU ranks train (no unused parameters), and rank 0's checkpoint holds an EMA
    that moved away from the trained weights."""
    from conftest import FAST, train_py

    p = train_py(
        [*FAST, "model=ddpm", "data=digits", "model.net.channels=8",
         "model.net.channel_mults=[1,2]", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=1",
         "trainer.limit_train_batches=4", "metrics.every_n_epochs=0", "test=false",
         f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    model = DDPM.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert int(model.ema_count) == 4  # one update per optimiser step
    raw = dict(model.denoiser.named_parameters())
    ema = dict(model.ema["denoiser"].named_parameters())
    assert any(not torch.allclose(ema[k], raw[k]) for k in raw)
