"""Multi-process DDP that works under Hydra multirun and Optuna.

Lightning's ``strategy=ddp`` starts ranks 1..N-1 by re-running the command line. Under
``-m`` that command is the whole sweep, so every rank would run its own sweep with other
hyper-parameters (Lightning #11300). Here rank 0 (the Hydra job, one trial) writes the
trial's fully resolved config to ``<run>/.hydra/ddp_config.yaml`` and starts the other
ranks with ``python -m genlab.worker <that file>``: every rank of a trial trains the
same config, the sweep itself runs once, in rank 0's process. After the trial rank 0
tears the process group and the launch variables down so the next trial starts clean
on a fresh port.

On SLURM (``hydra/launcher=slurm``) srun starts one task per GPU and each task runs the
same Hydra job; Lightning's SLURM environment then creates no processes at all.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class JobConfigLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, but ranks > 0 run ``genlab.worker`` on the job's
    resolved config instead of the command line."""

    def __init__(self, config_file: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_file = config_file
        self.set_vars: list[str] = []

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


class JobDDPStrategy(DDPStrategy):
    """``trainer=ddp``: DDP whose extra processes run the job's resolved config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_file: str | None = None

    def _configure_launcher(self) -> None:
        if self.config_file is None or self._start_method != "popen":
            super()._configure_launcher()
            return
        self._launcher = JobConfigLauncher(
            self.config_file, self.cluster_environment, self.num_processes, self.num_nodes
        )

    def use_job_config(self, config_file: str) -> None:
        """Start the other ranks on this resolved config (the Trainer has configured a
        launcher already: replace it)."""
        self.config_file = config_file
        self._configure_launcher()

    def finish(self, failed: bool = False) -> None:
        """After fit and test: free the process group and (rank 0) the other ranks and
        the launch variables, so the next trial of a sweep starts clean."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if isinstance(self._launcher, JobConfigLauncher):
            self._launcher.finish(failed)


def write_job_config(cfg: DictConfig, output_dir: str | Path) -> str:
    """The job's config with every interpolation resolved (``${hydra:...}`` included), for
    the other ranks: ``<output_dir>/.hydra/ddp_config.yaml``."""
    path = Path(output_dir) / ".hydra" / "ddp_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return str(path)
