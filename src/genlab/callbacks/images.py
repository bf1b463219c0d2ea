"""Image callbacks: sample / class / reconstruction grids (and density maps of 2-D data)
and latent-space views, saved as PNGs under ``<run>/images/`` and sent to W&B and
TensorBoard. What they draw comes from :mod:`genlab.callbacks.views`."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor, nn
from torchvision.utils import save_image

import genlab.callbacks.views as views
from genlab.callbacks.training import is_due
from genlab.checks import NonNegativeInt, PositiveInt, Seed, check_args
from genlab.errors import write_failed


def log_image(trainer: pl.Trainer, key: str, grid: Tensor) -> None:
    """Send a (3, H, W) [0, 1] grid to each logger that takes images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid.cpu()], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid.cpu(), trainer.global_step)


def save_and_log(
    trainer: pl.Trainer, key: str, grid: Tensor, dirpath: str | None, tag: str | None = None
) -> Path:
    """Write ``<dirpath or run>/images/<key>_<tag or epoch<E>>.png`` and send it to the
    loggers."""
    folder = Path(dirpath or Path(trainer.default_root_dir) / "images")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}_{tag or f'epoch{trainer.current_epoch:04d}'}.png"
    try:
        save_image(grid, path)
    except OSError as e:
        raise write_failed("image grid", path, e) from None
    log_image(trainer, f"images/{key}", grid)
    return path


