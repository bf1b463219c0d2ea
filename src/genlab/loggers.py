"""Loggers: a W&B logger that is online when you are logged in, offline otherwise, and
never crashes the run for want of a network; a CSV logger that continues a resumed run's
metrics.csv. Both use Lightning's public logger APIs only."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import re
import secrets
import string
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from genlab.errors import ConfigError

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
        found = path.read_text(errors="replace").strip()
        if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", found):
            log.info("W&B: continuing run id %s (%s)", found, path)
            return found
        if found:
            log.warning("W&B: %s holds no valid run id; starting a new W&B run", path)
    alphabet = string.ascii_lowercase + string.digits
    new = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's own id format
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    return new


# Lightning's own arguments: everything else a W&B config gives goes to wandb.init.
_LIGHTNING_ONLY = {"log_model", "prefix", "checkpoint_name", "add_file_policy", "experiment"}


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger with the mode chosen for you and the run started by genlab.

    ``mode=None`` (default): WANDB_MODE from the environment if set, else ``online`` with
    credentials and ``offline`` without (one line tells how to ``wandb sync``). If an
    online start fails (no network), the run falls back to offline instead of crashing.

    The run starts here (rank 0 only), through ``wandb.init``, and is handed to Lightning
    as its ``experiment``; :meth:`finish` ends it (``train()`` calls it after the test
    pass, so the trials of a sweep get one run each). The run id is kept in
    ``<save_dir>/wandb/run_id``: a run resumed in the same folder (``ckpt_path=last`` /
    ``auto_resume=true`` continue in the earlier run's folder) continues the same W&B
    run (``resume="allow"``) instead of starting a new one. Under ``wandb agent`` (a W&B
    sweep) the agent's run id, project and entity are used.

    ``log_model``: ``true`` logs ``best.ckpt`` and ``last.ckpt`` as versions of the model
    artifact ``model-<run id>`` when training ends (aliases ``best``; ``last`` and
    ``latest``), ``"all"`` after every checkpoint save; the metadata name the monitored
    metric and its best score. ``run.use_artifact("model-<id>:best")`` fetches it.
    """

    def __init__(
        self,
        mode: Literal["online", "offline", "disabled", "dryrun", "run"] | None = None,
        save_dir: str = ".",
        log_model: bool | Literal["all"] = False,
        **kwargs: Any,
    ) -> None:
        mode = (
            mode
            or os.environ.get("WANDB_MODE")
            or ("online" if wandb_credentials_found() else "offline")
        )
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if os.environ.get("WANDB_SWEEP_ID"):
            # wandb agent: the agent chose the run (WANDB_RUN_ID), project and entity.
            for key in ("id", "version", "project", "entity", "resume"):
                kwargs.pop(key, None)
        elif kwargs.get("id") is None and kwargs.get("version") is None:
            kwargs["id"] = run_id(Path(save_dir) / "wandb" / "run_id")
            kwargs.setdefault("resume", "allow")
        self.log_checkpoints_when = log_model  # genlab logs them (see log_checkpoints)
        self._checkpoint_callbacks_seen: dict[int, Any] = {}
        self._logged_files: dict[str, int] = {}  # path -> mtime (ns) when logged
        self.mode = mode
        self._sync_glob = Path(save_dir).resolve() / "wandb" / "offline-run-*"
        run = None
        if rank_zero_only.rank == 0 and kwargs.get("experiment") is None:
            init = {k: v for k, v in kwargs.items() if k not in _LIGHTNING_ONLY}
            given = init.pop("version", None) or init.pop("id", None)
            if given:  # none under wandb agent: W&B takes WANDB_RUN_ID
                init["id"] = given
            init.pop("anonymous", None)  # deprecated in wandb; warns when passed
            run = self._start(dict(init, dir=save_dir))
        kwargs.setdefault("experiment", run)
        super().__init__(save_dir=save_dir, offline=False, log_model=False, **kwargs)
        if self.mode == "offline":
            self._say_offline("not logged in (wandb login / WANDB_API_KEY)")

    def _start(self, init: dict[str, Any]) -> Any:
        """wandb.init in this logger's mode; an online start that fails goes offline."""
        import wandb

        try:
            run = wandb.init(**init, mode=self.mode)
        except Exception as e:  # noqa: BLE001 - network, auth or server trouble
            if self.mode != "online":
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(
                    f"W&B could not start ({first}): set WANDB_MODE=disabled or logger=csv"
                ) from None
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.mode = "offline"
            self._say_offline(f"online start failed ({first})")
            run = wandb.init(**init, mode="offline")
        if getattr(run, "define_metric", None):  # Lightning's x-axis: trainer/global_step
            run.define_metric("trainer/global_step")
            run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return run

    @rank_zero_only
    def _say_offline(self, why: str) -> None:
        log.info("W&B: %s, logging offline; upload later with: wandb sync %s", why, self._sync_glob)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:  # noqa: D102
        if not self.log_checkpoints_when:
            return
        self._checkpoint_callbacks_seen[id(checkpoint_callback)] = checkpoint_callback
        if self.log_checkpoints_when == "all":
            self.log_checkpoints(checkpoint_callback)

    def finalize(self, status: str) -> None:  # noqa: D102
        super().finalize(status)
        if status == "success" and self.log_checkpoints_when:
            for callback in self._checkpoint_callbacks_seen.values():
                self.log_checkpoints(callback)

    @rank_zero_only
    def log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Log the callback's best and last checkpoints as versions of the artifact
        ``model-<run id>`` (aliases ``best``; ``last`` and ``latest``), each file again
        only when it changed since it was last logged."""
        import wandb

        run = self.experiment
        if not hasattr(run, "log_artifact"):
            return  # W&B disabled
        files: dict[str, list[str]] = {}
        for path, aliases in (
            (checkpoint_callback.best_model_path, ["best"]),
            (checkpoint_callback.last_model_path, ["last", "latest"]),
        ):
            if path and Path(path).is_file():
                files.setdefault(str(path), []).extend(aliases)
        score = checkpoint_callback.best_model_score
        for path, aliases in files.items():
            mtime = Path(path).stat().st_mtime_ns
            if self._logged_files.get(path) == mtime:
                continue
            metadata = {
                "file": Path(path).name,
                "monitor": checkpoint_callback.monitor,
                "mode": getattr(checkpoint_callback, "mode", None),
                "best_score": float(score) if score is not None else None,
            }
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy="mutable")  # copied now
            run.log_artifact(artifact, aliases=aliases)
            self._logged_files[path] = mtime
            log.info("W&B: logged %s as artifact model-%s (%s)", path, run.id, ", ".join(aliases))

    @rank_zero_only
    def finish(self, failed: bool = False) -> None:
        """End the W&B run (its files are complete; the next run in this process, e.g.
        the next trial of a sweep, starts its own)."""
        run = self.experiment
        if hasattr(run, "finish"):
            run.finish(exit_code=1 if failed else 0)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger that continues ``metrics.csv`` when a run is resumed in its
    folder: rows up to the checkpoint's step stay, later ones (logged by the killed
    process after its last checkpoint) are dropped and logged again.

    Lightning's writer deletes an existing metrics.csv when it starts; the rows to keep
    are read first and written back, and the writer's header keys are set to theirs.
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step
        self._continued = False

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # noqa: D102
        if self._continued:
            return _LightningCSVLogger.experiment.fget(self)
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        rows, keys = self._kept_rows(path)
        with warnings.catch_warnings():  # "Previous log files ... will be deleted": not here
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = _LightningCSVLogger.experiment.fget(self)
        if keys:
            with open(path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = keys
        self._continued = True
        return writer

    def _kept_rows(self, path: Path) -> tuple[list[dict[str, str]], list[str]]:
        if not path.is_file():
            return [], []
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, keys = list(reader), list(reader.fieldnames or [])
            if self.resume_step is not None:
                rows = [r for r in rows if not r.get("step") or int(r["step"]) < self.resume_step]
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
            kept = path.with_suffix(".csv.unreadable")
            path.replace(kept)
            log.warning("%s is unreadable (%s): moved to %s, starting a new one", path, e, kept)
            return [], []
        return rows, keys
