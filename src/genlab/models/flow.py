"""Normalizing flows (docs/models/flows.md): NICE, RealNVP and Glow on one exact-likelihood base.

    log p(x) = log p_H(f(x)) + log|det df/dx|          (nats per example)

Images (uint8) are dequantised on the device, x = (pixel + u) / 256 in [0, 1], and

    {split}/loglik = log p(x)                           nats per image of the [0, 1] data
    {split}/bpd    = (-loglik + D ln 256) / (D ln 2)    bits/dim of the 8-bit data
    {split}/loss   = -loglik                            the trained objective

Continuous vector data (``data=toy2d``) is modelled as it is: loglik and loss only.
``self.flow`` maps data to latent in ``forward`` and back in ``inverse`` (genlab.nn.flows;
the opposite of normflows' convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from torch import Tensor

from genlab.checks import (
    ActivationName,
    NonNegativeFloat,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    Range,
    check_args,
)
from genlab.data.transforms import dequantize, eval_generator
from genlab.errors import ConfigError
from genlab.models.common import GenlabModule, make_optimizer, with_lr_decay
from genlab.nn.flow_mixing import ExpLowRank, InvConv1x1, Permute, Reverse
from genlab.nn.flows import (
    ActNorm,
    Coupling,
    DiagonalScaling,
    FlowLayer,
    FlowSequence,
    Logit,
    MultiScale,
    Prior,
    Reshape,
    conv_net,
    mlp_net,
)


class Flow(GenlabModule):
    """Base of the flow family: prior, dequantisation, metrics, sampling, optimisation.

    Subclasses implement ``build_flow() -> FlowLayer`` mapping (B, *data_shape) to (B, D).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        prior: Literal["gaussian", "logistic"] = "gaussian",
        lr: PositiveFloat = 1e-3,
        lr_final: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.dim = math.prod(self.data_shape)
        self.prior = Prior(prior)

    def build_flow(self) -> FlowLayer:
        raise NotImplementedError

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> dequantised [0, 1]; float data passes as it is."""
        return dequantize(x, generator) if x.dtype == torch.uint8 else x.float()

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats: (B, *data_shape) -> (B,)."""
        h, log_det = self.flow(x)
        return self.prior.log_prob(h) + log_det

    def encode(self, x: Tensor) -> Tensor:
        """The latent h = f(x): (B, D)."""
        return self.flow(x)[0]

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """x = f^{-1}(h), h ~ prior scaled by ``temperature``: (n, *data_shape)."""
        h = self.prior.sample(n, self.dim, temperature, generator, self.device)
        return self.flow.inverse(h)[0].view(n, *self.data_shape)

    def bits_per_dim(self, loglik: Tensor) -> Tensor:
        """bpd of 8-bit data from log p of its dequantised [0, 1] version (docs/models/flows.md)."""
        return (-loglik + self.dim * math.log(256)) / (self.dim * math.log(2))

    # ---- Lightning --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Data-dependent initialisation (actnorm) from a training batch, before anything
        else (the sanity validation included) runs the flow."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and any(isinstance(m, ActNorm) for m in self.modules()):
            x_raw = next(iter(dm.train_dataloader()))[0].to(self.device)
            with torch.no_grad():
                self.flow(self.preprocess(x_raw))

    def _metrics(
        self, x_raw: Tensor, generator: torch.Generator | None, full: bool = False
    ) -> dict[str, Tensor]:
        """loss, loglik (and bpd for 8-bit data), each the mean over the batch; with
        ``full`` also their per-image values, for the standard errors (the dequantisation
        noise makes them estimates)."""
        ll = self.log_prob(self.preprocess(x_raw, generator))  # (B,)
        out = {"loss": -ll.mean(), "loglik": ll.mean()}
        per_image = {"loglik": ll}
        if x_raw.dtype == torch.uint8:
            per_image["bpd"] = self.bits_per_dim(ll)
            out["bpd"] = per_image["bpd"].mean()
        if full:
            out["per_image"] = per_image
        return out

    def training_step(self, batch, batch_idx: int) -> Tensor:
        values = self._metrics(batch[0], None)
        self.log_train(values)
        return values["loss"]

    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss (= -loglik), loglik (nats per example), bpd (8-bit data); the
        dequantisation noise comes from a generator seeded by the batch index."""
        return self._metrics(batch[0], eval_generator(batch[0].device, batch_idx), full)

    def configure_optimizers(self):
        hp = self.hparams
        opt = make_optimizer(
            self.parameters(), hp.optimizer, hp.lr, hp.weight_decay, **(hp.optimizer_kwargs or {})
        )
        return with_lr_decay(opt, hp.lr, hp.lr_final, self.trainer.max_epochs)


class NICE(Flow):
    """NICE (Dinh et al. 2014): additive couplings on alternating odd/even halves of the
    flattened data, each conditioner a ReLU MLP, then a diagonal scaling
    (docs/models/flows.md#nice)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        couplings: PositiveInt = 4,
        hidden_sizes: Sequence[PositiveInt] = (1000,) * 5,
        activation: ActivationName = "ReLU",
        prior: Literal["gaussian", "logistic"] = "logistic",
        lr: PositiveFloat = 1e-3,
        lr_final: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__(
            data_shape, num_classes, prior, lr, lr_final, weight_decay, optimizer, optimizer_kwargs
        )
        self.save_hyperparameters(logger=False)
        self.flow = self.build_flow()

    def build_flow(self) -> FlowLayer:
        hp = self.hparams
        net = mlp_net(list(hp.hidden_sizes), hp.activation)
        # The paper's odd/even partition, as contiguous halves: features reordered evens
        # first once, couplings on halves, the order restored before the scaling.
        layers: list[FlowLayer] = [
            Reshape(self.data_shape, (self.dim,)),
            Permute.evens_first(self.dim),
            *(Coupling(self.dim, i % 2, net, split="halves") for i in range(hp.couplings)),
            Permute.evens_first(self.dim, inverse=True),
            DiagonalScaling(self.dim),
        ]
        return FlowSequence(layers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints from before the two Permute layers (interleaved couplings at
        flow.layers.1..K, the scaling at K+1) hold the same function: renumber."""
        state = checkpoint.get("state_dict", {})
        if not any(k.startswith("flow.layers.1.") for k in state):
            return
        k = self.hparams.couplings

        def new_key(key: str) -> str:
            parts = key.split(".")
            if parts[:2] == ["flow", "layers"]:
                i = int(parts[2])
                parts[2] = str(i + 1 if 1 <= i <= k else i + 2 if i == k + 1 else i)
            return ".".join(parts)

        checkpoint["state_dict"] = {new_key(key): v for key, v in state.items()}


class _AffineFlow(Flow):
    """RealNVP / Glow: steps of [actnorm] -> [mixing] -> affine coupling, multi-scale with
    conv conditioners for images (C, H, W), a single scale with MLPs for vectors (D,)."""

    default_mixing = "none"
    default_scale = "sigmoid"

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        levels: PositiveInt = 2,
        steps: PositiveInt = 4,
        channels: PositiveInt = 64,
        hidden_sizes: Sequence[PositiveInt] = (128, 128),
        mixing: Literal["none", "reverse", "invconv", "explowrank"] | None = None,
        scale: Literal["tanh", "sigmoid"] | None = None,
        actnorm: bool = True,
        coupling_split: Literal["halves", "interleaved"] = "halves",
        logit_alpha: Annotated[float, Range(gt=0, lt=0.5)] | None = None,
        prior: Literal["gaussian", "logistic"] = "gaussian",
        lr: PositiveFloat = 1e-3,
        lr_final: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__(
            data_shape, num_classes, prior, lr, lr_final, weight_decay, optimizer, optimizer_kwargs
        )
        if logit_alpha is not None and len(self.data_shape) != 3:
            raise ConfigError(
                "model.logit_alpha pre-processes images in [0, 1]; this data has shape "
                f"{self.data_shape}: leave model.logit_alpha=null"
            )
        mixing = mixing or self.default_mixing
        self.save_hyperparameters(logger=False)
        self.mixing = mixing
        self.scale = scale or self.default_scale
        self.flow = self.build_flow()

    def _steps(self, features: int, make_net) -> FlowSequence:
        hp = self.hparams
        layers: list[FlowLayer] = []
        for i in range(hp.steps):
            if hp.actnorm:
                layers.append(ActNorm(features))
            mix = MIXING[self.mixing]
            if mix is not None:
                layers.append(mix(features))
            # Without a mixing layer, alternate which half is transformed (RealNVP).
            parity = i % 2 if mix is None else 0
            layers.append(
                Coupling(
                    features, parity, make_net, affine=True, scale=self.scale,
                    split=hp.coupling_split,
                )
            )  # fmt: skip
        return FlowSequence(layers)

    def build_flow(self) -> FlowLayer:
        hp = self.hparams
        if len(self.data_shape) == 3:
            flow = MultiScale(
                self.data_shape, hp.levels, lambda c: self._steps(c, conv_net(hp.channels))
            )
            # Without the logit (the default, and older checkpoints) the keys stay flow.*
            return (
                flow
                if hp.get("logit_alpha") is None
                else FlowSequence([Logit(hp.logit_alpha), flow])
            )
        if len(self.data_shape) == 1:
            return self._steps(self.dim, mlp_net(list(hp.hidden_sizes), zero_init=True))
        raise ConfigError(
            f"model={type(self).__name__.lower()} takes images (C, H, W) or vectors (D,), "
            f"not data of shape {self.data_shape}"
        )


MIXING: dict[str, type[FlowLayer] | None] = {
    "none": None,
    "reverse": Reverse,
    "invconv": InvConv1x1,
    "explowrank": ExpLowRank,
}


class RealNVP(_AffineFlow):
    """RealNVP (Dinh et al. 2016): affine couplings with a tanh-bounded log-scale on
    alternating halves, squeeze and multi-scale factoring; actnorm in place of batch norm."""

    default_mixing = "none"
    default_scale = "tanh"


class Glow(_AffineFlow):
    """Glow (Kingma & Dhariwal 2018): actnorm -> invertible 1x1 conv (LU) -> affine coupling
    with a sigmoid scale, multi-scale."""

    default_mixing = "invconv"
    default_scale = "sigmoid"
