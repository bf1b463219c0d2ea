"""Where genlab's config folder is (a leaf module: the CLI, the report and the trust
checks all read it, none imports another for it)."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> str:
    """genlab's config folder: env GENLAB_CONF, else the one shipped in the package
    (``genlab/conf``; a checkout's top-level ``conf`` links to it)."""
    env = os.environ.get("GENLAB_CONF")
    return str(Path(env).resolve() if env else Path(__file__).resolve().parent / "conf")
