"""What diffusion (DDPM) and flow matching share: a time-conditioned denoiser net
(``model/net=unet`` or ``time_mlp``), its EMA, class conditioning with classifier-free
guidance, iterative samplers, warm-up and the evaluation hooks of the runner.

Subclasses define ``preprocess`` (uint8 -> model space), ``train_terms(x, y)``,
``batch_metrics`` and ``_sample(z, labels, steps, generator, record, **kw)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from genlab.checks import (
    Betas,
    Decay,
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import symmetric_image
from genlab.errors import ConfigError
from genlab.models.common import GenlabModule, adam_betas, make_optimizer
from genlab.models.ema import AveragedNets
from genlab.models.sampling import ClassConditionalSampling
from genlab.nn import build_net

TIME_SCALE = 1000.0  # the denoisers' time input runs over [0, 1000] (Ho et al. 2020)


class DenoiserFamily(ClassConditionalSampling, AveragedNets, GenlabModule):
    """Base of the diffusion and flow-matching families (see the module docstring)."""

    ema_of: tuple[str, ...] = ("denoiser",)
    val_score_samples = (
        250  # val/fid samples unless metrics.n_val says otherwise: sampling is costly
    )
    density_resolution = 64  # toy2d density maps: log_prob on a 64x64 grid, upscaled

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        net: NetSpec | None = None,
        conditional: bool = False,
        label_dropout: UnitInterval = 0.1,
        guidance: NonNegativeFloat = 0.0,
        lr: PositiveFloat = 2e-4,
        warmup_steps: NonNegativeInt = 500,
        betas: Betas = (0.9, 0.999),
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        ema_decay: Decay = 0.999,
        ema_start: NonNegativeInt = 0,
    ) -> None:
        """The settings DDPM and flow matching share (each family adds its own and passes
        these on): the denoiser net, class conditioning with classifier-free guidance
        (``label_dropout``, ``guidance``), the optimiser with warm-up, the EMA."""
        check_args(type(self), locals(), "model")
        super().__init__()
        # Lightning collects the arguments of every __init__ in the chain: the family's
        # own and these.
        self.save_hyperparameters(logger=False)
        self.setup_denoiser(data_shape, num_classes, net, conditional)

    def setup_denoiser(
        self, data_shape: Sequence[int], num_classes: int, net: dict | None, conditional: bool
    ) -> None:
        """Shapes, the denoiser f(x, t, y) from the net spec, and its EMA copy."""
        if conditional and num_classes < 1:
            raise ConfigError(
                "model.conditional=true needs labelled data (data.num_classes >= 1): "
                "use a labelled data set or model.conditional=false"
            )
        self.data_shape = tuple(data_shape)
        self.images = len(self.data_shape) == 3
        self.dim = math.prod(self.data_shape)
        self.uses_labels = conditional
        self.null_label = num_classes  # the "no label" index of classifier-free guidance
        default = {"arch": "genlab.nn.UNet" if self.images else "genlab.nn.TimeMLP"}
        nets = build_net(net or default)
        if not hasattr(nets, "denoiser"):
            raise ConfigError(
                f"model.net.arch={type(nets).__name__} builds no denoiser: use model/net=unet "
                "(images) or model/net=time_mlp (vectors, e.g. data=toy2d)"
            )
        self.denoiser = nets.denoiser(self.data_shape, num_classes if conditional else 0)
        self.build_ema()

    # ---- data space -------------------------------------------------------------------
    def to_image(self, x: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1] for grids and scores (vector data pass as they are)."""
        return symmetric_image(x) if self.images else x

    # ---- the denoiser -----------------------------------------------------------------
    def predict(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: float | None = None
    ) -> Tensor:
        """The net's output at x (B, *data_shape), time t (B,) on [0, TIME_SCALE], labels
        y (B,) or None; conditional models with guidance w > 0 return
        (1 + w) f(x, t, y) - w f(x, t, null) (Ho & Salimans 2022). EMA in eval mode."""
        net = self.active_net("denoiser")
        if not self.hparams.conditional:
            return net(x, t)
        if y is None:
            return net(x, t, torch.full_like(t, self.null_label, dtype=torch.long))
        w = self.hparams.guidance if guidance is None else guidance
        if not w:
            return net(x, t, y)
        null = torch.full_like(y, self.null_label)
        cond, uncond = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return (1 + w) * cond - w * uncond

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, *self.data_shape, generator=generator, device=self.device)

    # ---- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        y: Tensor | int | None = None,
        steps: int | None = None,
        ema: bool = True,
        **kwargs: Any,
    ) -> Tensor:
        """(n, *data_shape) samples in model space ([-1, 1] for images; ``to_image`` maps
        to [0, 1]). ``y``: classes of a conditional model (default: in turn); ``steps``:
        the sampler's step count (default ``model.sample_steps``); ``ema=False``: the
        trained net instead of its average; other keywords go to the sampler."""
        with self.weights(ema):
            labels = self.sample_labels(y, n)
            x, _ = self._sample(self.noise(n, generator), labels, steps, generator, 0, **kwargs)
        return x

    @torch.no_grad()
    def trajectory(
        self, n: int, frames: int = 10, generator: torch.Generator | None = None, **kwargs: Any
    ) -> Tensor:
        """(frames, n, *data_shape): the sampling path from noise (first) to the sample
        (last), at evenly spaced steps."""
        labels = self.sample_labels(None, n)
        x, path = self._sample(self.noise(n, generator), labels, None, generator, frames, **kwargs)
        return torch.stack([*path, x])

    def _sample(
        self,
        z: Tensor,
        labels: Tensor | None,
        steps: int | None,
        generator: torch.Generator | None,
        record: int,
        **kwargs: Any,
    ) -> tuple[Tensor, list[Tensor]]:
        """Noise z -> (sample, [z and the states after the steps in
        ``frame_steps(steps, record)``]) (the list is empty when record is 0)."""
        raise NotImplementedError

    # ---- Lightning --------------------------------------------------------------------
    def train_terms(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """The training loss (``loss``) and terms to log, for a batch in model space."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x = self.preprocess(batch[0])
        y = None
        if self.hparams.conditional:
            # Classifier-free guidance trains the unconditional net too: labels dropped
            # to the null index with probability label_dropout.
            y = batch[1]
            drop = torch.rand(y.shape, device=y.device) < self.hparams.label_dropout
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        terms = self.train_terms(x, y)
        self.log_train({k: v.detach() for k, v in terms.items()})
        return terms["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.use_ema:
            self.update_ema()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.migrate_ema_state(checkpoint)

    def configure_optimizers(self):
        hp = self.hparams
        kw = {**adam_betas(hp.optimizer, hp.betas), **(hp.optimizer_kwargs or {})}
        opt = make_optimizer(self.denoiser.parameters(), hp.optimizer, hp.lr, hp.weight_decay, **kw)
        if not hp.warmup_steps:
            return opt
        # Linear learning-rate warm-up over the first warmup_steps steps (Ho et al.: 5000).
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / hp.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}


def frame_steps(steps: int, frames: int) -> set[int]:
    """The step indices (0..steps-1) after which a trajectory of ``frames`` frames records
    the state: frames - 2 evenly spaced ones (the first frame is the noise, the last the
    sample)."""
    return {round(j * steps / (frames - 1)) - 1 for j in range(1, frames - 1)}
