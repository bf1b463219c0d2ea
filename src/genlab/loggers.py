"""A W&B logger that is online when you are logged in, offline otherwise, and never
crashes the run for want of a network."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
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


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with the mode chosen for you.

    ``mode=None`` (default): WANDB_MODE from the environment if set, else ``online`` with
    credentials and ``offline`` without (one line tells how to ``wandb sync``). If an
    online start fails (no network), the run falls back to offline instead of crashing.
    """

    def __init__(self, mode: str | None = None, save_dir: str = ".", **kwargs: Any) -> None:
        mode = (
            mode
            or os.environ.get("WANDB_MODE")
            or ("online" if wandb_credentials_found() else "offline")
        )
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
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
