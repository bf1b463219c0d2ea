"""Speed settings (issue 17): what they switch on, and that they change no numbers."""

from __future__ import annotations

import json
import logging

import lightning.pytorch as pl
import pytest
import torch
from conftest import MODELS, REPO, csv_rows
from omegaconf import open_dict

from genlab.metrics import sample_chunks
from genlab.testing import CountSyncs, SyncCounter
from genlab.train import train


@pytest.mark.parametrize(
    "overrides,expected",
    [([], True), (["trainer.deterministic=true"], False), (["trainer.benchmark=false"], False)],
)
def test_cudnn_autotuner_is_on_unless_deterministic(make_cfg, overrides, expected) -> None:
    torch.backends.cudnn.benchmark = not expected
    cfg = make_cfg("data=digits", "model=ae", "trainer.fast_dev_run=true", "test=false", *overrides)
    train(cfg)
    assert torch.backends.cudnn.benchmark is expected


def test_iwae_chunks_cover_the_samples_and_grow_to_the_free_gpu_memory(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert list(sample_chunks(1000, 100, cpu, rows=3000)) == [30] * 33 + [10]
    assert list(sample_chunks(1000, 100, cpu)) == [163] * 6 + [22]  # DEFAULT_ROWS = 16384
    # On a GPU the first chunk measures its peak bytes per row; the next chunks fill half
    # the free memory: 1 kB per row, 1 GB free -> 500,000 rows = 5,000 samples of 100.
    peak = {}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: peak.clear())
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 10_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: peak["bytes"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (10**9, 2 * 10**9))
    sizes = []
    for c in sample_chunks(20_000, 100, torch.device("cuda")):
        peak["bytes"] = 10_000 + 1000 * c * 100  # what evaluating c x 100 rows allocated
        sizes.append(c)
    assert sizes == [163, 5000, 5000, 5000, 4837]
    # A fixed setting is kept on a GPU too.
    assert list(sample_chunks(1000, 100, torch.device("cuda"), rows=50_000)) == [500, 500]


# Each family's own small settings for a few steps per training phase.
PHASES = {
    "dbn": ["model.pretrain_epochs=1", "trainer.max_epochs=5"],
    "glann": ["model.glo_epochs=1", "trainer.max_epochs=2"],
    "infomax": ["model.shift=2"],  # the documented recipe: random translations per step
    "vqvae": ["model.vq_epochs=1", "trainer.max_epochs=2"],  # the auto-encoder, then the prior
}


@pytest.mark.parametrize("family", MODELS)
def test_training_steps_never_read_values_back_to_the_host(make_cfg, family) -> None:
    """No .item() / float() / bool() / .cpu() ... on any per-step path of any family (the
    CPU stand-in for torch.cuda.set_sync_debug_mode): with the divergence guard in its
    GPU mode (one read-back every check_every_n_steps, beyond these runs), steps 2-7 of
    each epoch and what runs between them read nothing back."""
    cfg = make_cfg(
        f"model={family}", "data=digits", "trainer.max_epochs=1",
        "trainer.limit_train_batches=8", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0", "test=false", "trainer.enable_progress_bar=false",
        "callbacks.divergence_guard.every_step=false",
        "callbacks.divergence_guard.check_every_n_steps=1000", *PHASES.get(family, []),
    )  # fmt: skip
    with open_dict(cfg):  # first: it stops counting before the others' epoch-end hooks
        count = {"count_syncs": {"_target_": "genlab.testing.CountSyncs", "start": 2}}
        cfg.callbacks = {**count, **cfg.callbacks}
    _, objs = train(cfg)
    (cb,) = [c for c in objs["trainer"].callbacks if isinstance(c, CountSyncs)]
    assert objs["trainer"].global_step >= 6
    assert cb.counter.count == 0, cb.counter.sites


def test_the_sync_counter_sees_a_read_back() -> None:
    x = torch.ones(3)
    with SyncCounter() as counter:
        counter.active = True
        float(x.sum()), x.tolist(), bool(x.any())
        counter.active = False
        x.sum().item()
    assert counter.count == 3 and "float" in counter.sites[0]


def _train_losses(make_cfg, tmp_path, name: str, *overrides: str) -> list[float]:
    cfg = make_cfg(
        "model=vae", "data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
        "trainer.log_every_n_steps=2", "trainer.deterministic=true", *overrides,
        output_dir=tmp_path / name,
    )  # fmt: skip
    train(cfg)
    rows = csv_rows(tmp_path / name)
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_compiled_networks_train_like_eager_ones(make_cfg, tmp_path, caplog) -> None:
    """Same seed, 10 steps: the compiled VAE's logged losses equal the eager ones within
    1e-4 (relative; fused kernels reorder float sums), and its checkpoint keys are the
    eager ones (the networks are compiled in place)."""
    eager = _train_losses(make_cfg, tmp_path, "eager")
    with caplog.at_level(logging.INFO, logger="genlab.compile"):
        compiled = _train_losses(make_cfg, tmp_path, "compiled", "compile=true")
    assert "compile: VAE: encoder, decoder compiled (mode default)" in caplog.text
    assert len(eager) == len(compiled) == 5
    assert compiled == pytest.approx(eager, rel=1e-4)
    keys = [set(torch.load(tmp_path / n / "checkpoints" / "last.ckpt")["state_dict"]) for n in
            ("eager", "compiled")]  # fmt: skip
    assert keys[0] == keys[1]


