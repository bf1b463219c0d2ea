"""How far a learning curve is from a paper's number: a power-law fit and its reading.

A validation curve y(t) over epochs t is fitted on its later part by

    y(t) = a + b * t^(-c),     c > 0,

the saturating form learning curves take once past their first epochs: ``a`` is the
value the run would approach with unlimited epochs, and where the target lies on the
curve's side of ``a`` the fit gives the epoch that reaches it,
t* = ((target - a) / b)^(-1/c). A target beyond the asymptote is out of reach for this
recipe at any budget (another schedule or model is needed). Extrapolating a fitted curve
is a forecast, not a measurement: the result says how many epochs the fit covered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Extrapolation:
    a: float  # the asymptote (unlimited epochs)
    b: float
    c: float
    first_epoch: float  # the part of the curve fitted: epochs [first_epoch, last_epoch]
    last_epoch: float
    last_value: float
    target: float | None = None
    epochs_to_target: float | None = None  # None: reached already, or out of reach
    reachable: bool | None = None  # target on the curve's side of the asymptote
    rms: float = 0.0  # residual of the fit
    note: str = ""  # why there is no epoch count, where there is none

    def predict(self, t: np.ndarray | float) -> np.ndarray:
        return self.a + self.b * np.power(np.asarray(t, dtype=float), -self.c)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_power_law(epochs, values, skip: float = 0.25) -> Extrapolation:
    """Fit y = a + b t^(-c) to the (epoch, value) points past the first ``skip`` share of
    the epochs (epochs counted from 1). Needs at least 4 points there."""
    from scipy.optimize import curve_fit

    t = np.asarray(epochs, dtype=float) + 1.0  # epoch 0 is the first: t >= 1
    y = np.asarray(values, dtype=float)
    if t.size < 4:
        raise ValueError(f"{t.size} points on the curve: need 4 past the first {skip:.0%}")
    keep = t >= t.min() + skip * (t.max() - t.min())
    t, y = t[keep], y[keep]
    if t.size < 4:
        raise ValueError(f"{t.size} points past the first {skip:.0%} of the curve: need 4")

    def f(t, a, b, c):
        return a + b * np.power(t, -c)

    # Start from c = 0.5 and the line through the first and last points in t^-0.5.
    u0, u1 = t[0] ** -0.5, t[-1] ** -0.5
    b0 = (y[0] - y[-1]) / (u0 - u1) if u0 != u1 else 0.0
    p0 = (y[-1] - b0 * u1, b0, 0.5)
    scale = max(float(np.ptp(y)), 1e-12)
    (a, b, c), _ = curve_fit(
        f, t, y, p0=p0, bounds=([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 5.0]), maxfev=20000,
        x_scale=(scale, scale, 1.0),
    )  # fmt: skip
    rms = float(np.sqrt(np.mean((f(t, a, b, c) - y) ** 2)))
    return Extrapolation(
        float(a), float(b), float(c), float(t[0] - 1), float(t[-1] - 1), float(y[-1]), rms=rms
    )


def to_target(fit: Extrapolation, target: float) -> Extrapolation:
    """``fit`` with the epochs that reach ``target`` (None where the last value already
    does, or where the target lies beyond the asymptote)."""
    fit.target = float(target)
    improving_up = fit.b < 0  # y rises towards a
    done = fit.last_value >= target if improving_up else fit.last_value <= target
    fit.reachable = (target < fit.a) if improving_up else (target > fit.a)
    fit.epochs_to_target = None
    if done:
        fit.note = "the run's last value reaches the target"
    elif not fit.reachable:
        fit.note = "the target lies beyond the fitted asymptote: out of reach for this recipe"
    else:
        ratio = (target - fit.a) / fit.b  # = t^(-c) > 0
        t_star = float(ratio ** (-1.0 / fit.c) - 1.0) if ratio > 0 else math.inf
        if t_star <= fit.last_epoch:  # the fit runs ahead of the data it was fitted to
            fit.note = (
                "the fit crosses the target inside the fitted epochs, the data do not: the "
                "curve is not a power law (a decaying learning rate flattens it?)"
            )
        else:
            fit.epochs_to_target = t_star
    return fit
