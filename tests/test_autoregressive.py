"""Autoregressive families: MADE's masks, the gated PixelCNN's causal receptive field,
normalised likelihoods on enumerable image spaces, the VQ-VAE's quantiser and its stages."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import genlab.models.pixelcnn as pixelcnn_module
from genlab.models import MADE, VQVAE, PixelCNN
from genlab.nn.autoregressive import GatedPixelCNN, MADENet
from genlab.nn.vq import VectorQuantizer, ema_codebook_update
from genlab.train import train


def _perturb(model: torch.nn.Module, scale: float = 0.5) -> None:
    """Random weights well away from the initialisation (zeros would hide leaks)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("direct", [False, True])
def test_made_jacobian_is_strictly_triangular_in_every_masks_order(direct: bool) -> None:
    torch.manual_seed(0)
    net = MADENet(9, [20, 20], params=2, num_masks=3, order_agnostic=True, direct=direct)
    net = net.double()
    _perturb(net)
    for mask in range(3):
        for p in range(2):  # each parameter's outputs
            dep = torch.zeros(9, 9, dtype=torch.bool)
            for _ in range(4):  # a union over inputs: a ReLU may close a path at one
                x = torch.randn(1, 9, dtype=torch.double)
                jac = torch.autograd.functional.jacobian(
                    lambda v, mask=mask, p=p: net(v, mask)[0, p], x
                )[:, 0]
                order = net.order(mask)
                dep |= jac[order][:, order].abs() > 0  # (outputs, inputs), both in order
            assert not dep.triu().any()  # output d sees no input at or after d
            assert dep[-1, :-1].all()  # the last output sees every earlier input
    assert not torch.equal(net.order(0), net.order(1))  # order-agnostic: own orders


def _binary_images(h: int, w: int) -> torch.Tensor:
    values = list(itertools.product([0.0, 1.0], repeat=h * w))
    return torch.tensor(values).view(-1, 1, h, w)


@pytest.mark.parametrize(
    "model",
    [
        lambda: MADE((1, 3, 3), hidden_sizes=[16, 16], num_masks=4, order_agnostic=True),
        lambda: MADE((1, 3, 3), hidden_sizes=[16], num_masks=3, direct=True),
        lambda: MADE((1, 3, 3), hidden_sizes=[], num_masks=2, order_agnostic=True),  # linear
        lambda: PixelCNN((1, 3, 3), channels=8, layers=3, first_kernel=3),
        lambda: PixelCNN((3, 1, 3), channels=6, layers=3, first_kernel=3),  # RGB, 1 x 3
    ],
)
def test_probabilities_of_all_3x3_binary_images_sum_to_one(model) -> None:
    """All 512 binary images of 9 values (3x3 grey, or 1 x 3 RGB pixels)."""
    m = model().double()
    _perturb(m)
    x = _binary_images(3, 3).double().view(-1, *m.data_shape)
    with torch.no_grad():
        ll = m.eval_log_prob(x, None)
    assert ll.shape == (512,) and ll.max() < 0
    assert torch.logsumexp(ll, 0).item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("likelihood", ["categorical", "logistic_mixture"])
@pytest.mark.parametrize("family", [MADE, PixelCNN])
def test_8bit_likelihoods_sum_to_one_over_all_256x256_two_pixel_images(family, likelihood) -> None:
    small = {"channels": 8, "layers": 2, "first_kernel": 3}
    kw = {"hidden_sizes": [8]} if family is MADE else small
    m = family((1, 1, 2), likelihood=likelihood, **kw).double()
    _perturb(m, 0.2)
    x = torch.tensor(list(itertools.product(range(256), repeat=2)), dtype=torch.double)
    with torch.no_grad():
        ll = m.eval_log_prob(x.view(-1, 1, 1, 2), None)
    assert torch.logsumexp(ll, 0).item() == pytest.approx(0.0, abs=1e-6)


def test_a_uniform_softmax_gives_8_bits_per_dim() -> None:
    m = PixelCNN((1, 4, 4), likelihood="categorical", channels=8, layers=2, first_kernel=3)
    torch.nn.init.zeros_(m.pixelcnn.head[-1].weight)
    torch.nn.init.zeros_(m.pixelcnn.head[-1].bias)
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    out = m.batch_metrics((x, torch.zeros(5, dtype=torch.long)), 0)
    assert out["bpd"].item() == pytest.approx(8.0, abs=1e-5)
    assert out["loglik"].item() == pytest.approx(-16 * math.log(256), abs=1e-3)


