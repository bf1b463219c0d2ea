"""VQ-VAE with a gated PixelCNN prior (van den Oord, Vinyals & Kavukcuoglu 2017);
docs/models/autoregressive.md#vq-vae.

Two stages in one run (a staged family, as the DBN): a second family that loads the first
stage's checkpoint would need two commands, two run folders and a checkpoint path passed
between them; staged, one command trains both, one checkpoint holds both, ``sample(n)``
works from any checkpoint, and ``auto_resume`` continues whichever stage was running.

1. ``vq_epochs`` epochs: encoder -> nearest codebook vectors (a grid of K-way codes) ->
   decoder, trained on
       loss = recon + codebook + beta * commitment
   (``recon``: squared error (``mse``) or the pixels' cross-entropy (``bce``) of the grey
   image in [0, 1], summed over pixels; the latent terms summed over the code grid; batch
   means), the straight-through gradient through the quantiser, the codebook moved by
   gradient or by moving averages (``ema``), unused codes restarted.
2. the remaining epochs: the encoder and codebook frozen, a gated PixelCNN over the code
   grid (a K-way softmax per position, raster order) is trained on the training images'
   codes: ``prior_loss`` = -log p(codes) in nats per image.

``sample(n)``: codes from the prior, pixel by pixel (H' x W' passes over the small grid),
then the decoder: images that FID / KID / precision-recall score like any sampler's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    Decay,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    Range,
    check_args,
)
from genlab.data.transforms import to_unit
from genlab.errors import ConfigError, require_images
from genlab.models.common import GenlabModule, Staged, make_optimizer
from genlab.nn.autoregressive import GatedPixelCNN
from genlab.nn.pixels import Categorical
from genlab.nn.vq import VectorQuantizer
from genlab.progress import Progress

log = logging.getLogger(__name__)


class _Residual(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (the paper's residual block)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def vq_encoder(c_in: int, channels: int, code_dim: int, downsample: int, res: int) -> nn.Module:
    """(B, C, H, W) -> (B, code_dim, H / 2^downsample, W / 2^downsample): stride-2 4x4
    convolutions, a 3x3, residual blocks, a 1x1 to the code dimension."""
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(downsample):
        layers += [nn.Conv2d(c, channels, 4, 2, 1), nn.ReLU()]
        c = channels
    layers.append(nn.Conv2d(c, channels, 3, padding=1))
    layers += [_Residual(channels, channels // 2) for _ in range(res)]
    layers += [nn.ReLU(), nn.Conv2d(channels, code_dim, 1)]
    return nn.Sequential(*layers)


def vq_decoder(code_dim: int, channels: int, c_out: int, upsample: int, res: int) -> nn.Module:
    """The encoder's mirror: (B, code_dim, h, w) -> (B, C, h 2^upsample, w 2^upsample)."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1)]
    layers += [_Residual(channels, channels // 2) for _ in range(res)]
    layers.append(nn.ReLU())
    for i in range(upsample):
        last = i == upsample - 1
        layers.append(nn.ConvTranspose2d(channels, c_out if last else channels, 4, 2, 1))
        if not last:
            layers.append(nn.ReLU())
    if upsample == 0:
        layers.append(nn.Conv2d(channels, c_out, 1))
    return nn.Sequential(*layers)


class VQVAE(Staged, GenlabModule):
    """Convolutional VQ-VAE on grey images and its gated PixelCNN prior, trained in turn."""

    compile_nets = ("encoder", "decoder", "prior")
    ddp_find_unused_parameters = True  # each stage's backward reaches its own networks only

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        codes: Annotated[int, Range(ge=2)] = 64,  # one code would carry no information
        code_dim: PositiveInt = 16,
        channels: PositiveInt = 64,
        downsample: NonNegativeInt = 2,
        res_blocks: NonNegativeInt = 2,
        recon: Literal["mse", "bce"] = "bce",
        beta: NonNegativeFloat = 0.25,
        ema: bool = True,
        decay: Decay = 0.99,  # 1 would never move the codebook
        restart_below: Annotated[float, Range(ge=0, lt=1)] = 0.03,
        vq_epochs: NonNegativeInt = 10,
        lr: PositiveFloat = 2e-4,
        prior_channels: PositiveInt = 64,
        prior_layers: PositiveInt = 8,
        prior_lr: PositiveFloat = 1e-3,
        optimizer: OptimizerName = "Adam",
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.data_shape = tuple(data_shape)
        require_images("model=vqvae", self.data_shape)
        c, h, w = self.data_shape
        f = 2**downsample
        if h % f or w % f:
            raise ConfigError(
                f"model.downsample={downsample} halves the {h}x{w} images {downsample} times: "
                f"H and W must be divisible by {f}; lower model.downsample"
            )
        self.grid = (h // f, w // f)
        self.encoder = vq_encoder(c, channels, code_dim, downsample, res_blocks)
        self.decoder = vq_decoder(code_dim, channels, c, downsample, res_blocks)
        self.quantizer = VectorQuantizer(codes, code_dim, ema, decay, restart_below=restart_below)
        self.code_dist = Categorical(codes)
        kernel = min(7, 2 * (min(self.grid) // 2) + 1)  # a first kernel no wider than the grid
        self.prior = GatedPixelCNN(
            1, codes, prior_channels, prior_layers, 3, kernel, in_embed=codes
        )
        self.init_stage()  # 0: the VQ-VAE trains; 1: the prior

    def metrics_of_later_stages(self) -> set[str]:
        """Validation metrics only the prior's stage logs (for the checkpoint monitor)."""
        return {"val/prior_loss", "val/prior_bits_per_code"} if self.current_stage == 0 else set()

    # ---- the auto-encoder -------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> grey values in [0, 1]."""
        return to_unit(x) if x.dtype == torch.uint8 else x.float()

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) in [0, 1] -> the flattened quantised codes' vectors
        (B, code_dim * h * w): what the probes read."""
        z_q, _, _ = self.quantizer(self.encoder(x * 2 - 1))
        return z_q.flatten(1)

    def codes(self, x: Tensor) -> Tensor:
        """Images in [0, 1] -> code grid (B, h, w) of integers in [0, K)."""
        z = self.encoder(x * 2 - 1)
        return self.quantizer.codes_of(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])).view(
            x.shape[0], *self.grid
        )

    def decode_logits(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q)

    def to_pixels(self, out: Tensor) -> Tensor:
        """The decoder's output -> images in [0, 1]."""
        return torch.sigmoid(out)

    def decode_codes(self, idx: Tensor) -> Tensor:
        """Code grid (B, h, w) -> images (B, C, H, W) in [0, 1]."""
        return self.to_pixels(self.decoder(self.quantizer.lookup(idx)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_codes(self.codes(x))

    def vq_terms(self, x: Tensor) -> dict[str, Tensor]:
        """loss = recon + codebook + beta * commitment, with mse, perplexity and usage."""
        hp = self.hparams
        z_q, _, terms = self.quantizer(self.encoder(x * 2 - 1))
        out = self.decoder(z_q)
        mse = (self.to_pixels(out) - x).pow(2).flatten(1).sum(1).mean()
        if hp.recon == "bce":
            ce = F.binary_cross_entropy_with_logits(out, x, reduction="none")
            recon = ce.flatten(1).sum(1).mean()
        else:
            recon = mse
        loss = recon + hp.beta * terms["commitment"] + terms.get("codebook", 0.0)
        return {"loss": loss, "recon": recon, "mse": mse, **terms}

    # ---- the prior ----------------------------------------------------------------------
    def prior_log_prob(self, idx: Tensor) -> Tensor:
        """log p(codes) (B,) in nats under the PixelCNN prior; idx (B, h, w)."""
        out = self.prior(idx)[:, :, 0]  # (B, K, h, w)
        return self.code_dist.log_prob(out, idx.float()).flatten(1).sum(1)

    def prior_terms(self, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            idx = self.codes(x)
        ll = self.prior_log_prob(idx)
        n = math.prod(self.grid)
        return {"prior_loss": -ll.mean(), "prior_bits_per_code": -ll.mean() / (n * math.log(2))}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, C, H, W) images in [0, 1]: a code grid from the prior (h x w passes), decoded."""
        was_training = self.training
        self.eval()
        try:
            h, w = self.grid
            idx = torch.zeros(n, h, w, dtype=torch.long, device=self.device)
            with Progress("VQ-VAE prior sampling", h * w, "codes") as p:
                for i in range(h):
                    for j in range(w):
                        rows, cols = self.prior.window(i, j, h, w)  # code (i, j)'s receptive field
                        out = self.prior(idx[:, rows, cols])
                        code = self.code_dist.sample(
                            out[:, :, 0, i - rows.start, j - cols.start], generator
                        )
                        idx[:, i, j] = code.long()
                        p.update()
            return self.decode_codes(idx)
        finally:
            self.train(was_training)

    # ---- training -----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        trainer, hp = self.trainer, self.hparams
        bounded = not trainer.fast_dev_run and trainer.max_epochs not in (None, -1)
        if bounded and trainer.max_epochs <= hp.vq_epochs:
            raise ConfigError(
                f"model=vqvae trains the VQ-VAE for model.vq_epochs={hp.vq_epochs} epochs and "
                f"its prior for the rest of trainer.max_epochs={trainer.max_epochs}: set "
                f"trainer.max_epochs above {hp.vq_epochs} (e.g. {hp.vq_epochs + 10})"
            )

    def on_train_epoch_start(self) -> None:
        stage = 0 if self.current_epoch < self.hparams.vq_epochs else 1
        if stage == 1 and self.current_stage == 0:
            log.info("VQ-VAE: encoder, codebook and decoder frozen; training the prior")
        self.set_stage(stage)

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x = self.preprocess(batch[0])
        # fast_dev_run: both stages in its one step, so each is exercised.
        stages = (0, 1) if self.trainer.fast_dev_run else (self.current_stage,)
        values: dict[str, Tensor] = {}
        for stage in stages:
            opt = self.optimizers()[stage]
            if stage == 0:
                terms = self.vq_terms(x)
                loss = terms["loss"]
            else:
                terms = self.prior_terms(x)
                loss = terms["prior_loss"]
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            values.update(terms)
        self.log_train({k: v.detach() for k, v in values.items()})
        return {"loss": loss.detach()}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        vq = [*self.encoder.parameters(), *self.decoder.parameters(), *self.quantizer.parameters()]
        return [
            make_optimizer(vq, hp.optimizer, hp.lr, 0.0),
            make_optimizer(self.prior.parameters(), hp.optimizer, hp.prior_lr, 0.0),
        ]

    # ---- evaluation -----------------------------------------------------------------------
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """The VQ-VAE's loss terms (mse: squared error per image; perplexity, usage) and,
        once the prior trains (and always at test), prior_loss (nats per image of codes)
        and prior_bits_per_code."""
        x = self.preprocess(batch[0])
        out = self.vq_terms(x)
        if self.current_stage >= 1 or full:
            out.update(self.prior_terms(x))
        return out
