"""Restricted Boltzmann machines: energies, free energies, Gibbs sampling, annealed
importance sampling (AIS) of the partition function and its exact value for small
models. Used by ``models/rbm.py`` and the stacked layers of ``models/dbn.py``.

Binary visible units v in {0, 1}^V, hidden units h either binary (Bernoulli) or
real-valued with unit-variance Gaussian noise (the linear code layer of Hinton &
Salakhutdinov 2006):

    Bernoulli h:  E(v, h) = -b.v - c.h - v'Wh
                  F(v)    = -b.v - sum_j softplus(c_j + (v'W)_j)
    Gaussian h:   E(v, h) = -b.v - c.h - v'Wh + |h|^2 / 2
                  F(v)    = -b.v - sum_j (c_j + (v'W)_j)^2 / 2 - (H / 2) log(2 pi)

with p(v) = exp(-F(v)) / Z. Everything is in nats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.progress import Progress


def bernoulli(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary states drawn with probabilities ``p`` (same shape and dtype): uniform draws
    compared with p, three times faster than ``torch.bernoulli`` on a CPU (the Gibbs
    sweeps of CD-25, AIS and RAISE spend half their time drawing)."""
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


class RBMLayer(nn.Module):
    """One RBM layer: weights W (V, H), visible bias b (V,), hidden bias c (H,).

    ``W ~ N(0, init_std^2)``, biases zero (the trainer sets b from the data's marginals,
    as Hinton's practical guide recommends).
    """

    def __init__(
        self, visible: int, hidden: int, gaussian_hidden: bool = False, init_std: float = 0.01
    ) -> None:
        super().__init__()
        self.gaussian_hidden = gaussian_hidden
        self.W = nn.Parameter(torch.randn(visible, hidden) * init_std)
        self.b = nn.Parameter(torch.zeros(visible))
        self.c = nn.Parameter(torch.zeros(hidden))

    @property
    def visible(self) -> int:
        return self.W.shape[0]

    @property
    def hidden(self) -> int:
        return self.W.shape[1]

    # ---- conditionals ---------------------------------------------------------------
    def hidden_mean(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """E[h | v] at inverse temperature beta: (B, V) -> (B, H)."""
        a = beta * (v @ self.W + self.c)
        return a if self.gaussian_hidden else torch.sigmoid(a)

    def visible_logits(self, h: Tensor, beta: float = 1.0) -> Tensor:
        """Logits of p(v | h) at inverse temperature beta: (B, H) -> (B, V)."""
        return beta * (h @ self.W.T + self.b)

    def sample_hidden(self, v: Tensor, beta: float = 1.0, generator=None) -> Tensor:
        mean = self.hidden_mean(v, beta)
        if self.gaussian_hidden:  # unit variance at beta = 1; 1/beta in general
            std = 1.0 / math.sqrt(beta) if beta > 0 else 0.0
            return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device)
        return bernoulli(mean, generator=generator)

    def sample_visible(self, h: Tensor, generator=None) -> Tensor:
        return bernoulli(torch.sigmoid(self.visible_logits(h)), generator=generator)

    def gibbs(self, v: Tensor, steps: int, generator=None) -> Tensor:
        """``steps`` full Gibbs sweeps v -> h -> v from v (B, V); binary states out."""
        for _ in range(steps):
            v = self.sample_visible(self.sample_hidden(v, generator=generator), generator)
        return v

    # ---- energies ---------------------------------------------------------------------
    def energy(self, v: Tensor, h: Tensor) -> Tensor:
        """E(v, h): (B,)."""
        e = -(v @ self.b) - (h @ self.c) - ((v @ self.W) * h).sum(1)
        return e + 0.5 * h.pow(2).sum(1) if self.gaussian_hidden else e

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -log sum_h exp(-E(v, h)): (B,) nats."""
        a = v @ self.W + self.c  # (B, H) hidden pre-activations
        if self.gaussian_hidden:
            hid = 0.5 * a.pow(2).sum(1) + 0.5 * self.hidden * math.log(2 * math.pi)
        else:
            hid = F.softplus(a).sum(1)
        return -(v @ self.b) - hid

    def contrastive_divergence(
        self, v: Tensor, steps: int, start: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """CD-k (or persistent CD from the chains ``start``): the surrogate loss
        mean F(v) - mean F(v_neg), whose gradient is the likelihood's with the model term
        estimated by v_neg = ``steps`` Gibbs sweeps from ``start`` (default: the data v);
        returns (loss, v_neg (B, V) detached, logged terms: loss, recon, free_energy)."""
        neg = self.gibbs(v if start is None else start, steps).detach()
        fe = self.free_energy(v)
        loss = fe.mean() - self.free_energy(neg).mean()
        with torch.no_grad():
            recon = self.reconstruction_cross_entropy(v).mean()
        return loss, neg, {"loss": loss, "recon": recon, "free_energy": fe.mean()}

    def reconstruction_cross_entropy(self, v: Tensor) -> Tensor:
        """-sum_i [v_i log r_i + (1 - v_i) log(1 - r_i)] with r = p(v = 1 | E[h | v]):
        the one-step reconstruction error the practical guide monitors; (B,) nats."""
        logits = self.visible_logits(self.hidden_mean(v))
        return F.binary_cross_entropy_with_logits(logits, v, reduction="none").sum(1)


# ---- partition functions -------------------------------------------------------------
def base_rate_bias(mean: Tensor, count: float = 0.0, prior: float = 5.0) -> Tensor:
    """Visible biases log(p / (1 - p)) of the base-rate model from pixel means p (V,),
    smoothed towards 1/2 with ``prior`` pseudo-counts per pixel (no infinite biases for
    pixels that are always off)."""
    p = (mean * count + 0.5 * prior) / (count + prior) if count > 0 else mean
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


def exact_log_partition(rbm: RBMLayer) -> Tensor:
    """log Z by enumerating the 2^H hidden states (Bernoulli hidden units, H <= 24):
    log Z = logsumexp_h [c.h + sum_i softplus(b_i + (W h)_i)]. Float64 scalar."""
    if rbm.gaussian_hidden:
        raise ValueError("exact_log_partition enumerates binary hidden units")
    H = rbm.hidden
    if H > 24:
        raise ValueError(f"2^{H} hidden states are too many to enumerate")
    W, b, c = (t.detach().double() for t in (rbm.W, rbm.b, rbm.c))
    codes = torch.arange(2**H, device=W.device)
    h = ((codes[:, None] >> torch.arange(H, device=W.device)) & 1).double()  # (2^H, H)
    terms = h @ c + F.softplus(h @ W.T + b).sum(1)
    return torch.logsumexp(terms, 0)


def ais_betas(
    knots: tuple[float, ...] = (0.0, 0.5, 0.9, 1.0), counts: tuple[int, ...] = (500, 4000, 10000)
) -> Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_K = 1, uniform on each segment.

    The default is the schedule of Salakhutdinov & Murray (2008): steps of 1e-3 on
    [0, 0.5], 1e-4 on [0.5, 0.9] and 1e-5 on [0.9, 1]: 14,500 intermediate steps.
    """
    parts = [
        torch.linspace(lo, hi, n + 1, dtype=torch.float64)[:-1]
        for lo, hi, n in zip(knots[:-1], knots[1:], counts, strict=True)
    ]
    return torch.cat([*parts, torch.ones(1, dtype=torch.float64)])


