"""Callbacks: image grids for every logger that takes images, and a divergence guard."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from genlab.errors import DivergenceError

log = logging.getLogger(__name__)


def log_image(trainer: pl.Trainer, key: str, grid: Tensor) -> None:
    """Send a (3, H, W) [0, 1] grid to each logger that takes images."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid.cpu()], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid.cpu(), trainer.global_step)


def plane_grid(lim: float, res: int, device: torch.device | str = "cpu") -> Tensor:
    """Cell centres of a res x res grid over [-lim, lim]^2, row-major with y first:
    (res * res, 2) points (x, y)."""
    c = (torch.arange(res, device=device) + 0.5) / res * 2 * lim - lim
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


_COLORS = torch.tensor(  # a perceptual dark-to-bright ramp (approximately 'magma')
    [
        [0.0, 0.0, 0.02],
        [0.32, 0.07, 0.48],
        [0.72, 0.21, 0.47],
        [0.99, 0.53, 0.38],
        [0.99, 0.99, 0.75],
    ]
)


def heat_map(values: Tensor) -> Tensor:
    """(H, W) values (row 0 = lowest y) -> a (3, H, W) [0, 1] colour image, y pointing up."""
    v = values.float().cpu().flip(0)
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12) * (len(_COLORS) - 1)
    i = v.floor().long().clamp(max=len(_COLORS) - 2)
    w = (v - i).unsqueeze(-1)
    return ((1 - w) * _COLORS[i] + w * _COLORS[i + 1]).permute(2, 0, 1)


def save_and_log(
    trainer: pl.Trainer, key: str, grid: Tensor, dirpath: str | None, tag: str | None = None
) -> Path:
    """Write ``<dirpath or run>/images/<key>_<tag or epoch<E>>.png`` and send it to the
    loggers."""
    folder = Path(dirpath or Path(trainer.default_root_dir) / "images")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}_{tag or f'epoch{trainer.current_epoch:04d}'}.png"
    save_image(grid, path)
    log_image(trainer, f"images/{key}", grid)
    return path


def is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """True every ``every_n_epochs`` epochs and after the last one."""
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
    return epoch % max(every_n_epochs, 1) == 0 or last