class _EvalMode:
    """``with _EvalMode(model):`` evaluation mode inside, the previous mode after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


class ImageGrids(pl.Callback):
    """Sample, class and reconstruction grids after validation, every ``every_n_epochs``
    epochs and after the last one; 2-D data (``data=toy2d``) get a density heat map and
    a sample histogram instead. Samples use fixed noise: grids compare across epochs.

    PNGs: ``<run>/images/<name>_epoch<E>.png``, name one of samples, classes, filters,
    reconstructions, reverse_process, density
    (``filters``: the first-layer weights of Boltzmann machines, one image per unit;
    ``reverse_process``: diffusion / flow-matching samples from noise to image, one row each).
    """

    def __init__(
        self,
        every_n_epochs: PositiveInt = 1,
        n_samples: NonNegativeInt = 64,
        n_reconstructions: NonNegativeInt = 32,
        dirpath: str | None = None,
        seed: Seed = 0,
        min_size: NonNegativeInt = 32,
        plane_resolution: PositiveInt = 200,
        n_plane_samples: PositiveInt = 20000,
    ) -> None:
        check_args(type(self), locals(), "callbacks.image_grids")
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples
        self.n_reconstructions = n_reconstructions
        self.dirpath = dirpath
        self.seed = seed
        self.min_size = min_size
        self.plane_resolution = plane_resolution
        self.n_plane_samples = n_plane_samples

    @torch.no_grad()
    def draw(self, model: nn.Module, x_raw: Tensor) -> dict[str, Tensor]:
        """Every grid that applies to ``model``, given held-out data x_raw (uint8 images
        or 2-D points; reconstructions use the first ``n_reconstructions``)."""
        shape = tuple(getattr(model, "data_shape", ()))
        with _EvalMode(model):
            if len(shape) == 3:
                return self._images(model, x_raw)
            if shape == (2,):
                return self._plane(model, x_raw)
        return {}

    def _images(self, model: nn.Module, x_raw: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if hasattr(model, "sample") and self.n_samples > 0:
            out["samples"] = views.sample_grid(model, self.n_samples, self.seed, self.min_size)
        if hasattr(model, "sample_conditional") and self.n_samples > 0:
            out["classes"] = views.class_grid(model, 10, self.seed, self.min_size)
        if hasattr(model, "trajectory") and self.n_samples > 0:
            out["reverse_process"] = views.trajectory_grid(model, 8, 10, self.seed, self.min_size)
        if hasattr(model, "filters") and self.n_samples > 0:
            out["filters"] = views.filter_grid(model, self.n_samples, self.min_size)
        if hasattr(model, "reconstruct") and self.n_reconstructions > 0:
            x_raw = x_raw[: self.n_reconstructions].to(model.device)
            x = model.preprocess(x_raw, torch.Generator(x_raw.device).manual_seed(self.seed))
            out["reconstructions"] = views.reconstruction_grid(model, x, self.min_size)
        return out

    def _plane(self, model: nn.Module, x_raw: Tensor) -> dict[str, Tensor]:
        lim = float(x_raw.float().abs().max()) * 1.15
        res = self.plane_resolution
        out: dict[str, Tensor] = {}
        if hasattr(model, "log_prob"):
            out["density"] = views.density_map(model, lim, res)
        if hasattr(model, "sample"):
            out["samples"] = views.sample_histogram(
                model, lim, res, self.n_plane_samples, self.seed
            )
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if is_due(trainer, self.every_n_epochs):
            x_raw = next(iter(trainer.val_dataloaders))[0]
            for key, grid in self.draw(pl_module, x_raw).items():
                save_and_log(trainer, key, grid, self.dirpath)


class LatentTools(pl.Callback):
    """Latent-space views for models with ``encode`` and ``decode`` (or a flow's
    inverse), every ``every_n_epochs`` epochs, after the last one and after testing:

    - ``latent_interpolations``: paths between pairs of test images (originals at the ends);
    - for a 2-D latent, ``latent_manifold`` (decoded lattice over the prior's quantiles)
      and ``latent_scatter`` (codes of ``n_scatter`` test images coloured by class).

    PNGs: ``<run>/images/<view>_epoch<E>.png``, ``<view>_test.png`` for the tested checkpoint.
    """

    def __init__(
        self,
        every_n_epochs: PositiveInt = 5,
        n_pairs: NonNegativeInt = 8,
        n_steps: PositiveInt = 8,
        manifold_size: PositiveInt = 20,
        n_scatter: PositiveInt = 2000,
        scatter_size: PositiveInt = 512,
        min_size: NonNegativeInt = 28,
        dirpath: str | None = None,
        seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "callbacks.latent_tools")
        self.every_n_epochs = every_n_epochs
        self.n_pairs = n_pairs
        self.n_steps = n_steps
        self.manifold_size = manifold_size
        self.n_scatter = n_scatter
        self.scatter_size = scatter_size
        self.min_size = min_size
        self.dirpath = dirpath
        self.seed = seed

    @staticmethod
    def applies(model: nn.Module) -> bool:
        return len(getattr(model, "data_shape", ())) == 3 and views.has_latent_views(model)

    @torch.no_grad()
    def draw(self, model: nn.Module, x_raw: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The views of ``model`` on test images x_raw (uint8) with labels y."""
        if not self.applies(model):
            return {}
        out = {}
        with _EvalMode(model):
            g = torch.Generator(device=model.device).manual_seed(self.seed)
            x = model.preprocess(x_raw[: self.n_scatter].to(model.device), g)
            if self.n_pairs > 0:
                out["latent_interpolations"] = views.interpolation_grid(
                    model, x[: 2 * self.n_pairs], self.n_steps, self.min_size
                )
            z = torch.cat([views.code_of(model, b) for b in x.split(1000)])
            if z.shape[1] == 2 and hasattr(model, "decode"):
                out["latent_manifold"] = views.manifold_grid(
                    model, self.manifold_size, self.min_size
                )
                out["latent_scatter"] = views.scatter_image(z, y[: z.shape[0]], self.scatter_size)
        return out

    def _emit(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag=None) -> None:
        dm = trainer.datamodule
        if not trainer.is_global_zero or "test" not in getattr(dm, "splits", {}):
            return
        x_raw, y = dm.splits["test"]
        for key, grid in self.draw(pl_module, x_raw, y).items():
            save_and_log(trainer, key, grid, self.dirpath, tag)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and is_due(trainer, self.every_n_epochs):
            self._emit(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._emit(trainer, pl_module, tag="test")  # the tested checkpoint