def test_compile_says_which_networks_stay_eager_and_why(caplog) -> None:
    from genlab.compile import compile_networks
    from genlab.models import GAN, RBM

    conv = {"arch": "genlab.nn.Conv", "channels": [8, 16], "hidden_width": 32}
    with caplog.at_level(logging.INFO, logger="genlab.compile"):
        assert compile_networks(GAN((1, 8, 8), net=conv, loss="hinge")) == [
            "generator",
            "discriminator",
        ]
        assert compile_networks(GAN((1, 8, 8), net=conv, loss="wgan_gp")) == ["generator"]
        assert compile_networks(RBM((1, 8, 8))) == []
    lines = caplog.text.splitlines()
    assert any("discriminator stays eager: the gradient penalty" in line for line in lines)
    assert any("RBM has no network for torch.compile" in line for line in lines)


def test_a_bad_compile_mode_is_one_line(make_cfg) -> None:
    from genlab.errors import ConfigError

    cfg = make_cfg("data=digits", "compile=true", "compile_mode=fastest")
    with pytest.raises(ConfigError, match="compile_mode='fastest' is not one of default"):
        train(cfg)


@pytest.mark.parametrize(
    "family",
    [
        ["model=vae", "trainer.gradient_clip_val=1.0"],
        ["model=nice", "model.hidden_sizes=[32,32]", "model.lr_final=1e-4"],  # per-epoch decay
        [
            "model=ddpm",
            "model/net=unet",
            "model.net.channels=8",
            "model.net.channel_mults=[1,2]",
            "model.net.attention=false",
            "model.warmup_steps=5",
        ],  # per-step warm-up, EMA
    ],  # fmt: skip
    ids=["vae_clipped", "nice_lr_decay", "ddpm_warmup_ema"],
)
def test_inner_steps_train_exactly_as_one_step_per_batch(make_cfg, tmp_path, family) -> None:
    """inner_steps=4: the same updates on the same batches, so the same logged training
    windows at the same steps, validation losses and final weights (deterministic)."""

    def run(k: int):
        cfg = make_cfg(
            *family, "data=digits", "trainer.max_epochs=2", "trainer.deterministic=true",
            "trainer.log_every_n_steps=4", "metrics.every_n_epochs=0", "test=false",
            f"inner_steps={k}", output_dir=tmp_path / str(k),
        )  # fmt: skip
        _, objs = train(cfg)
        rows = csv_rows(tmp_path / str(k))
        keys = [k_ for k_ in rows[0] if "/" in k_ and not k_.startswith("time/")]
        logged = [(r["step"], k_, r[k_]) for r in rows for k_ in keys if r[k_]]
        state = objs["model"].state_dict()
        return objs["trainer"].global_step, logged, state

    (s1, log1, w1), (s4, log4, w4) = run(1), run(4)
    assert s1 == s4 == 2 * 12  # digits: 12 batches an epoch; global_step counts steps
    assert any(k == "train/loss" for _, k, _ in log1) and log1 == log4
    assert all(torch.equal(w1[k], w4[k]) for k in w1)


def test_inner_steps_leave_manual_optimisation_alone(make_cfg, caplog) -> None:
    cfg = make_cfg("model=gan", "data=digits", "trainer.fast_dev_run=true", "inner_steps=4")
    with caplog.at_level(logging.INFO, logger="genlab.steps"):
        train(cfg)
    assert "inner_steps=4: GAN optimises manually; one step per batch" in caplog.text


@pytest.mark.parametrize("value", ["0", "2.5", "many"])
def test_bad_inner_steps_are_one_line(make_cfg, value) -> None:
    from genlab.errors import ConfigError

    with pytest.raises(ConfigError, match="inner_steps must be (a positive|an) integer"):
        train(make_cfg("data=digits", f"inner_steps={value}"))


def test_gpu_check_runs_shrunk_on_the_cpu(tmp_path) -> None:
    """scripts/gpu_check.py --smoke: every family trains a step and the benchmark runs, so
    the GPU check cannot rot between GPU runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    result = gpu_check.main(["--smoke", "--out-dir", str(tmp_path)])
    assert set(result["families"]) == set(MODELS)
    bad = {f: r.get("error") for f, r in result["families"].items() if not r["ok"]}
    assert not bad, bad
    rows = result["benchmark"]["smoke"]["vae_tiny_digits"]
    assert set(rows) == {"eager", "inner4"}
    assert all(r["runner_images_per_s"] > 0 for r in rows.values())
    saved = json.loads((tmp_path / "cpu_smoke.json").read_text())
    assert saved["families"].keys() == result["families"].keys()
    assert "| vae_tiny_digits | 16 | eager_inner4 |" in (tmp_path / "cpu_smoke.md").read_text()


def test_inner_steps_stop_at_max_steps(make_cfg) -> None:
    cfg = make_cfg(
        "model=vae", "data=digits", "inner_steps=4", "+trainer.max_steps=10",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
    )  # fmt: skip
    _, objs = train(cfg)
    assert objs["trainer"].global_step == 10


class _CountBackward(pl.Callback):
    def __init__(self) -> None:
        self.calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        self.calls += 1


def test_inner_steps_keep_lightnings_path_for_hooks_that_need_it(make_cfg) -> None:
    """A callback hooked into the backward pass sees every inner step (Lightning's path);
    without one, the plain path runs (same numbers: the exactness test above)."""
    cfg = make_cfg(
        "model=vae", "data=digits", "inner_steps=4", "trainer.max_epochs=1",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
    )  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks["count"] = {"_target_": f"{__name__}._CountBackward"}
    _, objs = train(cfg)
    (cb,) = [c for c in objs["trainer"].callbacks if isinstance(c, _CountBackward)]
    assert cb.calls == objs["trainer"].global_step == 12
