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

from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from genlab._lightning import JobConfigLauncher, set_launcher, start_method


class JobDDPStrategy(DDPStrategy):
    """``trainer=ddp``: DDP whose extra processes run the job's resolved config."""

    def use_job_config(self, config_file: str) -> None:
        """Start the other ranks on this resolved config: replaces the launcher the
        Trainer configured (only when ranks are started as subprocesses, not by SLURM)."""
        if start_method(self) == "popen" and self.launcher is not None:
            launcher = JobConfigLauncher(
                config_file, self.cluster_environment, self.num_processes, self.num_nodes
            )
            set_launcher(self, launcher)

    def _setup_model(self, model: torch.nn.Module):
        """DDP-wrap the model; families whose backward passes reach only part of the
        parameters (GANs: one player per pass, ``ddp_find_unused_parameters``) get
        ``find_unused_parameters=True``, which DDP then needs to reduce each pass."""
        module = self.lightning_module
        if getattr(module, "ddp_find_unused_parameters", False):
            self._ddp_kwargs["find_unused_parameters"] = True
        return super()._setup_model(model)

    def finish(self, failed: bool = False) -> None:
        """After fit and test: free the process group and (rank 0) the other ranks and
        the launch variables, so the next trial of a sweep starts clean."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if isinstance(self.launcher, JobConfigLauncher):
            self.launcher.finish(failed)


def write_job_config(cfg: DictConfig, output_dir: str | Path) -> str:
    """The job's config with every interpolation resolved (``${hydra:...}`` included), for
    the other ranks: ``<output_dir>/.hydra/ddp_config.yaml``."""
    path = Path(output_dir) / ".hydra" / "ddp_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return str(path)
