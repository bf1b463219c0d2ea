"""Boltzmann machines: free energy, Gibbs sampling, CD gradients and AIS against exact
enumeration on tiny RBMs; RBM / DBN runs, persistent chains and reloads."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from genlab.nn.rbm import (
    RBMLayer,
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


def _tiny(V: int = 6, H: int = 4, seed: int = 0, scale: float = 1.0) -> RBMLayer:
    torch.manual_seed(seed)
    rbm = RBMLayer(V, H).double()
    with torch.no_grad():
        rbm.W.normal_(0, scale)
        rbm.b.normal_(0, scale)
        rbm.c.normal_(0, scale)
    return rbm


def test_free_energy_is_minus_log_sum_over_hidden_states() -> None:
    rbm = _tiny()
    vs, hs = _states(6), _states(4)
    for v in vs[::7]:
        brute = -torch.logsumexp(-rbm.energy(v.expand(16, -1), hs), 0)
        assert torch.allclose(rbm.free_energy(v[None])[0], brute, atol=1e-10)


def test_gaussian_hidden_free_energy_matches_numerical_integral() -> None:
    torch.manual_seed(1)
    rbm = RBMLayer(3, 1, gaussian_hidden=True).double()
    with torch.no_grad():
        rbm.W.normal_(0, 1.0), rbm.b.normal_(0, 1.0), rbm.c.normal_(0, 1.0)
    v = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    h = torch.linspace(-30, 30, 200001, dtype=torch.float64)[:, None]
    integral = torch.trapezoid(torch.exp(-rbm.energy(v.expand(h.shape[0], -1), h)), h[:, 0])
    assert torch.allclose(rbm.free_energy(v)[0], -torch.log(integral), atol=1e-6)


def test_exact_log_partition_matches_enumerating_both_layers() -> None:
    rbm = _tiny()
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
    cd1 = torch.autograd.grad(rbm.free_energy(data).mean() - rbm.free_energy(neg1).mean(), [rbm.W])[
        0
    ]
    assert (cd1 - exact[0]).abs().max() > 2 * (cd[0] - exact[0]).abs().max()


def test_ais_matches_exact_log_partition() -> None:
    torch.manual_seed(0)
    rbm = RBMLayer(64, 12)  # digits-sized visible layer, 2^12 hidden states to enumerate
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
    # The reported spread (+-3 s.e. of the weights) holds the enumerated log Z.
    assert est.lo <= exact <= est.hi and est.hi - log_z < 0.2, (est.lo, exact, est.hi)
    assert est.log_w.shape == (200,)
    lo, hi = log_mean_exp_bounds(torch.zeros(5))  # equal weights: no spread
    assert lo == hi == 0.0
    # weights 1 and 3: mean 2, s.e. 1, so 2 - 3 < 0 (no lower bound) and log(2 + 3);
    # shifting the log weights by 100 shifts both ends by 100 (the max is added back).
    w = torch.log(torch.tensor([1.0, 3.0], dtype=torch.float64))
    assert log_mean_exp_bounds(w) == (-math.inf, pytest.approx(math.log(5)))
    assert log_mean_exp_bounds(w + 100)[1] == pytest.approx(math.log(5) + 100)
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


def test_cd_ramp_rises_from_one_to_cd_steps() -> None:
    from genlab.models import RBM

    ramped = RBM((1, 4, 4), hidden_units=3, cd_steps=25, cd_ramp_epochs=8)
    assert [ramped.cd_steps_at(e) for e in (0, 4, 8, 50)] == [1, 13, 25, 25]
    assert RBM((1, 4, 4), hidden_units=3, cd_steps=25).cd_steps_at(0) == 25


# ---- runs ------------------------------------------------------------------------------
def test_dbn_stages_pretrain_then_finetune_and_reload(make_cfg, tmp_path) -> None:
    from conftest import csv_rows

    from genlab.models import DBN
    from genlab.train import train

    cfg = make_cfg(
        "model=dbn",
        "model.hidden_sizes=[32,16,4]",
        "model.pretrain_epochs=1",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=6",
        "trainer.log_every_n_steps=1",
        "callbacks.image_grids.every_n_epochs=1",
        "metrics.every_n_epochs=0",
    )
    metrics, objs = train(cfg)
    model = objs["model"]
    assert int(model.stage) == 3 and model.finetuning
    rows = csv_rows(tmp_path)
    epochs_of = lambda key: sorted({int(r["epoch"]) for r in rows if r.get(key)})  # noqa: E731
    # One stage per epoch, each layer's metrics under its own name.
    assert epochs_of("train/rbm1/loss") == [0] and epochs_of("val/rbm2/recon") == [1]
    assert epochs_of("train/rbm3/free_energy") == [2]
    assert epochs_of("val/loss") == [3, 4] and epochs_of("val/rbm1/recon") == [0]
    # Fine-tuning unrolled the stack into untied decoder weights.
    assert not torch.equal(model.dec_W[0], torch.zeros_like(model.dec_W[0]))
    # ... and fine-tuned copies of the encoder, leaving the RBMs (the DBN) as pre-trained.
    assert not torch.equal(model.enc_W[0], model.rbms[0].W)
    assert all(math.isfinite(metrics[k]) for k in ("test/loss", "test/mse"))
    # Squared error per image at most the pixel-mean baseline of the binarised test
    # digits (every image reconstructed as the mean image; measured: 4.66 vs 4.64 after
    # these few steps through a 4-unit code), far below a decoder that has not learnt
    # the pixel statistics (0.5 everywhere: 16).
    x = model.preprocess(objs["datamodule"].splits["test"][0], torch.Generator().manual_seed(0))
    x = x.flatten(1)
    baseline = float(((x - x.mean(0)) ** 2).sum(1).mean())
    assert metrics["test/mse"] < 1.02 * baseline, (metrics["test/mse"], baseline)
    assert (tmp_path / "images" / "filters_epoch0000.png").exists()
    # best.ckpt is a fine-tuning epoch (the monitor is logged from then on); reloads
    # without Hydra with its stage.
    best = tmp_path / "checkpoints" / "best.ckpt"
    again = DBN.load_from_checkpoint(best)
    assert again.finetuning
    # The reloaded network reproduces the test pass's number on the test split.
    x_test = objs["datamodule"].splits["test"][0]
    with torch.no_grad():
        mse = again.ae_metrics(again.preprocess(x_test))["mse"]
    assert float(mse) == pytest.approx(metrics["test/mse"], rel=1e-4)
    assert again.sample(3).shape == (3, 1, 8, 8)


def test_dbn_needs_epochs_for_finetuning(make_cfg) -> None:
    from genlab.errors import ConfigError
    from genlab.train import train

    cfg = make_cfg(
        "model=dbn", "model.hidden_sizes=[8,4]", "model.pretrain_epochs=2", "trainer.max_epochs=4"
    )
    with pytest.raises(ConfigError, match=r"trainer.max_epochs above 4"):
        train(cfg)
    from genlab.models import DBN

    with pytest.raises(ConfigError, match="model.hidden_sizes is empty"):
        DBN((1, 8, 8), hidden_sizes=[])


def test_pcd_chains_checkpoint_and_reload(make_cfg, tmp_path) -> None:
    from genlab.models import RBM
    from genlab.train import train

    cfg = make_cfg(
        "model=rbm",
        "model.hidden_units=16",
        "model.persistent=true",
        "model.lr_decay=true",
        "model.n_chains=20",
        "model.ais_betas=200",
        "model.ais_runs=8",
        "model.raise_images=30",
        "model.raise_chains=8",
        "model.raise_betas=200",
        "data.eval_batch_size=20",  # the 30 RAISE images span two test batches
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=5",
        "metrics.every_n_epochs=0",
    )
    start = RBM((1, 8, 8), hidden_units=16, n_chains=20).chains.clone()  # seeded by the run too
    metrics, objs = train(cfg)
    model = objs["model"]
    assert math.isfinite(metrics["test/loglik"]) and metrics["test/loglik"] < 0
    # 16 hidden units: log Z by enumeration. The short AIS (8 runs x 200 temperatures)
    # lands near it, and test/loglik = -F(v) - log Z with the AIS value.
    exact = float(exact_log_partition(copy.deepcopy(model.rbm).double()))
    assert abs(metrics["test/log_z"] - exact) < 1.0, (metrics["test/log_z"], exact)
    # RAISE on the first 30 test images lands on their exact log-likelihood (-F - log Z
    # with the enumerated log Z), with its standard error logged.
    on_subset = metrics["test/loglik_raise_ais"] + metrics["test/log_z"] - exact
    assert abs(metrics["test/loglik_raise"] - on_subset) < 0.3, (metrics, on_subset)
    assert 0 < metrics["test/loglik_raise_se"] < 0.3
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    saved = ckpt["state_dict"]["chains"]
    assert saved.shape == (20, 64) and set(saved.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(saved, model.chains.cpu())
    assert not torch.equal(saved, start)  # the chains moved
    again = RBM.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert torch.equal(again.chains, saved) and again.hparams.persistent


def test_svd_baseline_is_the_rank_d_optimum() -> None:
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("svd", REPO / "scripts" / "svd_baseline.py")
    svd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(svd)
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 20, generator=g, dtype=torch.float64)
    data = torch.randn(200, 3, generator=g, dtype=torch.float64) @ basis + 5.0  # rank 3 + mean
    noise = 0.01 * torch.randn(200, 20, generator=g, dtype=torch.float64)
    errs = svd.svd_errors(data[:150] + noise[:150], data[150:] + noise[150:], [1, 2, 3, 20])
    assert errs[20] < 1e-20 and errs[3] < 50 * 20 * 1e-4  # rank 3 explains all but the noise
    assert errs[1] > errs[2] > errs[3]


def _gibbs_kernel(rbm, bA: torch.Tensor, beta: float, states: torch.Tensor) -> torch.Tensor:
    """The exact v -> h -> v' transition matrix at inverse temperature beta (S, S)."""
    H = rbm.hidden
    hs = ((torch.arange(2**H)[:, None] >> torch.arange(H)) & 1).double()  # (2^H, H)
    W, b, c = (t.detach().double() for t in (rbm.W, rbm.b, rbm.c))
    ph = torch.sigmoid(beta * (states @ W + c))  # (S, H)
    p_h = torch.prod(hs[None] * ph[:, None] + (1 - hs[None]) * (1 - ph[:, None]), -1)  # (S, 2^H)
    pv = torch.sigmoid((1 - beta) * bA + beta * (hs @ W.T + b))  # (2^H, V)
    p_v = torch.prod(states[None] * pv[:, None] + (1 - states[None]) * (1 - pv[:, None]), -1)
    return p_h @ p_v  # (S, S): rows sum to 1


