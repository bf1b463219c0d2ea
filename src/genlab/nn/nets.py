"""Network families shared by every model: each builds an encoder and a decoder.

A model gets a plain dict ``net`` (from ``conf/model/net/*.yaml``), e.g.
``{"arch": "genlab.nn.MLP", "hidden_sizes": [512, 256]}``, and calls ``build_net(net)``
to get a factory; ``arch`` is an import path, so new families of nets need no registry.
Names: ``hidden_sizes`` is always a list of layer widths, ``hidden_width`` one width.

    encoder(in_shape, out_dim): (B, *in_shape) -> (B, out_dim)
    decoder(in_dim, out_shape): (B, in_dim)    -> (B, *out_shape)   (no output activation)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from genlab.checks import ActivationName, NonNegativeInt, PositiveInt, check_args
from genlab.errors import ConfigError
from genlab.trust import check_trusted, restricted


def _activation(name: str) -> nn.Module:
    return getattr(nn, name)()


class GatedDense(nn.Module):
    """A gated linear unit, act(W_h x + b_h) * sigmoid(W_g x + b_g) (Dauphin et al. 2017;
    the VampPrior nets of Tomczak & Welling 2018 use it with no activation on h)."""

    def __init__(self, in_features: int, out_features: int, activation: nn.Module) -> None:
        super().__init__()
        self.h = nn.Linear(in_features, out_features)
        self.g = nn.Linear(in_features, out_features)
        self.activation = activation

    def forward(self, x):  # (B, in) -> (B, out)
        return self.activation(self.h(x)) * torch.sigmoid(self.g(x))


class MLP:
    """Fully connected nets; the decoder mirrors the encoder's hidden sizes.

    ``hidden_sizes=[]`` gives a single linear map each way. ``gated=true`` makes every
    hidden layer a ``GatedDense`` unit (its ``activation`` on the linear half: ``Identity``
    for Tomczak & Welling's VampPrior nets); the output layers stay linear.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[PositiveInt] = (512, 256),
        activation: ActivationName = "ReLU",
        gated: bool = False,
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation
        self.gated = gated

    def _stack(self, sizes: list[int]) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i == len(sizes) - 2:  # the output layer
                layers.append(nn.Linear(a, b))
            elif self.gated:
                layers.append(GatedDense(a, b, _activation(self.activation)))
            else:
                layers += [nn.Linear(a, b), _activation(self.activation)]
        return layers

    def encoder(self, in_shape: Sequence[int], out_dim: int) -> nn.Module:
        d = math.prod(in_shape)
        return nn.Sequential(nn.Flatten(), *self._stack([d, *self.hidden_sizes, out_dim]))

    def decoder(self, in_dim: int, out_shape: Sequence[int]) -> nn.Module:
        d = math.prod(out_shape)
        return nn.Sequential(
            *self._stack([in_dim, *self.hidden_sizes[::-1], d]), nn.Unflatten(1, tuple(out_shape))
        )


class Conv:
    """DCGAN-style convolutional nets for images (C, H, W).

    Encoder: one 4x4 stride-2 conv per entry of ``channels`` (halving H and W), then a
    fully connected layer of ``hidden_width`` units (0: none, the convolutions' output
    maps straight to the code, as in DCGAN). The decoder mirrors it with transposed
    convolutions. GAN options (all off by default): ``decoder_norm=batch`` (batch norm
    after every generator layer but the output, DCGAN), ``decoder_activation`` (the
    decoder's own activation, e.g. DCGAN's ReLU generator against a LeakyReLU critic),
    ``encoder_norm`` (``batch`` or ``layer`` after every critic conv but the first; layer
    norm keeps the examples independent, as a gradient penalty needs) and
    ``spectral_norm`` (every encoder layer, SNGAN). ``conf/model/net/dcgan*.yaml`` are
    the DCGAN presets.
    """

    def __init__(
        self,
        channels: Sequence[PositiveInt] = (32, 64),
        hidden_width: NonNegativeInt = 256,
        activation: ActivationName = "ReLU",
        encoder_norm: Literal["none", "batch", "layer"] = "none",
        decoder_norm: Literal["none", "batch"] = "none",
        spectral_norm: bool = False,
        decoder_activation: ActivationName | None = None,
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.channels = list(channels)
        self.hidden_width = hidden_width
        self.activation = activation
        self.decoder_activation = decoder_activation or activation
        self.encoder_norm = encoder_norm
        self.decoder_norm = decoder_norm
        self.spectral_norm = spectral_norm

    def _enc(self, layer: nn.Module) -> nn.Module:
        """An encoder (critic) layer, spectrally normalised when asked (Miyato et al. 2018)."""
        return nn.utils.parametrizations.spectral_norm(layer) if self.spectral_norm else layer

    def _enc_norm(self, c: int, h: int, w: int) -> list[nn.Module]:
        """The encoder's normalisation after a conv layer of (c, h, w) outputs: batch norm,
        or layer norm over (c, h, w) (no cross-example statistics: safe with a gradient
        penalty, which batch norm is not)."""
        if self.encoder_norm == "batch":
            return [nn.BatchNorm2d(c)]
        if self.encoder_norm == "layer":
            return [nn.LayerNorm([c, h, w])]
        return []

    def check(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Return (C, h, w) at the bottleneck, or raise a ConfigError if the shape doesn't fit."""
        k = 2 ** len(self.channels)
        if len(shape) != 3 or shape[1] % k or shape[2] % k:
            raise ConfigError(
                f"model/net=conv needs images (C, H, W) with H and W divisible by {k} "
                f"({len(self.channels)} stride-2 layers), but the data has shape {tuple(shape)}: "
                "use model/net=mlp or fewer model.net.channels"
            )
        return self.channels[-1], shape[1] // k, shape[2] // k

    def encoder(self, in_shape: Sequence[int], out_dim: int) -> nn.Module:
        c, h, w = self.check(in_shape)
        layers: list[nn.Module] = []
        side_h, side_w = in_shape[1], in_shape[2]
        for i, (a, b) in enumerate(
            zip([in_shape[0], *self.channels[:-1]], self.channels, strict=True)
        ):
            side_h, side_w = side_h // 2, side_w // 2
            layers.append(self._enc(nn.Conv2d(a, b, 4, stride=2, padding=1)))
            if i > 0:  # DCGAN: no normalisation on the critic's first layer
                layers += self._enc_norm(b, side_h, side_w)
            layers.append(_activation(self.activation))
        head: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        if self.hidden_width:
            head += [self._enc(nn.Linear(width, self.hidden_width)), _activation(self.activation)]
            width = self.hidden_width
        return nn.Sequential(*layers, *head, self._enc(nn.Linear(width, out_dim)))

    def decoder(self, in_dim: int, out_shape: Sequence[int]) -> nn.Module:
        c, h, w = self.check(out_shape)
        batch = self.decoder_norm == "batch"
        layers: list[nn.Module] = []
        widths = [in_dim, *([self.hidden_width] if self.hidden_width else []), c * h * w]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers.append(nn.Linear(a, b))
            layers += [nn.BatchNorm1d(b)] if batch else []
            layers.append(_activation(self.decoder_activation))
        layers.append(nn.Unflatten(1, (c, h, w)))
        rev = self.channels[::-1]
        for i, (a, b) in enumerate(zip(rev, [*rev[1:], out_shape[0]], strict=True)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(rev) - 1:  # every layer but the output (DCGAN's generator)
                layers += [nn.BatchNorm2d(b)] if batch else []
                layers.append(_activation(self.decoder_activation))
        return nn.Sequential(*layers)


class _ResBlock(nn.Module):
    """A pre-activation residual block (SNGAN): x -> [norm, act, (up), conv3, norm, act,
    conv3, (down)] + shortcut, the shortcut a 1x1 conv whenever the shape changes."""

    def __init__(
        self,
        a: int,
        b: int,
        resample: Literal["up", "down", "none"],
        act: str,
        norm: str,
        wrap,
        first: bool = False,
    ) -> None:
        super().__init__()
        up = [nn.Upsample(scale_factor=2)] if resample == "up" else []
        down = [nn.AvgPool2d(2)] if resample == "down" else []

        def pre(c: int) -> list[nn.Module]:
            # layer norm over (c, h, w) as GroupNorm(1, c): no cross-example statistics
            norms = {"batch": [nn.BatchNorm2d(c)], "layer": [nn.GroupNorm(1, c)]}
            return [*norms.get(norm, []), _activation(act)]

        # The critic's first block sees the raw image: no activation before its conv.
        self.body = nn.Sequential(
            *([] if first else pre(a)),
            *up,
            wrap(nn.Conv2d(a, b, 3, padding=1)),
            *pre(b),
            wrap(nn.Conv2d(b, b, 3, padding=1)),
            *down,
        )
        reshape = a != b or resample != "none"
        conv = [wrap(nn.Conv2d(a, b, 1))] if reshape else []
        # first block (SNGAN's "optimised" block): pool before the 1x1 conv, cheaper
        self.skip = nn.Sequential(*(down + conv if first else up + conv + down))

    def forward(self, x):
        return self.body(x) + self.skip(x)


class ResNet:
    """Residual nets for GANs on 28x28 and 32x32 images (SNGAN, Miyato et al. 2018).

    Decoder (generator): a linear map to ``hidden_width`` maps of (H, W) / 2**n_blocks,
    ``n_blocks`` upsampling residual blocks (batch norm, ``activation``), then norm,
    activation and a 3x3 conv to the image channels. Encoder (critic): a first
    downsampling block on the image, ``n_blocks - 2`` more downsampling blocks, two
    blocks at constant size, activation, a sum over positions and a linear map; spectral
    norm on every layer when ``spectral_norm``, no normalisation in the critic unless
    ``encoder_norm`` (``layer``: safe with a gradient penalty). The
    SNGAN CIFAR-10 nets are ``n_blocks=3, hidden_width=128`` (``conf/model/net/resnet.yaml``
    is a smaller width for CPUs).
    """

    def __init__(
        self,
        hidden_width: PositiveInt = 64,
        n_blocks: PositiveInt = 3,
        activation: ActivationName = "ReLU",
        decoder_norm: Literal["none", "batch"] = "batch",
        spectral_norm: bool = True,
        encoder_norm: Literal["none", "batch", "layer"] = "none",
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.hidden_width = hidden_width
        self.n_blocks = n_blocks
        self.activation = activation
        self.decoder_norm = decoder_norm
        self.spectral_norm = spectral_norm
        self.encoder_norm = encoder_norm

    def _wrap(self, layer: nn.Module) -> nn.Module:
        return nn.utils.parametrizations.spectral_norm(layer) if self.spectral_norm else layer

    def check(self, shape: Sequence[int]) -> tuple[int, int]:
        """The decoder's first (h, w), or a ConfigError if the shape doesn't fit."""
        k = 2**self.n_blocks
        if len(shape) != 3 or shape[1] % k or shape[2] % k:
            raise ConfigError(
                f"model/net=resnet needs images (C, H, W) with H and W divisible by {k} "
                f"({self.n_blocks} upsampling blocks), but the data has shape {tuple(shape)}: "
                "set model.net.n_blocks (2 for 28x28, 3 for 32x32)"
            )
        return shape[1] // k, shape[2] // k

    def encoder(self, in_shape: Sequence[int], out_dim: int) -> nn.Module:
        self.check(in_shape)
        w, act, wrap, norm = self.hidden_width, self.activation, self._wrap, self.encoder_norm
        blocks = [_ResBlock(in_shape[0], w, "down", act, norm, wrap, first=True)]
        blocks += [_ResBlock(w, w, "down", act, norm, wrap) for _ in range(self.n_blocks - 2)]
        blocks += [_ResBlock(w, w, "none", act, norm, wrap) for _ in range(2)]
        return nn.Sequential(
            *blocks,
            _activation(act),
            _SumPool(),  # (B, w, h, w') -> (B, w)
            wrap(nn.Linear(w, out_dim)),
        )

    def decoder(self, in_dim: int, out_shape: Sequence[int]) -> nn.Module:
        h, w_ = self.check(out_shape)
        w, act, norm = self.hidden_width, self.activation, self.decoder_norm
        return nn.Sequential(
            nn.Linear(in_dim, w * h * w_),
            nn.Unflatten(1, (w, h, w_)),
            # no spectral norm in the generator
            *[_ResBlock(w, w, "up", act, norm, lambda m: m) for _ in range(self.n_blocks)],
            *([nn.BatchNorm2d(w)] if norm == "batch" else []),
            _activation(act),
            nn.Conv2d(w, out_shape[0], 3, padding=1),
        )


class _SumPool(nn.Module):
    """(B, C, H, W) -> (B, C): the sum over positions (SNGAN's critic)."""

    def forward(self, x):
        return x.sum((2, 3))


def build_net(spec: dict | None) -> Any:
    """Factory from a net spec ``{"arch": "<module>.<Class>", **kwargs}`` (None: default MLP):
    encoder / decoder factories (MLP, Conv, ResNet) or denoiser factories (UNet, TimeMLP)."""
    spec = dict(spec or {"arch": "genlab.nn.MLP"})
    path = spec.pop("arch", "genlab.nn.MLP")
    check_trusted(path, "model.net.arch")  # a checkpoint's hparams can name any factory
    module, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"model.net.arch={path!r} cannot be imported: "
            "use genlab.nn.MLP, genlab.nn.Conv or genlab.nn.ResNet "
            "(denoisers: genlab.nn.UNet, genlab.nn.TimeMLP)"
        ) from None
    if restricted() and not isinstance(cls, type):  # a checkpoint names a function
        raise ConfigError(f"model.net.arch={path!r} is not a class: refused")
    try:
        return cls(**spec)
    except TypeError as e:
        raise ConfigError(f"model.net: {e}") from None
