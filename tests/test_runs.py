"""Training runs through train(cfg): smoke runs, outputs, reload, resume, divergence, bad input."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import MODELS, csv_rows, needs_mnist

from genlab.callbacks.scores import PROBES
from genlab.errors import ConfigError, DataNotFoundError, DivergenceError
from genlab.models import VAE
from genlab.train import train


@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_model(make_cfg, model: str) -> None:
    metrics, objs = train(make_cfg(f"model={model}", "trainer=debug"))
    # GANs log two players' losses, a DBN its first RBM's (train/rbm1/loss) at first.
    train_losses = [v for k, v in metrics.items() if k.startswith("train/") and "loss" in k]
    assert train_losses and all(math.isfinite(v) for v in train_losses)
    assert math.isfinite(metrics["test/loss"])
    model = objs["model"]
    if hasattr(model, "sample"):
        x = model.sample(5)
        assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all()
    if hasattr(model, "encode"):  # samplers or not, encoders get probes at test time
        assert all(f"test/{k}" in metrics and math.isfinite(metrics[f"test/{k}"]) for k in PROBES)


@pytest.mark.parametrize("extra", [["model/net=conv"], ["trainer.precision=bf16-mixed"]])
def test_fast_dev_run_variants(make_cfg, extra: list[str]) -> None:
    metrics, _ = train(make_cfg("trainer=debug", *extra))
    assert math.isfinite(metrics["test/nll_iwae"])


def test_one_epoch_outputs_and_reload(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "trainer.max_epochs=1",
        "callbacks.image_grids.every_n_epochs=1",
        "trainer.log_every_n_steps=5",
        "logger=[csv,tensorboard]",
    )
    metrics, objs = train(cfg)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "best.ckpt").is_file() and (ckpts / "last.ckpt").is_file()
    rows = csv_rows(tmp_path)
    keys = set().union(*(r.keys() for r in rows))
    want = {"train/loss", "val/elbo", "val/recon", "val/kl", "val/active_units", "test/nll_iwae"}
    want |= {"val/fid", "val/kid", "test/fid", "test/kid", *(f"test/{k}" for k in PROBES)}
    assert want <= keys
    epoch_s = [float(r["time/epoch_s"]) for r in rows if r.get("time/epoch_s")]
    assert len(epoch_s) == 1 and 0 < epoch_s[0] < 60
    assert {p.name for p in (tmp_path / "images").iterdir()} == {
        "samples_epoch0000.png",
        "reconstructions_epoch0000.png",
        "latent_interpolations_epoch0000.png",  # LatentTools, after the last epoch
        "latent_interpolations_test.png",  # and for the tested checkpoint
    }
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"images/samples", "images/reconstructions"} <= set(events.Tags()["images"])
    assert "val/elbo" in events.Tags()["scalars"]
    # The IWAE bound is at least as tight as the ELBO (up to its Monte Carlo noise), and
    # its standard error over the test images is logged beside it.
    assert -metrics["test/nll_iwae"] >= metrics["test/elbo"] - 0.5
    assert 0 < metrics["test/nll_iwae_se"] < 0.1 * metrics["test/nll_iwae"]
    assert 0 < metrics["test/elbo_se"] < 0.1 * -metrics["test/elbo"]  # one-sample ELBO too
    # Reload without Hydra; same weights, same outputs.
    model = objs["model"]
    loaded = VAE.load_from_checkpoint(ckpts / "last.ckpt", map_location="cpu")
    x = model.preprocess(
        objs["datamodule"].splits["test"][0][:16], torch.Generator().manual_seed(0)
    )
    assert torch.allclose(loaded.reconstruct(x), model.reconstruct(x), atol=1e-6)


class LossRecorder(pl.Callback):
    """Keeps every training step's loss."""

    losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        LossRecorder.losses.append(float(outputs["loss"]))


def test_step_metrics_are_window_means(make_cfg, tmp_path) -> None:
    """train/* reach the loggers every log_every_n_steps as the mean over that window."""
    LossRecorder.losses = []
    cfg = make_cfg(
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=4",
        "test=false",
        f"+callbacks.recorder._target_={__name__}.LossRecorder",
    )
    train(cfg)
    rows = csv_rows(tmp_path)
    logged = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    steps = LossRecorder.losses
    assert len(steps) == 12 and len(logged) == 3
    for i, value in enumerate(logged):
        assert value == pytest.approx(sum(steps[4 * i : 4 * i + 4]) / 4, rel=1e-5)