@pytest.mark.parametrize("hidden", [[8, 8], []])
def test_made_samples_follow_its_probabilities(hidden: list[int]) -> None:
    """Incremental ancestral sampling from a mixture of two masks' models (and of a MADE
    with no hidden layer): the frequencies of the 8 three-pixel images match exp(log p)
    within Monte Carlo error."""
    m = MADE((1, 1, 3), hidden_sizes=hidden, num_masks=2, order_agnostic=True, direct=True)
    _perturb(m)
    x = _binary_images(1, 3)
    p = m.eval_log_prob(x, None).exp().detach()
    n = 40_000
    s = m.sample(n, torch.Generator().manual_seed(0)).view(n, 3)
    freq = torch.bincount((s @ torch.tensor([4.0, 2.0, 1.0])).long(), minlength=8) / n
    assert (freq - p).abs().max() < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize(("c", "h"), [(1, 6), (3, 4)])
def test_pixelcnn_is_causal_without_a_blind_spot(c: int, h: int) -> None:
    """d output(i, j, colour k) / d input, sub-pixels in raster order with R -> G -> B
    inside a pixel: zero at the sub-pixel itself and after it, non-zero at every one
    before it (a PixelCNN with the blind spot misses pixels above-right)."""
    w, n = h, h * h * c
    net = GatedPixelCNN(c, 2, channels=12, layers=5, kernel=3, first_kernel=3).double()
    _perturb(net, 0.3)
    for p in range(2):  # each parameter's outputs, (C, H, W) -> (H, W, C) raster order
        dep = torch.zeros(n, n, dtype=torch.bool)  # (output, input) sub-pixels
        for _ in range(4):  # a union over inputs: the head's ReLUs may close a path at one
            x = torch.randn(1, c, h, w, dtype=torch.double)
            jac = torch.autograd.functional.jacobian(
                lambda v, p=p: net(v)[0, p].permute(1, 2, 0).flatten(), x
            )[:, 0]  # (n outputs, C, H, W inputs)
            dep |= jac.permute(0, 2, 3, 1).reshape(n, n).abs() > 0
        assert not dep.triu().any()
        assert dep.tril(-1).sum() == n * (n - 1) // 2


def test_pixelcnn_window_holds_each_pixels_receptive_field_and_no_more() -> None:
    """Sampling passes only ``window(i, j)`` of the image: the outputs at (i, j) of the
    crop equal the full image's at every pixel, and the window is tight (the output at a
    central pixel depends on the window's top corners)."""
    torch.manual_seed(0)
    c, h, w = 3, 13, 15
    net = GatedPixelCNN(c, 2, channels=12, layers=3, kernel=3, first_kernel=5, num_classes=4)
    net = net.double()
    _perturb(net, 0.3)
    x, y = torch.randn(2, c, h, w, dtype=torch.double), torch.tensor([1, 3])
    full = net(x, y)  # (2, P, C, H, W)
    for i, j in itertools.product(range(h), range(w)):
        rows, cols = net.window(i, j, h, w)
        out = net(x[:, :, rows, cols], y)[..., i - rows.start, j - cols.start]
        torch.testing.assert_close(out, full[..., i, j], rtol=1e-10, atol=1e-10)
    rows, cols = net.window(9, 7, h, w)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (6, 9)  # reach 2 + 1 + 1
    x.requires_grad_(True)
    net(x, y)[0, :, :, 9, 7].sum().backward()
    dep = x.grad[0].abs().sum(0) > 0  # (H, W)
    assert dep[rows.start, cols.start] and dep[rows.start, cols.stop - 1]
    assert not dep[: rows.start].any() and not dep[:, : cols.start].any()
    assert not dep[:, cols.stop :].any()


@pytest.mark.parametrize("family", [MADE, PixelCNN, VQVAE])
def test_image_only_families_reject_vector_data_in_one_line(family) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"needs image data .* use image data \(e\.g\.") as e:
        family((2,))
    assert "\n" not in str(e.value) and "likelihood" not in str(e.value)


