"""Deep InfoMax (Hjelm et al. 2019); docs/models/infomax.md.

A conv encoder maps an image x to a local feature map C(x) (B, c, h, w) and, through a
fully connected layer, to a global code y = E(x) (B, code_dim). The encoder maximises

    alpha * I(x; y) + beta * (1/hw) sum_l I(C_l(x); y) - gamma * prior-matching loss

with each I estimated by a critic on positive pairs (views of the same image) against
negative pairs (other images of the batch): ``estimator=jsd|infonce|dv``
(:mod:`genlab.metrics.mutual_info`). Critics are "encode and dot product": the global
critic scores <phi(flatten C(x_i)), psi(y_j)>, the local one <phi_l(C_l(x_i)), psi_l(y_j)>
at every location l, so one batch gives all B x B (x hw) pairs at the cost of a matmul.
Prior matching: a small discriminator tells draws of the prior (uniform on [0, 1]^d, the
code then being a sigmoid, or N(0, I)) from codes; the encoder gets the non-saturating
GAN loss. DIM(G) is alpha=1, beta=0, gamma=1; DIM(L) alpha=0, beta=1, gamma=0.1.

Logged (train and eval): ``mi_global``, ``mi_local`` (the estimator's value: nats for
infonce / dv, the JSD bound for jsd), ``prior_d_loss``, ``prior_g_loss`` and ``loss``
(the encoder's objective). A representation learner: no ``sample``; the default
callbacks score it with probes on ``encode(x)`` = y.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    Betas,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import to_symmetric
from genlab.errors import ConfigError, require_images
from genlab.metrics.mutual_info import Estimator, mi_lower_bound
from genlab.models.common import GenlabModule, adam_betas, make_optimizer


class _Embed(nn.Module):
    """Two-layer ReLU net with a linear shortcut (the DIM code's critic embeddings).

    ``conv``: 1x1 convolutions on (B, c, h, w) maps; else linear layers on (B, c)."""

    def __init__(self, in_dim: int, out_dim: int, conv: bool = False) -> None:
        super().__init__()
        layer = (lambda a, b: nn.Conv2d(a, b, 1)) if conv else nn.Linear
        self.block = nn.Sequential(layer(in_dim, out_dim), nn.ReLU(), layer(out_dim, out_dim))
        self.shortcut = layer(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) + self.shortcut(x)


class InfoMax(GenlabModule):
    """Deep InfoMax: global, local and prior-matching objectives on a conv encoder."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        code_dim: PositiveInt = 64,
        channels: Sequence[PositiveInt] = (64, 128),
        hidden_width: PositiveInt = 1024,
        embed_dim: PositiveInt = 256,
        estimator: Estimator = "infonce",
        alpha: NonNegativeFloat = 0.0,
        beta: NonNegativeFloat = 1.0,
        gamma: NonNegativeFloat = 0.1,
        prior: Literal["uniform", "gaussian"] = "uniform",
        shift: NonNegativeInt = 0,
        disc_hidden_sizes: Sequence[PositiveInt] = (1000, 200),
        lr: PositiveFloat = 1e-4,
        betas: Betas = (0.5, 0.999),
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        require_images("model=infomax", self.data_shape)
        if alpha == beta == 0:
            raise ConfigError(
                "model=infomax needs model.alpha > 0 (global MI) or model.beta > 0 (local MI): "
                "both are 0, so nothing would be learnt"
            )
        c_in, hgt, wid = self.data_shape
        k = 2 ** len(channels)
        if hgt % k or wid % k:
            raise ConfigError(
                f"model.channels={list(channels)} halves the image side {len(channels)} times, "
                f"so H and W must be divisible by {k}, but the images are {hgt}x{wid}: "
                "use fewer channels entries"
            )
        self.automatic_optimization = False  # encoder + critics, then the prior discriminator
        layers: list[nn.Module] = []
        for a, b in zip([c_in, *channels[:-1]], channels, strict=True):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.BatchNorm2d(b), nn.ReLU()]
        self.local_net = nn.Sequential(*layers)  # x -> C(x): (B, c, h, w)
        c, area = channels[-1], (hgt // k) * (wid // k)
        self.global_net = nn.Sequential(  # C(x) -> y: (B, code_dim)
            nn.Flatten(),
            nn.Linear(c * area, hidden_width),
            nn.BatchNorm1d(hidden_width),
            nn.ReLU(),
            nn.Linear(hidden_width, code_dim),
        )
        # Critic embeddings: only the ones whose term is on are built (and trained).
        if alpha > 0:
            self.global_phi = _Embed(c * area, embed_dim)
            self.global_psi = _Embed(code_dim, embed_dim)
        if beta > 0:
            self.local_phi = _Embed(c, embed_dim, conv=True)
            self.local_psi = _Embed(code_dim, embed_dim)
        sizes = [code_dim, *disc_hidden_sizes]
        disc: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            disc += [nn.Linear(a, b), nn.ReLU()]
        self.discriminator = nn.Sequential(*disc, nn.Linear(sizes[-1], 1))

    # ---- the model --------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> [-1, 1]; float data pass as they are."""
        return to_symmetric(x) if x.dtype == torch.uint8 else x.float()

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Local map C(x) (B, c, h, w) and global code y (B, code_dim)."""
        local = self.local_net(x)
        code = self.global_net(local)
        return local, torch.sigmoid(code) if self.hparams.prior == "uniform" else code

    def encode(self, x: Tensor) -> Tensor:
        """The global code y = E(x): (B, code_dim)."""
        return self.features(x)[1]

    # The paper's classification table probes three layers: the last conv map, the fully
    # connected layer and the code y (``encode``); the test pass probes all three.
    probe_layer_names = ("conv", "fc")

    def probe_layers(self, x: Tensor) -> dict[str, Tensor]:
        """The encoder's earlier layers as flat features: {"conv": C(x) (B, c*h*w),
        "fc": the ReLU layer before y (B, hidden_width)}."""
        local = self.local_net(x)
        return {"conv": local.flatten(1), "fc": self.global_net[:-1](local)}

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        d = self.hparams.code_dim
        if self.hparams.prior == "uniform":
            return torch.rand(n, d, generator=generator, device=self.device)
        return torch.randn(n, d, generator=generator, device=self.device)

    def mi_terms(self, local: Tensor, code: Tensor) -> dict[str, Tensor]:
        """The estimators' values of I(x; y) and the mean over locations of I(C_l(x); y)."""
        hp = self.hparams
        zero = code.new_zeros(())
        out = {"mi_global": zero, "mi_local": zero}
        if hp.alpha > 0:
            scores = self.global_phi(local.flatten(1)) @ self.global_psi(code).T  # (B, B)
            out["mi_global"] = mi_lower_bound(scores, hp.estimator)
        if hp.beta > 0:
            phi = self.local_phi(local).flatten(2)  # (B, e, hw)
            psi = self.local_psi(code)  # (B, e)
            scores = torch.einsum("iel,je->ijl", phi, psi)  # (B, B, hw): C_l(x_i) vs y_j
            out["mi_local"] = mi_lower_bound(scores, hp.estimator)
        return out

    def prior_losses(self, code: Tensor, generator=None) -> dict[str, Tensor]:
        """The discriminator's loss (prior draws real, codes fake; codes detached) and the
        encoder's non-saturating loss -log sigmoid(D(y))."""
        real = self.discriminator(self.prior_sample(code.shape[0], generator))
        fake_d = self.discriminator(code.detach())
        d_loss = F.softplus(-real).mean() + F.softplus(fake_d).mean()
        g_loss = F.softplus(-self.discriminator(code)).mean()
        return {"prior_d_loss": d_loss, "prior_g_loss": g_loss}

    def objective(self, x: Tensor, generator=None, augment: bool = False) -> dict[str, Tensor]:
        """The terms of one batch. ``augment`` (training, ``shift`` > 0): the code comes
        from one random translation of each image, the local map from another."""
        hp = self.hparams
        if augment and hp.shift > 0:
            local = self.local_net(random_shift(x, hp.shift))
            code = self.features(random_shift(x, hp.shift))[1]
        else:
            local, code = self.features(x)
        terms = self.mi_terms(local, code)
        terms.update(self.prior_losses(code, generator))
        terms["loss"] = (
            -(hp.alpha * terms["mi_global"] + hp.beta * terms["mi_local"])
            + hp.gamma * terms["prior_g_loss"]
        )
        return terms

    # ---- Lightning --------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        opt_e, opt_d = self.optimizers()
        terms = self.objective(self.preprocess(batch[0]), augment=True)
        opt_e.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        opt_e.step()
        if self.hparams.gamma > 0:
            # The encoder's backward also reached D; its zero_grad discards that.
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(terms["prior_d_loss"])
            opt_d.step()
        self.log_train({k: v.detach() for k, v in terms.items()})
        return terms["loss"]

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss, mi_global, mi_local, prior_d_loss, prior_g_loss on one held-out batch
        (the MI values depend on the batch size: infonce is at most log B)."""
        g = torch.Generator(device=self.device).manual_seed(batch_idx)
        return self.objective(self.preprocess(batch[0]), g)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        kw = adam_betas(hp.optimizer, hp.betas)
        disc = set(self.discriminator.parameters())
        enc = [p for p in self.parameters() if p not in disc]
        return [
            make_optimizer(enc, hp.optimizer, hp.lr, hp.weight_decay, **kw),
            make_optimizer(list(disc), hp.optimizer, hp.lr, hp.weight_decay, **kw),
        ]


def random_shift(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Each image translated by its own random offset in [-s, s] pixels each way, the
    border filled with the background (the minimum value): (B, C, H, W) -> same."""
    b, c, hgt, wid = x.shape
    # (B, C, H + 2s, W + 2s) filled with the minimum, kept on the device (no host sync)
    pad = x.amin().expand(b, c, hgt + 2 * s, wid + 2 * s).clone()
    pad[:, :, s : s + hgt, s : s + wid] = x
    off = torch.randint(0, 2 * s + 1, (2, b), generator=generator, device=x.device)
    rows = off[0, :, None] + torch.arange(hgt, device=x.device)  # (B, H)
    cols = off[1, :, None] + torch.arange(wid, device=x.device)  # (B, W)
    idx = torch.arange(b, device=x.device)[:, None, None]
    # advanced indexing puts the channel axis last: (B, H, W, C) -> (B, C, H, W)
    return pad[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
