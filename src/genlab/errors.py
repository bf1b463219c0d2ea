"""Errors that genlab reports as one line (what is wrong, what to do) instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class GenlabError(Exception):
    """Base class: the command-line entry points print these as a single line
    (``genlab: <label>: <message>``) and exit with ``exit_code``."""

    label = "error"
    exit_code = 2


class ConfigError(GenlabError, ValueError):
    """A configuration value is invalid or does not fit the data."""


class DataNotFoundError(GenlabError, FileNotFoundError):
    """Data files are missing and could not be downloaded."""


class DivergenceError(GenlabError, RuntimeError):
    """The loss became NaN or infinite during training."""


class WriteFailed(GenlabError, OSError):
    """A file the run writes (checkpoint, image grid, cache, log) could not be written: a
    full disk, a quota, a folder that went away. The message names the file; the run's
    message adds the last good checkpoint. Exit code 74 (sysexits' EX_IOERR)."""

    label = "write failed"
    exit_code = 74


def is_write_error(e: BaseException) -> bool:
    """An OSError, or torch's writer reporting a refused write (a RuntimeError from
    ``inline_container``: "file write failed", "unexpected pos ..."), not any other
    error raised while saving (an object that cannot be pickled is a bug, not a disk)."""
    if isinstance(e, OSError):
        return True
    text = str(e)
    signs = ("file write failed", "unexpected pos", "PytorchStreamWriter", "inline_container")
    return isinstance(e, RuntimeError) and any(s in text for s in signs)


def write_failed(what: str, path: object, e: BaseException) -> WriteFailed:
    """The one line for a failed write of ``what`` at ``path``: the system's reason (for
    torch's writer, which reports a refused write as a RuntimeError, the free space)."""
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:  # torch's writer: RuntimeError("[enforce fail at inline_container.cc] ...")
        reason = "the write failed"
        try:
            import shutil
            from pathlib import Path

            free = shutil.disk_usage(Path(str(path)).parent).free
            reason += f", {free / 2**20:.0f} MiB free there"
        except OSError:
            pass
        reason += f" ({' '.join(str(e).split())[:120]})"
    return WriteFailed(f"could not write the {what} {path}: {reason}")


class RankFailed(GenlabError, RuntimeError):
    """A process of a multi-process (DDP) run died or lost its peers; the message names
    the rank, the last good checkpoint and how to resume. Exit code 75 (EX_TEMPFAIL:
    resuming is expected to work)."""

    label = "rank failed"
    exit_code = 75


class RunInterrupted(GenlabError):
    """Ctrl-C or SIGTERM stopped a run; the message says where its last checkpoint is."""

    label = "interrupted"

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def require_images(setting: str, data_shape: tuple[int, ...]) -> None:
    """Raise ConfigError unless the data are 8-bit images (C, H, W); ``setting`` names
    the choice that needs them, e.g. ``"model.likelihood=bernoulli"``."""
    if len(data_shape) != 3:
        # A family that only models images has no other setting to choose.
        fix = (
            "use image data (e.g. data=mnist or data=image_folder)"
            if setting.startswith("model=")
            else "choose a continuous likelihood / loss, or image data"
        )
        raise ConfigError(
            f"{setting} needs image data (C, H, W), but the data have shape "
            f"{tuple(data_shape)}: {fix}"
        )


class CheckpointError(GenlabError, RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another family or config."""


def run_script(main: Callable[[], object], name: str) -> None:
    """Run a script's ``main``, printing a GenlabError or a missing file as one line
    (``<name>: <label>: <message>``) and exiting with its code instead of a traceback."""
    try:
        main()
    except GenlabError as e:
        print(f"{name}: {e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"{name}: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        sys.exit(2)