@pytest.mark.parametrize("name", ["eval_masks", "val_masks"])
def test_made_rejects_more_averaged_masks_than_it_trains(name: str) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"model\.{name}=5 exceeds the model\.num_masks=4"):
        MADE((1, 3, 3), hidden_sizes=[8], num_masks=4, **{name: 5})
    assert MADE((1, 3, 3), hidden_sizes=[8], num_masks=4, **{name: 4}).eval_mask_count == 4


@pytest.mark.parametrize(
    ("kernels", "match"),
    [((4, 7), r"model\.kernel=4 and model\.first_kernel=7 must be odd"),
     ((3, 1), r"model\.first_kernel=1 lets no pixel see its left neighbour")],
)  # fmt: skip
def test_pixelcnn_rejects_kernels_that_break_its_masks(kernels, match: str) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        PixelCNN((1, 4, 4), kernel=kernels[0], first_kernel=kernels[1], channels=4, layers=2)


def test_conditional_pixelcnn_samples_carry_their_class(monkeypatch) -> None:
    """Class 0 is a black 4x4 image, class 1 a white one: after 150 steps, samples drawn
    for y = 0 and y = 1 are the right colour, also when a CPU draws them in batches."""
    torch.manual_seed(0)
    m = PixelCNN((1, 4, 4), num_classes=2, conditional=True, channels=16, layers=2)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    y = torch.arange(64) % 2
    x = y.view(-1, 1, 1, 1).expand(64, 1, 4, 4).float()
    for _ in range(150):
        loss = -m.log_prob(x, y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    g = torch.Generator().manual_seed(0)
    assert m.sample(20, g, y=0).mean() < 0.05 and m.sample(20, g, y=1).mean() > 0.95
    assert m.sample_conditional(torch.tensor([0, 1]), g).shape == (2, 1, 4, 4)
    # In batches of 7: 20 samples, alternating classes, in three passes; each batch keeps
    # its own labels and the batches consume one generator in turn.
    monkeypatch.setattr(pixelcnn_module, "CPU_SAMPLE_BATCH", 7)
    mixed = m.sample_conditional(torch.arange(20) % 2, torch.Generator().manual_seed(1))
    means = mixed.flatten(1).mean(1)
    assert (means[0::2] < 0.2).all() and (means[1::2] > 0.8).all(), means
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(20) % 2
    by_hand = [m.sample_conditional(labels[a : a + 7], g) for a in (0, 7, 14)]
    assert torch.equal(mixed, torch.cat(by_hand))
    with pytest.raises(ValueError, match="conditional"):
        PixelCNN((1, 4, 4), channels=8, layers=2).sample(2, y=1)


def test_straight_through_gradients_reach_the_encoder() -> None:
    """The quantiser's output takes z_q's value and passes d loss / d z_q to z_e unchanged."""
    q = VectorQuantizer(8, 4, ema=False)
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_st, idx, terms = q(z_e)
    assert torch.allclose(z_st, q.lookup(idx))
    target = torch.randn_like(z_st)
    (z_st * target).sum().backward()
    assert torch.equal(z_e.grad, target)
    m = VQVAE((1, 8, 8), channels=8, prior_channels=8, prior_layers=2, downsample=1)
    m.vq_terms(torch.rand(4, 1, 8, 8))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoder.parameters())


def test_ema_codebook_update_matches_its_closed_form() -> None:
    torch.manual_seed(0)
    k, d, decay, eps = 3, 2, 0.9, 1e-5
    counts, sums = torch.tensor([1.0, 2.0, 0.5]), torch.randn(k, d)
    z = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, -1.0], [5.0, 5.0]])
    codes = torch.tensor([0, 0, 2, 0])
    n0, s0 = counts.clone(), sums.clone()
    onehot = torch.nn.functional.one_hot(codes, k).float()
    e = ema_codebook_update(counts, sums, z, onehot, decay, eps)
    # by hand: n = (3, 0, 1); sum of assigned z: code 0 (9, 7), code 2 (0, -1)
    n_new = decay * n0 + (1 - decay) * torch.tensor([3.0, 0.0, 1.0])
    s_new = decay * s0 + (1 - decay) * torch.tensor([[9.0, 7.0], [0.0, 0.0], [0.0, -1.0]])
    total = n_new.sum()
    smoothed = (n_new + eps) / (total + k * eps) * total
    assert torch.allclose(counts, n_new) and torch.allclose(sums, s_new)
    assert torch.allclose(e, s_new / smoothed[:, None])


