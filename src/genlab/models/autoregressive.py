"""What the autoregressive families (MADE, PixelCNN) share: pixels as integers, the exact
log-likelihood and its units, pixel-by-pixel sampling, the optimiser.

    log p(x) = sum_d log p(x_d | x_<d)                   nats per image (exact)
    {split}/loglik = log p(x),  {split}/loss = -log p(x)
    {split}/bpd    = -log p(x) / (D ln 2)                 8-bit data (likelihood != bernoulli)

``likelihood=bernoulli`` models binarised images (dynamically: a fresh draw per training
batch, one seeded draw per evaluation batch; ``data.binarize=static`` gives the fixed
draw); ``categorical`` (a 256-way softmax) and ``logistic_mixture`` (PixelCNN++) model the
8-bit values themselves, so their bits/dim are those of the discrete data, with no
dequantisation: the same unit as the flows', DDPM's and flow matching's bits/dim.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from genlab.data.transforms import binarize, eval_generator
from genlab.errors import require_images
from genlab.models.common import GenlabModule, make_optimizer, with_lr_decay
from genlab.nn.pixels import PixelDist, pixel_dist

Likelihood = Literal["bernoulli", "categorical", "logistic_mixture"]


class PixelModel(GenlabModule):
    """Base of the autoregressive families: subclasses set ``self.dist`` (a PixelDist) and
    implement ``net_output(x, y, **kw) -> (B, params, *pixel_shape)`` on integer pixels
    x (B, C, H, W) and ``_sample_pixels``."""

    dist: PixelDist
    use_ema = False  # (ClassConditionalSampling: no averaged weights to score beside)

    def init_pixels(
        self, data_shape: tuple[int, ...], likelihood: str, components: int, name: str
    ) -> None:
        require_images(f"model={name}", data_shape)
        self.data_shape = data_shape
        self.dim = math.prod(data_shape)
        self.dist = pixel_dist(likelihood, 256, components)

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> integer pixel values: {0, 1} (bernoulli: a Bernoulli(x / 255)
        draw; binary data pass unchanged) or {0, ..., 255}."""
        if self.dist.levels == 2:
            return binarize(x, generator) if x.dtype == torch.uint8 else (x > 0.5).float()
        return x.float() if x.dtype == torch.uint8 else (x * 255).round()

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) in nats: integer pixels (B, C, H, W) -> (B,)."""
        out = self.net_output(x, y)  # (B, params, *S): S = (D,) for MADE, (H, W) for PixelCNN
        per_pixel = self.dist.log_prob(out, x.reshape(out.shape[0], *out.shape[2:]))
        return per_pixel.flatten(1).sum(1)

    def net_output(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def labels(self, batch) -> Tensor | None:
        return batch[1] if self.hparams.get("conditional", False) else None

    def metrics_of(self, ll: Tensor) -> dict[str, Tensor]:
        """loss (-loglik), loglik (nats per image) and, for 8-bit data, bpd: batch means."""
        out = {"loss": -ll.mean(), "loglik": ll.mean()}
        if self.dist.levels > 2:
            out["bpd"] = -ll.mean() / (self.dim * math.log(2))
        return out

    # ---- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, y: Tensor | int | None = None
    ) -> Tensor:
        """(n, C, H, W) images in [0, 1], drawn pixel by pixel (one network pass per
        pixel); ``y``: the classes of a conditional model (default: in turn)."""
        labels = self.sample_labels(y, n) if hasattr(self, "sample_labels") else None
        was_training = self.training
        self.eval()
        try:
            x = self._sample_pixels(n, labels, generator)
        finally:
            self.train(was_training)
        return self.dist.to_unit(x)

    def _sample_pixels(self, n: int, y: Tensor | None, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    # ---- Lightning --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        ll = self.log_prob(self.preprocess(batch[0]), self.labels(batch))
        values = self.metrics_of(ll)
        self.log_train(values)
        return values["loss"]

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss, loglik (nats per image), bpd (8-bit data): exact; the binarisation of
        evaluation images is seeded by the batch index."""
        x = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))
        return self.metrics_of(self.eval_log_prob(x, self.labels(batch), full))

    def eval_log_prob(self, x: Tensor, y: Tensor | None, full: bool = True) -> Tensor:
        """The held-out log-likelihood (B,) (``full``: at test); MADE averages its masks."""
        return self.log_prob(x, y)

    def configure_optimizers(self):
        hp = self.hparams
        opt = make_optimizer(
            self.parameters(), hp.optimizer, hp.lr, hp.weight_decay, **(hp.optimizer_kwargs or {})
        )
        return with_lr_decay(opt, hp.lr, hp.lr_final, self.trainer.max_epochs)