class ImageGrids(pl.Callback):
    """Sample and reconstruction grids after validation, every ``every_n_epochs`` epochs.

    2-D data (``data=toy2d``) get a density heat map and a sample histogram instead.

    Uses the model's ``sample(n, generator)``, ``reconstruct(x)``, ``preprocess`` and
    ``to_image`` where it has them. Grids go to ``<run>/images/<kind>_epoch<E>.png`` and
    to W&B / TensorBoard. Samples use fixed noise, so grids are comparable across epochs.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_samples: int = 64,
        n_reconstructions: int = 32,
        dirpath: str | None = None,
        seed: int = 0,
        min_size: int = 32,
        plane_resolution: int = 200,
        n_plane_samples: int = 20000,
    ) -> None:
        self.min_size = min_size
        self.plane_resolution = plane_resolution
        self.n_plane_samples = n_plane_samples
        self.every_n_epochs = every_n_epochs
        self.n_samples = n_samples
        self.n_reconstructions = n_reconstructions
        self.dirpath = dirpath
        self.seed = seed
        self.saved: list[Path] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not is_due(trainer, self.every_n_epochs):
            return
        shape = tuple(getattr(pl_module, "data_shape", ()))
        if len(shape) == 3:
            images = self.grids(trainer, pl_module)
        elif shape == (2,):
            images = self.plane(trainer, pl_module)
        else:
            return
        for key, grid in images.items():
            self._emit(trainer, key, grid)

    @torch.no_grad()
    def grids(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        def to_image(x: Tensor) -> Tensor:
            return _upscaled(pl_module, x, self.min_size)

        out: dict[str, Tensor] = {}
        if hasattr(pl_module, "sample") and self.n_samples > 0:
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            s = to_image(pl_module.sample(self.n_samples, generator=g))
            out["samples"] = make_grid(s, nrow=int(math.ceil(math.sqrt(self.n_samples))))
        if hasattr(pl_module, "sample_conditional") and self.n_samples > 0:
            # One row per class, 10 samples each (fixed noise).
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            labels = torch.arange(pl_module.hparams.num_classes, device=pl_module.device)
            s = to_image(pl_module.sample_conditional(labels.repeat_interleave(10), generator=g))
            out["classes"] = make_grid(s, nrow=10)
        if hasattr(pl_module, "reconstruct") and self.n_reconstructions > 0:
            x_raw = next(iter(trainer.val_dataloaders))[0][: self.n_reconstructions]
            x = pl_module.preprocess(x_raw, torch.Generator(x_raw.device).manual_seed(self.seed))
            r = pl_module.reconstruct(x)
            # Rows of 8: originals, then their reconstructions, alternating.
            n = x.shape[0] - x.shape[0] % 8 or x.shape[0]
            pairs = torch.stack([to_image(x[:n]), to_image(r[:n])])  # (2, n, C, H', W')
            rows = pairs.view(2, -1, min(8, n), *pairs.shape[2:]).transpose(0, 1).flatten(0, 2)
            out["reconstructions"] = make_grid(rows, nrow=min(8, n))
        return out

    @torch.no_grad()
    def plane(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """2-D data: the model's density exp(log p) on a grid (``density``) and a
        histogram of its samples (``samples``) over the same square, as heat maps."""
        x_val = next(iter(trainer.val_dataloaders))[0].float()
        lim = float(x_val.abs().max()) * 1.15
        res = self.plane_resolution
        out: dict[str, Tensor] = {}
        if hasattr(pl_module, "log_prob"):
            log_p = pl_module.log_prob(plane_grid(lim, res, pl_module.device))
            out["density"] = heat_map(log_p.exp().view(res, res))
        if hasattr(pl_module, "sample"):
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            s = pl_module.sample(self.n_plane_samples, generator=g).float()
            ij = ((s + lim) / (2 * lim) * res).floor().long()
            ok = ((ij >= 0) & (ij < res)).all(1)
            counts = torch.bincount(ij[ok, 1] * res + ij[ok, 0], minlength=res * res)
            out["samples"] = heat_map(counts.view(res, res).float().log1p())
        return out

    def _emit(self, trainer: pl.Trainer, key: str, grid: Tensor) -> None:
        self.saved.append(save_and_log(trainer, key, grid, self.dirpath))


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar showing ``keys`` of the logged metrics, read back
    every ``metrics_every_n_steps`` training steps.

    Metrics logged with ``prog_bar=True`` are converted to floats by Lightning after
    every step (a host sync on a GPU); this bar reads the ones it shows from the
    callback metrics instead, and only now and then. Hides ``v_num``.
    """

    def __init__(
        self, keys: tuple[str, ...] = ("train/loss",), metrics_every_n_steps: int = 25, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.keys = tuple(keys)
        self.metrics_every_n_steps = max(1, metrics_every_n_steps)
        self._cached: dict | None = None
        self._cached_step = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        step = trainer.global_step
        fresh = self._cached is None or not trainer.training
        if fresh or step - self._cached_step >= self.metrics_every_n_steps:
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)
            logged = trainer.callback_metrics
            metrics.update({k: float(logged[k]) for k in self.keys if k in logged})
            self._cached, self._cached_step = metrics, step
        return self._cached


