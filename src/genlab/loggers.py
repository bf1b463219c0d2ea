"""A W&B logger that is online when you are logged in, offline otherwise, and never
crashes the run for want of a network."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


def wandb_credentials_found() -> bool:
    """True if W&B has an API key: WANDB_API_KEY, an identity token, or a .netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host or "api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_id(path: Path) -> str:
    """The W&B run id stored at ``path``; a new one is generated and stored (by rank 0)
    when there is none."""
    if path.is_file():
        found = path.read_text().strip()
        if found:
            log.info("W&B: continuing run id %s (%s)", found, path)
            return found
    alphabet = string.ascii_lowercase + string.digits
    new = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's own id format
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    return new


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with the mode chosen for you.

    ``mode=None`` (default): WANDB_MODE from the environment if set, else ``online`` with
    credentials and ``offline`` without (one line tells how to ``wandb sync``). If an
    online start fails (no network), the run falls back to offline instead of crashing.

    The run id is kept in ``<save_dir>/wandb/run_id``: a run resumed in the same folder
    (``ckpt_path=last`` / ``auto_resume=true`` continue in the earlier run's folder)
    continues the same W&B run (``resume="allow"``) instead of starting a new one.
    """

    def __init__(self, mode: str | None = None, save_dir: str = ".", **kwargs: Any) -> None:
        mode = (
            mode
            or os.environ.get("WANDB_MODE")
            or ("online" if wandb_credentials_found() else "offline")
        )
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if kwargs.get("id") is None and kwargs.get("version") is None:
            kwargs["id"] = run_id(Path(save_dir) / "wandb" / "run_id")
            kwargs.setdefault("resume", "allow")
        super().__init__(save_dir=save_dir, mode=mode, offline=False, **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb; warns when passed
        self.mode = mode
        if mode == "offline":
            self._say_offline("not logged in (wandb login / WANDB_API_KEY)")

    @rank_zero_only
    def _say_offline(self, why: str) -> None:
        log.info(
            "W&B: %s, logging offline; upload later with: wandb sync %s",
            why,
            Path(self.save_dir or ".").resolve() / "wandb" / "offline-run-*",
        )

    @property
    @rank_zero_experiment
    def experiment(self):  # noqa: D102 - same object as Lightning's
        if self._experiment is None and self.mode == "online":
            try:
                return _LightningWandbLogger.experiment.fget(self)
            except Exception as e:  # noqa: BLE001 - network, auth or server trouble
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.mode = self._wandb_init["mode"] = "offline"
                self._say_offline(f"online start failed ({first})")
        return _LightningWandbLogger.experiment.fget(self)


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued (its
    header kept) instead of deleted, and rows logged at or after ``keep_below`` (steps a
    killed run logged after its last checkpoint) are dropped."""

    def __init__(self, log_dir: str, keep_below: int | None = None) -> None:
        self.keep_below = keep_below  # read by _check_log_dir_exists in super().__init__
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, keys = list(reader), list(reader.fieldnames or [])
        if self.keep_below is not None:
            rows = [r for r in rows if not r.get("step") or int(r["step"]) < self.keep_below]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger that continues ``metrics.csv`` when a run is resumed in its
    folder: rows up to the checkpoint's step stay, later ones (logged by the killed
    process after its last checkpoint) are dropped and logged again."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # noqa: D102
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, keep_below=self.resume_step)
        return self._experiment
