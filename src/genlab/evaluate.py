"""``python eval.py ckpt_path=<ckpt> [key=value ...]``: full test metrics of a checkpoint.

Reads the run's ``.hydra/config.yaml`` (two folders up from the checkpoint), applies the
``key=value`` overrides, rebuilds the data, loads the model without Hydra and runs the
test split with every score that applies: ELBO and IWAE NLL (k=5000 unless overridden)
for VAEs, log-likelihood and bits/dim for flows, FID / KID with ``metrics.n_test`` samples,
probes. Writes ``metrics.json`` and sample / reconstruction / interpolation grids to
``<checkpoint dir>/eval_<checkpoint name>/`` and prints a table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid, save_image

from genlab.callbacks import SampleScores, interpolation_grid
from genlab.checkpoints import read_checkpoint
from genlab.errors import ConfigError, GenlabError

log = logging.getLogger(__name__)

EVAL_DEFAULTS = {"iwae_samples": 5000}  # model hyper-parameters raised for the final numbers


def load_run_config(ckpt: Path, overrides: list[str]) -> DictConfig:
    """The run's saved config with ``key=value`` overrides; outputs go beside the ckpt."""
    path = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no run config at {path}: eval.py needs a checkpoint inside a genlab run folder "
            "(<run>/checkpoints/<name>.ckpt)"
        )
    cfg = OmegaConf.load(path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad[0]!r}")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    cfg.paths.output_dir = str(ckpt.resolve().parent)
    return cfg


def scores_callback(cfg: DictConfig) -> SampleScores:
    """The run's ``callbacks.sample_scores``; for runs without it (``callbacks=none``, or
    made before it existed), one built from ``metrics.*`` and the defaults."""
    from genlab.train import build

    node = (cfg.get("callbacks") or {}).get("sample_scores")
    if node:
        return build(node, "callbacks.sample_scores")
    m = cfg.get("metrics") or {}
    cache = m.get("cache_dir") or os.environ.get("GENLAB_CACHE")
    return SampleScores(
        cache_dir=cache or str(Path(cfg.paths.data_dir) / "feature_nets"),
        features=m.get("features", "genlab"),
        n_test=m.get("n_test", 10000),
        probes=m.get("probes", True),
    )


@torch.no_grad()
def grids(model: pl.LightningModule, x_raw: torch.Tensor, n: int = 64) -> dict[str, torch.Tensor]:
    """Samples, reconstructions (originals / reconstructions in alternating rows) and
    latent interpolations between pairs of test images (8 pairs x 8 steps)."""
    to_image = getattr(model, "to_image", lambda x: x.clamp(0, 1))
    g = torch.Generator(device=model.device).manual_seed(0)
    out = {"samples": make_grid(to_image(model.sample(n, generator=g)).float(), nrow=8)}
    x = model.preprocess(x_raw[:16].to(model.device), g)
    if hasattr(model, "reconstruct"):
        r = model.reconstruct(x)
        rows = torch.stack([x.view(2, 8, *x.shape[1:]), r.view(2, 8, *r.shape[1:])], 1)
        out["reconstructions"] = make_grid(to_image(rows.flatten(0, 2)).float(), nrow=8)
    if hasattr(model, "encode"):
        out["interpolations"] = interpolation_grid(model, x, n_steps=8)
    return out


def evaluate(ckpt_path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Test metrics of a checkpoint; writes metrics.json and grids; returns the metrics."""
    from genlab.train import _tidy_console, build

    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={str(ckpt)!r} is not a file")
    overrides = list(overrides or [])
    cfg = load_run_config(ckpt, overrides)
    _tidy_console()
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build(cfg.data, "data")
    cls = get_class(cfg.model._target_)
    # Hyper-parameters given on the command line win, then the evaluation defaults.
    given = {o.split("=", 1)[0].removeprefix("model."): None for o in overrides}
    hparams = {k: cfg.model[k] for k in given if k in cfg.model}
    saved = read_checkpoint(ckpt).get("hyper_parameters", {})  # weights_only loading
    hparams.update({k: v for k, v in EVAL_DEFAULTS.items() if k in saved and k not in hparams})
    model = cls.load_from_checkpoint(ckpt, map_location="cpu", **hparams)

    callbacks = [scores_callback(cfg)]
    trainer = pl.Trainer(
        accelerator=cfg.trainer.get("accelerator", "auto"),
        devices=1,
        precision=cfg.trainer.get("precision", 32),
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    out_dir = ckpt.resolve().parent / f"eval_{ckpt.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    images: list[str] = []
    if len(getattr(model, "data_shape", ())) == 3:
        model.eval()
        for name, grid in grids(model, datamodule.splits["test"][0]).items():
            save_image(grid, out_dir / f"{name}.png")
            images.append(f"{name}.png")
    record = {
        "checkpoint": str(ckpt.resolve()),
        "model": cfg.model._target_,
        "data": cfg.data._target_,
        "overrides": overrides,
        "hparams": {k: model.hparams[k] for k in hparams},
        "metrics": dict(sorted(metrics.items())),
        "images": images,
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table(metrics, out_dir))
    return record


def table(metrics: dict[str, float], out_dir: Path) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k, v in sorted(metrics.items()):
        lines.append(f"{k:<{width}}  {v:.6g}" if math.isfinite(v) else f"{k:<{width}}  {v}")
    lines.append(f"written to {out_dir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python eval.py ckpt_path=<ckpt> [key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    ckpt = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not ckpt or args in (["-h"], ["--help"]):
        print("usage: python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt [key=value ...]")
        sys.exit(0 if ckpt or args else 2)
    try:
        evaluate(ckpt[0], [a for a in args if not a.startswith("ckpt_path=")])
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        sys.exit(2)
