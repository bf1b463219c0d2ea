"""Restricted Boltzmann machine trained with contrastive divergence; docs/models/rbm.md.

Bernoulli visible and hidden units; F(v) = -b.v - sum_j softplus(c_j + (v'W)_j) and
p(v) = exp(-F(v)) / Z. The log-likelihood gradient is -dF(v)/dtheta + E_model[dF/dtheta];
CD-k estimates the model term with k Gibbs sweeps started at the data, persistent CD
(Tieleman 2008) with fantasy chains that carry over between updates (a buffer: saved in
checkpoints, resumed). The surrogate minimised, ``train/loss`` = mean F(data) - mean
F(negatives), has exactly that gradient; it is not a likelihood.

Held-out numbers: ``log Z`` by annealed importance sampling (a short schedule before each
validation, the full schedule of Salakhutdinov & Murray 2008 before testing), then
``loglik`` = -F(v) - log Z in nats per image, with the AIS spread as ``log_z_lo/hi``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from genlab.checks import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import binarize, eval_generator, to_unit, unit_image
from genlab.errors import require_images
from genlab.models.common import GenlabModule
from genlab.nn.rbm import (
    AISEstimate,
    RBMLayer,
    ais_log_partition,
    base_rate_bias,
    raise_log_likelihood,
    scaled_betas,
)

log = logging.getLogger(__name__)


class BinaryImages:
    """Data-space methods of the Boltzmann-machine families (RBM, DBN): uint8 images ->
    binary {0, 1} pixels, drawn afresh for every batch (``binarize=True``: dynamic
    binarisation, the VAEs' default; fixed seeded draws for validation and test), or
    grey values in [0, 1] used as probabilities (``binarize=False``)."""

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.dtype != torch.uint8:
            return x.float().flatten(1)
        x = binarize(x, generator) if self.hparams.binarize else to_unit(x)
        return x.flatten(1)

    def to_image(self, x: Tensor) -> Tensor:
        return unit_image(x.view(-1, *self.data_shape))

    def init_from_data(self, layer: RBMLayer) -> None:
        """Visible biases log(p / (1 - p)) from the training pixels' means (Hinton's
        practical guide), and the same means for the AIS base-rate model."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or "train" not in getattr(dm, "splits", {}):
            return
        x = dm.splits["train"][0]
        p = sum(to_unit(b).flatten(1).sum(0) for b in x.split(4096)) / x.shape[0]
        p = p.to(self.device)
        self.pixel_mean.copy_(p)
        with torch.no_grad():
            layer.b.copy_(base_rate_bias(p, count=x.shape[0]))


