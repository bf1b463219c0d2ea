"""GAN family (docs/models.md#gans): single-step stop-gradient training gives each network the
gradients of its own alternating loss, the frozen critic passes gradients to G only,
O-GAN's correlation term is Pearson's, and short runs behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import csv_rows

from genlab.metrics import pearson
from genlab.models import AAE, ALI, GAN, OGAN
from genlab.models.gan import _detach
from genlab.train import train

CONV = {
    "arch": "genlab.nn.Conv",
    "channels": [8, 16],
    "hidden_width": 32,
    "activation": "LeakyReLU",
}


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize(
    "cls,loss",
    [
        (GAN, "wgan_gp"),
        (GAN, "hinge"),
        (GAN, "nonsaturating"),
        (OGAN, "hinge"),
        (AAE, "wgan_gp"),
        (ALI, "nonsaturating"),
        (ALI, "wgan_gp"),
    ],
)
def test_single_step_gradients_equal_the_alternating_losses(cls, loss: str) -> None:
    torch.manual_seed(0)
    kw = {"dropout": 0.0} if cls is ALI else {}  # equal dropout masks need none
    model = cls(
        (1, 8, 8), latent_dim=6, net=CONV, loss=loss, update_rule="single_step", **kw
    ).double()
    real = torch.rand(16, 1, 8, 8, dtype=torch.float64) * 2 - 1
    z = torch.randn(16, 6, dtype=torch.float64)
    d_params = list(model.discriminator.parameters())
    g_params = model.g_parameters()
    # Alternating: D's loss on detached inputs, then G's loss through D; separately.
    torch.manual_seed(1)  # the gradient penalty's interpolation weights
    d_real, d_fake = model.d_inputs(real, z)
    d_loss = model.d_objective(_detach(d_real), _detach(d_fake), z)["d_loss"]
    grad_d = _flat(torch.autograd.grad(d_loss, d_params))
    torch.manual_seed(1)  # ALI's encoder noise: the same draw as for D's loss
    d_real, d_fake = model.d_inputs(real, z)
    g_loss = model.g_objective(real, d_real, d_fake, z)["g_loss"]
    grad_g = _flat(torch.autograd.grad(g_loss, g_params))
    # Single step: one loss, one backward pass for both networks.
    torch.manual_seed(1)
    loss_one = model.single_step_loss(real, z)["loss"]
    both = torch.autograd.grad(loss_one, d_params + g_params)
    one_d, one_g = _flat(both[: len(d_params)]), _flat(both[len(d_params) :])
    assert grad_d.abs().max() > 0 and grad_g.abs().max() > 0
    assert torch.allclose(one_d, grad_d, atol=1e-6, rtol=0), (one_d - grad_d).abs().max()
    assert torch.allclose(one_g, grad_g, atol=1e-6, rtol=0), (one_g - grad_g).abs().max()
    # Without the stop-gradients the same sum would push D by G's loss too.
    torch.manual_seed(1)
    d_real, d_fake = model.d_inputs(real, z)
    naive = model.d_objective(_detach(d_real), _detach(d_fake), z)["d_loss"] + model.fool(
        model.score(model.discriminate(d_fake))
    )
    naive_d = _flat(torch.autograd.grad(naive, d_params))
    assert not torch.allclose(naive_d, grad_d, atol=1e-6)


def test_frozen_critic_passes_gradients_to_its_input_only() -> None:
    torch.manual_seed(0)
    model = GAN((1, 8, 8), latent_dim=4, net=CONV)
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    (gx_frozen,) = torch.autograd.grad(model.discriminate(x, frozen=True).sum(), x)
    (gx,) = torch.autograd.grad(model.discriminate(x).sum(), x)
    assert torch.allclose(gx_frozen, gx, atol=1e-7)
    out = model.discriminate(x, frozen=True).sum()
    out.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())


def test_pearson_matches_numpy() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 10, generator=g, dtype=torch.float64)
    b = 0.7 * a + torch.randn(32, 10, generator=g, dtype=torch.float64)
    want = [np.corrcoef(a[i].numpy(), b[i].numpy())[0, 1] for i in range(32)]
    assert np.allclose(pearson(a, b).numpy(), want, atol=1e-12)
    assert torch.allclose(pearson(a, 3 * a + 2), torch.ones(32, dtype=torch.float64))
    # O-GAN's term is exactly this, averaged over the batch.
    model = OGAN((1, 8, 8), latent_dim=10, net=CONV).double()
    out = torch.randn(32, 10, dtype=torch.float64)
    extra, logged = model.extra_loss(out, a)
    assert torch.allclose(logged["z_corr"], pearson(a, out).mean())
    assert torch.allclose(extra, -1.0 * pearson(a, out).mean())


def test_ogan_run_raises_z_corr_and_encodes(make_cfg, tmp_path) -> None:
    cfg = make_cfg(
        "model=ogan",
        "model.update_rule=single_step",
        "trainer.max_epochs=8",
        "trainer.log_every_n_steps=5",
        "metrics.every_n_epochs=0",
        "model.monitor=null",  # no FID during training: best.ckpt is the last epoch
        "callbacks.sample_scores.probes=false",
    )
    metrics, objs = train(cfg)
    rows = csv_rows(tmp_path)
    corr = [float(r["train/z_corr"]) for r in rows if r.get("train/z_corr")]
    assert corr[0] < 0.2 and corr[-1] > corr[0] + 0.3, corr
    assert metrics["val/z_corr"] > 0.3
    assert (tmp_path / "images" / "latent_interpolations_test.png").is_file()
    model = OGAN.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    x = model.preprocess(objs["datamodule"].splits["test"][0][:4])
    assert model.reconstruct(x).shape == (4, 1, 8, 8)
    z = model.encode(x)
    assert torch.allclose(z.mean(1), torch.zeros(4), atol=1e-5)
    assert model.hparams.corr_weight == 1.0


@pytest.mark.parametrize("update", ["alternating", "single_step"])
def test_gan_on_2d_data_with_mlp_nets(make_cfg, tmp_path, update: str) -> None:
    cfg = make_cfg(
        "model=gan",
        "model/net=mlp",
        "model.net.hidden_sizes=[32,32]",
        f"model.update_rule={update}",
        "model.monitor=null",
        "model.n_critic=2",
        "data=toy2d",
        "trainer.max_epochs=2",
    )
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["val/critic_gap"])
    # n_critic=2: D steps on every batch, G on every other (global_step counts both).
    batches = objs["trainer"].fit_loop.epoch_loop.batch_progress.total.completed
    g_steps = sum(1 for b in range(batches // 2) if b % 2 == 0) * 2  # 2 epochs, equal halves
    assert objs["trainer"].global_step == batches + g_steps
    assert (tmp_path / "images" / "samples_epoch0001.png").is_file()
    assert objs["model"].sample(7).shape == (7, 2)


def test_conv_net_gan_options_normalise_as_documented() -> None:
    from genlab.nn import Conv

    def kinds(net: torch.nn.Module) -> list[str]:
        return [type(m).__name__ for m in net]

    # Defaults: the layers (and so the checkpoints' keys) of the plain DCGAN-style nets.
    plain = Conv(channels=[8, 16], hidden_width=32)
    assert kinds(plain.encoder((1, 28, 28), 3)) == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    dec = Conv(channels=[8, 16], hidden_width=32, decoder_norm="batch").decoder(3, (1, 28, 28))
    assert kinds(dec).count("BatchNorm1d") == 2 and kinds(dec).count("BatchNorm2d") == 1
    assert kinds(dec)[-1] == "ConvTranspose2d"  # no norm or activation on the output
    for norm, cls in (("batch", "BatchNorm2d"), ("layer", "LayerNorm")):
        enc = Conv(channels=[8, 16, 32], encoder_norm=norm).encoder((1, 32, 32), 1)
        assert kinds(enc).count(cls) == 2 and kinds(enc)[1] == "ReLU"  # not after the first
        assert enc(torch.randn(4, 1, 32, 32)).shape == (4, 1)
    # Spectral norm: after the power iterations settle, every layer's largest singular
    # value is 1 (the critic is 1-Lipschitz layer by layer).
    torch.manual_seed(0)
    enc = Conv(channels=[8, 16], hidden_width=32, spectral_norm=True).encoder((1, 28, 28), 1)
    for _ in range(30):
        enc(torch.randn(8, 1, 28, 28))  # training mode: one power iteration per call
    layers = [m for m in enc if hasattr(m, "parametrizations")]
    assert len(layers) == 4
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert abs(float(sigma) - 1.0) < 0.05, (m, float(sigma))
