"""GANs (docs/models.md#gans): WGAN-GP, hinge and non-saturating losses; alternating or
single-step (stop-gradient) updates.

Images live in [-1, 1] (the generator ends in tanh); 2-D data (``data=toy2d``, with
``model/net=mlp``) are modelled as they are. With critic scores s = D(x) (B,):

    wgan_gp:        L_D = mean s(fake) - mean s(real) + gp_weight * mean (|grad D(x_hat)| - 1)^2
                    L_G = -mean s(fake)
    hinge:          L_D = mean relu(1 - s(real)) + mean relu(1 + s(fake))
                    L_G = -mean s(fake)
    nonsaturating:  L_D = mean softplus(-s(real)) + mean softplus(s(fake))
                    L_G = mean softplus(-s(fake))

``update_rule=alternating``: a D step on every batch and a G step on every ``n_critic``-th
one (two backward passes). ``update_rule=single_step``: one loss L_D(x, sg(G(z))) + L_G(sg(D), G(z))
in which each network sees the other only through stop-gradient (sg(D) is D evaluated
with detached parameters), so one backward pass gives both networks the gradients of
their own objective and both optimisers step (the G term is included every
``n_critic``-th batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from genlab.checks import (
    NetSpec,
    NonNegativeFloat,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import eval_generator, to_symmetric
from genlab.models.common import GenlabModule, adam_betas, make_optimizer
from genlab.nn import MLP, Conv, build_net

Loss = Literal["wgan_gp", "hinge", "nonsaturating"]
UpdateRule = Literal["alternating", "single_step"]
Betas = tuple[NonNegativeFloat, NonNegativeFloat]


class GAN(GenlabModule):
    """Generator G: z (B, latent_dim) -> x (B, *data_shape) in [-1, 1]; critic D: x -> score."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 64,
        net: NetSpec | None = None,
        loss: Loss = "wgan_gp",
        update_rule: UpdateRule = "alternating",
        n_critic: PositiveInt = 1,
        gp_weight: NonNegativeFloat = 10.0,
        lr_g: PositiveFloat = 2e-4,
        lr_d: PositiveFloat = 2e-4,
        betas: Betas = (0.5, 0.999),
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        self.images = len(self.data_shape) == 3
        self.automatic_optimization = False  # two optimisers, stepped by hand
        self.build_networks(build_net(net))

    def build_networks(self, nets: MLP | Conv) -> None:
        """G: z -> x and D: x -> critic_dim outputs (subclasses add an encoder)."""
        # Images live in [-1, 1] (tanh output); vector data (toy2d) are unbounded.
        out = nn.Tanh() if self.images else nn.Identity()
        self.generator = nn.Sequential(nets.decoder(self.hparams.latent_dim, self.data_shape), out)
        self.discriminator = nets.encoder(self.data_shape, self.critic_dim())

    def critic_dim(self) -> int:
        """Outputs of D: one score (O-GAN: a latent_dim code)."""
        return 1

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> [-1, 1]; float data pass as they are."""
        return to_symmetric(x) if x.dtype == torch.uint8 else x.float()

    def to_image(self, x: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1] for image grids and scores."""
        return ((x + 1) / 2).clamp(0, 1)

    # ---- networks ---------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, generator=generator, device=self.device)

    def discriminate(self, inp: Tensor | tuple[Tensor, ...], frozen: bool = False) -> Tensor:
        """D's raw output (B, critic_dim) for a batch (or a tuple: ALI's (x, z) pairs).
        ``frozen``: with detached parameters, so gradients reach the input (and the
        networks behind it) but not D: the stop-gradient sg(D)."""
        args = inp if isinstance(inp, tuple) else (inp,)
        if not frozen:
            return self.discriminator(*args)
        params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        params.update(dict(self.discriminator.named_buffers()))
        return functional_call(self.discriminator, params, args)

    def score(self, out: Tensor) -> Tensor:
        """D's output -> critic score (B,)."""
        return out.squeeze(-1)

    def decode(self, z: Tensor) -> Tensor:
        """G(z): (B, latent_dim) -> (B, *data_shape)."""
        return self.generator(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """G(z), z ~ N(0, I): (n, *data_shape) in [-1, 1] (``to_image`` maps to [0, 1])."""
        return self.generator(self.noise(n, generator))

    # ---- objectives -------------------------------------------------------------------
    def d_inputs(self, real: Tensor, z: Tensor) -> tuple[Any, Any]:
        """What D tells apart: (the "real" side, the "fake" side), with the graph of the
        networks D plays against. GAN: (x, G(z)); AAE: (z, E(x)); ALI: pairs."""
        return real, self.generator(z)

    def gradient_penalty(self, real: Any, fake: Any) -> Tensor:
        """mean (|grad D(x_hat)| - 1)^2 at x_hat uniformly between real and fake inputs
        (Gulrajani et al. 2017; pairs share one mix); differentiable in D's parameters."""
        reals, fakes = _as_tuple(real), _as_tuple(fake)
        a = torch.rand(reals[0].shape[0], device=reals[0].device)
        mixed = tuple(
            (_bcast(a, r) * r + (1 - _bcast(a, r)) * f).requires_grad_(True)
            for r, f in zip(reals, fakes, strict=True)
        )
        s = self.score(self.discriminate(mixed if len(mixed) > 1 else mixed[0]))
        grads = torch.autograd.grad(s.sum(), mixed, create_graph=True)
        norm = torch.cat([g.flatten(1) for g in grads], 1).norm(dim=1)
        return (norm - 1).pow(2).mean()

    def d_objective(self, real: Any, fake: Any, z: Tensor) -> dict[str, Tensor]:
        """D's loss on (detached) real- and fake-side inputs; ``z`` is the batch's noise."""
        out_fake = self.discriminate(fake)
        s_real, s_fake = self.score(self.discriminate(real)), self.score(out_fake)
        loss_type = self.hparams.loss
        if loss_type == "hinge":
            loss = F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()
        elif loss_type == "nonsaturating":
            loss = F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
        else:
            loss = s_fake.mean() - s_real.mean()
        t = {"critic_gap": (s_real.mean() - s_fake.mean()).detach()}
        if loss_type == "wgan_gp" and self.hparams.gp_weight > 0:
            gp = self.gradient_penalty(real, fake)
            loss = loss + self.hparams.gp_weight * gp
            t["gp"] = gp.detach()
        extra, t_extra = self.extra_loss(out_fake, z)
        t.update(t_extra)
        t["d_loss"] = loss + extra
        return t

    def fool(self, s: Tensor, as_real: bool = True) -> Tensor:
        """The generator-side loss for scores s it wants D to call real (or fake)."""
        sign = 1.0 if as_real else -1.0
        if self.hparams.loss == "nonsaturating":
            return F.softplus(-sign * s).mean()
        return -sign * s.mean()

    def g_objective(self, real: Tensor, d_real: Any, d_fake: Any, z: Tensor) -> dict[str, Tensor]:
        """The generator side's loss through the frozen critic sg(D): gradients reach
        the networks behind D's inputs only."""
        out_fake = self.discriminate(d_fake, frozen=True)
        extra, _ = self.extra_loss(out_fake, z)
        return {"g_loss": self.fool(self.score(out_fake)) + extra}

    def extra_loss(self, out_fake: Tensor, z: Tensor) -> tuple[Tensor | float, dict[str, Tensor]]:
        """A term both players add to their loss, from D's output on the fake side (O-GAN:
        the negative z-correlation), and metrics to log; none for the plain GAN."""
        return 0.0, {}

    def single_step_loss(self, real: Tensor, z: Tensor, with_g: bool = True) -> dict[str, Tensor]:
        """L_D(sg(real side), sg(fake side)) + L_G(sg(D), fake side): one backward pass
        gives each network the gradient of its own objective."""
        d_real, d_fake = self.d_inputs(real, z)
        t = self.d_objective(_detach(d_real), _detach(d_fake), z)
        loss = t["d_loss"]
        if with_g:
            t.update(self.g_objective(real, d_real, d_fake, z))
            loss = loss + t["g_loss"]
        t["loss"] = loss
        return t

    # ---- Lightning --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()
        real = self.preprocess(batch[0])
        z = self.noise(real.shape[0])
        with_g = batch_idx % self.hparams.n_critic == 0
        if self.hparams.update_rule == "single_step":
            t = self.single_step_loss(real, z, with_g)
            opt_d.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(t["loss"])
            opt_d.step()
            if with_g:
                opt_g.step()
        else:
            with torch.no_grad():
                d_real, d_fake = self.d_inputs(real, z)
            t = self.d_objective(d_real, d_fake, z)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(t["d_loss"])
            opt_d.step()
            if with_g:
                z = self.noise(real.shape[0])
                d_real, d_fake = self.d_inputs(real, z)
                t.update(self.g_objective(real, d_real, d_fake, z))
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(t["g_loss"])
                opt_g.step()
        self.log_train(self.train_values(t, with_g))
        return t["d_loss"].detach()

    def train_values(self, t: dict[str, Tensor], with_g: bool) -> dict[str, Tensor]:
        """The terms to log from a training step's terms ``t``. A fixed key set per run
        (the logging windows average them): g_loss repeats its last value on critic-only
        batches."""
        if with_g:
            self._last_g = t["g_loss"].detach()
        keys = ["d_loss", "critic_gap", "gp", "z_corr"]
        values = {k: t[k].detach() for k in keys if k in t}
        values["g_loss"] = getattr(self, "_last_g", torch.zeros((), device=self.device))
        return values

    def eval_inputs(self, batch, batch_idx: int) -> tuple[Tensor, Tensor]:
        """A held-out batch in model space and its fixed noise z (seeded by the index)."""
        real = self.preprocess(batch[0])
        return real, self.noise(real.shape[0], eval_generator(real.device, batch_idx))

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """critic_gap = mean D(real side) - mean D(fake side) on held-out images with fixed
        noise, also as ``loss``: the critic's estimate of how far the samples are from the
        data (a Wasserstein estimate for wgan_gp). A progress signal, not a selection
        criterion (checkpoints are chosen by val/fid)."""
        real, z = self.eval_inputs(batch, batch_idx)
        d_real, d_fake = self.d_inputs(real, z)
        gap = (
            self.score(self.discriminate(d_real)).mean()
            - self.score(self.discriminate(d_fake)).mean()
        )
        return {"critic_gap": gap, "loss": gap}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        h = self.hparams
        kw = adam_betas(h.optimizer, h.betas)
        return [
            make_optimizer(params, h.optimizer, lr, h.weight_decay, **kw)
            for params, lr in (
                (self.g_parameters(), h.lr_g),
                (list(self.discriminator.parameters()), h.lr_d),
            )
        ]

    def g_parameters(self) -> list[nn.Parameter]:
        """The generator side's parameters (AAE, ALI: the encoder's too): G's optimiser."""
        return list(self.generator.parameters())


def _as_tuple(inp: Any) -> tuple[Tensor, ...]:
    return inp if isinstance(inp, tuple) else (inp,)


def _detach(inp: Any) -> Any:
    """Stop-gradient of a tensor or a tuple of tensors."""
    return tuple(t.detach() for t in inp) if isinstance(inp, tuple) else inp.detach()


def _bcast(a: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against ``like``."""
    return a.view(-1, *[1] * (like.dim() - 1))
