"""``python eval.py ckpt_path=<ckpt or run folder> [key=value ...]``: full test metrics.

Reads the run's ``.hydra/config.yaml`` (two folders up from the checkpoint), applies the
``key=value`` overrides, checks them like a training run, rebuilds the data, loads the
model without Hydra and runs the test split through the model's test step (its
``batch_metrics(..., full=True)``: ELBO and IWAE NLL with k=5000 unless overridden for
VAEs, log-likelihood and bits/dim for flows) plus every score that applies (FID / KID
with ``metrics.n_test`` samples, probes). Writes ``metrics.json`` and the same image
grids the training callbacks draw to ``<checkpoint dir>/eval_<checkpoint name>/`` and
prints a table. Every problem with the inputs stops it with one line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torchvision.utils import save_image

from genlab.callbacks import ImageGrids, LatentTools, SampleScores, TestProgress
from genlab.checkpoints import migrate_hparams, read_checkpoint
from genlab.checks import check_accelerator, check_config, check_writable, import_target
from genlab.errors import CheckpointError, ConfigError, GenlabError
from genlab.trust import check_names, named_paths, only_trusted

log = logging.getLogger(__name__)

EVAL_DEFAULTS = {"iwae_samples": 5000}  # model hyper-parameters raised for the final numbers


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/best.ckpt`` (else ``last.ckpt``)."""
    if not str(path).strip():
        raise ConfigError("ckpt_path is empty: ckpt_path=<run>/checkpoints/<name>.ckpt")
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise ConfigError(f"ckpt_path={str(path)!r} is a folder without checkpoints/*.ckpt")
    if not p.is_file():
        raise ConfigError(f"ckpt_path={str(path)!r} is not a file")
    return p


def load_run_config(ckpt: Path, overrides: list[str]) -> DictConfig:
    """The run's saved config with ``key=value`` overrides; outputs go beside the ckpt."""
    path = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no run config at {path}: give a checkpoint inside a genlab run folder "
            "(<run>/checkpoints/<name>.ckpt)"
        )
    try:
        cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the run config {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - YAML syntax errors come in several types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"the run config {path} is not valid YAML ({first})") from None
    if not isinstance(cfg, DictConfig) or not all(
        OmegaConf.select(cfg, k) for k in ("model._target_", "data._target_")
    ):
        raise ConfigError(f"{path} is not a genlab run config (no model._target_ / data._target_)")
    # Runs made before some settings were renamed (model.update -> model.update_rule, ...).
    model = OmegaConf.to_container(cfg.model, resolve=False)
    renamed = migrate_hparams(model, str(model["_target_"]))
    if renamed != model:
        log.info("%s: reading renamed model settings %s", path, sorted(set(model) - set(renamed)))
        cfg.model = renamed
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must be key=value, got {bad[0]!r}")
    groups = [o for o in overrides if OmegaConf.is_dict(cfg.get(o.split("=", 1)[0].lstrip("+")))]
    if groups:
        raise ConfigError(
            f"eval.py changes settings of the run (e.g. model.iwae_samples=5000), not whole "
            f"groups: {groups[0]!r} would replace the run's {groups[0].split('=')[0]} section"
        )
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"cannot apply the overrides {overrides}: {first}") from None
    cfg.paths.output_dir = str(ckpt.resolve().parent)
    return cfg


def scores_callback(cfg: DictConfig) -> SampleScores:
    """The run's ``callbacks.sample_scores``; for runs without it (``callbacks=none``, or
    made before it existed), one built from ``metrics.*`` and the defaults."""
    from genlab.train import build

    node = (cfg.get("callbacks") or {}).get("sample_scores")
    m = cfg.get("metrics") or {}
    if node:
        callback = build(node, "callbacks.sample_scores")
        for key in ("inception_weights", "hsic"):  # runs made before these settings
            if key not in node and key in m:
                setattr(callback, key, m[key])
        return callback
    cache = m.get("cache_dir") or os.environ.get("GENLAB_CACHE")
    return SampleScores(
        cache_dir=cache or str(Path(cfg.paths.data_dir) / "feature_nets"),
        features=m.get("features", "auto"),
        n_test=m.get("n_test", 10000),
        probes=m.get("probes", True),
        hsic=m.get("hsic", True),
        inception_weights=m.get("inception_weights"),
    )


