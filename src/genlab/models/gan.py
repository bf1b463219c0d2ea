"""GANs (docs/models/gan.md): WGAN-GP, hinge and non-saturating losses; alternating or
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

Sampling and evaluation use an exponential moving average of the generator's weights
(``ema_decay``; the raw generator's FID is logged as ``{split}/fid_raw``). The critic
read as an energy, E(z) = |z|^2 / 2 - D(G(z)), gives latent Langevin sampling
(``sample(n, langevin_steps=...)``, DDLS, Che et al. 2020). ``conditional=true``: the
generator takes a label embedding next to z and the critic is a projection
discriminator, D(x, y) = psi(phi(x)) + <embed(y), phi(x)> (Miyato & Koyama 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from genlab.checks import (
    Betas,
    Decay,
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import eval_generator, symmetric_image, to_symmetric
from genlab.errors import ConfigError
from genlab.models.common import GenlabModule, adam_betas, make_optimizer
from genlab.models.ema import AveragedNets
from genlab.models.sampling import ClassConditionalSampling
from genlab.nn import MLP, Conv, build_net
from genlab.nn.conditional import ConditionalGenerator, ProjectionCritic
from genlab.nn.langevin import langevin

Loss = Literal["wgan_gp", "hinge", "nonsaturating"]
UpdateRule = Literal["alternating", "single_step"]
PROJECTION_WIDTH = 128  # phi(x) of the conditional critic (SNGAN's projection: the last width)


class GAN(ClassConditionalSampling, AveragedNets, GenlabModule):
    """Generator G: z (B, latent_dim) -> x (B, *data_shape) in [-1, 1]; critic D: x -> score."""

    ema_of: tuple[str, ...] = ("generator",)  # the sampling side's nets, averaged
    ddp_find_unused_parameters = True  # each backward reaches one player's parameters

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
        conditional: bool = False,
        ema_decay: Decay = 0.999,
        ema_start: NonNegativeInt = 500,
        langevin_steps: NonNegativeInt = 0,
        langevin_step_size: PositiveFloat = 0.01,
    ) -> None:
        check_args(GAN, locals(), "model")  # (subclasses check their own first)
        super().__init__()
        self.save_hyperparameters(logger=False)
        if conditional and num_classes < 1:
            raise ConfigError(
                "model.conditional=true needs labelled data (data.num_classes >= 1): "
                "use a labelled data set or model.conditional=false"
            )
        self.uses_labels = conditional  # trained with the labels: probe tables mark it
        self.data_shape = tuple(data_shape)
        self.images = len(self.data_shape) == 3
        self.automatic_optimization = False  # two optimisers, stepped by hand
        self.build_networks(build_net(net))
        self.build_ema()

    def build_networks(self, nets: MLP | Conv) -> None:
        """G: z -> x and D: x -> critic_dim outputs (subclasses add an encoder)."""
        # Images live in [-1, 1] (tanh output); vector data (toy2d) are unbounded.
        out = nn.Tanh() if self.images else nn.Identity()
        h, d = self.hparams, self.hparams.latent_dim
        if h.conditional:
            g = nn.Sequential(nets.decoder(2 * d, self.data_shape), out)
            self.generator = ConditionalGenerator(g, h.num_classes, d)
            features = nets.encoder(self.data_shape, PROJECTION_WIDTH)
            sn = bool(getattr(nets, "spectral_norm", False))
            self.discriminator = ProjectionCritic(features, PROJECTION_WIDTH, h.num_classes, sn)
        else:
            self.generator = nn.Sequential(nets.decoder(d, self.data_shape), out)
            self.discriminator = nets.encoder(self.data_shape, self.critic_dim())

    # ---- EMA of the sampling side (genlab.models.ema) -----------------------------------
    @property
    def ema_own_buffers(self) -> tuple[str, ...]:
        """The generator's averaged copy keeps its own batch-norm statistics
        (:meth:`standing_statistics`); other averaged nets copy the trained ones."""
        return self.ema_of[:1]

    @torch.no_grad()
    def standing_statistics(self, n_batches: int = 8, batch_size: int = 256) -> None:
        """Batch-norm statistics of the averaged noise-to-data net (``ema_of[0]``),
        recomputed from its own activations on fixed noise ("standing statistics",
        Brock et al. 2019): the trained net's running statistics belong to other weights.
        Runs before every validation and test pass, so checkpoints carry them."""
        if not self.use_ema:
            return
        net = self.ema[self.ema_of[0]]
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        was_training = net.training
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        net.train()
        g = torch.Generator(device=self.device).manual_seed(0)
        for _ in range(n_batches):
            z = self.noise(batch_size, g)
            if self.hparams.get("conditional"):
                net(z, self.sample_labels(None, batch_size))
            else:
                net(z)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.train(was_training)

    def on_validation_epoch_start(self) -> None:
        self.standing_statistics()

    def on_test_epoch_start(self) -> None:
        self.standing_statistics()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.migrate_ema_state(checkpoint)

    compile_nets = ("generator", "discriminator", "encoder", "decoder")

    def compile_targets(self) -> dict[str, str | None]:
        out = super().compile_targets()
        if self.hparams.loss == "wgan_gp" and "discriminator" in out:
            out["discriminator"] = (
                "the gradient penalty differentiates its gradient (double backward), "
                "which torch.compile does not support"
            )
        return out

    def critic_dim(self) -> int:
        """Outputs of D: one score (O-GAN: a latent_dim code)."""
        return 1

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> [-1, 1]; float data pass as they are."""
        return to_symmetric(x) if x.dtype == torch.uint8 else x.float()

    def to_image(self, x: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1] for image grids and scores."""
        return symmetric_image(x)

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

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """G(z) (G(z, y) when conditional): (B, latent_dim) -> (B, *data_shape)."""
        g = self.active_net("generator")
        return g(z, self.sample_labels(y, z.shape[0])) if self.hparams.conditional else g(z)

    def fake_side(self, z: Tensor, y: Tensor | None = None) -> Any:
        """D's input for noise z: G(z), (G(z, y), y) when conditional; ALI: (G(z), z)."""
        x = self.decode(z, y)
        return (x, y) if self.hparams.conditional else x

    def energy(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """E(z) = |z|^2 / 2 - D(G(z)) (B,): the critic read as an energy on the latent
        space (DDLS, Che et al. 2020); exp(-E) is the prior reweighted by the critic."""
        return 0.5 * z.pow(2).sum(1) - self.score(self.discriminate(self.fake_side(z, y)))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        y: Tensor | int | None = None,
        langevin_steps: int | None = None,
        ema: bool = True,
    ) -> Tensor:
        """G(z), z ~ N(0, I): (n, *data_shape) in [-1, 1] (``to_image`` maps to [0, 1]).
        ``y``: the class(es) of a conditional GAN (default: classes in turn).
        ``langevin_steps`` (default ``model.langevin_steps``): refine z by Langevin
        dynamics on :meth:`energy` first (step ``model.langevin_step_size``). ``ema=False``:
        the trained generator instead of its average (in evaluation mode)."""
        with self.weights(ema):
            labels = self.sample_labels(y, n)
            z = self.noise(n, generator)
            steps = langevin_steps
            if steps is None:
                steps = self.hparams.get("langevin_steps", 0)
            if steps:
                eps = self.hparams.get("langevin_step_size", 0.01)
                z = langevin(lambda u: self.energy(u, labels), z, steps, eps, generator)
            return self.decode(z, labels)

    def sample_variants(self, split: str) -> dict[str, dict[str, Any]]:
        """Other ways to sample this model that the scores report as ``{split}/fid_<key>``:
        the trained generator (``raw``) when sampling uses the EMA; at test time with
        ``model.langevin_steps > 0`` sampling uses Langevin and ``plain`` is without it."""
        out = super().sample_variants(split)
        if split == "test" and self.hparams.get("langevin_steps", 0):
            out["plain"] = {"langevin_steps": 0}
        return out

    # ---- objectives -------------------------------------------------------------------
    def inputs(self, batch) -> Any:
        """A batch in model space: x, or (x, labels) for a conditional GAN."""
        x = self.preprocess(batch[0])
        return (x, batch[1]) if self.hparams.conditional else x

    def d_inputs(self, real: Any, z: Tensor) -> tuple[Any, Any]:
        """What D tells apart: (the "real" side, the "fake" side), with the graph of the
        networks D plays against. GAN: (x, G(z)) (with labels: ((x, y), (G(z, y), y)),
        the batch's labels on both sides); AAE: (z, E(x)); ALI: pairs."""
        return real, self.fake_side(z, real[1] if self.hparams.conditional else None)

    def gradient_penalty(self, real: Any, fake: Any) -> Tensor:
        """mean (|grad D(x_hat)| - 1)^2 at x_hat uniformly between real and fake inputs
        (Gulrajani et al. 2017; pairs share one mix); differentiable in D's parameters."""
        reals, fakes = _as_tuple(real), _as_tuple(fake)
        a = torch.rand(reals[0].shape[0], device=reals[0].device)
        # Labels (integer tensors, the same on both sides) pass as they are.
        mixed = tuple(
            (_bcast(a, r) * r + (1 - _bcast(a, r)) * f).requires_grad_(True)
            if r.is_floating_point()
            else r
            for r, f in zip(reals, fakes, strict=True)
        )
        s = self.score(self.discriminate(mixed if len(mixed) > 1 else mixed[0]))
        wrt = [m for m in mixed if m.is_floating_point()]
        grads = torch.autograd.grad(s.sum(), wrt, create_graph=True)
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
        terms = {"critic_gap": (s_real.mean() - s_fake.mean()).detach()}
        if loss_type == "wgan_gp" and self.hparams.gp_weight > 0:
            gp = self.gradient_penalty(real, fake)
            loss = loss + self.hparams.gp_weight * gp
            terms["gp"] = gp.detach()
        extra, t_extra = self.extra_loss(out_fake, z)
        terms.update(t_extra)
        terms["d_loss"] = loss + extra
        return terms

    def generator_loss(self, s: Tensor, as_real: bool = True) -> Tensor:
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
        return {"g_loss": self.generator_loss(self.score(out_fake)) + extra}

    def extra_loss(self, out_fake: Tensor, z: Tensor) -> tuple[Tensor | float, dict[str, Tensor]]:
        """A term both players add to their loss, from D's output on the fake side (O-GAN:
        the negative z-correlation), and metrics to log; none for the plain GAN."""
        return 0.0, {}

    def single_step_loss(self, real: Tensor, z: Tensor, with_g: bool = True) -> dict[str, Tensor]:
        """L_D(sg(real side), sg(fake side)) + L_G(sg(D), fake side): one backward pass
        gives each network the gradient of its own objective."""
        d_real, d_fake = self.d_inputs(real, z)
        terms = self.d_objective(_detach(d_real), _detach(d_fake), z)
        loss = terms["d_loss"]
        if with_g:
            terms.update(self.g_objective(real, d_real, d_fake, z))
            loss = loss + terms["g_loss"]
        terms["loss"] = loss
        return terms

    # ---- Lightning --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()
        real = self.inputs(batch)
        n = batch[0].shape[0]
        z = self.noise(n)
        with_g = batch_idx % self.hparams.n_critic == 0
        if self.hparams.update_rule == "single_step":
            terms = self.single_step_loss(real, z, with_g)
            opt_d.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(terms["loss"])
            opt_d.step()
            if with_g:
                opt_g.step()
                self.after_g_step()
        else:
            with torch.no_grad():
                d_real, d_fake = self.d_inputs(real, z)
            terms = self.d_objective(d_real, d_fake, z)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(terms["d_loss"])
            opt_d.step()
            if with_g:
                z = self.noise(n)
                d_real, d_fake = self.d_inputs(real, z)
                terms.update(self.g_objective(real, d_real, d_fake, z))
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(terms["g_loss"])
                opt_g.step()
                self.after_g_step()
        self.log_train(self.train_values(terms, with_g))
        return terms["d_loss"].detach()

    def after_g_step(self) -> None:
        if self.use_ema:
            self.update_ema()

    def train_values(self, terms: dict[str, Tensor], with_g: bool) -> dict[str, Tensor]:
        """The terms to log from a training step's terms ``t``. A fixed key set per run
        (the logging windows average them): g_loss repeats its last value on critic-only
        batches."""
        if with_g:
            self._last_g = terms["g_loss"].detach()
        keys = ["d_loss", "critic_gap", "gp", "z_corr"]
        values = {k: terms[k].detach() for k in keys if k in terms}
        values["g_loss"] = getattr(self, "_last_g", torch.zeros((), device=self.device))
        return values

    def eval_inputs(self, batch, batch_idx: int) -> tuple[Any, Tensor]:
        """A held-out batch in model space and its fixed noise z (seeded by the index)."""
        real = self.inputs(batch)
        x = batch[0]
        return real, self.noise(x.shape[0], eval_generator(x.device, batch_idx))

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
        hp = self.hparams
        kw = adam_betas(hp.optimizer, hp.betas)
        return [
            make_optimizer(params, hp.optimizer, lr, hp.weight_decay, **kw)
            for params, lr in (
                (self.g_parameters(), hp.lr_g),
                (list(self.discriminator.parameters()), hp.lr_d),
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
