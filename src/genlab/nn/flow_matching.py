"""Flow matching as plain tensor code (no Lightning): the conditional optimal-transport
path (Lipman et al. 2023; rectified flow, Liu et al. 2023, at sigma_min = 0), the
divergence of a velocity field (exact or Hutchinson's) and the log-likelihood by the
instantaneous change of variables (Chen et al. 2018), integrated with ``genlab.nn.ode``.

Noise x_0 ~ N(0, I) at t = 0, data x_1 at t = 1:

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1,    u_t = x_1 - (1 - sigma_min) x_0
    log p_1(x) = log N(x(0); 0, I) - int_0^1 div v(x(t), t) dt
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genlab.nn.ode import Solver, odeint

Field = Callable[[Tensor, Tensor], Tensor]  # v(x (B, ...), t (B,) or scalar) -> (B, ...)


class OTPath:
    """The conditional OT path with minimum noise ``sigma_min`` (0: rectified flow)."""

    def __init__(self, sigma_min: float = 0.0) -> None:
        self.sigma_min = float(sigma_min)

    def point(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """x_t on the path from noise x0 to data x1 (B, ...), t (B,) in [0, 1]."""
        t = t.view(-1, *[1] * (x0.dim() - 1))
        return (1 - (1 - self.sigma_min) * t) * x0 + t * x1

    def velocity(self, x0: Tensor, x1: Tensor) -> Tensor:
        """u_t = d x_t / dt = x1 - (1 - sigma_min) x0 (constant along the path)."""
        return x1 - (1 - self.sigma_min) * x0


def divergence(field: Field, x: Tensor, t: Tensor, probe: Tensor | None) -> tuple[Tensor, Tensor]:
    """(v, div v) at x (B, ...), (B,): exact (one backward pass per dimension) when probe
    is None, else Hutchinson's probe^T (dv/dx) probe (unbiased for a Rademacher or
    Gaussian probe). Call with gradients enabled."""
    x = x.detach().requires_grad_(True)
    v = field(x, t)
    if probe is not None:
        (vjp,) = torch.autograd.grad((v * probe).sum(), x)
        return v.detach(), (vjp * probe).flatten(1).sum(1)
    flat = v.flatten(1)
    div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for d in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < flat.shape[1] - 1)
        div = div + g.flatten(1)[:, d]
    return v.detach(), div


def ode_log_likelihood(
    field: Field,
    x: Tensor,
    probe: Tensor | None = None,
    solver: Solver = "dopri5",
    steps: int = 100,
    tolerance: float = 1e-5,
    progress: str | None = None,
) -> Tensor:
    """log p_1(x) in nats (B,) of the flow dx/dt = field(x, t) with a standard normal at
    t = 0: the ODE and its divergence integral run backwards from t = 1 to 0; ``probe``
    (shaped like x, fixed along the path) selects Hutchinson's estimator, None the exact
    divergence. Works inside ``torch.no_grad`` / inference mode (it needs autograd)."""
    # Autograd inside a test / no-grad pass: inference tensors are cloned into normal
    # ones first (they cannot be saved for backward).
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()
        probe = None if probe is None else probe.clone()

        def f(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return divergence(field, state[0], t, probe)

        state = (x, torch.zeros(x.shape[0], device=x.device))
        (z, delta), _ = odeint(
            f, state, 1.0, 0.0, solver=solver, steps=steps, rtol=tolerance, atol=tolerance,
            progress=progress,
        )  # fmt: skip
    dim = x[0].numel()
    prior = -0.5 * z.pow(2).flatten(1).sum(1) - 0.5 * dim * math.log(2 * math.pi)
    return (prior + delta).detach()


def dequantized_bits_per_dim(loglik: Tensor, dim: int) -> Tensor:
    """bits/dim of 8-bit data from log p (nats) of its dequantised [-1, 1] version,
    x = 2 (k + u) / 256 - 1: (-log p - D ln 2 + D ln 256) / (D ln 2) (D ln 2: the scaling
    from [0, 1] to [-1, 1])."""
    return (-loglik - dim * math.log(2) + dim * math.log(256)) / (dim * math.log(2))
