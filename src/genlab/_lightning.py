"""Every use of a private Lightning API in genlab, in one place.

Lightning has no public way to do these things; ``tests/test_lightning_internals.py``
fails with a message naming what changed if an upgrade breaks one of them.

- :func:`step_logs_due`: whether step-level metrics logged now reach the loggers (the
  logger connector's ``should_update_logs``), so genlab logs a window mean once per
  logging interval instead of calling ``self.log`` on every step (see
  ``genlab.models.common.StepMetrics``); :func:`advance_logging_steps`: the loop's count
  of batches that stepped, which the loggers' x-axis follows (``genlab.steps``);
  :func:`plain_optimizer_step`: a LightningOptimizer's step counted without its strategy
  path (``genlab.steps``, where no hook needs that path).
- :class:`JobConfigLauncher`, :func:`start_method` and :func:`set_launcher`: Lightning's
  subprocess launcher (which starts DDP ranks 1..N-1 by re-running the command line),
  changed so that the other ranks of a Hydra multirun trial run that trial's resolved
  config instead of the whole sweep (Lightning #11300), and the strategy attributes
  that say how ranks start and hold the launcher (``genlab.distributed`` uses them).

One more thing is not an API at all: importing Lightning sets the environment variable
``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so that forked DataLoader workers never inherit an
initialised CUDA). With it, every ``torch.cuda.is_available()`` reloads NVML, and torch's
optimisers call it on every ``step()``: 60 us per step on a machine without a GPU, 6% of a
small model's step. genlab forks no workers, so :func:`undo_nvml_cuda_check` removes it
unless the user set it or asked for a fork-based strategy.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import (
    _SubprocessScriptLauncher as SubprocessLauncher,
)

import genlab

__all__ = [
    "JobConfigLauncher",
    "advance_logging_steps",
    "plain_optimizer_step",
    "set_launcher",
    "start_method",
    "step_logs_due",
    "undo_nvml_cuda_check",
]

log = logging.getLogger(__name__)


def step_logs_due(trainer: pl.Trainer) -> bool:
    """True when metrics logged with ``on_step=True`` during this training batch go to
    the loggers (every ``log_every_n_steps`` batches that stepped, and when stopping)."""
    return bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs


def advance_logging_steps(trainer: pl.Trainer, n: int) -> None:
    """Count ``n`` more batches that stepped: the step loggers see and the counter
    ``log_every_n_steps`` follows (``genlab.steps``: several optimizer steps per batch)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += n


def plain_optimizer_step(optimizer: Any) -> None:
    """``optimizer.step()`` of a LightningOptimizer (manual optimisation) without the
    strategy / precision-plugin path: the bare torch step between the progress-tracking
    calls that count it in ``global_step``. Only where nothing hooks into that path
    (``genlab.steps`` checks: one device, no AMP scaler, no callback overriding the
    backward / optimizer-step hooks)."""
    optimizer._on_before_step()
    optimizer.optimizer.step()
    optimizer._on_after_step()


def undo_nvml_cuda_check(strategy: str = "") -> None:
    """Unset PYTORCH_NVML_BASED_CUDA_CHECK where Lightning set it and nothing forks."""
    if genlab.USER_NVML_CHECK is None and "fork" not in strategy and "notebook" not in strategy:
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def start_method(strategy: DDPStrategy) -> str:
    """How the strategy starts its processes: ``popen`` (re-run a command), ``spawn``, ..."""
    return strategy._start_method


def set_launcher(strategy: DDPStrategy, launcher: Any) -> None:
    """Make ``launcher`` the one the strategy uses (read back by ``strategy.launcher``)."""
    strategy._launcher = launcher


class JobConfigLauncher(SubprocessLauncher):
    """Lightning's subprocess launcher, but ranks > 0 run ``genlab.worker`` on the job's
    resolved config instead of the command line."""

    def __init__(self, config_file: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_file = config_file
        self.set_vars: list[str] = []

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        """Lightning's launch, with genlab's RankWatch over the ranks it starts in place
        of Lightning's observer (which SIGKILLs rank 0 without a word when one dies)."""
        from lightning.fabric.utilities.distributed import _set_num_threads_if_needed

        from genlab.distributed import RankWatch

        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            self.watch = RankWatch(self.procs)
            if getattr(self, "failure_message", None) is not None:
                self.watch.message = self.failure_message
            self.watch.start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        values = {
            "MASTER_ADDR": env.main_address,
            "MASTER_PORT": str(env.main_port),
            "NODE_RANK": str(env.node_rank()),
            "LOCAL_RANK": str(env.local_rank()),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
        }
        self.set_vars = [k for k in values if k not in os.environ]
        os.environ.update(values)
        cmd = [sys.executable, "-m", "genlab.worker", self.config_file]
        for local_rank in range(1, self.num_processes):
            child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
            self.procs.append(subprocess.Popen(cmd, env=child_env, cwd=os.getcwd()))

    def finish(self, failed: bool = False) -> None:
        """Wait for the other ranks (stop them if rank 0 failed: they may be blocked in a
        collective), then unset the variables this launch set."""
        watch = getattr(self, "watch", None)
        if watch is not None:
            watch.stop()
        for p in self.procs:
            if failed:
                p.kill()
            p.wait()
        bad = [p.returncode for p in self.procs if p.returncode]
        for k in self.set_vars:
            os.environ.pop(k, None)
        self.set_vars = []
        if bad:
            log.warning("DDP ranks > 0 exited with codes %s", bad)
