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

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from genlab._lightning import JobConfigLauncher, set_launcher, start_method
from genlab.errors import ConfigError, RankFailed


class JobDDPStrategy(DDPStrategy):
    """``trainer=ddp``: DDP whose extra processes run the job's resolved config.

    ``timeout_s``: how long a collective may wait for the other ranks before it fails
    (torch's default: 30 minutes). A rank that dies is noticed sooner: by its peers'
    connections on gloo, by rank 0's RankWatch for the ranks it started; a rank that
    hangs, or dies on another node under NCCL, is noticed after ``timeout_s``. NCCL's
    watchdog is told to raise on that timeout (``TORCH_NCCL_ASYNC_ERROR_HANDLING=1``
    unless set) instead of leaving the ranks blocked."""

    def __init__(self, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> None:
        if timeout_s is not None:
            if not timeout_s > 0:
                raise ConfigError(
                    f"trainer.strategy.timeout_s={timeout_s}: a collective timeout in seconds "
                    "must be positive, e.g. 600"
                )
            kwargs["timeout"] = timedelta(seconds=float(timeout_s))
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        super().__init__(*args, **kwargs)

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


def describe_exit(returncode: int) -> str:
    """'was killed by SIGKILL' / 'exited with code 1'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class RankWatch(threading.Thread):
    """Rank 0's watch over the ranks it started (one poll a second).

    When one exits non-zero, rank 0 usually hears of it at once (gloo: the connection
    closes; train() then stops with one RankFailed line). Where it does not (a rank
    blocked in a collective that never returns, as NCCL's are when a peer dies), the
    watch prints that line itself after ``grace`` seconds, stops the other ranks and
    ends this process with RankFailed's exit code: no rank waits for a timeout."""

    def __init__(self, procs: list, grace: float = 20.0, period: float = 1.0) -> None:
        super().__init__(daemon=True, name="genlab-rank-watch")
        self.procs, self.grace, self.period = procs, grace, period
        self.failed: tuple[int, int, int] | None = None  # (rank, pid, returncode)
        self.message: Callable[[str], str] = lambda what: what  # set by train()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def first_failure(self, wait: float = 0.0) -> tuple[int, int, int] | None:
        """The first rank seen dead (polling for up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while True:
            for rank, p in enumerate(self.procs, start=1):
                if p.poll() not in (None, 0):
                    return rank, p.pid, p.returncode
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)

    def run(self) -> None:
        while not self._stop.wait(self.period):
            self.failed = self.first_failure()
            if self.failed is not None:
                break
        if self.failed is None or self._stop.wait(self.grace):
            return  # stopped, or train() reported the failure in time
        rank, pid, code = self.failed
        what = f"DDP rank {rank} (pid {pid}) {describe_exit(code)}"
        print(f"genlab: {RankFailed.label}: {self.message(what)}", file=sys.stderr, flush=True)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        os._exit(RankFailed.exit_code)
