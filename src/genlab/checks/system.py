"""Checks of this machine and its folders: the accelerator asked for exists, the folders a
run writes are writable."""

from __future__ import annotations

import os
from pathlib import Path

from genlab.errors import ConfigError

# ---- this machine ----------------------------------------------------------------------


def check_accelerator(accelerator: str) -> None:
    """A GPU (or MPS) asked for by name must be there."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: use "
            "trainer=cpu, or trainer.accelerator=auto (a GPU when there is one)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available: use trainer=cpu")


# ---- folders --------------------------------------------------------------------------


def check_writable(path: str | Path, setting: str) -> None:
    """Create ``path`` if needed and check that files can be written there."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".genlab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{setting}={str(path)!r} is not a writable folder ({reason}): "
            f"choose another one ({setting}=<folder>)"
        ) from None
