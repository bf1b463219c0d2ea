"""Invertible layers for normalizing flows (docs/models/flows.md). No layer knows about
Lightning.

The contract every layer keeps, on vectors (B, D) or images (B, C, H, W):

    forward(x) -> (h, log_det)   data -> latent;   log_det (B,) = log|det dh/dx|
    inverse(h) -> (x, log_det)   latent -> data;   log_det (B,) = log|det dx/dh| (= -forward's)

Direction: ``forward`` is the density direction (data to latent, as in NICE's f and in
nflows); it is the opposite of normflows (VincentStimper/normalizing-flows), whose
``forward`` samples, latent to data. Sampling here is ``inverse``.

Layers act on dimension 1 (features of a vector, channels of an image); per-position
terms of image layers are multiplied by H*W. Compose with :class:`FlowSequence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import ConfigError
from genlab.nn.nets import MLP


def _positions(x: Tensor) -> int:
    """Positions sharing each per-channel parameter: H*W for images, 1 for vectors."""
    return math.prod(x.shape[2:])


def _per_channel(p: Tensor, x: Tensor) -> Tensor:
    """A (C,) parameter shaped to broadcast against x: (1, C) or (1, C, 1, 1)."""
    return p.view(1, -1, *([1] * (x.ndim - 2)))


class FlowLayer(nn.Module):
    """Base class: an invertible map with a tractable log-determinant."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """Layers applied in order; the inverse runs them backwards. Log-dets add up."""

    def __init__(self, layers: Sequence[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        log_det = h.new_zeros(h.shape[0])
        for layer in reversed(self.layers):
            h, ld = layer.inverse(h)
            log_det = log_det + ld
        return h, log_det


class Reshape(FlowLayer):
    """(B, *in_shape) <-> (B, *out_shape), e.g. images to vectors for NICE. log_det 0."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h.reshape(h.shape[0], *self.in_shape), h.new_zeros(h.shape[0])