def image_callbacks(cfg: DictConfig) -> tuple[ImageGrids, LatentTools]:
    """The run's image callbacks (their settings), or the defaults: eval.py draws with
    the same code and settings as the run."""
    from genlab.train import build

    callbacks = cfg.get("callbacks") or {}
    grids = callbacks.get("image_grids")
    views = callbacks.get("latent_tools")
    return (
        build(grids, "callbacks.image_grids") if grids else ImageGrids(),
        build(views, "callbacks.latent_tools") if views else LatentTools(),
    )


EVAL_CALLBACKS = ("sample_scores", "image_grids", "latent_tools")  # the ones eval.py builds
NO_SCORES = ("callbacks.sample_scores=null",)


def evaluate(
    ckpt_path: str | Path, overrides: list[str] | None = None, trust: Sequence[str] = ()
) -> dict[str, Any]:
    """Test metrics of a checkpoint; writes metrics.json and grids; returns the metrics.

    The run folder and checkpoint may come from anyone: only classes of genlab, of the
    ``trust`` packages (and ``$GENLAB_TRUSTED_PACKAGES``) and those genlab's configs name
    are imported or built (``genlab.trust``)."""
    with only_trusted(trust):
        return _evaluate(ckpt_path, list(overrides or []))


def check_run_classes(cfg: DictConfig, hparams: dict[str, Any]) -> None:
    """Every class the config and the checkpoint's hyper-parameters name is trusted, and
    the model and data targets are a LightningModule and a LightningDataModule class."""
    for source, where in ((OmegaConf.to_container(cfg, resolve=False), ""), (hparams, "")):
        check_names(source, where)
        for key, path in named_paths(source, where):
            if not isinstance(import_target(path), type):  # trusted: importing is safe
                raise ConfigError(f"{key}={path!r} is not a class: a run may only name classes")
    for key, base in (("model", pl.LightningModule), ("data", pl.LightningDataModule)):
        target = cfg[key]._target_
        cls = import_target(target)
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(f"{key}._target_={target!r} is not a {base.__name__} class")


def _evaluate(ckpt_path: str | Path, overrides: list[str]) -> dict[str, Any]:
    from genlab.train import _tidy_console, build, family_config

    ckpt = find_checkpoint(ckpt_path)
    cfg = load_run_config(ckpt, overrides)
    # Only what eval.py builds is read: the run's loggers and other callbacks (its own
    # choice of classes) are neither imported nor checked.
    cfg.pop("logger", None)
    if isinstance(cfg.get("callbacks"), DictConfig):
        cfg.callbacks = {k: v for k, v in cfg.callbacks.items() if k in EVAL_CALLBACKS}
    saved = read_checkpoint(ckpt)  # weights_only loading; one line when unreadable
    if "state_dict" not in saved:
        raise CheckpointError(f"{ckpt} is not a Lightning checkpoint (it has no state_dict)")
    check_run_classes(cfg, saved.get("hyper_parameters") or {})
    check_config(cfg)
    out_dir = ckpt.resolve().parent / f"eval_{ckpt.stem}"
    check_writable(out_dir, "eval output folder")
    _tidy_console()
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build(cfg.data, "data")
    cls = import_target(cfg.model._target_)
    # Hyper-parameters given on the command line win, then the evaluation defaults.
    given = {o.split("=", 1)[0].removeprefix("model."): None for o in overrides}
    model_cfg = OmegaConf.to_container(family_config(cfg.model), resolve=True)
    hparams = {k: model_cfg[k] for k in given if k in model_cfg}
    hp_saved = saved.get("hyper_parameters", {})
    hparams.update({k: v for k, v in EVAL_DEFAULTS.items() if k in hp_saved and k not in hparams})
    try:
        model = cls.load_from_checkpoint(ckpt, map_location="cpu", **hparams)
    except GenlabError:
        raise
    except (RuntimeError, KeyError, TypeError) as e:  # weights that don't fit the class
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{ckpt} does not load as {cls.__name__}: {first}") from None

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    check_accelerator(accelerator)
    devices, strategy, nodes = processes(cfg, overrides)
    # callbacks.sample_scores=null on the command line: the family's own metrics only (no
    # FID / probes); absent from an old run's config, the scores are built from metrics.*.
    skip = any(o.replace(" ", "") in NO_SCORES for o in overrides)
    scores = [] if skip else [scores_callback(cfg)]
    try:
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=nodes,
            precision=cfg.trainer.get("precision", 32),
            # e.g. the exact DDPM bound on the first batches only (per process under DDP)
            limit_test_batches=cfg.trainer.get("limit_test_batches") or 1.0,
            logger=False,
            callbacks=[*scores, TestProgress()],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot build the trainer: {' '.join(str(e).split())}") from None
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not trainer.is_global_zero:  # under DDP rank 0 writes and prints
        return {"metrics": metrics}

    images = []
    grids, views = image_callbacks(cfg)
    x_test, y_test = datamodule.splits["test"]
    drawn = {**grids.draw(model, x_test), **views.draw(model, x_test, y_test)}
    for name, grid in drawn.items():
        save_image(grid, out_dir / f"{name}.png")
        images.append(f"{name}.png")
    record = {
        "checkpoint": str(ckpt.resolve()),
        "model": cfg.model._target_,
        "data": cfg.data._target_,
        "overrides": overrides,
        "processes": trainer.world_size,
        "hparams": {k: model.hparams[k] for k in hparams},
        "metrics": dict(sorted(metrics.items())),
        "images": sorted(images),
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table(metrics, out_dir))
    return record


