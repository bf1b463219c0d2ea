"""GLANN (model=glann): the Laplacian-pyramid loss, GLO's sphere constraint, IMLE's
nearest-neighbour objective, encode() by optimisation, the two-stage schedule, and
checkpoints (reload without Hydra, resume) with a code table sized at fit time."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import csv_rows

from genlab.errors import ConfigError
from genlab.models import GLANN
from genlab.nn.losses import lap1_loss, laplacian_pyramid
from genlab.train import train

TINY_NET = {"arch": "genlab.nn.Conv", "channels": [8, 16], "hidden_width": 32}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is faster, and immune to a busy machine's cores (two
    threads on an oversubscribed CPU wait on each other at every small op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkerboard(h: int, w: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((-1.0) ** (i + j)).view(1, 1, h, w)


def test_lap1_is_zero_only_for_identical_images_and_the_pyramid_inverts() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 28, 28, generator=g)
    assert torch.equal(lap1_loss(x, x.clone()), torch.zeros(4))
    y = x.clone()
    y[0, 1, 5, 7] += 0.1  # one pixel of one image
    loss = lap1_loss(x, y)
    assert loss[0] > 0 and torch.equal(loss[1:], torch.zeros(3))
    assert (lap1_loss(x, torch.rand(4, 3, 28, 28, generator=g)) > 0).all()
    # x = L^0 + up(L^1 + up(L^2)): no difference escapes the loss.
    levels = laplacian_pyramid(x, 3)
    assert [lev.shape[-1] for lev in levels] == [28, 14, 7]
    rec = levels[-1]
    for lev in reversed(levels[:-1]):
        rec = lev + F.interpolate(rec, size=lev.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(rec, x, atol=1e-6)


@pytest.mark.parametrize("side", [8, 28])
def test_lap1_hand_computed(side: int) -> None:
    """By linearity, x' - x = c + a * checkerboard splits exactly into the levels: the
    [1, 2, 1] blur removes the pixel-scale checkerboard (finest level, weight 1, HW
    pixels) and keeps the constant (coarsest level, weight 4^J, HW / 4^J pixels), so
    Lap1 = HW * (|a| + |c|), the L1 norm of each part summed over pixels."""
    a, c = 0.2, -0.3
    x = torch.zeros(2, 1, side, side)
    target = c + a * _checkerboard(side, side).expand(2, 1, side, side)
    expected = side * side * (abs(a) + abs(c))
    assert torch.allclose(lap1_loss(x, target), torch.full((2,), expected), rtol=1e-5)
    # One level: the plain L1 distance summed over pixels.
    t = torch.rand(2, 1, side, side)
    assert torch.allclose(lap1_loss(x, t, levels=1), t.abs().flatten(1).sum(1), rtol=1e-6)


def test_imle_reduces_the_nearest_neighbour_distance() -> None:
    torch.manual_seed(0)
    model = GLANN((1, 8, 8), latent_dim=4, noise_dim=4, imle_hidden_sizes=[32, 32], net=TINY_NET)
    # 200 fixed codes in four tight clusters on the sphere: far from T's initial outputs.
    centres = F.normalize(torch.randn(4, 4), dim=1)
    codes = F.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(200, 4), dim=1)

    def dist() -> float:
        with torch.no_grad():
            return float(model.imle_nn_dist(codes, torch.Generator().manual_seed(1)))

    before = dist()
    opt = torch.optim.Adam(model.mapper.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model.imle_nn_dist(codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dist()
    assert after < 0.25 * before, (before, after)


def test_encode_lowers_the_loss_and_leaves_the_generator_alone() -> None:
    torch.manual_seed(0)
    model = GLANN((1, 8, 8), latent_dim=8, net=TINY_NET, encode_steps=20, encode_pool=64)
    with torch.no_grad():  # images G can draw, from codes outside encode's start pool
        x = model.decode(torch.randn(16, 8))
    for p in model.generator.parameters():  # gradients already there must stay as they are
        p.grad = torch.full_like(p, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    start = model.nearest_pool_codes(x)
    with torch.inference_mode():  # as in Lightning's validation and test loops
        z = model.encode(x)
    assert z.shape == (16, 8) and not z.requires_grad
    assert not torch.allclose(z, start)  # the Adam steps moved the codes
    with torch.no_grad():
        before = lap1_loss(model.decode(start), x).mean()
        after = lap1_loss(model.decode(z), x).mean()
    assert after < 0.5 * before, (float(before), float(after))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.generator.parameters())
    assert torch.equal(model.encode(x), z)  # deterministic: no random draws
    assert model.reconstruct(x).shape == x.shape


class Snapshots(pl.Callback):
    """Generator, mapper and codes at the end of each training epoch."""

    seen: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        Snapshots.seen.append(
            {
                "generator": _flat(pl_module.generator),
                "mapper": _flat(pl_module.mapper),
                "codes": pl_module.codes.weight.detach().clone(),
            }
        )


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


MODEL = [
    "model=glann",
    "model.net.channels=[8,16]",
    "model.net.hidden_width=32",
    "model.latent_dim=8",
    "model.noise_dim=8",
    "model.imle_hidden_sizes=[32]",
    "model.encode_steps=5",
    "model.encode_pool=64",
    "model.monitor=null",  # best.ckpt: the last epoch (no sample scores here)
]
SMALL = [
    *MODEL,
    "callbacks.sample_scores=null",
    "callbacks.image_grids=null",
    "callbacks.latent_tools=null",
]


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resumed elsewhere
def test_two_stages_sphere_reload_and_resume(make_cfg, tmp_path: Path) -> None:
    """GLO for glo_epochs epochs (codes move, stay on the sphere), then IMLE (G and the
    codes frozen, only T moves); last.ckpt reloads without Hydra or data (same samples,
    codes, encodings) and resumes with a freshly built model."""
    Snapshots.seen = []
    cfg = make_cfg(
        *SMALL,
        "trainer.max_epochs=3",
        "model.glo_epochs=2",
        "trainer.log_every_n_steps=4",
        f"+callbacks.snapshots._target_={__name__}.Snapshots",
        output_dir=tmp_path / "a",
    )
    metrics, objs = train(cfg)
    model, dm = objs["model"], objs["datamodule"]
    rows = csv_rows(tmp_path / "a")
    glo = {r["epoch"] for r in rows if r.get("train/glo_loss")}
    imle = {r["epoch"] for r in rows if r.get("train/imle_nn_dist")}
    assert glo == {"0", "1"} and imle == {"2"}
    for name in ("loss", "recon", "mse", "imle_nn_dist"):
        assert math.isfinite(metrics[f"test/{name}"]) and math.isfinite(metrics[f"val/{name}"])
    # GLO moved the codes and kept them on the sphere; IMLE froze G and the codes.
    x_train = dm.splits["train"][0]
    codes = model.codes.weight.detach()
    assert codes.shape == (x_train.shape[0], 8)
    assert torch.allclose(codes.norm(dim=1), torch.ones(len(codes)), atol=1e-5)
    assert (codes - model.initial_codes(x_train)).abs().max() > 1e-2
    s0, s1, s2 = Snapshots.seen
    assert not torch.equal(s0["generator"], s1["generator"])
    assert not torch.equal(s0["codes"], s1["codes"])
    assert torch.equal(s0["mapper"], s1["mapper"])  # T waits for its stage
    assert torch.equal(s1["generator"], s2["generator"]) and torch.equal(s1["codes"], s2["codes"])
    assert not torch.equal(s1["mapper"], s2["mapper"])

    # Reload without Hydra or a data module.
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    loaded = GLANN.load_from_checkpoint(last, map_location="cpu")
    same = torch.Generator().manual_seed(3)
    assert torch.allclose(loaded.sample(8, same), model.sample(8, torch.Generator().manual_seed(3)))
    assert torch.equal(loaded.codes.weight, model.codes.weight)
    x = model.preprocess(dm.splits["test"][0][:8])
    assert torch.allclose(loaded.encode(x), model.encode(x), atol=1e-6)

    # Resume: the fresh model's state dict fits (the code table travels separately).
    Snapshots.seen = []
    cfg = make_cfg(
        *SMALL,
        "trainer.max_epochs=4",
        "model.glo_epochs=2",
        f"ckpt_path={last}",
        "test=false",
        f"+callbacks.snapshots._target_={__name__}.Snapshots",
        output_dir=tmp_path / "b",
    )
    _, objs = train(cfg)
    assert len(Snapshots.seen) == 1  # epoch 3 only, an IMLE epoch
    assert torch.equal(objs["model"].codes.weight, model.codes.weight)
    assert torch.equal(Snapshots.seen[0]["generator"], s2["generator"])


def test_fast_dev_run_runs_both_stages(make_cfg) -> None:
    metrics, _ = train(make_cfg(*SMALL, "trainer=debug"))
    assert math.isfinite(metrics["train/glo_loss"]) and math.isfinite(metrics["train/imle_nn_dist"])


def test_too_few_epochs_for_both_stages_is_one_clear_error(make_cfg) -> None:
    cfg = make_cfg(*MODEL, "trainer.max_epochs=2", "model.glo_epochs=2", "callbacks=none")
    with pytest.raises(ConfigError, match=r"model.glo_epochs=2 .* trainer.max_epochs=2") as e:
        train(cfg)
    assert "\n" not in str(e.value)