class DivergenceGuard(pl.Callback):
    """Stop with a clear error when the training loss becomes NaN or infinite.

    On the CPU every step is checked (reading a CPU scalar costs nothing). On a GPU the
    losses are summed on the device (NaN/inf propagate through the sum) and read back
    every ``check_every_n_steps`` steps, so there is no host sync per step. Either way
    the check also runs before validation and at epoch end, i.e. before ModelCheckpoint
    (always ordered last) can save, so checkpoints on disk stay good.
    """

    def __init__(self, check_every_n_steps: int = 20, every_step: bool | None = None) -> None:
        self.check_every_n_steps = max(1, check_every_n_steps)
        self.every_step = every_step  # None: every step on the CPU, batched on accelerators
        self._acc: Tensor | None = None  # sum of the losses since the last read-back
        self._since = 0  # first step covered by _acc
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this batch computes (before it increments)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float().sum()
        if self.every_step or (self.every_step is None and loss.device.type == "cpu"):
            if not math.isfinite(loss.item()):
                self._fail(trainer, "train/loss", f"at step {self._step}")
            return
        if self._acc is None:
            self._acc, self._since = loss.clone(), self._step
        else:
            self._acc.add_(loss)
        if (self._step + 1) % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is not None and not torch.isfinite(value).all():
            self._fail(trainer, "val/loss", f"in validation after step {trainer.global_step}")

    def _check(self, trainer: pl.Trainer) -> None:
        if self._acc is not None:
            bad = not math.isfinite(self._acc.item())
            self._acc = None
            if bad:
                self._fail(trainer, "train/loss", f"between steps {self._since} and {self._step}")

    def _fail(self, trainer: pl.Trainer, what: str, when: str) -> None:
        ckpt = trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "")
        where = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
        raise DivergenceError(
            f"{what} became NaN/inf {when} (epoch {trainer.current_epoch}); training "
            f"stopped, {where}. {_divergence_hint(trainer.lightning_module)}"
        )


def _divergence_hint(module: pl.LightningModule | None) -> str:
    """What to lower: manual-optimisation models (GANs) have per-player learning rates
    and no trainer-side gradient clipping."""
    hp = getattr(module, "hparams", {})
    if "lr_d" in hp:
        return "Try lower model.lr_g / model.lr_d"
    return "Try a lower model.lr or trainer.gradient_clip_val=1.0"


class SplitCurve(pl.Callback):
    """Evaluates another split (default: test) after validation every ``every_n_epochs``
    epochs and logs ``curve/<split>_<metric>``: learning curves on the test set, as papers
    plot them. Needs the model's ``batch_metrics(batch, batch_idx) -> {name: mean}``.

    Costs one extra pass over the split per evaluation; off in the default callbacks.
    """

    def __init__(self, split: str = "test", every_n_epochs: int = 1) -> None:
        self.split = split
        self.every_n_epochs = max(1, every_n_epochs)
        self.history: list[dict[str, float]] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(pl_module, "batch_metrics"):
            return
        loader = getattr(dm, f"{self.split}_dataloader")()
        sums: dict[str, Tensor] = {}
        n = 0
        for i, batch in enumerate(loader):
            batch = [t.to(pl_module.device) for t in batch]
            b = batch[0].shape[0]
            for k, v in pl_module.batch_metrics(batch, i).items():
                sums[k] = sums.get(k, 0) + v * b  # on the device: one read-back at the end
            n += b
        values = {f"curve/{self.split}_{k}": v / n for k, v in sums.items()}
        for k, v in values.items():
            pl_module.log(k, v, sync_dist=True)
        self.history.append(
            {"epoch": trainer.current_epoch, **{k: float(v) for k, v in values.items()}}
        )