def scaled_betas(total: int) -> Tensor:
    """The Salakhutdinov & Murray schedule's shape with about ``total`` steps (same
    fractions per segment: 500 : 4000 : 10000)."""
    counts = tuple(max(1, round(total * f / 14500)) for f in (500, 4000, 10000))
    return ais_betas(counts=counts)


class AISEstimate(NamedTuple):
    """log Z (float64 scalar), its spread ``lo``/``hi`` = log(mean w -/+ 3 standard
    errors) + log Z_0 (``lo`` is -inf when that crosses zero), the M log weights."""

    log_z: Tensor
    lo: float
    hi: float
    log_w: Tensor


@torch.no_grad()
def ais_log_partition(
    rbm: RBMLayer, base_bias: Tensor, betas: Tensor, runs: int, generator=None
) -> AISEstimate:
    """Annealed importance sampling estimate of log Z (Neal 2001; Salakhutdinov &
    Murray 2008), Bernoulli hidden units.

    Path: f_beta(v) = exp((1 - beta) b_A.v + beta b.v) prod_j (1 + exp(beta (c + v'W)_j)),
    from the base-rate model b_A at beta = 0 (independent pixels; its normaliser is
    Z_0 = 2^H prod_i (1 + exp(b_A_i))) to the RBM at beta = 1. Each run draws v ~ p_A,
    then alternates weight updates log f_{beta_k}(v) - log f_{beta_{k-1}}(v) and one
    Gibbs sweep that leaves f_{beta_k} invariant: log Z = log Z_0 + log mean_m w_m.
    """
    W, b, c = rbm.W, rbm.b, rbm.c
    bA = base_bias.to(W)
    device = W.device
    log_z0 = F.softplus(bA.double()).sum() + rbm.hidden * math.log(2.0)
    v = bernoulli(torch.sigmoid(bA).expand(runs, -1), generator=generator)
    log_w = torch.zeros(runs, dtype=torch.float64, device=device)

    def log_f(v: Tensor, beta: float, act: Tensor) -> Tensor:  # (M,) unnormalised log f_beta
        return (1 - beta) * (v @ bA) + beta * (v @ b) + F.softplus(beta * act).sum(1)

    betas = betas.tolist()
    track = Progress(f"AIS log Z ({runs} chains)", len(betas) - 1, "temperatures")
    for prev, beta in zip(betas[:-1], betas[1:], strict=True):
        act = v @ W + c  # (M, H), shared by both terms
        log_w += (log_f(v, beta, act) - log_f(v, prev, act)).double()
        if beta < 1.0:  # transition leaving f_beta invariant
            h = bernoulli(torch.sigmoid(beta * act), generator=generator)
            logits = (1 - beta) * bA + beta * (h @ W.T + b)
            v = bernoulli(torch.sigmoid(logits), generator=generator)
        track.update()
    track.finish()
    log_z = log_z0 + torch.logsumexp(log_w, 0) - math.log(runs)
    lo, hi = log_mean_exp_bounds(log_w)
    return AISEstimate(log_z, lo + float(log_z0), hi + float(log_z0), log_w)


