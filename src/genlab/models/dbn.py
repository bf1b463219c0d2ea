"""Deep belief network and the RBM-pretrained deep auto-encoder; docs/models/rbm.md#dbn.

Stages, in one run, by epoch:

1. greedy pre-training (Hinton, Osindero & Teh 2006): ``pretrain_epochs`` epochs per RBM,
   bottom-up; RBM l + 1 is trained with CD-k on the hidden probabilities of RBM l for
   the data. The top RBM of the auto-encoder stack has linear (unit-variance Gaussian)
   hidden units, the 30-d code of Hinton & Salakhutdinov (2006).
2. fine-tuning: the stack is unrolled into an auto-encoder (encoder = copies of the
   RBMs' up weights, decoder = untied copies of their transposes) and trained with
   back-propagation on the pixels' cross-entropy, for the remaining epochs of
   ``trainer.max_epochs``. ``pretrain_epochs=0`` is the same auto-encoder from random
   initialisation: the baseline.

Metrics: ``train|val/rbm<l>/{loss,recon,free_energy}`` while RBM l trains;
``train|val/{loss,mse}`` while fine-tuning (``mse``: squared error summed over pixels,
per image, the number Hinton & Salakhutdinov report); the test pass always scores the
unrolled auto-encoder. Samples come from the DBN: a Gibbs chain of the top RBM trained so
far, propagated down through the lower RBMs' generative weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import eval_generator
from genlab.errors import ConfigError, require_images
from genlab.models.common import GenlabModule, Staged, make_optimizer
from genlab.models.rbm import BinaryImages, filter_images, rbm_sgd, set_momentum
from genlab.nn.rbm import RBMLayer

log = logging.getLogger(__name__)


class DBN(Staged, BinaryImages, GenlabModule):
    """Greedily stacked RBMs, unrolled into a deep auto-encoder and fine-tuned."""

    ddp_find_unused_parameters = True  # each stage's step reaches one RBM or the AE only

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        hidden_sizes: Sequence[PositiveInt] = (1000, 500, 250, 30),
        gaussian_top: bool = True,
        pretrain_epochs: NonNegativeInt = 10,
        cd_steps: PositiveInt = 1,
        binarize: bool = False,
        rbm_lr: PositiveFloat = 0.1,
        top_lr: PositiveFloat = 0.001,
        momentum: UnitInterval = 0.9,
        initial_momentum: UnitInterval = 0.5,
        momentum_epochs: NonNegativeInt = 5,
        weight_decay: NonNegativeFloat = 2e-4,
        init_std: PositiveFloat = 0.01,
        finetune_lr: PositiveFloat = 1e-3,
        finetune_optimizer: OptimizerName = "Adam",
        finetune_lr_decay: bool = False,
        sample_steps: PositiveInt = 200,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        self.data_shape = tuple(data_shape)
        require_images("model=dbn", self.data_shape)
        if not hidden_sizes:
            raise ConfigError(
                "model.hidden_sizes is empty: a DBN needs at least one RBM, e.g. "
                "model.hidden_sizes=[1000,500,250,30]"
            )
        sizes = [math.prod(self.data_shape), *hidden_sizes]
        L = len(hidden_sizes)
        self.rbms = nn.ModuleList(
            RBMLayer(v, h, gaussian_hidden=gaussian_top and i == L - 1, init_std=init_std)
            for i, (v, h) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        )
        # The unrolled auto-encoder: copies of the RBMs' up weights (encoder) and untied
        # copies of their transposes (decoder), set when fine-tuning starts (until then
        # encode() / decode() use the RBMs' own). Fine-tuning moves the copies only, so
        # the RBMs stay the DBN that sample() draws from.
        self.enc_W = nn.ParameterList(
            nn.Parameter(torch.zeros(v, h)) for v, h in zip(sizes, sizes[1:], strict=False)
        )
        self.enc_c = nn.ParameterList(nn.Parameter(torch.zeros(h)) for h in sizes[1:])
        self.dec_W = nn.ParameterList(
            nn.Parameter(torch.zeros(h, v)) for v, h in zip(sizes, sizes[1:], strict=False)
        )
        self.dec_b = nn.ParameterList(nn.Parameter(torch.zeros(v)) for v in sizes[:-1])
        self.init_stage()  # l < L trains RBM l; L fine-tunes
        self.register_buffer("pixel_mean", torch.full((sizes[0],), 0.5))

    @property
    def num_layers(self) -> int:
        return len(self.rbms)

    @property
    def finetuning(self) -> bool:
        return self.current_stage >= self.num_layers

    def metrics_of_later_stages(self) -> set[str]:
        """Validation metrics that only fine-tuning logs (for the checkpoint monitor)."""
        return set() if self.finetuning else {"val/loss", "val/mse"}

    def stage_of_epoch(self, epoch: int) -> int:
        p = self.hparams.pretrain_epochs
        return min(epoch // p, self.num_layers) if p > 0 else self.num_layers

    # ---- the auto-encoder -------------------------------------------------------------
    def propagate(self, v: Tensor, layers: int) -> Tensor:
        """Hidden means of the first ``layers`` RBMs for v (B, V): the data of RBM
        ``layers`` (and, for all of them, the code)."""
        for rbm in self.rbms[:layers]:
            v = rbm.hidden_mean(v)
        return v

    def encode(self, x: Tensor) -> Tensor:
        """(B, V) or images -> (B, code) through the up weights: the fine-tuned encoder
        once fine-tuning started, the RBMs' before."""
        if not self.finetuning:
            return self.propagate(x.flatten(1), self.num_layers)
        h = x.flatten(1)
        for i in range(self.num_layers):
            a = h @ self.enc_W[i] + self.enc_c[i]
            h = a if self.rbms[i].gaussian_hidden else torch.sigmoid(a)
        return h

    def decode_logits(self, z: Tensor) -> Tensor:
        """(B, code) -> pixel logits (B, V): untied decoder once fine-tuning started,
        the RBMs' transposed weights before."""
        h = z
        for i in reversed(range(self.num_layers)):
            if self.finetuning:
                a = h @ self.dec_W[i] + self.dec_b[i]
            else:
                a = self.rbms[i].visible_logits(h)
            h = a if i == 0 else torch.sigmoid(a)
        return h

    def decode(self, z: Tensor) -> Tensor:
        """(B, code) -> images in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z)).view(-1, *self.data_shape)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def ae_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """loss: cross-entropy to the targets x in [0, 1] (the fine-tuning objective),
        mse: squared error, both summed over pixels, batch means."""
        logits = self.decode_logits(self.encode(x))
        ce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean()
        mse = (torch.sigmoid(logits) - x).pow(2).sum(1).mean()
        return {"loss": ce, "mse": mse}

    # ---- the DBN as a generative model ------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Gibbs chain of the top RBM trained so far (``sample_steps`` sweeps from noise),
        then down through the lower RBMs: binary states, pixel probabilities at the end."""
        top = min(self.current_stage, self.num_layers - 1)
        rbm = self.rbms[top]
        v = torch.bernoulli(
            torch.full((n, rbm.visible), 0.5, device=self.device), generator=generator
        )
        v = rbm.gibbs(v, self.hparams.sample_steps - 1, generator)
        p = torch.sigmoid(rbm.visible_logits(rbm.sample_hidden(v, generator=generator)))
        for i in reversed(range(top)):
            p = torch.sigmoid(self.rbms[i].visible_logits(torch.bernoulli(p, generator=generator)))
        return p.view(-1, *self.data_shape)

    def filters(self, n: int = 100) -> Tensor:
        """The first RBM's weights as images (n, C, H, W)."""
        return filter_images(self.rbms[0].W, self.data_shape, min(n, self.rbms[0].hidden))

    # ---- training ---------------------------------------------------------------------
    def on_fit_start(self) -> None:
        h, L, trainer = self.hparams, self.num_layers, self.trainer
        if not trainer.fast_dev_run and trainer.max_epochs not in (None, -1):
            need = L * h.pretrain_epochs
            if trainer.max_epochs <= need:
                raise ConfigError(
                    f"model=dbn pre-trains {L} RBMs for {h.pretrain_epochs} epochs each "
                    f"({need} epochs) and fine-tunes for the rest of trainer.max_epochs="
                    f"{trainer.max_epochs}: set trainer.max_epochs above {need} (e.g. "
                    f"{need + 20}), or lower model.pretrain_epochs"
                )
        if trainer.global_step == 0:
            self.init_from_data(self.rbms[0])

    def on_train_epoch_start(self) -> None:
        stage = self.stage_of_epoch(self.current_epoch)
        if stage >= self.num_layers and not self.finetuning:
            self._unroll()
        self.set_stage(stage)
        if stage < self.num_layers:
            into = self.current_epoch - stage * self.hparams.pretrain_epochs
            set_momentum(self.optimizers()[stage].optimizer, into, self.hparams)
        else:
            for group in self.optimizers()[-1].optimizer.param_groups:
                group["lr"] = self.finetune_lr_at(self.current_epoch)

    def finetune_lr_at(self, epoch: int) -> float:
        """The fine-tuning learning rate at ``epoch``: ``finetune_lr``, or with
        ``finetune_lr_decay`` a cosine from it to 0 over the fine-tuning epochs (a constant
        Adam step leaves the reconstruction error hovering above its floor)."""
        hp = self.hparams
        if not hp.finetune_lr_decay or self._trainer is None:
            return hp.finetune_lr
        start = self.num_layers * hp.pretrain_epochs
        total = max(int(self.trainer.max_epochs) - start, 1)
        done = min(max(epoch - start, 0) / total, 1.0)
        return hp.finetune_lr * 0.5 * (1.0 + math.cos(math.pi * done))

    @torch.no_grad()
    def _unroll(self) -> None:
        """Encoder := the RBMs' up weights and hidden biases; decoder := their transposes
        and visible biases."""
        for i, rbm in enumerate(self.rbms):
            self.enc_W[i].copy_(rbm.W)
            self.enc_c[i].copy_(rbm.c)
            self.dec_W[i].copy_(rbm.W.T)
            self.dec_b[i].copy_(rbm.b)
        log.info(f"DBN: {self.num_layers} RBMs unrolled into the auto-encoder; fine-tuning")

    def training_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x = self.preprocess(batch[0])
        stage = self.current_stage
        opt = self.optimizers()[min(stage, self.num_layers)]
        if stage < self.num_layers:
            rbm = self.rbms[stage]
            with torch.no_grad():
                v = self.propagate(x, stage)
            loss, _, terms = rbm.contrastive_divergence(v, self.hparams.cd_steps)
            values = {f"rbm{stage + 1}/{k}": t for k, t in terms.items()}
        else:
            values = self.ae_metrics(x)
            loss = values["loss"]
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        self.log_train(values)
        return {"loss": loss.detach()}  # for the divergence guard

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        opts = []
        for rbm in self.rbms:
            lr = hp.top_lr if rbm.gaussian_hidden else hp.rbm_lr
            opts.append(rbm_sgd(rbm, lr, hp.initial_momentum, hp.weight_decay))
        ae = [*self.enc_W, *self.enc_c, *self.dec_W, *self.dec_b]
        opts.append(make_optimizer(ae, hp.finetune_optimizer, hp.finetune_lr, 0.0))
        return opts

    # ---- evaluation -------------------------------------------------------------------
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """While RBM l trains: rbm<l>/{recon, free_energy} on its propagated data; while
        fine-tuning, and always at test: the auto-encoder's loss and mse."""
        x = self.preprocess(batch[0], eval_generator(batch[0].device, batch_idx))
        out: dict[str, Tensor] = {}
        stage = self.current_stage
        if stage < self.num_layers and not full:
            rbm = self.rbms[stage]
            v = self.propagate(x, stage)
            out[f"rbm{stage + 1}/recon"] = rbm.reconstruction_cross_entropy(v).mean()
            out[f"rbm{stage + 1}/free_energy"] = rbm.free_energy(v).mean()
        if self.finetuning or full:
            out.update(self.ae_metrics(x))
        return out
