"""Deep variational information bottleneck (Alemi et al. 2017); docs/models/vib.md.

A supervised classifier through a stochastic code: encoder x -> (mu, sigma) with
sigma = softplus(s - 5) as in the paper, z = mu + sigma * eps, and a softmax (logistic
regression) decoder z -> p(y|z). Per example, in nats, averaged over the batch:

    ce   = -log p(y | z)                         (one z draw)
    kl   = KL(q(z|x) || N(0, I))                 (analytic: the rate, >= I(Z; X))
    izy  = H(Y) - ce                             (a lower bound on I(Z; Y))
    loss = ce + beta * kl

``error`` is the test error of one z draw; ``error_avg`` (test time) that of the softmax
averaged over ``test_samples`` draws (12 in the paper); both log their standard error over
the test images (``test/error_avg_se`` = sqrt(e (1 - e) / (n - 1)) for n images).
Evaluation uses an exponential moving average of the weights (``ema_decay``; the paper's
Polyak averaging, 0.999), with the warm-up every genlab average has (``AveragedNets``).

``deterministic=True`` is the paper's baseline on the same net: z = mu(x), no noise and no
rate term (loss = ce; ``kl`` is not logged, the rate of a deterministic code is unbounded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    Betas,
    NetSpec,
    NonNegativeFloat,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import eval_generator, to_unit
from genlab.errors import ConfigError
from genlab.metrics import gaussian_kl
from genlab.models.common import GenlabModule, adam_betas, make_optimizer
from genlab.models.ema import AveragedNets
from genlab.nn import build_net


class VIB(AveragedNets, GenlabModule):
    """Classifier with a Gaussian code penalised by beta * KL(q(z|x) || N(0, I))."""

    uses_labels = True  # trained with the labels: probe tables mark it
    ema_of = ("net",)  # the averaged copy (ema.net) is what every evaluation uses

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 256,
        net: NetSpec | None = None,
        beta: NonNegativeFloat = 1e-3,
        test_samples: PositiveInt = 12,
        lr: PositiveFloat = 1e-4,
        betas: Betas = (0.5, 0.999),
        lr_decay: UnitInterval = 0.97,
        decay_every: PositiveInt = 2,
        ema_decay: UnitInterval = 0.999,
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
        deterministic: bool = False,
    ) -> None:
        check_args(type(self), locals(), "model")
        if num_classes < 2:
            raise ConfigError(
                "model=vib is a classifier and needs labelled data (num_classes >= 2): "
                "choose an image data set such as data=mnist"
            )
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        nets = build_net(net or {"arch": "genlab.nn.MLP", "hidden_sizes": [1024, 1024]})
        self.net = nn.ModuleDict(
            {
                "encoder": nets.encoder(self.data_shape, 2 * latent_dim),  # -> (mu, s)
                "decoder": nn.Linear(latent_dim, num_classes),  # logits of p(y|z)
            }
        )
        self.build_ema()
        # H(Y) in nats: the training labels' entropy once fit starts (uniform until then).
        self.register_buffer("label_entropy", torch.tensor(math.log(num_classes)))

    # ---- the model --------------------------------------------------------------------
    def eval_net(self) -> nn.ModuleDict:
        """The weights evaluation uses: the moving average in evaluation mode."""
        return self.active_net("net")

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> [0, 1]; float data pass as they are."""
        return to_unit(x) if x.dtype == torch.uint8 else x.float()

    def posterior(self, x: Tensor, net: nn.ModuleDict | None = None) -> tuple[Tensor, Tensor]:
        """mu, log_var of q(z|x): (B, d) each; sigma = softplus(s - 5) (the paper's bias)."""
        mu, s = (net or self.net)["encoder"](x).chunk(2, dim=-1)
        sigma = F.softplus(s - 5.0)
        return mu, 2.0 * torch.log(sigma + 1e-12)

    def encode(self, x: Tensor) -> Tensor:
        """The code's mean mu(x): (B, d) (the evaluation weights)."""
        return self.posterior(x, self.eval_net())[0]

    def terms(
        self, x: Tensor, y: Tensor, net: nn.ModuleDict, generator=None, samples: int = 1
    ) -> dict[str, Tensor]:
        """Per-example ce, kl (B,) and the predictive probabilities (B, K) averaged over
        ``samples`` draws of z (ce is always that of the first draw)."""
        mu, log_var = self.posterior(x, net)
        if self.hparams.deterministic:  # the baseline: z = mu, every draw the same
            z, kl = mu.unsqueeze(0), torch.zeros_like(mu[:, 0])  # (1, B, d), (B,)
        else:
            eps = torch.randn((samples, *mu.shape), generator=generator, device=mu.device)
            z, kl = mu + (0.5 * log_var).exp() * eps, gaussian_kl(mu, log_var)  # (S, B, d)
        logits = net["decoder"](z)  # (S, B, K)
        ce = F.cross_entropy(logits[0], y, reduction="none")
        return {
            "ce": ce,
            "kl": kl,
            "logits": logits[0],
            "probs": logits.softmax(-1).mean(0),
        }

    # ---- Lightning --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        labels = getattr(dm, "splits", {}).get("train", (None, None))[1] if dm else None
        if labels is not None:
            p = torch.bincount(labels.long(), minlength=self.hparams.num_classes).double()
            p = p / p.sum()
            h = -(p[p > 0] * p[p > 0].log()).sum()
            self.label_entropy.fill_(float(h))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = self.preprocess(batch[0]), batch[1]
        terms = self.terms(x, y, self.net)
        ce, kl = terms["ce"].mean(), terms["kl"].mean()
        loss = ce + self.hparams.beta * kl
        error = (terms["logits"].argmax(-1) != y).float().mean()
        self.log_train(self._rate({"loss": loss, "ce": ce, "kl": kl, "error": error}))
        return loss

    def _rate(self, logs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``logs`` without ``kl`` for the deterministic baseline (its rate is unbounded)."""
        return {k: v for k, v in logs.items() if k != "kl" or not self.hparams.deterministic}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.use_ema:
            self.update_ema()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """VIB checkpoints from before genlab's own average kept torch's AveragedModel
        (``ema.module.*``, ``ema.n_averaged``): read them as ``ema.net.*`` / ``ema_count``."""
        state = checkpoint.get("state_dict", {})
        for k in [k for k in state if k.startswith("ema.module.")]:
            state["ema.net." + k.removeprefix("ema.module.")] = state.pop(k)
        if "ema.n_averaged" in state:
            state["ema_count"] = state.pop("ema.n_averaged").long().reshape(())
        self.migrate_ema_state(checkpoint)

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss, ce, kl, izy (nats) and error (one z draw); with ``full`` also error_avg,
        the error of the softmax averaged over ``test_samples`` draws."""
        x, y = self.preprocess(batch[0]), batch[1]
        g = eval_generator(x.device, batch_idx)
        terms = self.terms(x, y, self.eval_net(), g, self.hparams.test_samples if full else 1)
        ce, kl = terms["ce"].mean(), terms["kl"].mean()
        out = {
            "loss": ce + self.hparams.beta * kl,
            "ce": ce,
            "kl": kl,
            "izy": self.label_entropy - ce,
            "error": (terms["logits"].argmax(-1) != y).float().mean(),
        }
        if full:
            wrong_avg = (terms["probs"].argmax(-1) != y).float()  # (B,) 0/1 per test image
            wrong = (terms["logits"].argmax(-1) != y).float()
            out["error_avg"] = wrong_avg.mean()
            # standard errors over the test images (the binomial spread of an error rate)
            out["per_image"] = {"error_avg": wrong_avg, "error": wrong}
        return self._rate(out)

    def configure_optimizers(self):
        hp = self.hparams
        kw = adam_betas(hp.optimizer, hp.betas)
        opt = make_optimizer(self.net.parameters(), hp.optimizer, hp.lr, hp.weight_decay, **kw)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.decay_every, gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
