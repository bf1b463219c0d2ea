"""The private Lightning APIs genlab relies on (all in genlab._lightning) are still there
and behave as assumed. A failure here names what a Lightning upgrade changed; fix it in
src/genlab/_lightning.py (or drop the workaround if Lightning now offers a public way)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.pytorch.strategies import DDPStrategy

from genlab import _lightning


def test_step_logs_due_follows_the_logging_interval() -> None:
    """genlab.models.common.StepMetrics logs window means when step_logs_due() is True;
    Lightning must then pass step metrics to the loggers (the window-mean test in
    test_runs.py checks the values end to end)."""
    trainer = pl.Trainer(logger=False, log_every_n_steps=4, enable_progress_bar=False)
    connector = getattr(trainer, "_logger_connector", None)
    assert connector is not None and hasattr(type(connector), "should_update_logs"), (
        "Lightning's Trainer._logger_connector.should_update_logs is gone: "
        "update genlab._lightning.step_logs_due"
    )
    assert isinstance(_lightning.step_logs_due(trainer), bool)


def test_subprocess_launcher_internals() -> None:
    launcher = _lightning.SubprocessLauncher
    for name in ("_call_children_scripts", "_check_can_spawn_children", "launch", "kill"):
        assert callable(getattr(launcher, name, None)), (
            f"Lightning's _SubprocessScriptLauncher.{name} is gone: update "
            "genlab._lightning.JobConfigLauncher (DDP under Hydra multirun)"
        )
    from lightning.fabric.plugins.environments import LightningEnvironment

    job = _lightning.JobConfigLauncher("cfg.yaml", LightningEnvironment(), 2, 1)
    assert job.procs == [] and job.num_processes == 2 and job.num_nodes == 1
    assert job.cluster_environment is not None


def test_strategy_launcher_attributes() -> None:
    strategy = DDPStrategy(start_method="popen")
    assert _lightning.start_method(strategy) == "popen", "DDPStrategy._start_method changed"
    marker = object()
    _lightning.set_launcher(strategy, marker)
    assert strategy.launcher is marker, "DDPStrategy.launcher no longer reads ._launcher"


def test_lightning_still_sets_the_nvml_cuda_check() -> None:
    """genlab undoes PYTORCH_NVML_BASED_CUDA_CHECK=1, which importing Lightning sets; if
    Lightning stops setting it, undo_nvml_cuda_check can go."""
    spec = importlib.util.find_spec("lightning.fabric")
    assert spec is not None and spec.origin
    source = Path(spec.origin).read_text()
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" in source, (
        "Lightning no longer sets PYTORCH_NVML_BASED_CUDA_CHECK: remove "
        "genlab._lightning.undo_nvml_cuda_check"
    )


@pytest.mark.parametrize(
    ("user", "strategy", "kept"),
    [(None, "auto", False), ("1", "auto", True), (None, "ddp_fork", True)],
)
def test_undo_nvml_cuda_check(monkeypatch, user, strategy, kept) -> None:
    import genlab

    monkeypatch.setattr(genlab, "USER_NVML_CHECK", user)
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    _lightning.undo_nvml_cuda_check(strategy)
    import os

    assert ("PYTORCH_NVML_BASED_CUDA_CHECK" in os.environ) == kept


def test_manual_optimizer_step_counters_for_inner_steps() -> None:
    """genlab.steps' plain path counts a bare torch step in global_step through these."""
    import torch
    from lightning.pytorch.core.optimizer import LightningOptimizer

    opt = LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    for name in ("_on_before_step", "_on_after_step"):
        assert callable(getattr(opt, name, None)), (
            f"Lightning's LightningOptimizer.{name} is gone: update "
            "genlab._lightning.plain_optimizer_step"
        )
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    assert isinstance(trainer.fit_loop.epoch_loop._batches_that_stepped, int), (
        "Lightning's _batches_that_stepped is gone: update genlab._lightning.advance_logging_steps"
    )
