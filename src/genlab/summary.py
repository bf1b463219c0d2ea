"""The end-of-run summary: where the outputs are, the headline numbers (the report's
choice), every final number, and the commands to evaluate, resume and compare the run."""

from __future__ import annotations

import shlex
from pathlib import Path

import lightning.pytorch as pl

from genlab.report.columns import HEADLINES, SPACES


def headline(metrics: dict[str, float]) -> str:
    """The run's headline numbers (genlab.report's choice: likelihoods, bits/dim, errors,
    FID / KID / precision / recall with their feature space), test values where the run
    was tested."""
    split = "test" if any(k.startswith("test/") for k in metrics) else "val"
    scores = ("fid", "kid", "precision", "recall")
    names = [h[0] for h in HEADLINES] + [f"{m}{s}" for s in SPACES for m in scores]
    shown = [
        f"{split}/{n}={metrics[f'{split}/{n}']:.4g}" for n in names if f"{split}/{n}" in metrics
    ]
    return "  ".join(shown)


def summary(
    trainer: pl.Trainer, metrics: dict[str, float], overrides: list[str] | None = None
) -> str:
    """Where a run's outputs are, its headline numbers and all final ones, and the
    commands to evaluate, resume and compare it."""
    root = Path(trainer.default_root_dir).resolve()
    lines = [f"Outputs in {root}"]

    def add(label: str, path: str | Path | None) -> None:
        if path and Path(path).exists():
            p = Path(path).resolve()
            lines.append(f"  {label:<12} {p.relative_to(root) if p.is_relative_to(root) else p}")

    add("config", root / ".hydra" / "config.yaml")
    ckpt = trainer.checkpoint_callback
    # The test pass restores the callback's state as of best.ckpt: look for last.ckpt too.
    last = getattr(ckpt, "last_model_path", "") or ""
    if not last and getattr(ckpt, "dirpath", None) and (Path(ckpt.dirpath) / "last.ckpt").is_file():
        last = str(Path(ckpt.dirpath) / "last.ckpt")
    add("best ckpt", getattr(ckpt, "best_model_path", None))
    add("last ckpt", last)
    for lg in trainer.loggers:
        if hasattr(lg, "log_dir") and lg.log_dir:
            name = type(lg).__name__.replace("Logger", "").lower()
            add(name, Path(lg.log_dir) / ("metrics.csv" if name == "csv" else ""))
        if getattr(lg, "mode", None) == "offline":
            lines.append(
                f"  {'wandb':<12} offline; upload with: wandb sync {root}/wandb/offline-run-*"
            )
    add("images", root / "images")
    top = headline(metrics)
    if top:
        lines.append(f"  headline     {top}")
    shown = {k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))}
    if shown:
        lines.append("  " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())))
    if last and Path(last).exists():
        again = "".join(f"{shlex.quote(o)} " for o in overrides or [])
        lines.append(f"  evaluate:    genlab-eval ckpt_path={shlex.quote(str(root))}")
        lines.append(f"  resume:      genlab-train {again}ckpt_path={shlex.quote(last)}")
    lines.append(f"  compare:     genlab-report {shlex.quote(str(root))} <other runs> --out report")
    return "\n".join(lines)
