"""The run folder's name, the same in every process of one launch.

Hydra names a run folder from the clock (``${now:...}``) in each process that composes
the config. Processes started by a launcher that does not hand them rank 0's folder
(torchrun, srun) compose it themselves, and two that start a second apart write two
folders, two logs and two W&B runs. ``${genlab_run_name:<suffix>}`` gives:

- under torchrun on one node: ``<date>/<time>_<suffix>`` from the start time of the
  torchrun agent (the processes' common parent); on several nodes
  ``torchrun-<rendezvous id>_<suffix>`` (``--rdzv-id``, the same on every node);
- inside an srun step of a SLURM job: ``slurm-<job id>[_<array task>].<step>_<suffix>``,
  which a requeued job gets again (it continues in the same folder);
- otherwise ``<date>/<time>_<suffix>`` from the clock, as Hydra's ``now``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from functools import cache

from omegaconf import OmegaConf


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


@cache
def _clock() -> float:
    return time.time()  # once per process, as Hydra's ${now:} is


def run_name(suffix: str) -> str:
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "LOCAL_RANK" in env:
        one_node = env.get("LOCAL_WORLD_SIZE") == env.get("WORLD_SIZE")
        start = _process_start(os.getppid()) if one_node else None
        if start is not None:
            return _dated(start, suffix)
        rdzv = env["TORCHELASTIC_RUN_ID"]
        if rdzv and rdzv != "none":
            return f"torchrun-{rdzv}_{suffix}"
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env:
        job = env.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{env['SLURM_ARRAY_TASK_ID']}" if job else env["SLURM_JOB_ID"]
        return f"slurm-{job}.{env['SLURM_STEP_ID']}_{suffix}"
    return _dated(_clock(), suffix)


def _dated(t: float, suffix: str) -> str:
    d = datetime.fromtimestamp(t)
    return f"{d:%Y-%m-%d}/{d:%H-%M-%S}_{suffix}"


def register() -> None:
    if not OmegaConf.has_resolver("genlab_run_name"):
        OmegaConf.register_new_resolver("genlab_run_name", run_name)