def processes(cfg: DictConfig, overrides: list[str]) -> tuple[int | str, str, int]:
    """(devices, strategy, num_nodes) of the evaluation: one device unless the command
    line asks for more (``trainer.devices=2``: DDP, the numbers of one process)."""
    given = {o.split("=", 1)[0] for o in overrides}
    devices = cfg.trainer.get("devices", 1) if "trainer.devices" in given else 1
    nodes = int(cfg.trainer.get("num_nodes", 1)) if "trainer.num_nodes" in given else 1
    several = (
        nodes > 1
        or devices == -1
        or str(devices) == "auto"
        or (isinstance(devices, int) and devices > 1)
    )
    strategy = str(cfg.trainer.get("strategy", "auto")) if "trainer.strategy" in given else "auto"
    if several and strategy == "auto":
        strategy = "ddp"  # a process per device; eval.py relaunches itself for each
    return devices, strategy, nodes


def table(metrics: dict[str, float], out_dir: Path) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    for k, v in sorted(metrics.items()):
        lines.append(f"{k:<{width}}  {v:.6g}" if math.isfinite(v) else f"{k:<{width}}  {v}")
    lines.append(f"written to {out_dir}")
    return "\n".join(lines)


USAGE = (
    "usage: python eval.py ckpt_path=<run>/checkpoints/<name>.ckpt (or <run>) [key=value ...]"
    " [trust=<package>,...]"
)


def main(argv: list[str] | None = None) -> None:
    """``python eval.py ckpt_path=<ckpt> [key=value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    if args in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    ckpt = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not ckpt:
        print(f"genlab: error: no ckpt_path=...; {USAGE}", file=sys.stderr)
        sys.exit(2)
    trust = [p for a in args if a.startswith("trust=") for p in a[6:].strip("[]").split(",")]
    rest = [a for a in args if not a.startswith(("ckpt_path=", "trust="))]
    try:
        evaluate(ckpt[-1], rest, trust=[p.strip() for p in trust if p.strip()])
    except GenlabError as e:
        print(f"genlab: {e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("genlab: interrupted: Ctrl-C stopped the evaluation", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # a folder that became unwritable, a full disk
        print(f"genlab: error: {e.strerror or e}: {getattr(e, 'filename', '')}", file=sys.stderr)
        sys.exit(2)