def test_raise_is_unbiased_for_the_annealing_model_and_conservative() -> None:
    """RAISE's weights average to p_ann(v), the forward chain's marginal computed exactly
    by matrix products on a 3-visible RBM; on a 10 x 6 RBM with a fine schedule the
    estimate approaches the exact log p(v) from below, where plain AIS errs high."""
    from genlab.nn.rbm import raise_log_likelihood

    torch.manual_seed(0)
    rbm = RBMLayer(3, 2).double()
    with torch.no_grad():
        rbm.W.normal_(0, 1.5)
        rbm.b.normal_(0, 1)
        rbm.c.normal_(0, 1)
    bA = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    betas = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    states = ((torch.arange(8)[:, None] >> torch.arange(3)) & 1).double()  # (8, 3)
    p = torch.prod(states * torch.sigmoid(bA) + (1 - states) * torch.sigmoid(-bA), 1)  # p_A
    for beta in betas[1:].tolist():
        p = p @ _gibbs_kernel(rbm, bA, beta, states)  # x_k ~ T_k(. | x_{k-1})
    g = torch.Generator().manual_seed(0)
    est = raise_log_likelihood(rbm, bA, betas, states, 40000, g)
    mean_w = est.log_w.exp().mean(1)  # unbiased for p_ann(v), image by image
    se = est.log_w.exp().std(1) / math.sqrt(40000)
    assert torch.all((mean_w - p).abs() < 4 * se), (mean_w, p, se)
    assert torch.allclose(mean_w.sum(), torch.ones((), dtype=torch.float64), atol=0.01)

    rbm = RBMLayer(10, 6).double()
    with torch.no_grad():
        rbm.W.normal_(0, 0.8)
        rbm.b.normal_(-0.5, 0.5)
        rbm.c.normal_(0, 0.5)
    v = torch.bernoulli(torch.full((12, 10), 0.4, dtype=torch.float64), generator=g)
    exact = -rbm.free_energy(v) - exact_log_partition(rbm)
    base = torch.zeros(10, dtype=torch.float64)
    est = raise_log_likelihood(rbm, base, scaled_betas(2000), v, 100, g)
    gap = est.log_p - exact  # conservative: at most the noise above the truth, and close
    assert float(gap.mean()) < 0.02 and float(gap.mean()) > -0.1, gap
    assert torch.all(est.stderr < 0.1) and torch.all(est.stderr > 0)


def test_dbn_finetuning_learning_rate_decays_by_cosine() -> None:
    from types import SimpleNamespace

    from genlab.models import DBN

    dbn = DBN((1, 4, 4), hidden_sizes=[6, 3], pretrain_epochs=2, finetune_lr=1e-3,
              finetune_lr_decay=True)  # fmt: skip
    dbn._trainer = SimpleNamespace(max_epochs=14)  # 4 pre-training + 10 fine-tuning epochs
    lrs = [dbn.finetune_lr_at(e) for e in (4, 9, 14)]
    assert lrs == pytest.approx([1e-3, 0.5e-3, 0.0], abs=1e-12)
    flat = DBN((1, 4, 4), hidden_sizes=[6, 3], pretrain_epochs=2, finetune_lr=1e-3)
    flat._trainer = SimpleNamespace(max_epochs=14)
    assert flat.finetune_lr_at(9) == 1e-3