class Logit(FlowLayer):
    """RealNVP's logit pre-processing of data in [0, 1]: h = logit(a + (1 - 2a) x).

    The squeeze into [a, 1 - a] keeps 0 and 1 finite; the log-det is counted, so a flow
    behind it still gives log p(x) of the [0, 1] data:

        log|dh/dx| = sum_i [log(1 - 2a) - log s_i - log(1 - s_i)],   s = a + (1 - 2a) x
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        if not 0 < alpha < 0.5:
            raise ConfigError(f"the logit squeeze alpha must lie in (0, 0.5), not {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        s = a + (1 - 2 * a) * x  # in [a, 1 - a]: both logs finite
        h = torch.log(s) - torch.log1p(-s)
        ld = math.log1p(-2 * a) - torch.log(s) - torch.log1p(-s)
        return h, ld.flatten(1).sum(1)

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha
        # log sigmoid'(h) = -softplus(-h) - softplus(h)
        ld = -F.softplus(-h) - F.softplus(h) - math.log1p(-2 * a)
        return (torch.sigmoid(h) - a) / (1 - 2 * a), ld.flatten(1).sum(1)


class Coupling(FlowLayer):
    """Additive (NICE) or affine (RealNVP/Glow) coupling on a split of dim 1.

    ``split="halves"`` (contiguous blocks, cheap on GPUs): x_a = the first ceil(D/2)
    features (parity 0) or the last floor(D/2) (parity 1); ``split="interleaved"``:
    x_a = x[:, parity::2]. x_a passes unchanged and conditions the rest, x_b:
        additive: h_b = x_b + t(x_a)                        log_det = 0
        affine:   h_b = (x_b + t(x_a)) * s(x_a)             log_det = sum log s
    with a bounded, numerically stable scale: ``scale="sigmoid"`` is Glow's
    s = sigmoid(raw + 2) (in (0, 1), 0.88 at raw = 0); ``scale="tanh"`` is RealNVP's
    log s = w * tanh(raw) with a learned per-feature w (0 at init).
    ``make_net(in_features, out_features)`` builds the conditioner; affine layers ask for
    2 * |x_b| outputs (raw scale, shift).
    """

    def __init__(
        self,
        features: int,
        parity: int,
        make_net: Callable[[int, int], nn.Module],
        affine: bool = False,
        scale: str = "sigmoid",
        split: Literal["halves", "interleaved"] = "interleaved",
    ) -> None:
        super().__init__()
        if features < 2:
            raise ConfigError(f"a coupling layer needs at least 2 features, got {features}")
        if split not in ("halves", "interleaved"):
            raise ConfigError(f"coupling split={split!r} is not one of halves|interleaved")
        self.split = split
        self.parity = parity % 2
        self.n_a = len(range(self.parity, features, 2))
        self.n_b = features - self.n_a
        self.affine = affine
        self.scale = scale
        self.net = make_net(self.n_a, 2 * self.n_b if affine else self.n_b)
        if affine and scale == "tanh":
            self.log_scale_weight = nn.Parameter(torch.zeros(self.n_b))
        elif affine and scale != "sigmoid":
            raise ConfigError(f"coupling scale={scale!r} is not one of sigmoid|tanh")

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.split == "halves":  # views of two blocks, (B, n_a, ...) and (B, n_b, ...)
            if self.parity == 0:
                return x[:, : self.n_a], x[:, self.n_a :]
            b, a = x.split([self.n_b, self.n_a], dim=1)
            return a, b
        return x[:, self.parity :: 2], x[:, 1 - self.parity :: 2]

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        if self.split == "halves":
            return torch.cat([a, b] if self.parity == 0 else [b, a], dim=1)
        out = a.new_empty(a.shape[0], self.n_a + self.n_b, *a.shape[2:])
        out[:, self.parity :: 2] = a
        out[:, 1 - self.parity :: 2] = b
        return out

    def _shift_log_scale(self, a: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.net(a)
        if not self.affine:
            return out, None
        raw, shift = out[:, : self.n_b], out[:, self.n_b :]
        if self.scale == "sigmoid":
            return shift, F.logsigmoid(raw + 2.0)
        return shift, _per_channel(self.log_scale_weight, raw) * torch.tanh(raw)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._split(x)
        shift, log_s = self._shift_log_scale(a)
        if log_s is None:
            return self._merge(a, b + shift), x.new_zeros(x.shape[0])
        h_b = (b + shift) * log_s.exp()
        return self._merge(a, h_b), log_s.flatten(1).sum(1)

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        a, h_b = self._split(h)
        shift, log_s = self._shift_log_scale(a)
        if log_s is None:
            return self._merge(a, h_b - shift), h.new_zeros(h.shape[0])
        b = h_b * (-log_s).exp() - shift
        return self._merge(a, b), -log_s.flatten(1).sum(1)


class DiagonalScaling(FlowLayer):
    """NICE's last layer: h = exp(s) * x per feature (channel), log_det = sum(s) (* H*W).

    Zero-initialised (the identity): a faithful NICE then improves slowly at first while s
    grows by several nats per dimension (about 10.0 -> 9.65 bits/dim in the first MNIST
    epoch at Adam 1e-3; docs/models/flows.md#nice).
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s = _per_channel(self.log_scale, x)
        ld = self.log_scale.sum() * _positions(x)
        return x * s.exp(), ld.expand(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        s = _per_channel(self.log_scale, h)
        ld = -self.log_scale.sum() * _positions(h)
        return h * (-s).exp(), ld.expand(h.shape[0])


class ActNorm(DiagonalScaling):
    """Activation normalisation (Glow): h = (x + b) * exp(s) per channel.

    Data-dependent initialisation: the first forward pass sets b and s so that batch's
    output has zero mean and unit variance per channel (statistics averaged over all
    processes when torch.distributed runs, so every rank starts from the same values).
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.bias = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # a host-side copy of `initialized`: no device sync per step

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # re-read the loaded buffer once

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        dims = [0, *range(2, x.ndim)]
        stats = torch.stack([x.mean(dims), (x * x).mean(dims)])  # (2, C)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
            stats /= torch.distributed.get_world_size()
        mean, sq = stats
        std = (sq - mean * mean).clamp_min(0).sqrt()
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)
        self._ready = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self._ready:
            self._ready = bool(self.initialized)
            if not self._ready:
                self.initialize(x)
        h, ld = super().forward(x + _per_channel(self.bias, x))
        return h, ld

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        x, ld = super().inverse(h)
        return x - _per_channel(self.bias, x), ld


class Squeeze(FlowLayer):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 patch becomes 4 channels. log_det 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        b, c, hh, ww = h.shape
        x = h.view(b, c // 4, 2, 2, hh, ww).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * hh, 2 * ww), h.new_zeros(b)


class MultiScale(FlowLayer):
    """RealNVP's multi-scale architecture for images (B, C, H, W) -> latent (B, D).

    Each level squeezes, runs ``make_level(channels)``, and (except the last) factors out
    half of its channels straight to the latent; later levels see only the other half.
    """

    def __init__(
        self, shape: Sequence[int], levels: int, make_level: Callable[[int], FlowLayer]
    ) -> None:
        super().__init__()
        c, h, w = shape
        k = 2**levels
        if h % k or w % k:
            raise ConfigError(
                f"model.levels={levels} needs H and W divisible by {k}, but the data has "
                f"shape {tuple(shape)}: use fewer model.levels"
            )
        self.squeeze = Squeeze()
        self.levels = nn.ModuleList()
        self.shapes: list[tuple[int, int, int]] = []  # per level: (C, H, W) after squeeze
        for i in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.shapes.append((c, h, w))
            self.levels.append(make_level(c))
            if i < levels - 1:
                c = c - c // 2
        self.sizes = [(c // 2) * h * w for c, h, w in self.shapes[:-1]]
        self.sizes.append(math.prod(self.shapes[-1]) if levels else math.prod(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        out = []
        for i, level in enumerate(self.levels):
            x, _ = self.squeeze(x)
            x, ld = level(x)
            log_det = log_det + ld
            if i < len(self.levels) - 1:
                c_out = self.shapes[i][0] // 2
                out.append(x[:, :c_out].flatten(1))
                x = x[:, c_out:]
        out.append(x.flatten(1))
        return torch.cat(out, 1), log_det

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        parts = list(torch.split(h, self.sizes, dim=1))
        log_det = h.new_zeros(h.shape[0])
        x = parts[-1].view(h.shape[0], *self.shapes[-1])
        for i in reversed(range(len(self.levels))):
            if i < len(self.levels) - 1:
                c, hh, ww = self.shapes[i]
                z = parts[i].view(h.shape[0], c // 2, hh, ww)
                x = torch.cat([z, x], 1)
            x, ld = self.levels[i].inverse(x)
            log_det = log_det + ld
            x, _ = self.squeeze.inverse(x)
        return x, log_det


# ---- conditioners ---------------------------------------------------------------------
def mlp_net(hidden_sizes: Sequence[int], activation: str = "ReLU", zero_init: bool = False):
    """make_net for vectors: genlab.nn.MLP's Linear -> act -> ... -> Linear stack (last
    layer zeroed on request, so affine couplings start as the identity)."""
    stack = MLP(hidden_sizes, activation)  # validates sizes and the activation name

    def make(n_in: int, n_out: int) -> nn.Module:
        layers = stack._stack([n_in, *stack.hidden_sizes, n_out])
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        return nn.Sequential(*layers)

    return make


def conv_net(channels: int, activation: str = "ReLU"):
    """make_net for images (Glow): conv3x3 -> act -> conv1x1 -> act -> zero-init conv3x3,
    ``channels`` wide."""

    def make(n_in: int, n_out: int) -> nn.Module:
        c = channels
        last = nn.Conv2d(c, n_out, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        act = getattr(nn, activation)
        return nn.Sequential(
            nn.Conv2d(n_in, c, 3, padding=1), act(), nn.Conv2d(c, c, 1), act(), last
        )

    return make


# ---- priors -------------------------------------------------------------------------
class Prior(nn.Module):
    """Factorised standard prior on the latent h (B, D): ``gaussian`` or ``logistic``."""

    def __init__(self, kind: Literal["gaussian", "logistic"] = "gaussian") -> None:
        super().__init__()
        if kind not in ("gaussian", "logistic"):
            raise ConfigError(f"model.prior={kind!r} is not one of gaussian|logistic")
        self.kind = kind

    def log_prob(self, h: Tensor) -> Tensor:
        """Sum over dims: (B, D) -> (B,)."""
        if self.kind == "logistic":  # log p(h) = -(softplus(h) + softplus(-h))
            return -(F.softplus(h) + F.softplus(-h)).sum(1)
        return -0.5 * (h * h).sum(1) - 0.5 * h.shape[1] * math.log(2 * math.pi)

    def sample(
        self,
        n: int,
        dim: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ) -> Tensor:
        if self.kind == "logistic":
            u = torch.rand(n, dim, generator=generator, device=device).clamp_(1e-7, 1 - 1e-7)
            return temperature * (u.log() - (-u).log1p())
        return temperature * torch.randn(n, dim, generator=generator, device=device)
