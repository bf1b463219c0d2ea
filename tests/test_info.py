"""Information families: MI estimators on Gaussians of known MI, the VIB's rate and loss,
Deep InfoMax's objective, probes for encoders that cannot sample, reloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import csv_rows
from omegaconf import OmegaConf

from genlab.callbacks.scores import PROBES
from genlab.data.transforms import eval_generator
from genlab.metrics.mutual_info import donsker_varadhan, infonce, jsd, mi_lower_bound
from genlab.models import VIB, InfoMax
from genlab.train import train


def gaussian_pairs(rho: float, d: int, b: int, g: torch.Generator):
    """b draws of (a, c) in R^d x R^d, each coordinate pair correlated by rho; the true
    MI is -d/2 log(1 - rho^2); returns a, c (b, d) and the true MI."""
    a = torch.randn(b, d, generator=g, dtype=torch.float64)
    c = rho * a + math.sqrt(1 - rho**2) * torch.randn(b, d, generator=g, dtype=torch.float64)
    return a, c, -d / 2 * math.log(1 - rho**2)


def optimal_scores(a, c, rho: float):
    """T*(a_i, c_j) = log p(c_j | a_i) - log p(c_j): the pointwise MI, (B, B)."""
    s2 = 1 - rho**2
    diff = c[None, :, :] - rho * a[:, None, :]  # (B, B, d)
    log_cond = -0.5 * (diff.pow(2) / s2 + math.log(2 * math.pi * s2)).sum(-1)
    log_marg = -0.5 * (c.pow(2) + math.log(2 * math.pi)).sum(-1)  # (B,)
    return log_cond - log_marg[None, :]


def mean_estimate(fn, rho: float, d: int = 2, b: int = 256, reps: int = 8, scale: float = 1.0):
    g = torch.Generator().manual_seed(0)
    vals = []
    for _ in range(reps):
        a, c, true = gaussian_pairs(rho, d, b, g)
        vals.append(float(fn(scale * optimal_scores(a, c, rho))))
    return sum(vals) / reps, true


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.8, 0.9])
def test_infonce_and_dv_are_lower_bounds_tight_for_the_optimal_critic(rho: float) -> None:
    for fn in (infonce, donsker_varadhan):
        est, true = mean_estimate(fn, rho)
        assert est <= true + 0.05, (fn.__name__, est, true)  # 0.05: sampling noise
        assert est >= true - 0.1, (fn.__name__, est, true)  # MI <= 1.7 << log 256 = 5.5
        # Any other critic gives less: a lower bound, not an estimate that can overshoot.
        worse, _ = mean_estimate(fn, rho, scale=0.5)
        assert worse < est - 0.02
    # InfoNCE never exceeds log B, whatever the true MI (here 9.9 nats > log 16 = 2.8).
    nce, true = mean_estimate(infonce, 0.999, d=2, b=16)
    assert true > math.log(16) and nce <= math.log(16) + 1e-9


def test_jsd_is_monotone_in_the_true_mi_and_bounded() -> None:
    vals = [mean_estimate(jsd, rho)[0] for rho in (0.0, 0.3, 0.6, 0.8, 0.9, 0.99)]
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False)), vals
    # E_pos[-softplus(-T)] - E_neg[softplus(T)] = 2 JS - 2 log 2 at the best critic: < 0
    assert vals[-1] < 0, vals
    assert abs(vals[0] - (-2 * math.log(2))) < 0.1  # independent: T* = 0, -2 softplus(0)
    # By hand: positives 2, 3 (the diagonal), negatives -1, 0.5.
    scores = torch.tensor([[2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    by_hand = (
        -(math.log1p(math.exp(-2)) + math.log1p(math.exp(-3))) / 2
        - (math.log1p(math.exp(-1)) + math.log1p(math.exp(0.5))) / 2
    )
    assert float(jsd(scores)) == pytest.approx(by_hand, rel=1e-12)  # -0.73143


def test_local_scores_average_the_per_location_estimates() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 8, 5, generator=g)
    for name in ("infonce", "dv", "jsd"):
        per_loc = torch.stack([mi_lower_bound(s[:, :, i], name) for i in range(5)]).mean()
        assert torch.allclose(mi_lower_bound(s, name), per_loc, atol=1e-6), name


def _representations_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "representations.py"
    spec = importlib.util.spec_from_file_location("representations", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def csv_dict_rows(path: Path):
    import csv

    with path.open() as f:
        yield from csv.DictReader(f)


def tiny_vib(beta: float) -> VIB:
    torch.manual_seed(0)
    return VIB((1, 8, 8), num_classes=10, latent_dim=6, beta=beta,
               net={"arch": "genlab.nn.MLP", "hidden_sizes": [16]})  # fmt: skip


def test_vib_kl_is_the_analytic_gaussian_kl_and_beta0_is_cross_entropy() -> None:
    model = tiny_vib(0.0).eval()
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (32,))
    xf = model.preprocess(x)
    mu, log_var = model.posterior(xf)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    kl = torch.distributions.kl_divergence(q, p).sum(-1)
    t = model.terms(xf, y, model.net)
    assert torch.allclose(t["kl"], kl, rtol=1e-4, atol=1e-4)
    # sigma = softplus(s - 5): the paper's parameterisation
    s = model.net["encoder"](xf)[:, 6:]
    assert torch.allclose((0.5 * log_var).exp(), F.softplus(s - 5), rtol=1e-5)
    # beta = 0: the loss is the cross-entropy of the decoder at z = mu + sigma * eps
    out = model.batch_metrics((x, y, torch.arange(32)), 0)
    eps = torch.randn(mu.shape, generator=eval_generator(torch.device("cpu"), 0))
    manual = F.cross_entropy(model.net["decoder"](mu + (0.5 * log_var).exp() * eps), y)
    assert torch.allclose(out["loss"], manual, atol=1e-5)
    # I(Z; Y) >= H(Y) - CE with H(Y) = log 10 before any fit (uniform labels assumed)
    assert torch.allclose(out["izy"], math.log(10) - manual, atol=1e-5)


def test_vib_deterministic_baseline_is_a_plain_classifier_on_mu() -> None:
    torch.manual_seed(0)
    model = VIB((1, 8, 8), num_classes=10, latent_dim=6, beta=0.5, deterministic=True,
                net={"arch": "genlab.nn.MLP", "hidden_sizes": [16]}).eval()  # fmt: skip
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    out = model.batch_metrics((x, y, torch.arange(16)), 0, full=True)
    mu = model.posterior(model.preprocess(x))[0]
    logits = model.net["decoder"](mu)
    # no noise and no rate: loss = ce at z = mu, whatever beta is; one draw = the average
    assert torch.allclose(out["loss"], F.cross_entropy(logits, y), atol=1e-6)
    assert "kl" not in out
    assert out["error"] == out["error_avg"] == (logits.argmax(-1) != y).float().mean()


def test_vib_rate_weight_enters_the_loss() -> None:
    model = tiny_vib(0.5).eval()
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    out = model.batch_metrics((x, y, torch.arange(16)), 0, full=True)
    # Rebuilt without the model's terms: ce of the first of the 12 seeded draws and the
    # analytic KL from torch.distributions.
    xf = model.preprocess(x)
    mu, log_var = model.posterior(xf)
    eps = torch.randn((12, *mu.shape), generator=eval_generator(torch.device("cpu"), 0))[0]
    ce = F.cross_entropy(model.net["decoder"](mu + (0.5 * log_var).exp() * eps), y)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(out["loss"], ce + 0.5 * kl.mean(), atol=1e-5)
    # A decoder that always says 3: error_avg is the share of other labels.
    with torch.no_grad():  # (evaluation uses the averaged weights)
        model.eval_net()["decoder"].weight.zero_()
        model.eval_net()["decoder"].bias.copy_(10.0 * F.one_hot(torch.tensor(3), 10).float())
    out = model.batch_metrics((x, y, torch.arange(16)), 0, full=True)
    assert float(out["error_avg"]) == pytest.approx(float((y != 3).float().mean()))
    # per test image: whether it is misclassified, for the error's standard error
    assert torch.equal(out["per_image"]["error_avg"], (y != 3).float())


def test_infomax_needs_a_term_and_fitting_images() -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha > 0 .* or model.beta > 0"):
        InfoMax((1, 28, 28), alpha=0.0, beta=0.0)
    with pytest.raises(ConfigError, match="divisible by 8"):
        InfoMax((1, 28, 28), channels=[8, 16, 32])


@pytest.mark.parametrize("estimator", ["jsd", "infonce", "dv"])
def test_infomax_objective_combines_the_weighted_terms(estimator: str) -> None:
    torch.manual_seed(0)
    model = InfoMax((1, 8, 8), code_dim=4, channels=[8], hidden_width=16, embed_dim=8,
                    estimator=estimator, alpha=0.7, beta=1.3, gamma=0.2)  # fmt: skip
    x = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    t = model.objective(model.preprocess(x))
    want = -(0.7 * t["mi_global"] + 1.3 * t["mi_local"]) + 0.2 * t["prior_g_loss"]
    assert torch.allclose(t["loss"], want)
    assert all(torch.isfinite(v) for v in t.values())
    assert float(t["mi_global"].detach()) != 0 and float(t["mi_local"].detach()) != 0
    y = model.encode(model.preprocess(x)).detach()
    # The uniform prior's code is the global net's output through a sigmoid.
    xf = model.preprocess(x)
    assert torch.allclose(y, torch.sigmoid(model.global_net(model.local_net(xf))).detach())


def test_infomax_learns_codes_that_identify_images(make_cfg, tmp_path: Path) -> None:
    """A few epochs on digits: the local InfoNCE rises well above its start, every term is
    logged, the probes run without a sampler, and the checkpoint reloads without Hydra."""
    cfg = make_cfg(
        "model=infomax",
        "model.channels=[16]",
        "model.hidden_width=64",
        "model.embed_dim=32",
        "model.lr=1e-3",
        "trainer.max_epochs=4",
        "trainer.log_every_n_steps=1",
    )
    metrics, objs = train(cfg)
    rows = csv_rows(tmp_path)
    local = [float(r["val/mi_local"]) for r in rows if r.get("val/mi_local")]
    assert all(b > a for a, b in zip(local, local[1:], strict=False)) and local[-1] > 0.25, local
    keys = set().union(*(r.keys() for r in rows))
    for k in ("loss", "mi_global", "mi_local", "prior_d_loss", "prior_g_loss"):
        assert f"train/{k}" in keys and f"val/{k}" in keys
    assert all(0.5 < metrics[f"test/{k}"] <= 1 for k in PROBES), metrics
    # the paper's three probed layers: the conv map and the fc layer besides y
    assert all(0.5 < metrics[f"test/{k}_{lay}"] <= 1 for k in PROBES for lay in ("conv", "fc"))
    assert not any(k.endswith(("fid", "kid")) for k in keys)  # no sampler, no FID
    model = objs["model"].eval()
    # The probed layers are the ones y is computed from: y = sigmoid(W fc + b), and fc is
    # the ReLU layer of the flattened conv map.
    x = model.preprocess(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    lay = model.probe_layers(x)
    assert lay["conv"].shape == (4, 16 * 4 * 4) and lay["fc"].shape == (4, 64)
    assert torch.allclose(torch.sigmoid(model.global_net[-1](lay["fc"])), model.encode(x))
    assert torch.allclose(model.global_net[:-1](lay["conv"]), lay["fc"])
    assert bool((lay["fc"] >= 0).all())
    # The tested checkpoint reloads without Hydra into the tested weights.
    again = InfoMax.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").eval()
    x = model.preprocess(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert torch.allclose(again.encode(x), model.encode(x), atol=1e-6)
    # scripts/representations.py, from the checkpoint alone, repeats the run's probes
    # (the tested checkpoint, the same probe code and training images).
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as a Hydra run leaves it
    _representations_script().main([str(tmp_path), "--out", str(tmp_path / "table")])
    row = next(csv_dict_rows(tmp_path / "table" / "probes.csv"))
    assert row["family"] == "InfoMax" and int(row["code_dim"]) == 64
    for k in PROBES:
        assert abs(float(row[k]) - 100 * metrics[f"test/{k}"]) < 0.01, (k, row, metrics)
    assert (tmp_path / "probes.json").is_file()  # the cached scores


def test_vib_trains_and_reloads_its_averaged_weights(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "model=vib",
        "model.net.hidden_sizes=[64]",
        "model.latent_dim=16",
        "model.lr=1e-2",
        "model.ema_decay=0.9",
        "trainer.max_epochs=3",
    )
    metrics, objs = train(cfg)
    assert metrics["test/error"] < 0.3 and metrics["test/error_avg"] < 0.3, metrics
    # the binomial standard error over the test images: sqrt(e (1 - e) / (n - 1))
    e, n = metrics["test/error_avg"], len(objs["datamodule"].splits["test"][0])
    assert metrics["test/error_avg_se"] == pytest.approx((e * (1 - e) / (n - 1)) ** 0.5, rel=1e-3)
    # I(Z; Y) <= I(Z; X) <= the rate: the logged lower bound stays under the KL.
    assert 1.0 < metrics["test/izy"] < metrics["test/kl"], metrics
    assert metrics["test/linear_probe_acc"] > 0.6, metrics  # chance: 0.1
    model = objs["model"]
    # H(Y) of the training labels, counted here.
    p = torch.bincount(objs["datamodule"].splits["train"][1], minlength=10).double()
    p = p / p.sum()
    assert float(model.label_entropy) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    # The tested checkpoint reloads without Hydra, averaged weights included.
    again = VIB.load_from_checkpoint(tmp_path / "checkpoints" / "best.ckpt").eval()
    x = again.preprocess(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert torch.allclose(again.encode(x), model.eval().encode(x), atol=1e-6)
    # evaluation uses the average, which differs from the raw weights after training
    raw = again.posterior(x, again.net)[0]
    assert not torch.allclose(again.encode(x), raw)


def test_vib_refuses_unlabelled_data() -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="needs labelled data"):
        VIB((1, 8, 8), num_classes=0)


def test_random_shift_translates_each_image_within_the_range() -> None:
    from genlab.models.infomax import random_shift

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 6, 6, generator=g) + 1.0  # background (the minimum) is below 1
    y = random_shift(x, 2, torch.Generator().manual_seed(1))
    pad = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    offsets = set()
    for b in range(16):
        match = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(y[b], pad[b, :, dy : dy + 6, dx : dx + 6])
        ]
        assert len(match) == 1, b  # one translation in [-2, 2]^2, channels moved together
        offsets.add(match[0])
    assert len(offsets) > 4  # each image draws its own offset
    assert torch.equal(random_shift(x, 0), x)


def test_vib_reads_checkpoints_of_its_earlier_averaged_model(tmp_path: Path) -> None:
    """VIB checkpoints written with torch's AveragedModel (``ema.module.*``,
    ``ema.n_averaged``) load into genlab's average with the same evaluated weights."""
    model = tiny_vib(1e-3)
    with torch.no_grad():
        for p in model.ema.parameters():
            p.add_(torch.randn_like(p))  # an average that differs from the raw weights
    model.ema_count.fill_(7)
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("ema.net."):
            k = "ema.module." + k.removeprefix("ema.net.")
        state["ema.n_averaged" if k == "ema_count" else k] = v
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.5.0"}, path)  # fmt: skip
    again = VIB.load_from_checkpoint(path).eval()
    x = again.preprocess(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert torch.equal(again.encode(x), model.eval().encode(x))
    assert not torch.allclose(again.encode(x), again.posterior(x, again.net)[0])
    assert int(again.ema_count) == 7