class RAISEEstimate(NamedTuple):
    """Reverse-AIS estimates: log p (B,) per image (float64, a stochastic lower bound on
    log p_ann(v) of the annealing model), its standard error (B,) from the chains'
    weights, and the (B, M) log weights."""

    log_p: Tensor
    stderr: Tensor
    log_w: Tensor


@torch.no_grad()
def raise_log_likelihood(
    rbm: RBMLayer, base_bias: Tensor, betas: Tensor, v: Tensor, chains: int, generator=None
) -> RAISEEstimate:
    """Reverse annealed importance sampling (RAISE; Burda, Grosse & Salakhutdinov 2015):
    a conservative estimate of log p(v) per image v (B, V), Bernoulli hidden units.

    The annealing model p_ann(x_K) is the marginal of the forward chain x_0 ~ p_A (the
    base-rate model), x_k ~ T_k(. | x_{k-1}), T_k a Gibbs sweep leaving f_{beta_k} of
    ``ais_log_partition``'s path invariant (reversible). Started at x_K = v, ``chains``
    reverse chains x_{k-1} ~ T_k(. | x_k) give the unbiased estimate of p_ann(v)

        w = p_A(x_0) prod_{k=1..K} f_k(x_k) / f_k(x_{k-1}),

    so log mean(w) is, in expectation, at most log p_ann(v); p_ann -> p as the schedule
    gets finer. Beside plain AIS (whose log Z errs low, so log p errs high) the gap
    between the two brackets the truth."""
    W, b, c = rbm.W, rbm.b, rbm.c
    bA = base_bias.to(W)
    n = v.shape[0]
    x = v.to(W).repeat_interleave(chains, 0)  # (B * M, V): each image's chains together
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=W.device)

    def log_f(x: Tensor, beta: float) -> Tensor:  # (N,) unnormalised log f_beta(x)
        act = x @ W + c
        return (1 - beta) * (x @ bA) + beta * (x @ b) + F.softplus(beta * act).sum(1)

    betas = betas.tolist()
    track = Progress(f"RAISE log p ({n} images x {chains} chains)", len(betas) - 1, "temperatures")
    for beta in reversed(betas[1:]):  # k = K .. 1
        log_w += log_f(x, beta).double()
        h = bernoulli(torch.sigmoid(beta * (x @ W + c)), generator=generator)
        logits = (1 - beta) * bA + beta * (h @ W.T + b)
        x = bernoulli(torch.sigmoid(logits), generator=generator)
        log_w -= log_f(x, beta).double()
        track.update()
    track.finish()
    log_w += (x @ bA).double() - F.softplus(bA.double()).sum()  # log p_A(x_0)
    log_w = log_w.view(n, chains)
    log_p = torch.logsumexp(log_w, 1) - math.log(chains)
    w = torch.exp(log_w - log_p[:, None])  # weights relative to their mean (B, M)
    stderr = w.std(1) / math.sqrt(chains) if chains > 1 else torch.zeros_like(log_p)
    return RAISEEstimate(log_p, stderr, log_w)  # stderr: of log p, by the delta method


def log_mean_exp_bounds(log_w: Tensor, sigmas: float = 3.0) -> tuple[float, float]:
    """log(mean(w) -/+ sigmas * std(w) / sqrt(M)) from log weights: the spread
    Salakhutdinov & Murray report for AIS estimates (lower end -inf if it crosses 0)."""
    m = log_w.max()
    w = torch.exp(log_w - m)
    mean, sem = w.mean(), w.std() / math.sqrt(w.numel()) if w.numel() > 1 else 0.0
    lo = mean - sigmas * sem
    hi = mean + sigmas * sem
    lo_log = float(torch.log(lo) + m) if lo > 0 else float("-inf")
    return lo_log, float(torch.log(hi) + m)