class EpochSeeder(pl.Callback):
    """Reseeds Python, NumPy and torch (CPU and CUDA) at the start of every training
    epoch from (seed, epoch, global rank). Each epoch's randomness (noise, dropout, the
    GAN's z) then depends only on those three, so a run resumed from an epoch-end
    checkpoint repeats the uninterrupted run exactly, whatever ran before (sanity checks,
    evaluation, a different process); ranks draw different noise."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import random

        import numpy as np

        s = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % 2**32
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device


class EpochTimer(pl.Callback):
    """Logs ``time/epoch_s``: wall seconds of each training epoch (validation excluded)
    and ``time/val_s`` for each validation pass, so runs report their cost per epoch."""

    def __init__(self) -> None:
        self._t0 = self._v0 = self._val_time = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._val_time = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            seconds = time.perf_counter() - self._v0
            self._val_time += seconds
            pl_module.log("time/val_s", seconds, sync_dist=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation inside the epoch (val_check_interval < 1) is not training time.
        seconds = time.perf_counter() - self._t0 - self._val_time
        pl_module.log("time/epoch_s", seconds, sync_dist=True)  # mean over ranks


class SampleScores(pl.Callback):
    """FID / KID of samples, conditional accuracy and latent probes (``metrics.*``).

    - ``val/fid``, ``val/kid``: ``n_val`` samples against ``n_val`` validation images,
      every ``every_n_epochs`` epochs; ``test/fid``, ``test/kid`` with ``n_test`` at test.
    - ``{split}/cond_acc``: models with ``sample_conditional(labels, generator)``.
    - ``test/linear_probe_acc``, ``test/knn_acc``: models with ``encode`` (frozen latents
      of ``n_probe_train`` training images, scored on the test split).

    Features come from genlab's per-data-set network (trained and cached on first use) or,
    with ``features="inception"``, torchmetrics' Inception. The network lives here, frozen:
    never in the optimiser or the model's checkpoint. Real features are cached per data
    set, split, size and feature network. Under DDP the ranks share the FID / KID work
    (features gathered across ranks); cond_acc and the probes run on rank 0.
    """

    def __init__(
        self,
        cache_dir: str = "data/feature_nets",
        features: str = "genlab",
        every_n_epochs: int = 5,
        n_val: int = 1000,
        n_test: int = 10000,
        probes: bool = True,
        n_probe_train: int = 10000,
        kid_subset_size: int = 1000,
        feature_epochs: int = 5,
        seed: int = 0,
    ) -> None:
        from genlab.errors import require_choice

        require_choice("metrics", "features", features, ["genlab", "inception"])
        self.cache_dir = Path(cache_dir)
        self.features = features
        self.every_n_epochs = every_n_epochs
        self.n = {"val": n_val, "test": n_test}
        self.probes = probes
        self.n_probe_train = n_probe_train
        self.kid_subset_size = kid_subset_size
        self.feature_epochs = feature_epochs
        self.seed = seed
        self.net = None  # the FeatureNet (its classifier head gives cond_acc)
        self.metrics = None  # (FID, KID)
        self.tag = ""
        self.results: dict[str, float] = {}

    def _applies(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        dm = trainer.datamodule
        return (
            dm is not None
            and len(getattr(pl_module, "data_shape", ())) == 3
            and hasattr(pl_module, "sample")
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._applies(trainer, pl_module):
            self._setup(trainer, pl_module)  # the feature net is ready before any loop runs

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metrics is not None:
            self.metrics = [m.to(pl_module.device) for m in self.metrics]
            self.net.to(pl_module.device)
            return
        from genlab.metrics.features import data_key, get_feature_net
        from genlab.metrics.scores import inception_extractor, make_fid_kid

        self.net, record = get_feature_net(trainer.datamodule, self.cache_dir, self.feature_epochs)
        if self.features == "inception":
            extractor, self.tag = inception_extractor(), "inception"
        else:
            extractor, self.tag = self.net, f"genlab-{record['digest']}"
        self.key = data_key(trainer.datamodule)
        self.metrics = [
            m.to(pl_module.device) for m in make_fid_kid(extractor, self.kid_subset_size)
        ]
        self.net.to(pl_module.device)

    def _real(self, trainer: pl.Trainer, split: str, n: int) -> torch.Tensor:
        from genlab.metrics.scores import real_features

        x = trainer.datamodule.splits[split][0][:n]
        dm = trainer.datamodule
        name = f"{self.key}_{self.tag}_{split}_seed{getattr(dm, 'split_seed', 0)}_n{x.shape[0]}.pt"
        fid = self.metrics[0]
        return real_features(fid.inception, x.to(fid.device), self.cache_dir / "stats" / name)

    @torch.no_grad()
    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict:
        """Every score that applies to this model on ``split``: {"<split>/<name>": value}."""
        from genlab.metrics.scores import (
            classify,
            encode_all,
            fid_kid_of,
            generate,
            knn_acc,
            linear_probe_acc,
            set_real,
        )

        self._setup(trainer, pl_module)
        dm = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        out: dict[str, float] = {}
        real = self._real(trainer, split, self.n[split])
        n = real.shape[0]
        # Under DDP each rank holds every world-th real feature and draws its share of the
        # samples (its own noise); torchmetrics gathers the states in compute(), so the
        # scores are of all n real and n generated images, and every rank gets them.
        rank, world = trainer.global_rank, trainer.world_size
        set_real(*self.metrics, real[rank::world])
        fake = generate(pl_module, len(range(rank, n, world)), seed=self.seed + 7919 * rank)
        s = fid_kid_of(*self.metrics, fake, n_total=n)
        out[f"{split}/fid"], out[f"{split}/kid"] = s["fid"], s["kid"]
        if not trainer.is_global_zero:  # the rest works on one process, without collectives
            pl_module.train(was_training)
            return out
        if hasattr(pl_module, "sample_conditional"):
            labels = torch.arange(n, device=pl_module.device) % dm.num_classes
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            imgs = pl_module.sample_conditional(labels, generator=g)
            pred = classify(self.net, imgs.float().clamp(0, 1))
            out[f"{split}/cond_acc"] = float((pred == labels).float().mean())
        if split == "test" and self.probes and hasattr(pl_module, "encode"):
            x_tr, y_tr = (t[: self.n_probe_train].to(pl_module.device) for t in dm.splits["train"])
            x_te, y_te = (t.to(pl_module.device) for t in dm.splits["test"])
            z_tr, z_te = encode_all(pl_module, x_tr), encode_all(pl_module, x_te)
            out["test/linear_probe_acc"] = linear_probe_acc(z_tr, y_tr, z_te, y_te)
            out["test/knn_acc"] = knn_acc(z_tr, y_tr, z_te, y_te)
        pl_module.train(was_training)
        return out

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self._applies(trainer, pl_module):
            return
        if self.every_n_epochs <= 0 or not is_due(trainer, self.every_n_epochs):
            return
        self._log(pl_module, self.scores(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._applies(trainer, pl_module):
            self._log(pl_module, self.scores(trainer, pl_module, "test"))

    def _log(self, pl_module: pl.LightningModule, values: dict[str, float]) -> None:
        # FID / KID are equal on every rank (callbacks may monitor them on each); the
        # one-process scores are logged by rank 0.
        self.results.update(values)
        for k, v in values.items():
            pl_module.log(k, v, rank_zero_only=not k.endswith(("/fid", "/kid")))


# ---- latent-space views ---------------------------------------------------------------
def code_of(model: pl.LightningModule, x: Tensor) -> Tensor:
    """The deterministic code of x: (B, d); a VAE's posterior mean, an AE's code, a
    flow's h, a categorical VAE's posterior probabilities."""
    z = model.encode(x)
    return (z[0] if isinstance(z, tuple) else z).flatten(1)


def latent_to_data(model: pl.LightningModule, z: Tensor) -> Tensor:
    """Codes (B, d) -> data space: a flow's inverse, a decoder's mean, a generator."""
    if hasattr(model, "flow"):
        return model.flow.inverse(z)[0].view(-1, *model.data_shape)
    out = model.decode(z)
    return model.mean(out) if hasattr(model, "mean") else out  # GANs decode to data


def _upscaled(model: pl.LightningModule, x: Tensor, min_size: int) -> Tensor:
    """Model space -> [0, 1] images; tiny ones (8x8 digits) are upscaled, nearest
    neighbour, to at least ``min_size`` pixels a side to stay legible."""
    x = getattr(model, "to_image", lambda t: t.clamp(0, 1))(x).float()
    scale = math.ceil(min_size / x.shape[-1])
    return torch.nn.functional.interpolate(x, scale_factor=scale) if scale > 1 else x


@torch.no_grad()
def interpolation_grid(
    model: pl.LightningModule, x: Tensor, n_steps: int = 8, min_size: int = 0
) -> Tensor:
    """Linear paths in latent space between pairs (x[i], x[P + i]) of 2P model-space
    images: one row per pair, the two originals at its ends -> (3, H', W') grid."""
    p = x.shape[0] // 2
    z = code_of(model, x[: 2 * p])
    t = torch.linspace(0, 1, n_steps, device=z.device).view(1, n_steps, 1)
    path = (1 - t) * z[:p, None] + t * z[p : 2 * p, None]  # (P, n_steps, d)
    imgs = latent_to_data(model, path.flatten(0, 1)).view(p, n_steps, *x.shape[1:])
    rows = torch.cat([x[:p, None], imgs, x[p : 2 * p, None]], 1)  # (P, n_steps + 2, ...)
    return make_grid(_upscaled(model, rows.flatten(0, 1), min_size), nrow=n_steps + 2)


def prior_quantiles(model: pl.LightningModule, u: Tensor) -> Tensor:
    """Per-dimension quantiles of the model's prior at levels u (n,) -> (n, d): the
    model's own ``prior_quantiles`` where it has one, else the standard normal's."""
    if hasattr(model, "prior_quantiles"):
        return model.prior_quantiles(u)
    q = torch.distributions.Normal(0.0, 1.0).icdf(u)
    return q[:, None].expand(-1, model.hparams.latent_dim)


@torch.no_grad()
def manifold_grid(model: pl.LightningModule, size: int = 20, min_size: int = 0) -> Tensor:
    """A 2-D latent's decoded lattice: z = (Q1(u_j), Q2(u_i)) over the prior's quantiles
    u = (0.5, ..., size - 0.5) / size; z1 grows to the right, z2 upwards."""
    u = (torch.arange(size, device=model.device, dtype=torch.float32) + 0.5) / size
    q = prior_quantiles(model, u)  # (size, 2)
    zz2, zz1 = torch.meshgrid(q[:, 1].flip(0), q[:, 0], indexing="ij")  # top row: high z2
    z = torch.stack([zz1.flatten(), zz2.flatten()], 1)
    return make_grid(_upscaled(model, latent_to_data(model, z), min_size), nrow=size, padding=0)


# Ten distinguishable class colours (Tableau 10), as 0-255 RGB.
_CLASS_COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def scatter_image(z: Tensor, labels: Tensor, size: int = 512, dot: int = 2) -> Tensor:
    """Points z (n, 2) coloured by integer labels, with a class legend: (3, H, W) in
    [0, 1]. Axes span the 0.5-99.5% quantiles (plus a margin); grey lines mark 0."""
    from PIL import Image, ImageDraw
    from torchvision.transforms.functional import pil_to_tensor

    z = z.float().cpu()
    lo = torch.quantile(z, 0.005, dim=0)
    hi = torch.quantile(z, 0.995, dim=0)
    pad = (hi - lo).clamp_min(1e-6) * 0.08
    lo, hi = lo - pad, hi + pad
    pix = ((z - lo) / (hi - lo) * (size - 1)).round().long()  # (n, 2), y pointing up
    legend = 24
    img = Image.new("RGB", (size, size + legend), "white")
    draw = ImageDraw.Draw(img)
    for axis in range(2):  # the z = 0 lines, when in view
        if lo[axis] < 0 < hi[axis]:
            c = int(((0 - lo[axis]) / (hi[axis] - lo[axis]) * (size - 1)).round())
            if axis == 0:  # x = 0: a vertical line
                draw.line([(c, 0), (c, size - 1)], fill=(200, 200, 200))
            else:
                draw.line([(0, size - 1 - c), (size - 1, size - 1 - c)], fill=(200, 200, 200))
    for (px, py), y in zip(pix.tolist(), labels.cpu().tolist(), strict=True):
        if 0 <= px < size and 0 <= py < size:
            color = _CLASS_COLORS[int(y) % len(_CLASS_COLORS)]
            draw.ellipse([px - dot, size - 1 - py - dot, px + dot, size - 1 - py + dot], fill=color)
    classes = sorted({int(y) for y in labels.tolist()})
    step = size // max(len(classes), 1)
    for i, y in enumerate(classes):  # legend: a swatch and the class index
        x0 = i * step + 4
        draw.rectangle([x0, size + 6, x0 + 12, size + 18], fill=_CLASS_COLORS[y % 10])
        draw.text((x0 + 16, size + 6), str(y), fill="black")
    return pil_to_tensor(img).float() / 255.0


class LatentTools(pl.Callback):
    """Latent-space views for models with ``encode`` and ``decode`` (or a flow's inverse),
    every ``every_n_epochs`` epochs, after the last one and after testing:

    - ``latent_interpolations``: paths between pairs of test images (originals at the ends);
    - for a 2-D latent, ``latent_manifold`` (decoded lattice over the prior's quantiles)
      and ``latent_scatter`` (codes of ``n_scatter`` test images coloured by class).

    PNGs go to ``<run>/images/<view>_epoch<E>.png`` (``<view>_test.png`` for the tested
    checkpoint), and to W&B / TensorBoard like ImageGrids'.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        n_pairs: int = 8,
        n_steps: int = 8,
        manifold_size: int = 20,
        n_scatter: int = 2000,
        scatter_size: int = 512,
        min_size: int = 28,
        dirpath: str | None = None,
        seed: int = 0,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.n_pairs = n_pairs
        self.n_steps = n_steps
        self.manifold_size = manifold_size
        self.n_scatter = n_scatter
        self.scatter_size = scatter_size
        self.min_size = min_size
        self.dirpath = dirpath
        self.seed = seed
        self.saved: list[Path] = []

    @staticmethod
    def applies(trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        has_decoder = hasattr(pl_module, "decode") or hasattr(pl_module, "flow")
        return (
            trainer.is_global_zero
            and trainer.datamodule is not None
            and "test" in getattr(trainer.datamodule, "splits", {})
            and len(getattr(pl_module, "data_shape", ())) == 3
            and hasattr(pl_module, "encode")
            and has_decoder
        )

    @torch.no_grad()
    def views(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        x_raw, y = trainer.datamodule.splits["test"]
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = pl_module.preprocess(x_raw[: self.n_scatter].to(pl_module.device), g)
        out = {}
        if self.n_pairs > 0:
            out["latent_interpolations"] = interpolation_grid(
                pl_module, x[: 2 * self.n_pairs], self.n_steps, self.min_size
            )
        z = torch.cat([code_of(pl_module, b) for b in x.split(1000)])
        if z.shape[1] == 2 and hasattr(pl_module, "decode"):
            out["latent_manifold"] = manifold_grid(pl_module, self.manifold_size, self.min_size)
            out["latent_scatter"] = scatter_image(z, y[: z.shape[0]], self.scatter_size)
        pl_module.train(was_training)
        return out

    def _emit_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag=None) -> None:
        for key, grid in self.views(trainer, pl_module).items():
            self.saved.append(save_and_log(trainer, key, grid, self.dirpath, tag))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.applies(trainer, pl_module):
            return
        if is_due(trainer, self.every_n_epochs):
            self._emit_all(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.applies(trainer, pl_module):
            self._emit_all(trainer, pl_module, tag="test")  # the tested checkpoint
