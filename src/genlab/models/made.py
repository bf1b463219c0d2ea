"""MADE: masked autoencoder for distribution estimation (Germain, Gregor, Murray &
Larochelle 2015); docs/models/autoregressive.md#made.

An MLP over the D pixels whose weight masks make output d depend only on the pixels
before d in an ordering, so one pass gives p(x) = prod_d p(x_d | x_<d) exactly.
Connectivity-agnostic training: ``num_masks`` connectivities (hidden degrees, and with
``order_agnostic`` also orderings) in turn, one per training step; evaluation averages the
probabilities of the first ``eval_masks`` of them (an equal-weight mixture of the
masks' models, itself a normalised distribution):

    log p(x) = log (1/M) sum_m p_m(x)                     nats per image
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from genlab.checks import NonNegativeFloat, OptimizerName, PositiveFloat, PositiveInt, check_args
from genlab.errors import ConfigError
from genlab.models.autoregressive import Likelihood, PixelModel
from genlab.nn.autoregressive import MADENet


class MADE(PixelModel):
    """A masked MLP over the flattened image, Bernoulli (binarised) or 8-bit pixels."""

    compile_nets = ("made",)

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        hidden_sizes: Sequence[PositiveInt] = (500,),
        likelihood: Likelihood = "bernoulli",
        mixture_components: PositiveInt = 5,
        num_masks: PositiveInt = 1,
        order_agnostic: bool = False,
        eval_masks: PositiveInt | None = None,
        val_masks: PositiveInt = 1,
        direct: bool = False,
        mask_seed: int = 0,
        lr: PositiveFloat = 1e-3,
        lr_final: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.init_pixels(tuple(data_shape), likelihood, mixture_components, "made")
        for name, count in (("eval_masks", eval_masks), ("val_masks", val_masks)):
            if count is not None and count > num_masks:
                raise ConfigError(
                    f"model.{name}={count} exceeds the model.num_masks={num_masks} "
                    f"connectivities it averages over: set model.num_masks={count} or a "
                    f"smaller model.{name}"
                )
        self.made = MADENet(
            self.dim, list(hidden_sizes), self.dist.params, num_masks, order_agnostic,
            mask_seed, direct,
        )  # fmt: skip

    @property
    def eval_mask_count(self) -> int:
        hp = self.hparams
        return hp.eval_masks or hp.num_masks

    def net_output(self, x: Tensor, y: Tensor | None = None, mask: int = 0) -> Tensor:
        """(B, C, H, W) integer pixels -> (B, params, D) under connectivity ``mask``."""
        return self.made(self.dist.to_input(x.flatten(1)), mask)

    def log_prob(self, x: Tensor, y: Tensor | None = None, mask: int = 0) -> Tensor:
        out = self.net_output(x, y, mask)
        return self.dist.log_prob(out, x.flatten(1)).sum(1)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        # The next connectivity of the set each step (a host-side count: no device sync).
        mask = self.global_step % self.hparams.num_masks
        ll = self.log_prob(self.preprocess(batch[0]), mask=mask)
        values = self.metrics_of(ll)
        self.log_train(values)
        return values["loss"]

    def eval_log_prob(self, x: Tensor, y: Tensor | None = None, full: bool = True) -> Tensor:
        """log (1/M) sum_m p_m(x) over the first M connectivities (``eval_masks`` at
        test, ``val_masks`` in validation; M masks cost M passes): (B,)."""
        m = self.eval_mask_count
        m = m if full else min(self.hparams.val_masks, m)
        lls = torch.stack([self.log_prob(x, mask=i) for i in range(m)])  # (M, B)
        return torch.logsumexp(lls, 0) - math.log(m)

    def _sample_pixels(self, n: int, y: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Ancestral sampling from the mixture of the evaluation masks: sample i from mask
        i mod M, each mask's group pixel by pixel in its order."""
        m = self.eval_mask_count
        x = torch.zeros(n, self.dim, device=self.device)
        for mask in range(min(m, n)):
            rows = torch.arange(mask, n, m, device=self.device)
            draw = lambda out: self.dist.sample(out, generator)  # noqa: E731
            x[rows] = self.made.sample(len(rows), mask, draw, self.dist.to_input)
        return x.view(n, *self.data_shape)
