"""Command-line entry points (``python train.py`` and the ``genlab-train`` script)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def config_dir() -> str:
    """The project's conf/ folder: env GENLAB_CONF, else next to src/ (editable install)."""
    env = os.environ.get("GENLAB_CONF")
    return str(Path(env).resolve() if env else Path(__file__).resolve().parents[2] / "conf")


def unknown_option(args: list[str], conf: Path) -> str | None:
    """One line naming the first ``group=option`` override whose option doesn't exist.

    Hydra's own message for this lists its search path; ours says what to choose.
    """
    for arg in args:
        key, eq, value = arg.lstrip("+~").partition("=")
        group = conf / key
        if not eq or key.startswith("hydra") or not group.is_dir() or "(" in value or "$" in value:
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.strip("[]").split(","):
            if choice and choice != "null" and choice not in options:
                return f"unknown {key} option {choice!r}: choose one of {', '.join(options)}"
    return None


def main() -> None:
    """``genlab-train`` / ``python train.py``: check group options, then run Hydra."""
    problem = unknown_option(sys.argv[1:], Path(config_dir()))
    if problem:
        print(f"genlab: error: {problem}", file=sys.stderr)
        sys.exit(2)
    train_main()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """Train from the composed config; print GenlabErrors as one line (exit code 2)."""
    from genlab.errors import GenlabError  # lazy: `--help` stays fast
    from genlab.train import train

    try:
        metrics, _ = train(cfg)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    name = cfg.get("optimized_metric")
    if name is None:
        return None
    if name not in metrics:
        print(
            f"genlab: error: optimized_metric={name!r} was not logged; logged: {sorted(metrics)}",
            file=sys.stderr,
        )
        sys.exit(2)
    return metrics[name]
