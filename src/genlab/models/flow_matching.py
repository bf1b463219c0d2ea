"""Flow matching (docs/models/flow_matching.md; Lipman et al. 2023) and rectified flow
(Liu et al. 2023).

Noise x_0 ~ N(0, I) at t = 0, data x_1 at t = 1; the conditional optimal-transport path

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1,    u_t = x_1 - (1 - sigma_min) x_0

(``path=rectified``: sigma_min = 0, the straight line of rectified flow). The net's
velocity v(x_t, t) regresses u_t (``loss``: mean over pixels of |v - u|^2). Samples
integrate dx/dt = v from t = 0 to 1 (Euler, Heun or adaptive dopri5). The exact
log-likelihood integrates the instantaneous change of variables backwards,

    log p_1(x) = log N(x(0); 0, I) - int_0^1 div v(x(t), t) dt,

with the exact divergence for data of at most ``exact_divergence_max_dim`` dimensions and
Hutchinson's estimator eps^T (dv/dx) eps (Rademacher eps, fixed along the path; unbiased)
for images. Images are uniformly dequantised, x = 2 (k + u) / 256 - 1, and

    {split}/bpd = (-log p(x) - D ln 2 + D ln 256) / (D ln 2)

(D ln 2: the scaling from [0, 1] to [-1, 1]), the flows' bits/dim of the 8-bit data.
The likelihood costs one ODE solve with a backward pass per function evaluation: it runs
at test time on the first ``bpd_max_images`` test images. The path, the divergence and
the ODE likelihood are plain tensor code in ``genlab.nn.flow_matching``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.checks import (
    NetSpec,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_args,
)
from genlab.data.transforms import dequantize, eval_generator
from genlab.errors import ConfigError
from genlab.models.denoising import TIME_SCALE, DenoiserFamily, frame_steps
from genlab.nn.flow_matching import OTPath, dequantized_bits_per_dim, ode_log_likelihood
from genlab.nn.ode import SOLVERS, Solver, odeint

Path = Literal["ot", "rectified"]


class FlowMatching(DenoiserFamily):
    """Velocity regression on conditional OT paths; ODE sampling and likelihoods."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        net: NetSpec | None = None,
        path: Path = "ot",
        sigma_min: UnitInterval = 1e-4,
        solver: Solver = "heun",
        sample_steps: PositiveInt = 50,
        likelihood_solver: Solver = "dopri5",
        likelihood_steps: PositiveInt = 100,
        ode_tolerance: PositiveFloat = 1e-5,
        hutchinson_samples: PositiveInt = 1,
        exact_divergence_max_dim: NonNegativeInt = 16,
        bpd_max_images: NonNegativeInt = 1000,
        **kwargs: Any,
    ) -> None:
        """Flow matching's own settings; the shared ones (conditioning, optimiser, EMA)
        are ``DenoiserFamily``'s."""
        own = {k: v for k, v in locals().items() if k not in ("self", "kwargs")}
        check_args(type(self), {**own, **kwargs}, "model")
        if sigma_min >= 1:
            raise ConfigError(f"model.sigma_min={sigma_min} must be below 1")
        super().__init__(data_shape, num_classes, net, **kwargs)
        self.path = OTPath(0.0 if path == "rectified" else sigma_min)

    # ---- data space -------------------------------------------------------------------
    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 images -> dequantised [-1, 1]: 2 (k + u) / 256 - 1; float data as they are."""
        return 2 * dequantize(x, generator) - 1 if x.dtype == torch.uint8 else x.float()

    # ---- the velocity field ------------------------------------------------------------
    def velocity(self, x: Tensor, t: Tensor, y: Tensor | None = None, **kw) -> Tensor:
        """v(x, t) for t (B,) or a scalar in [0, 1]."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return self.predict(x, t * TIME_SCALE, y, **kw)

    # ---- objectives -------------------------------------------------------------------
    def _loss(self, x1: Tensor, y: Tensor | None, g: torch.Generator | None) -> Tensor:
        x0 = torch.randn(x1.shape, generator=g, device=x1.device)
        t = torch.rand(x1.shape[0], generator=g, device=x1.device)
        v = self.velocity(self.path.point(x0, x1, t), t, y, guidance=0.0)
        return F.mse_loss(v, self.path.velocity(x0, x1))

    def train_terms(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        return {"loss": self._loss(x, y, None)}

    def log_prob(
        self,
        x: Tensor,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        exact: bool | None = None,
    ) -> Tensor:
        """log p(x) in nats (B,) for x in model space, by the ODE backwards from t = 1 to
        0 (``model.likelihood_solver``); ``exact`` divergence by default for data of at
        most ``model.exact_divergence_max_dim`` dimensions, Hutchinson's otherwise."""
        hp = self.hparams
        if exact is None:
            exact = self.dim <= hp.exact_divergence_max_dim
        with torch.inference_mode(False):  # labels used under autograd: normal tensors
            y = None if y is None else y.clone()
        probe = None
        if not exact:  # Rademacher +-1, fixed along the path
            probe = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
            probe = probe.to(x.dtype) * 2 - 1
        return ode_log_likelihood(
            lambda u, t: self.velocity(u, t, y), x, probe, hp.likelihood_solver,
            hp.likelihood_steps, hp.ode_tolerance, f"ODE likelihood of {x.shape[0]} examples",
        )  # fmt: skip

    def bits_per_dim(self, loglik: Tensor) -> Tensor:
        """bpd of the 8-bit data from log p of its dequantised [-1, 1] version."""
        return dequantized_bits_per_dim(loglik, self.dim)

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """loss: the velocity regression with seeded noise and times."""
        g = eval_generator(batch[0].device, batch_idx)
        x1 = self.preprocess(batch[0], g)
        y = batch[1] if self.hparams.conditional else None
        return {"loss": self._loss(x1, y, g)}

    def likelihood_metrics(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """loglik (nats per example) and, for 8-bit images, bpd of the rows of this batch
        that are among the split's first ``bpd_max_images`` (by their row index ``idx``,
        so the same images whatever the batch size or process count; empty (0,) tensors
        when none is); with ``hutchinson_samples`` S >= 2 probes, also ``bpd_probe_std``:
        the standard deviation of a one-probe estimate of an image's bpd (mean over
        images)."""
        idx = batch[2] if len(batch) > 2 else torch.arange(batch[0].shape[0])
        keep = (idx >= 0) & (idx < self.hparams.bpd_max_images)  # -1: DDP padding
        take = int(keep.sum())
        images = batch[0].dtype == torch.uint8
        s = (
            1
            if self.dim <= self.hparams.exact_divergence_max_dim
            else self.hparams.hutchinson_samples
        )
        if take == 0:
            empty = batch[0].new_zeros(0, dtype=torch.float32)
            names = ["loglik"] + (["bpd"] + (["bpd_probe_std"] if s >= 2 else []) if images else [])
            return dict.fromkeys(names, empty)
        g = eval_generator(batch[0].device, batch_idx, seed=4321)
        x = self.preprocess(batch[0][keep], g)
        y = batch[1][keep] if self.hparams.conditional else None
        xs = x.repeat(s, *[1] * (x.dim() - 1))  # (S * take, ...): S probes per image
        ll = self.log_prob(xs, None if y is None else y.repeat(s), g).view(s, take)
        out = {"loglik": ll.mean(0)}
        if images:
            bpd = self.bits_per_dim(ll)
            out["bpd"] = bpd.mean(0)
            if s >= 2:
                out["bpd_probe_std"] = bpd.std(0)
        return out

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        if self.hparams.bpd_max_images == 0:
            return
        values = self.likelihood_metrics(batch, self.eval_batch_idx(batch_idx))
        # Weighted by the images they cover: a batch (or a rank) past the first
        # bpd_max_images logs zeros with weight 0, so every rank logs the same names.
        n = next(iter(values.values())).shape[0]
        means = {f"test/{k}": v.mean() if n else v.new_zeros(()) for k, v in values.items()}
        self.log_dict(means, batch_size=float(n), sync_dist=True)  # float: see eval_weight
        # Hutchinson's probes and the ODE solve: the estimates' standard errors beside them
        keep = {k: values[k] for k in ("loglik", "bpd") if k in values}
        self.log_standard_errors("test", keep, (batch[0],))

    # ---- sampling ---------------------------------------------------------------------
    def _sample(self, z, labels, steps, generator, record, solver: Solver | None = None):
        """Integrate dx/dt = v from noise (t = 0) to data (t = 1)."""
        hp = self.hparams
        solver = solver or hp.solver
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is not one of {', '.join(SOLVERS)}")
        steps = int(steps or hp.sample_steps)
        field = lambda t, x: self.velocity(x, t, labels)  # noqa: E731
        if not record:
            x, _ = odeint(
                field, z, 0.0, 1.0, solver, steps, rtol=hp.ode_tolerance, atol=hp.ode_tolerance
            )
            return (x.clamp(-1, 1) if self.images else x), []
        # A trajectory: fixed steps (an adaptive solve has no evenly spaced states).
        fixed = solver if solver != "dopri5" else "heun"
        marks, path, x = frame_steps(steps, record), [z], z
        for k in range(steps):
            x, _ = odeint(field, x, k / steps, (k + 1) / steps, fixed, 1)
            if k in marks:
                path.append(x)
        return (x.clamp(-1, 1) if self.images else x), path
