"""A small ODE solver for flow matching: fixed-step Euler and Heun, and adaptive
Dormand-Prince 5(4) (``dopri5``, as in torchdiffeq) with error control.

``odeint(f, y0, t0, t1, ...)`` integrates dy/dt = f(t, y) from t0 to t1 (either
direction) for a tensor or a tuple of tensors ``y`` (an augmented state such as
(x, log-density change)); ``t`` passes to f as a 0-dim tensor. Returns the final state
and the number of function evaluations. No host sync per step for the fixed-step
solvers; dopri5 reads its error norm once per step (step-size control needs it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.progress import Progress

State = Tensor | tuple[Tensor, ...]
Solver = Literal["euler", "heun", "dopri5"]
SOLVERS = ("euler", "heun", "dopri5")

# Dormand-Prince 5(4) tableau: nodes c, stages a, 5th-order weights b, 4th-order b_star.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_STAR = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


def _tup(y: State) -> tuple[Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


def _axpy(y: tuple[Tensor, ...], h: float, ks: list[tuple[Tensor, ...]], w) -> tuple:
    """y + h * sum_i w_i k_i, per state component."""
    out = []
    for j, yj in enumerate(y):
        acc = yj
        for wi, k in zip(w, ks, strict=False):
            if wi:
                acc = acc + (h * wi) * k[j]
        out.append(acc)
    return tuple(out)


def odeint(
    f: Callable[[Tensor, State], State],
    y0: State,
    t0: float,
    t1: float,
    solver: Solver = "heun",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10000,
    progress: str | None = None,
) -> tuple[State, int]:
    """Integrate dy/dt = f(t, y) from t0 to t1: (y(t1), function evaluations).

    ``steps``: the fixed-step solvers' step count (Heun: 2 evaluations per step);
    dopri5 ignores it and adapts its step to rtol / atol (6 evaluations per step).
    ``progress``: name the solve in progress lines (how much of [t0, t1] is done, the time
    left) when it takes more than a few seconds."""
    if solver not in SOLVERS:
        raise ConfigError(f"ODE solver {solver!r} is not one of {', '.join(SOLVERS)}")
    single = not isinstance(y0, tuple)
    y = _tup(y0)
    dev, dt = y[0].device, y[0].dtype

    def fn(t: float, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return _tup(f(torch.tensor(t, device=dev, dtype=dt), state[0] if single else state))

    nfe = 0
    track = Progress(progress, 1000, percent_only=True) if progress else None
    if solver in ("euler", "heun"):
        h = (t1 - t0) / steps
        for i in range(steps):
            t = t0 + i * h
            if track is not None:
                track.update(round(1000 * (i + 1) / steps) - track.done)
            k1 = fn(t, y)
            nfe += 1
            if solver == "euler":
                y = _axpy(y, h, [k1], [1.0])
                continue
            k2 = fn(t + h, _axpy(y, h, [k1], [1.0]))
            nfe += 1
            y = _axpy(y, h, [k1, k2], [0.5, 0.5])
        if track is not None:
            track.finish()
        return (y[0] if single else y), nfe
    out = _dopri5(fn, y, t0, t1, rtol, atol, max_steps, single, track)
    if track is not None:
        track.finish()
    return out


def _dopri5(
    fn, y, t0: float, t1: float, rtol: float, atol: float, max_steps: int, single: bool, track
):
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    t, h = t0, direction * min(0.01, span) if span else 0.0
    k1 = fn(t, y)
    nfe, n = 1, 0
    while direction * (t1 - t) > 1e-12 * max(1.0, span):
        if n >= max_steps:
            raise RuntimeError(f"dopri5 took more than {max_steps} steps: lower the tolerance")
        n += 1
        if direction * (t + h - t1) > 0:
            h = t1 - t
        ks = [k1]
        for i in range(1, 7):
            ks.append(fn(t + _C[i] * h, _axpy(y, h, ks, _A[i])))
        nfe += 6
        y_new = _axpy(y, h, ks, _B)
        y_err = [
            sum((h * (b - bs)) * k[j] for b, bs, k in zip(_B, _B_STAR, ks, strict=True) if b != bs)
            for j in range(len(y))
        ]
        # RMS of the error scaled by atol + rtol * max(|y|, |y_new|), over every element.
        sq = sum(
            (e / (atol + rtol * torch.maximum(a.abs(), b.abs()))).pow(2).sum()
            for e, a, b in zip(y_err, y, y_new, strict=True)
        )
        err = float((sq / sum(a.numel() for a in y)).sqrt())
        if err <= 1.0:
            t, y, k1 = t + h, y_new, ks[6]  # first-same-as-last: k7 is f at the new point
            if track is not None and span:
                track.update(round(1000 * abs(t - t0) / span) - track.done)
        factor = 10.0 if err == 0 else min(10.0, max(0.2, 0.9 * err**-0.2))
        h = h * factor
    return (y[0] if single else y), nfe
