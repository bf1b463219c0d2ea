"""Flows: every layer and model inverts exactly, log-dets match brute-force Jacobians,
likelihoods are exact (analytic cases, normalisation), and every flow trains."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import csv_rows
from torch.autograd.functional import jacobian

from genlab.callbacks.views import plane_grid
from genlab.errors import ConfigError
from genlab.models import NICE, Glow, RealNVP
from genlab.nn.flow_mixing import ExpLowRank, InvConv1x1, Permute, Reverse
from genlab.nn.flows import (
    ActNorm,
    Coupling,
    DiagonalScaling,
    FlowSequence,
    Logit,
    MultiScale,
    Prior,
    Reshape,
    Squeeze,
    conv_net,
    mlp_net,
)
from genlab.train import train

VEC, IMG = (6,), (4, 4, 4)


def _layers():
    """(name, shape, factory) for every layer type, on vectors and on images."""
    dense = mlp_net([8, 8], activation="Tanh")
    conv = conv_net(8, activation="Tanh")
    yield "additive_vec", VEC, lambda: Coupling(6, 0, dense)
    yield "additive_odd_vec", (5,), lambda: Coupling(5, 1, dense)
    yield "affine_sigmoid_vec", VEC, lambda: Coupling(6, 1, dense, affine=True)
    yield "affine_tanh_vec", VEC, lambda: Coupling(6, 0, dense, affine=True, scale="tanh")
    yield "affine_sigmoid_img", IMG, lambda: Coupling(4, 0, conv, affine=True)
    yield "affine_tanh_img", IMG, lambda: Coupling(4, 1, conv, affine=True, scale="tanh")
    yield "additive_odd_vec_halves", (5,), lambda: Coupling(5, 1, dense, split="halves")
    yield "affine_img_halves", IMG, lambda: Coupling(4, 1, conv, affine=True, split="halves")
    yield "permute_vec", (5,), lambda: Permute.evens_first(5)
    for name, cls in [
        ("diag_scaling", DiagonalScaling),
        ("actnorm", ActNorm),
        ("invconv", InvConv1x1),
        ("explowrank", ExpLowRank),
    ]:
        yield f"{name}_vec", VEC, lambda cls=cls: cls(6)
        yield f"{name}_img", IMG, lambda cls=cls: cls(4)
    yield "reverse_img", IMG, Reverse
    yield "squeeze_img", IMG, Squeeze
    yield "reshape_img", IMG, lambda: Reshape(IMG, (64,))
    yield (
        "multiscale_img",
        (1, 4, 4),
        lambda: MultiScale(
            (1, 4, 4),
            2,
            lambda c: FlowSequence([ActNorm(c), InvConv1x1(c), Coupling(c, 0, conv, True)]),
        ),
    )
    yield (
        "sequence_vec",
        VEC,
        lambda: FlowSequence(
            [ActNorm(6), ExpLowRank(6), Coupling(6, 0, dense, True, "tanh"), Reverse()]
        ),
    )


@pytest.mark.parametrize(("features", "parity"), [(6, 0), (6, 1), (5, 0), (5, 1)])
def test_halves_between_evens_first_permutations_are_the_interleaved_coupling(
    features: int, parity: int
) -> None:
    """NICE's odd/even partition, computed on contiguous halves: the same function (and the
    same weights) as the interleaved coupling."""
    torch.manual_seed(0)
    net = mlp_net([8], activation="Tanh")
    interleaved = Coupling(features, parity, net, affine=True)
    halves = Coupling(features, parity, net, affine=True, split="halves")
    halves.load_state_dict(interleaved.state_dict())
    with torch.no_grad():
        for p in interleaved.parameters():
            p.add_(0.3 * torch.randn_like(p))
    halves.load_state_dict(interleaved.state_dict())
    seq = FlowSequence(
        [Permute.evens_first(features), halves, Permute.evens_first(features, inverse=True)]
    )
    x = torch.randn(7, features)
    (h1, ld1), (h2, ld2) = interleaved(x), seq(x)
    assert torch.allclose(h1, h2, atol=1e-6) and torch.allclose(ld1, ld2, atol=1e-6)
    assert ld1.abs().max() > 0.01  # a real affine map


def test_invconv_mixes_channels_as_the_matrix_product() -> None:
    layer = InvConv1x1(4)
    w = layer.weight()
    for x in (torch.randn(3, 4, 5, 5), torch.randn(3, 4)):
        h, _ = layer(x)
        assert torch.allclose(h, torch.einsum("ij,bj...->bi...", w, x), atol=1e-5)


def test_checkpoints_from_before_the_contiguous_couplings_keep_their_function(tmp_path) -> None:
    """A NICE state dict numbered as before the Permute layers loads renumbered; a Glow
    checkpoint without ``coupling_split`` keeps interleaved couplings, and resuming it
    under the new default is refused in one line."""
    from genlab.checkpoints import check_resume, migrate_hparams
    from genlab.errors import CheckpointError

    torch.manual_seed(0)
    nice = NICE((1, 4, 4), hidden_sizes=[16, 16])
    k = nice.hparams.couplings
    old_index = {1 + i: i for i in range(1, k + 1)} | {k + 3: k + 1}  # new -> old layer

    def old_key(key: str) -> str:
        parts = key.split(".")
        if parts[:2] == ["flow", "layers"] and int(parts[2]) in old_index:
            parts[2] = str(old_index[int(parts[2])])
        return ".".join(parts)

    new_state = nice.state_dict()
    ckpt = {"state_dict": {old_key(key): v for key, v in new_state.items()}}
    assert any(key.startswith("flow.layers.1.") for key in ckpt["state_dict"])
    nice.on_load_checkpoint(ckpt)
    assert ckpt["state_dict"].keys() == new_state.keys()
    assert all(torch.equal(ckpt["state_dict"][key], v) for key, v in new_state.items())

    glow = Glow((1, 8, 8), channels=8, steps=2)
    hp = {k: v for k, v in glow.hparams.items() if k != "coupling_split"}
    assert migrate_hparams(hp, "genlab.models.flow.Glow")["coupling_split"] == "interleaved"
    path = tmp_path / "old.ckpt"
    torch.save(
        {"state_dict": glow.state_dict(), "hyper_parameters": hp, "global_step": 5,
         "genlab_family": "genlab.models.flow.Glow"}, path,
    )  # fmt: skip
    with pytest.raises(CheckpointError, match="resume with model.coupling_split=interleaved"):
        check_resume(glow, path)


def _models():
    """(name, data_shape, model) for every flow model, image and dense variants."""
    yield "nice", (1, 4, 4), lambda: NICE((1, 4, 4), hidden_sizes=[16, 16])
    yield "realnvp_img", (1, 8, 8), lambda: RealNVP((1, 8, 8), channels=8, steps=2)
    yield "glow_img", (1, 8, 8), lambda: Glow((1, 8, 8), channels=8, steps=2)
    yield "glow_explowrank", (1, 4, 4), lambda: Glow((1, 4, 4), 0, 1, 2, 8, mixing="explowrank")
    yield "realnvp_dense", (2,), lambda: RealNVP((2,), hidden_sizes=[8], steps=3)
    yield "glow_dense", (6,), lambda: Glow((6,), hidden_sizes=[8], steps=3)


# Whole models get smaller perturbations: 0.3 on every weight of 20+ layers compounds
# into a map too ill-conditioned to invert in float32.
CASES = [
    *((n, s, m, 0.3) for n, s, m in _layers()),
    *((n, s, (lambda m=m: m().flow), 0.05) for n, s, m in _models()),
]


def _prepared(make, shape, dtype, noise):
    """The layer in ``dtype``, data-initialised and with every parameter perturbed, so no
    part of it is the identity (zero-initialised conditioners would hide errors)."""
    torch.manual_seed(0)
    layer = make().to(dtype)
    x = torch.randn(16, *shape, dtype=dtype)
    with torch.no_grad():
        layer(x)  # actnorm's data-dependent initialisation
        for p in layer.parameters():
            p.add_(noise * torch.randn_like(p))
    return layer, torch.randn(3, *shape, dtype=dtype)


@pytest.mark.parametrize(("name", "shape", "make", "noise"), CASES, ids=[c[0] for c in CASES])
def test_layer_inverts_and_log_det_is_exact(name, shape, make, noise) -> None:
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        layer, x = _prepared(make, shape, dtype, noise)
        h, ld = layer(x)
        x2, ld_inv = layer.inverse(h)
        assert ld.shape == ld_inv.shape == (3,)
        assert (x2 - x).abs().max() < tol, (dtype, (x2 - x).abs().max())
        assert torch.allclose(ld, -ld_inv, atol=tol * 10)
    # log|det J| by brute force on each example (float64).
    layer, x = _prepared(make, shape, torch.float64, noise)
    with torch.no_grad():
        _, ld = layer(x)
    for i in range(x.shape[0]):
        jac = jacobian(lambda v: layer(v.view(1, *shape))[0].flatten(), x[i].flatten())
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0 and abs(float(logabs - ld[i])) < 1e-8, (float(logabs), float(ld[i]))


def test_logit_inverts_and_under_a_logistic_prior_is_the_uniform_density() -> None:
    """RealNVP's logit pre-processing: exact inverse and log-det on data in [0, 1], and
    the logit of a + (1 - 2a) x under a standard logistic prior is x ~ U[0, 1]^D squeezed
    into [a, 1 - a]: log p(x) = D log(1 - 2a) for every x (8 bits/dim as a -> 0)."""
    torch.manual_seed(0)
    shape = (2, 3, 3)
    x = torch.rand(5, *shape, dtype=torch.float64)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # the ends stay finite
    for a in (1e-6, 0.05):
        layer = Logit(a)
        h, ld = layer(x)
        x2, ld_inv = layer.inverse(h)
        assert torch.isfinite(h).all() and (x2 - x).abs().max() < 1e-9
        assert torch.allclose(ld, -ld_inv, atol=1e-9)
        for i in range(2, 5):
            jac = jacobian(lambda v, f=layer: f(v.view(1, *shape))[0].flatten(), x[i].flatten())
            assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(float(ld[i]), abs=1e-8)
        logp = Prior("logistic").log_prob(h.flatten(1)) + ld
        assert torch.allclose(logp, torch.full((5,), 18 * math.log1p(-2 * a), dtype=torch.float64))
    with pytest.raises(ConfigError, match="alpha"):
        Logit(0.5)


def test_logit_flows_keep_old_checkpoint_keys_and_refuse_vectors() -> None:
    """model.logit_alpha wraps the image flow (its log-det counted in log p of the [0, 1]
    data); without it the flow and its state keys are as before."""
    plain, logit = RealNVP((1, 4, 4), channels=4), RealNVP((1, 4, 4), channels=4, logit_alpha=1e-6)
    assert all(k.startswith("flow.levels") or k.startswith("flow.") for k in plain.state_dict())
    assert not any(k.startswith("flow.layers.1.") for k in plain.state_dict())
    assert {k.replace("flow.layers.1.", "flow.", 1) for k in logit.state_dict()} == set(
        plain.state_dict()
    )
    logit.load_state_dict(
        {k.replace("flow.", "flow.layers.1.", 1): v for k, v in plain.state_dict().items()}
    )
    x = torch.rand(3, 1, 4, 4)
    h, ld = logit.flow.layers[0](x)
    # same core weights: the logit model's log p is the plain one's at logit(x) + the log-det
    assert torch.allclose(logit.log_prob(x), plain.log_prob(h) + ld, atol=1e-4)
    s = logit.sample(4)
    assert s.shape == (4, 1, 4, 4) and bool(((s >= 0) & (s <= 1)).all())
    with pytest.raises(ConfigError, match="logit_alpha"):
        Glow((2,), logit_alpha=1e-6)


def test_scaling_flow_gives_the_analytic_gaussian_likelihood() -> None:
    """h = exp(s) x with a N(0, I) prior is x ~ N(0, exp(-2s)): exact density, and its
    maximum-likelihood fit is the Gaussian MLE with the sample standard deviations."""
    torch.manual_seed(0)
    sigma = torch.tensor([0.5, 2.0, 1.0, 3.0])
    x = torch.randn(4000, 4) * sigma
    flow, prior = DiagonalScaling(4), Prior("gaussian")
    with torch.no_grad():
        flow.log_scale.copy_(torch.tensor([0.3, -0.2, 0.0, 1.0]))
    h, ld = flow(x)
    exact = torch.distributions.Normal(0, (-flow.log_scale).exp()).log_prob(x).sum(1)
    assert torch.allclose(prior.log_prob(h) + ld, exact, atol=1e-5)

    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(1500):
        h, ld = flow(x)
        loss = -(prior.log_prob(h) + ld).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sd = x.pow(2).mean(0).sqrt()  # MLE of the std with known zero mean
    mle = -0.5 * 4 * (1 + math.log(2 * math.pi)) - sd.log().sum()
    assert float(-loss.detach()) == pytest.approx(float(mle), abs=1e-3)
    assert torch.allclose((-flow.log_scale).exp(), sd, rtol=1e-3)


def test_logistic_prior_and_bits_per_dim() -> None:
    h = torch.linspace(-5, 5, 11).view(1, -1)
    d = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(0.0, 1.0),
        [torch.distributions.SigmoidTransform().inv],
    )
    assert torch.allclose(Prior("logistic").log_prob(h), d.log_prob(h).sum(1), atol=1e-5)
    model = NICE((1, 4, 4), hidden_sizes=[4])
    # The uniform density on [0, 1]^D (log p = 0) is 8 bits/dim of 8-bit data; NICE's
    # published 1980.50 nats on MNIST is 4.36 bits/dim.
    assert float(model.bits_per_dim(torch.zeros(1))) == pytest.approx(8.0)
    model.dim = 784
    assert float(model.bits_per_dim(torch.tensor(1980.50))) == pytest.approx(4.356, abs=1e-3)


FLOW_RUNS = [(m, d) for m in ("nice", "realnvp", "glow") for d in ("digits", "toy2d")]


@pytest.mark.parametrize(("model", "data"), [*FLOW_RUNS, ("glow_logit", "digits")])
def test_fast_dev_run_every_flow(make_cfg, model: str, data: str) -> None:
    small = "model.hidden_sizes=[64,64]" if model == "nice" else "model.channels=16"
    extra = ["model.logit_alpha=1e-6"] if model.endswith("_logit") else []
    model = model.removesuffix("_logit")
    cfg = make_cfg(f"model={model}", f"data={data}", small, "trainer=debug", *extra)
    metrics, objs = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loglik"])
    if data == "digits":  # 8-bit images: bits/dim; the identity with loglik holds
        bpd = (-metrics["test/loglik"] + 64 * math.log(256)) / (64 * math.log(2))
        assert metrics["test/bpd"] == pytest.approx(bpd, rel=1e-5)
        # standard errors over the test images: bpd is linear in loglik, so are they
        se = metrics["test/loglik_se"] / (64 * math.log(2))
        assert metrics["test/bpd_se"] == pytest.approx(se, rel=1e-4) and se > 0
    else:
        assert "test/bpd" not in metrics  # continuous data have no bits/dim
        assert metrics["test/loglik_se"] > 0
    shape = (1, 8, 8) if data == "digits" else (2,)
    s = objs["model"].sample(7, temperature=0.7)
    assert s.shape == (7, *shape) and torch.isfinite(s).all()


def test_toy2d_flow_density_is_normalised_and_beats_a_gaussian(make_cfg, tmp_path) -> None:
    cfg = make_cfg(
        "model=glow",
        "data=toy2d",
        "data.name=eight_gaussians",
        "model.hidden_sizes=[64,64]",
        "model.steps=6",
        "trainer.max_epochs=4",
        "callbacks=test_curve",
        "callbacks.image_grids.every_n_epochs=4",
        "callbacks.image_grids.plane_resolution=64",
    )
    metrics, objs = train(cfg)
    model = objs["model"].eval()
    # The density integrates to 1: a Riemann sum over [-6, 6]^2 (data lie within 3.5).
    res, lim = 600, 6.0
    with torch.no_grad():
        p = model.log_prob(plane_grid(lim, res)).exp()
    assert float(p.sum() * (2 * lim / res) ** 2) == pytest.approx(1.0, abs=0.02)
    # It learnt the data: far better than the best single Gaussian (-3.55 nats here).
    x = objs["datamodule"].splits["test"][0]
    gauss = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T))
    assert metrics["test/loglik"] > float(gauss.log_prob(x).mean()) + 1.0
    images = {q.name for q in (tmp_path / "images").iterdir()}
    assert images == {"density_epoch0003.png", "samples_epoch0003.png"}
    assert any(r.get("val/loglik") for r in csv_rows(tmp_path))
    # Reloads without Hydra (actnorm's initialisation included): same density.
    ckpts = tmp_path / "checkpoints"
    loaded = Glow.load_from_checkpoint(ckpts / "best.ckpt", map_location="cpu").eval()
    xs = x[:256]
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(xs), model.log_prob(xs), atol=1e-5)
    # The test-set curve: one point per epoch, the last one the final weights' test loglik.
    curve = [
        (r["epoch"], float(r["curve/test_loglik"]))
        for r in csv_rows(tmp_path)
        if r.get("curve/test_loglik")
    ]
    assert [e for e, _ in curve] == ["0", "1", "2", "3"]
    last = Glow.load_from_checkpoint(ckpts / "last.ckpt", map_location="cpu").eval()
    with torch.no_grad():
        want = float(last.log_prob(x).mean())
    assert curve[-1][1] == pytest.approx(want, abs=1e-4)