class StartRecorder(pl.Callback):
    """Records the loop and optimiser state when (re)started training begins."""

    seen: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        StartRecorder.seen = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "opt": copy.deepcopy(trainer.optimizers[0].state_dict()),  # live tensors move on
        }


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resumed elsewhere
def test_resume_restores_epoch_step_and_optimizer(make_cfg, tmp_path: Path) -> None:
    train(make_cfg("trainer.max_epochs=1", "test=false", output_dir=tmp_path / "a"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    steps = state["global_step"]
    assert steps == math.ceil(1439 / 128)

    cfg = make_cfg(
        "trainer.max_epochs=2",
        "test=false",
        f"ckpt_path={last}",
        f"+callbacks.recorder._target_={__name__}.StartRecorder",
        output_dir=tmp_path / "b",
    )
    _, objs = train(cfg)
    seen = StartRecorder.seen
    assert seen["epoch"] == 1 and seen["step"] == steps
    saved, restored = state["optimizer_states"][0]["state"], seen["opt"]["state"]
    assert saved.keys() == restored.keys() and len(saved) > 0
    for k in saved:
        assert torch.equal(saved[k]["exp_avg"], restored[k]["exp_avg"])
        assert torch.equal(saved[k]["step"], restored[k]["step"])
    assert objs["trainer"].global_step == 2 * steps


class ExplodingVAE(VAE):
    """A VAE whose loss turns NaN from step 15 on (in its second epoch on digits)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= 15 else loss


@pytest.mark.parametrize("every_step", [True, False])  # CPU default; the GPU's batched read-back
def test_divergence_stops_with_message_and_keeps_good_checkpoint(
    make_cfg, tmp_path, every_step: bool
) -> None:
    cfg = make_cfg(
        "trainer.max_epochs=5",
        "test=false",
        f"model._target_={__name__}.ExplodingVAE",
        f"+callbacks.divergence_guard.every_step={every_step}",
    )
    with pytest.raises(DivergenceError) as e:
        train(cfg)
    msg = str(e.value)
    # batched: the read-back at step 19 (every 20 steps) covers steps 12..19
    when = "at step 15" if every_step else "between steps 12 and 19"
    assert "\n" not in msg and f"train/loss became NaN/inf {when}" in msg
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"last good checkpoint: {last}" in msg
    good = VAE.load_from_checkpoint(last, map_location="cpu")
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 12


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["model.lr=-0.001"], ConfigError, r"model.lr must be a positive number, got -0.001"),
        (["model.latent_dim=0"], ConfigError, r"model.latent_dim must be a positive integer"),
        (["data.batch_size=0"], ConfigError, r"data.batch_size must be a positive integer"),
        (
            ["model.net.hidden_sizes=[256,-1]"],
            ConfigError,
            r"model.net.hidden_sizes must be a list of positive",
        ),
        (
            ["model/net=conv", "model.net.channels=[8,8,8,8]"],
            ConfigError,
            r"model/net=conv needs images .* divisible by 16 .* shape \(1, 8, 8\)",
        ),
        (["model.likelihood=poisson"], ConfigError, r"model.likelihood='poisson' is not one of"),
        (["model.optimizer=Adamm"], ConfigError, r"model.optimizer='Adamm' is not a torch.optim"),
        (
            ["data=mnist", "data.data_dir=/nonexistent"],
            DataNotFoundError,
            r"MNIST not found in /nonexistent/MNIST/raw",
        ),
    ],
)
def test_bad_input_one_clear_error(make_cfg, overrides, error, message) -> None:
    cfg = make_cfg(*overrides, "trainer=debug")
    if "data.data_dir=/nonexistent" in overrides:
        cfg.data.data_dir = "/nonexistent"
    with pytest.raises(error, match=message) as e:
        train(cfg)
    assert "\n" not in str(e.value)


@needs_mnist
def test_real_mnist_vae_val_elbo_improves_within_first_epoch(make_cfg, tmp_path) -> None:
    cfg = make_cfg(
        "data=mnist",
        "trainer.max_epochs=1",
        "trainer.val_check_interval=100",
        "callbacks=none",
        "trainer.enable_progress_bar=false",
        "test=false",
    )
    train(cfg)
    vals = [float(r["val/elbo"]) for r in csv_rows(tmp_path) if r["val/elbo"]]
    assert len(vals) == 3  # steps 100, 200, 300
    assert vals[0] < vals[1] < vals[2], vals
    assert vals[-1] > -170, vals  # a hand-written loop of the same VAE: -153.5 at step 300


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("vae", []),
        ("gumbel_vae", ["model.grad_var_every=0"]),
        ("nice", ["model.hidden_sizes=[32]"]),
        # FID every 2nd epoch: epoch 0 has none, so best.ckpt is chosen among epochs 1, 2.
        ("gan", ["model.net.channels=[8,16]", "model.net.hidden_width=32",
                 "metrics.every_n_epochs=2"]),
    ],
)  # fmt: skip
def test_test_curve_and_best_checkpoint_of_each_kind(make_cfg, tmp_path, model, extra) -> None:
    """callbacks=test_curve gives a test-set value per epoch for every kind of family,
    through the same batch_metrics as validation; best.ckpt is chosen by the family's
    own metric (val/loss, or val/fid for GANs) among the epochs that logged it."""
    cfg = make_cfg(
        f"model={model}",
        *extra,
        "callbacks=test_curve",
        "trainer.max_epochs=3",
        "callbacks.image_grids=null",
        "callbacks.latent_tools=null",
        "metrics.probes=false",
        "metrics.n_test=100",
    )
    metrics, _ = train(cfg)
    rows = csv_rows(tmp_path)
    curve = [(r["epoch"], float(r["curve/test_loss"])) for r in rows if r.get("curve/test_loss")]
    assert [e for e, _ in curve] == ["0", "1", "2"] and all(math.isfinite(v) for _, v in curve)
    val_loss = {r["epoch"]: float(r["val/loss"]) for r in rows if r.get("val/loss")}
    assert {e for e, _ in curve} == set(val_loss)  # the same epochs as validation
    monitor = "val/fid" if model == "gan" else "val/loss"
    scored = {int(r["epoch"]): float(r[monitor]) for r in rows if r.get(monitor)}
    if model == "gan":
        assert sorted(scored) == [1, 2]
    best = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == min(scored, key=scored.get)
    assert math.isfinite(metrics["test/loss"])
