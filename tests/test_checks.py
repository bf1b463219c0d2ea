"""Typed checks before anything runs (genlab.checks, genlab.cli): every setting a user can
write has a type, and bad command lines of every kind stop with one line that names the
key and says what to write. In-process: no run starts, no Python start-up per case."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONF, DATASETS, MODELS, compose_cfg

from genlab.checks import check_config, check_value, import_target, signature_of
from genlab.cli import check_command_line
from genlab.errors import ConfigError

RUNNER_KEYS = {"_target_", "monitor", "monitor_mode"}


def _typed(cls: Any, key: str) -> bool:
    from genlab.checks.signatures import _override

    _, hints, _ = signature_of(cls)
    tp = _override(cls, key, hints.get(key, Any))
    return tp is not Any and tp is not typing.Any


def _untyped(path: str, node: Any, skip: set[str] = frozenset()) -> list[str]:
    """Keys of a config node whose class gives them no type to check by."""
    target = node.get("_target_") or node.get("arch")
    cls = import_target(target)
    keys = [k for k in node if k not in skip | {"_target_", "arch"}]
    return [f"{path}.{k}" for k in keys if not _typed(cls, k)]


@pytest.mark.parametrize("model", MODELS)
def test_every_model_setting_is_typed(model: str, tmp_path: Path) -> None:
    """Every key a model YAML (and each net it can take) sets has a type annotation."""
    cfg = compose_cfg([f"model={model}"], tmp_path)
    untyped = _untyped("model", cfg.model, RUNNER_KEYS | {"net"})
    if "net" in cfg.model:
        for net in ("mlp", "conv"):
            cfg = compose_cfg([f"model={model}", f"model/net={net}"], tmp_path)
            untyped += _untyped("model.net", cfg.model.net)
    assert not untyped, untyped


@pytest.mark.parametrize("data", DATASETS)
def test_every_data_trainer_and_callback_setting_is_typed(data: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"data={data}", "trainer=ddp", "callbacks=test_curve"], tmp_path)
    untyped = _untyped("data", cfg.data) + _untyped("trainer", cfg.trainer, {"strategy"})
    for key, node in cfg.callbacks.items():
        untyped += _untyped(f"callbacks.{key}", node)
    assert not untyped, untyped


# Command lines and the start of the one line each must give (None: nothing wrong).
BAD = [
    # typos: group options, keys, values
    (["model=vea"], "unknown model option 'vea' (did you mean vae?)"),
    (["data=mnst"], "unknown data option 'mnst' (did you mean mnist?)"),
    (["logger=[csv,wandbb]"], "unknown logger option 'wandbb'"),
    (["model.latnet_dim=3"], "model.latnet_dim is not a setting (did you mean model.latent_dim?)"),
    (
        ["trainer.max_epoch=3"],
        "trainer.max_epoch is not a setting (did you mean trainer.max_epochs?)",
    ),
    (["metrics.n_tset=10"], "metrics.n_tset is not a setting (did you mean metrics.n_test?)"),
    (["+model.latnet_dim=3"], "model.latnet_dim is not a setting of VAE: did you mean latent_dim?"),
    (["+model.lr=3"], "model.lr exists already"),
    (["model.lr=[1,"], "cannot read the override 'model.lr=[1,'"),
    (["model.likelihood=poisson"], "model.likelihood='poisson' is not one of bernoulli|gaussian"),
    (["model.optimizer=Adamm"], "model.optimizer='Adamm' is not a torch.optim optimiser"),
    (["model.net.activation=Relu"], "model.net.activation='Relu' is not a torch.nn class"),
    (["model=gan", "model.update_rule=single"], "model.update_rule='single' is not one of"),
    (["model=glow", "model.mixing=lu"], "model.mixing='lu' is not one of"),
    (["data=toy2d", "data.name=moon"], "data.name='moon' is not one of moons"),
    (["data.binarize=dynamic"], "data.binarize='dynamic' is not one of static|threshold"),
    (["trainer.precision=17"], "trainer.precision must be one of"),
    (["trainer.accelerator=cpux"], "trainer.accelerator='cpux' is not one of auto"),
    (["trainer.devices=abc"], "trainer.devices='abc' is not a device count"),
    (
        ["metrics.features=incept"],
        "metrics.features='incept' is not one of auto|classifier|autoencoder|inception|genlab",
    ),
    (["model.monitor_mode=low"], "model.monitor_mode='low' is not one of min|max"),
    (["matmul_precision=low"], "matmul_precision='low' is not one of"),
    # wrong types
    (["model.lr=abc"], "model.lr must be a number, got 'abc'"),
    (["model.lr=inf"], "model.lr must be a finite number, got inf"),
    (["model.beta=nan"], "model.beta must be a finite number, got nan"),
    (["model.latent_dim=2.5"], "model.latent_dim must be an integer, got 2.5: write e.g."),
    (["data.batch_size=1e3"], "data.batch_size must be an integer, got 1000.0"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs must be an integer >= -1 or null"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["test=maybe"], "test must be true or false, got 'maybe'"),
    (["auto_resume=1"], "auto_resume must be true or false, got 1"),
    (["metrics.n_test=abc"], "metrics.n_test must be an integer, got 'abc'"),
    (["metrics.probes=yes"], "metrics.probes must be true or false"),
    (["model.net.hidden_sizes=512"], "model.net.hidden_sizes must be a list of positive integers"),
    (["model=gan", "model.betas=[0.5]"], "model.betas must be a list of 2 values"),
    (["callbacks.progress_bar.keys=3"], "callbacks.progress_bar.keys must be a list of strings"),
    (["callbacks.model_checkpoint.save_top_k=abc"], "callbacks.model_checkpoint.save_top_k must"),
    (["+callbacks.extra=3"], "callbacks.extra=3 is not a config with a _target_"),
    # ranges
    (["model.lr=-1"], "model.lr must be a positive number, got -1: write e.g. model.lr=0.001"),
    (["model.beta=-0.5"], "model.beta must be a non-negative number"),
    (["model.latent_dim=0"], "model.latent_dim must be a positive integer, got 0"),
    (["data.batch_size=0"], "data.batch_size must be a positive integer"),
    (["data.eval_batch_size=-8"], "data.eval_batch_size must be a positive integer"),
    (["seed=-1"], "seed must be an integer >= 0 and < 4294967296"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs must be an integer >= -1"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches must be"),
    (["trainer.log_every_n_steps=-1"], "trainer.log_every_n_steps must be a non-negative integer"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be a non-negative number"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch must be a positive"),
    (["metrics.n_test=0"], "metrics.n_test must be a positive integer"),  # used only at test
    (["metrics.n_val=-10"], "metrics.n_val must be a positive integer"),
    (["metrics.every_n_epochs=-1"], "metrics.every_n_epochs must be a non-negative integer"),
    (["callbacks.image_grids.n_samples=-3"], "callbacks.image_grids.n_samples must be"),
    (["callbacks.latent_tools.n_steps=0"], "callbacks.latent_tools.n_steps must be a positive"),
    (["callbacks.divergence_guard.check_every_n_steps=0"], "callbacks.divergence_guard.check"),
    (["model.iwae_samples=0"], "model.iwae_samples must be a positive integer"),  # test time
    (["model=gumbel_vae", "model.n_categories=1"], "model.n_categories must be an integer >= 2"),
    (["model=gumbel_vae", "model.baseline_decay=1"], "model.baseline_decay must be a number"),
    (["model=ali", "model.dropout=1.0"], "model.dropout must be a number >= 0 and < 1"),
    (["model=vqvae", "model.codes=1"], "model.codes must be an integer >= 2"),
    (["model=vqvae", "model.decay=1"], "model.decay must be a number >= 0 and < 1"),
    (["model/net=conv", "model.net.channels=[8,0]"], "model.net.channels must be a list of"),
    # sweeps: every swept value is checked
    (["-m", "model.lr=0.1,-2"], "model.lr must be a positive number, got -2"),
    (["-m", "model=vae,gan", "model.beta=2"], "model.beta is not a setting"),
    # folders
    (["hydra.run.dir=/proc/genlab-run"], "hydra.run.dir='/proc/genlab-run' cannot be created"),
    (["hydra.run.dir=/etc/hostname/run"], "hydra.run.dir='/etc/hostname/run' cannot be created"),
]


@pytest.mark.parametrize(("args", "start"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_command_line_is_one_line(args: list[str], start: str) -> None:
    problem = check_command_line(args, CONF)
    assert problem is not None, f"{args} passed the checks"
    assert "\n" not in problem and problem.startswith(start), problem


GOOD = [
    [],
    ["model=gan", "model/net=mlp", "data=toy2d", "model.monitor=null"],
    ["-m", "model.latent_dim=2,4,8", "model.lr=1e-3"],
    ["-m", "model=vae,cvae", "trainer.max_epochs=1"],
    ["experiment=wgan_gp_mnist", "model.update_rule=single_step"],
    ["hparams_search=vae_optuna"],
    ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"],
    ["trainer.devices=[0]", "trainer.precision=bf16-mixed", "trainer.max_time=00:00:10:00"],
    ["logger=[csv,tensorboard]", "callbacks=test_curve", "+callbacks.split_curve.full=true"],
    [
        "model.net.hidden_sizes=[]",
        "trainer.limit_train_batches=0.5",
        "trainer.val_check_interval=10",
    ],
    ["--cfg", "job", "model=nonsense"],  # Hydra's own flags: left to Hydra
]


@pytest.mark.parametrize("args", GOOD, ids=[" ".join(a) or "defaults" for a in GOOD])
def test_good_command_lines_pass(args: list[str]) -> None:
    assert check_command_line(args, CONF) is None


def test_interpolated_values_are_reported_under_the_key_the_user_writes(tmp_path) -> None:
    cfg = compose_cfg(["metrics.n_val=-1"], tmp_path)
    with pytest.raises(ConfigError, match=r"^metrics.n_val must be"):
        check_config(cfg)
    # The callback's own key, when the user overrides it directly.
    cfg = compose_cfg(["callbacks.sample_scores.n_val=-1"], tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks.sample_scores.n_val must be"):
        check_config(cfg)


def test_check_value_kinds() -> None:
    from genlab.checks import PositiveInt, UnitInterval
    from genlab.checks.types import _Bad

    check_value(3, PositiveInt)
    check_value(0.5, UnitInterval)
    check_value(None, PositiveInt | None)
    for value, tp in [(True, int), (3.0, int), (float("nan"), float), ("1", float), (2, bool)]:
        with pytest.raises(_Bad):
            check_value(value, tp)
    with pytest.raises(_Bad):
        check_value([1, 0], list[PositiveInt])


def test_config_checks_run_before_data_or_model(make_cfg, monkeypatch) -> None:
    """A bad value fails before the data module is even constructed."""
    from genlab import train as train_module

    def boom(*args, **kwargs):
        raise AssertionError("built something before checking the config")

    monkeypatch.setattr(train_module, "build", boom)
    with pytest.raises(ConfigError, match="metrics.n_test must be a positive integer"):
        train_module.train(make_cfg("metrics.n_test=0"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=gan", "model/net=mlp", "data=toy2d"], r"model.monitor=val/fid needs image data"),
        (["model=gan", "metrics.every_n_epochs=0"], r"metrics.every_n_epochs=0"),
        (["model=aae", "callbacks.sample_scores=null"], r"needs callbacks.sample_scores"),
        (["model=vae", "model.monitor=val/cond_acc"], r"needs a conditional model"),
        (["model=vae", "data=toy2d", "model.likelihood=gaussian"], None),  # fine: val/loss
    ],
)
def test_checkpoint_metric_must_be_computable(make_cfg, overrides, message) -> None:
    from genlab.train import train

    cfg = make_cfg(*overrides, "trainer=debug")
    if message is None:
        train(cfg)
        return
    with pytest.raises(ConfigError, match=message) as e:
        train(cfg)
    assert "\n" not in str(e.value)


def test_a_monitor_nobody_logs_stops_after_the_sanity_check(make_cfg) -> None:
    from genlab.train import train

    cfg = make_cfg("model.monitor=val/elbow", "trainer.max_epochs=1")
    with pytest.raises(ConfigError, match=r"monitor='val/elbow' is not logged .*val/elbo") as e:
        train(cfg)
    assert "\n" not in str(e.value)


def test_an_optimized_metric_nobody_logs_stops_after_the_sanity_check(make_cfg) -> None:
    from genlab.train import train

    cfg = make_cfg("optimized_metric=val/los", "trainer.max_epochs=1")
    with pytest.raises(ConfigError, match=r"^optimized_metric='val/los' is not logged .*val/loss"):
        train(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
def test_asking_for_a_gpu_without_one_is_one_line() -> None:
    problem = check_command_line(["trainer=gpu"], CONF)
    assert problem.startswith("trainer.accelerator=gpu but no CUDA GPU is visible here")


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # resumed elsewhere
def test_resume_from_a_run_folder(make_cfg, tmp_path) -> None:
    from genlab.errors import CheckpointError
    from genlab.train import train

    train(make_cfg("trainer.max_epochs=1", "test=false", output_dir=tmp_path / "a"))
    _, objs = train(
        make_cfg("trainer.max_epochs=2", "test=false", f"ckpt_path={tmp_path / 'a'}",
                 output_dir=tmp_path / "b")
    )  # fmt: skip
    assert objs["trainer"].current_epoch == 2 and objs["trainer"].global_step == 2 * 12
    with pytest.raises(CheckpointError, match=r"is a folder without checkpoints/last.ckpt"):
        train(make_cfg(f"ckpt_path={tmp_path / 'b' / 'csv'}", output_dir=tmp_path / "c"))