def rbm_sgd(layer: RBMLayer, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum for one RBM, weight decay on W only (Hinton's practical guide)."""
    groups = [
        {"params": [layer.W], "weight_decay": weight_decay},
        {"params": [layer.b, layer.c], "weight_decay": 0.0},  # no decay on biases
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def set_momentum(optimizer: torch.optim.Optimizer, epochs_in: int, hp) -> None:
    """``initial_momentum`` for the first ``momentum_epochs`` epochs of a layer's
    training, ``momentum`` after (the practical guide's schedule)."""
    m = hp.initial_momentum if epochs_in < hp.momentum_epochs else hp.momentum
    for group in optimizer.param_groups:
        group["momentum"] = m


def filter_images(W: Tensor, data_shape: Sequence[int], n: int) -> Tensor:
    """The first n columns of W (V, H) as images (n, C, H, W), each scaled to [0, 1]."""
    w = W[:, :n].T.detach()
    lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
    return ((w - lo) / (hi - lo).clamp_min(1e-8)).view(-1, *data_shape)


class RBM(BinaryImages, GenlabModule):
    """Bernoulli-Bernoulli RBM with CD-k or persistent CD, SGD with momentum and weight
    decay on the weights (Hinton 2010), and AIS log-likelihoods."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        hidden_units: PositiveInt = 500,
        cd_steps: PositiveInt = 1,
        cd_ramp_epochs: NonNegativeInt = 0,
        persistent: bool = False,
        n_chains: PositiveInt = 100,
        binarize: bool = True,
        lr: PositiveFloat = 0.01,
        momentum: UnitInterval = 0.9,
        initial_momentum: UnitInterval = 0.5,
        momentum_epochs: NonNegativeInt = 5,
        weight_decay: NonNegativeFloat = 2e-4,
        lr_decay: bool = False,
        init_std: PositiveFloat = 0.01,
        sample_steps: PositiveInt = 200,
        ais_runs: PositiveInt = 100,
        ais_betas: PositiveInt = 14500,
        val_ais_runs: NonNegativeInt = 16,
        val_ais_betas: PositiveInt = 4000,
        ais_seed: Seed = 0,
        gap_examples: PositiveInt = 1000,
        raise_images: NonNegativeInt = 0,
        raise_chains: PositiveInt = 20,
        raise_betas: PositiveInt = 1000,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        require_images("model=rbm", self.data_shape)
        V = math.prod(self.data_shape)
        self.rbm = RBMLayer(V, hidden_units, init_std=init_std)
        # Persistent fantasy particles (PCD): checkpointed with the weights, so a resumed
        # run continues the same chains. Start as uniform noise.
        self.register_buffer("chains", torch.bernoulli(torch.full((n_chains, V), 0.5)))
        # Pixel means of the training data: the AIS base-rate model (set at fit start).
        self.register_buffer("pixel_mean", torch.full((V,), 0.5))
        self.log_z: dict[str, Tensor] = {}  # split -> AIS log Z used by batch_metrics
        self.ais_spread: dict[str, tuple[float, float]] = {}
        self.ais_size: dict[str, tuple[int, int]] = {}  # (runs, temperatures) used

    # ---- sampling and views ---------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``sample_steps`` Gibbs sweeps from uniform noise; returns p(v = 1 | h) of the
        last sweep (n, *data_shape), the usual way of showing RBM samples."""
        v = torch.bernoulli(
            torch.full((n, self.rbm.visible), 0.5, device=self.device), generator=generator
        )
        v = self.rbm.gibbs(v, self.hparams.sample_steps - 1, generator)
        h = self.rbm.sample_hidden(v, generator=generator)
        return torch.sigmoid(self.rbm.visible_logits(h)).view(-1, *self.data_shape)

    def encode(self, x: Tensor) -> Tensor:
        """E[h | v]: (B, V) or images -> (B, hidden), the features probes use."""
        return self.rbm.hidden_mean(x.flatten(1))

    def decode(self, h: Tensor) -> Tensor:
        """p(v = 1 | h) as images: (B, hidden) -> (B, *data_shape)."""
        return torch.sigmoid(self.rbm.visible_logits(h)).view(-1, *self.data_shape)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """p(v = 1 | E[h | x]): one deterministic up-down pass."""
        return self.decode(self.encode(x))

    def filters(self, n: int = 100) -> Tensor:
        """The first n hidden units' weights as images (n, C, H, W) in [0, 1]."""
        return filter_images(self.rbm.W, self.data_shape, min(n, self.rbm.hidden))

    def free_energy(self, x: Tensor) -> Tensor:
        return self.rbm.free_energy(x.flatten(1))

    # ---- training ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.trainer.global_step == 0:  # not when resuming
            self.init_from_data(self.rbm)

    def on_train_epoch_start(self) -> None:
        for opt in self.trainer.optimizers:
            set_momentum(opt, self.current_epoch, self.hparams)

    def cd_steps_at(self, epoch: int | None = None) -> int:
        """Gibbs sweeps per update at ``epoch`` (default: the current one): ``cd_steps``,
        or with ``cd_ramp_epochs`` > 0 a linear rise from 1 that reaches ``cd_steps`` at
        that epoch (Salakhutdinov & Murray 2008 raised CD's T gradually from 1 to 25)."""
        hp = self.hparams
        ramp = hp.cd_ramp_epochs
        e = self.current_epoch if epoch is None else epoch
        return hp.cd_steps if ramp == 0 else 1 + round((hp.cd_steps - 1) * min(e / ramp, 1.0))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        hp = self.hparams
        v = self.preprocess(batch[0])
        start = self.chains if hp.persistent else None
        loss, neg, terms = self.rbm.contrastive_divergence(v, self.cd_steps_at(), start)
        if hp.persistent:
            self.chains.copy_(neg)
        self.log_train(terms)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        opt = rbm_sgd(self.rbm, hp.lr, hp.initial_momentum, hp.weight_decay)
        if not hp.lr_decay:
            return opt
        # Linear decay to 0 at the last epoch (Tieleman 2008): PCD's chains mix only
        # while the weights change slowly, so the final epochs need small steps.
        total = max(int(self.trainer.max_epochs or 1), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(1.0 - e / total, 0.0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ---- evaluation -------------------------------------------------------------------
    def estimate_log_z(self, runs: int, betas: int) -> AISEstimate:
        """AIS log Z with ``runs`` chains over ``betas`` temperatures (seeded)."""
        g = torch.Generator(device=self.device).manual_seed(self.hparams.ais_seed)
        base = base_rate_bias(self.pixel_mean)
        return ais_log_partition(self.rbm, base, scaled_betas(betas), runs, g)

    def _prepare(self, split: str, runs: int, betas: int) -> None:
        if runs == 0:
            self.log_z.pop(split, None)
            return
        if getattr(self._trainer, "fast_dev_run", False):
            runs, betas = min(runs, 16), min(betas, 1000)  # a smoke run stays a smoke run
        est = self.estimate_log_z(runs, betas)
        self.log_z[split] = est.log_z.float()
        self.ais_spread[split] = (est.lo, est.hi)
        self.ais_size[split] = (runs, betas)

    def on_validation_epoch_start(self) -> None:
        hp = self.hparams
        self._prepare("val", hp.val_ais_runs, hp.val_ais_betas)

    def on_test_epoch_start(self) -> None:
        hp = self.hparams
        self._prepare("test", hp.ais_runs, hp.ais_betas)
        if "test" in self.log_z:
            lo, hi = self.ais_spread["test"]
            runs, betas = self.ais_size["test"]
            log.info(
                f"AIS log Z = {float(self.log_z['test']):.3f} ({runs} runs, "
                f"{betas} temperatures; +-3 s.e. of the weights: [{lo:.3f}, {hi:.3f}])"
            )

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """free_energy, recon (one-step cross-entropy), and with an AIS log Z: loglik =
        -F(v) - log Z and loss = -loglik (nats per image); without one, loss = recon."""
        v = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))
        fe = self.rbm.free_energy(v)
        out = {
            "free_energy": fe.mean(),
            "recon": self.rbm.reconstruction_cross_entropy(v).mean(),
        }
        log_z = self.log_z.get("test" if full else "val")
        if log_z is not None:
            out["loglik"] = -fe.mean() - log_z
            out["loss"] = -out["loglik"]
        else:
            out["loss"] = out["recon"]
        return out

    def test_step(self, batch, batch_idx: int) -> None:
        """The test metrics, and on the first ``raise_images`` test images (by row index,
        so the same images for any batch size or process count) the conservative RAISE
        estimate beside AIS's on the same images: ``test/loglik_raise`` (its standard
        error ``test/loglik_raise_se``) and ``test/loglik_raise_ais``."""
        super().test_step(batch, batch_idx)
        hp = self.hparams
        if not hp.raise_images or "test" not in self.log_z:
            return
        batch_idx = self.eval_batch_idx(batch_idx)
        images, betas = hp.raise_images, hp.raise_betas
        if getattr(self._trainer, "fast_dev_run", False):
            images, betas = min(images, 8), min(betas, 1000)  # a smoke run stays a smoke run
        idx = batch[2] if len(batch) > 2 else torch.arange(batch[0].shape[0])
        keep = (idx >= 0) & (idx < images)  # -1: DDP padding
        v = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))[keep]
        n = v.shape[0]
        if n:
            g = torch.Generator(device=v.device).manual_seed(hp.ais_seed * 1_000_003 + batch_idx)
            base = base_rate_bias(self.pixel_mean)
            est = raise_log_likelihood(self.rbm, base, scaled_betas(betas), v, hp.raise_chains, g)
            values = {
                "test/loglik_raise": est.log_p.float().mean(),
                "test/loglik_raise_se": est.stderr.float().mean(),
                "test/loglik_raise_ais": (-self.rbm.free_energy(v) - self.log_z["test"]).mean(),
            }
        else:  # every rank logs the same names; weight 0
            values = dict.fromkeys(
                ("test/loglik_raise", "test/loglik_raise_se", "test/loglik_raise_ais"),
                v.new_zeros(()),
            )
        self.log_dict(values, batch_size=float(n), sync_dist=True)  # float: see eval_weight

    def subset_free_energy(self, split: str) -> Tensor | None:
        """Mean F of the first ``gap_examples`` images of a split (fixed binarisation)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or split not in getattr(dm, "splits", {}):
            return None
        x = dm.splits[split][0][: self.hparams.gap_examples].to(self.device)
        return self.rbm.free_energy(self.preprocess(x, eval_generator(self.device, 0))).mean()

    def on_validation_epoch_end(self) -> None:
        # The overfitting signal of the practical guide: F(validation) - F(training) on
        # equal-sized fixed subsets; it grows when the model starts to overfit.
        tr, va = self.subset_free_energy("train"), self.subset_free_energy("val")
        if tr is not None and va is not None:
            self.log("val/free_energy_gap", va - tr, sync_dist=True)
        if "val" in self.ais_spread:
            self.log("val/log_z", self.log_z["val"], sync_dist=True)

    def on_test_epoch_end(self) -> None:
        if "test" in self.log_z:
            lo, hi = self.ais_spread["test"]
            self.log("test/log_z", self.log_z["test"], sync_dist=True)
            # log Z +- 3 standard errors of the mean weight; loglik moves the other way.
            self.log("test/log_z_lo", lo, sync_dist=True)
            self.log("test/log_z_hi", hi, sync_dist=True)