def test_the_first_batch_initialises_the_codebook_from_encoder_outputs() -> None:
    """A codebook far from the encoder outputs: every vector would pick one code. The
    first training batch moves all K codes onto vectors of the batch (so several are
    used), with an even share of counts; a second batch does not initialise again."""
    torch.manual_seed(0)
    q = VectorQuantizer(8, 2, ema=True, decay=0.9)
    with torch.no_grad():
        q.embed.fill_(100.0)
    z = torch.randn(2, 2, 8, 8)  # 128 vectors
    q.train()
    _, idx, terms = q(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    distance = (q.embed[:, None] - vectors[None]).norm(dim=2).min(1).values  # (K,)
    assert distance.max() < 1.0 and idx.unique().numel() >= 4 and terms["perplexity"] > 3
    assert q.ema_counts.sum().item() == pytest.approx(128.0, rel=1e-4)
    before = q.embed.clone()
    q(z + 0.01)
    assert (q.embed - before).abs().max() < 0.5  # an EMA step, not a re-initialisation
    state = VectorQuantizer(8, 2).state_dict()
    assert "initialised" in state and state["initialised"] == 0  # resumed runs keep it
    del state["initialised"]  # a checkpoint from before the flag: a trained codebook
    old = VectorQuantizer(8, 2)
    old.load_state_dict(state)
    assert old.initialised == 1


def test_unused_codes_restart_at_encoder_outputs() -> None:
    """After one step, codes 1-3 (never nearest) have moving-average use 0.5, under 0.6
    of an even share (16 vectors / 4 codes): they move onto vectors of the batch with a
    count at that threshold (2.4); code 0, used by all 16, stays where the EMA put it."""
    q = VectorQuantizer(4, 2, ema=True, decay=0.5, restart_below=0.6)
    with torch.no_grad():
        q.embed.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [0.0, 50.0]]))
        q.ema_sums.copy_(q.embed)
        q.initialised.fill_(1)  # (a codebook set by hand, not by the first batch)
    z = torch.randn(1, 2, 4, 4) * 0.1  # every vector nearest code 0
    q.train()
    q(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    distance = (q.embed[:, None] - vectors[None]).norm(dim=2).min(1).values  # (K,)
    assert (distance[1:] < 1e-5).all() and torch.allclose(q.ema_counts[1:], torch.tensor(2.4))
    assert q.ema_counts[0] == pytest.approx(0.5 + 16 * 0.5)
    assert distance[0] > 1e-3  # (the EMA of 0 and the batch mean, not a batch vector)


def test_vqvae_stages_train_and_each_checkpoint_reloads_without_hydra(make_cfg, tmp_path) -> None:
    cfg = make_cfg(
        "model=vqvae", "data=digits", "model.channels=8", "model.prior_channels=8",
        "model.prior_layers=2", "model.vq_epochs=1", "trainer.max_epochs=2",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=1",
        "metrics.every_n_epochs=0", "test=false",
    )  # fmt: skip
    metrics, objs = train(cfg)
    model, trainer = objs["model"], objs["trainer"]
    assert model.current_stage == 1 and "val/prior_loss" in metrics
    x = model.preprocess(objs["datamodule"].splits["test"][0][:8])
    for stage in (0, 1):
        model.stage.fill_(stage)
        model._forget_stage()
        path = tmp_path / f"stage{stage}.ckpt"
        trainer.save_checkpoint(path)
        loaded = VQVAE.load_from_checkpoint(path, map_location="cpu")
        assert loaded.current_stage == stage
        assert torch.equal(loaded.codes(x), model.codes(x))
        codes = model.codes(x)
        assert torch.allclose(loaded.prior_log_prob(codes), model.prior_log_prob(codes))
        assert loaded.sample(3).shape == (3, 1, 8, 8)
